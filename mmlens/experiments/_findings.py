"""The study's claims checked against the measured statistics: verdicts, numbers with intervals, findings.md."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Claim", "Check", "evaluate_claims", "sanity_checks", "findings_markdown", "NON_INFERIORITY_MARGIN",
           "BIAS_SHARE_THRESHOLD", "MIN_SHIFT", "CHANCE_MULTIPLE", "IDENTITY_TOLERANCE"]

#: Bias tuning "works as well as prompts" when its accuracy is at most this many points below MaPLe's
#: (lower end of the 95% interval of the paired difference).
NON_INFERIORITY_MARGIN = 2.0
#: β is "a dataset bias" when its dataset mean explains more than this share of its mean square.
BIAS_SHARE_THRESHOLD = 0.5
#: Smallest change of the foreground share of [cls]'s patch attention counted as a shift (1 point of attention).
MIN_SHIFT = 0.01
#: MaPLe's β and bias tuning's b "point the same way" when their cosine exceeds this many times 1/√C, the
#: spread of the cosine of two unrelated random directions in C channels (3/√C: about 3 standard deviations).
CHANCE_MULTIPLE = 3.0
#: A sanity check (an identity) passes when the quantity is within this of its exact value (float32 traces).
IDENTITY_TOLERANCE = 1e-4

HOLDS, PARTLY, FAILS, UNTESTED = "holds", "partly holds", "does not hold", "not tested here"


@dataclass
class Claim:
    """One claim of the study with its statistic, the numbers measured and the verdict."""

    key: str
    title: str
    statistic: str
    rule: str
    verdict: str
    numbers: list[str] = field(default_factory=list)
    explanation: str = ""
    headline: str = ""
    falsifier: str = ""  # the result that would have made the claim fail


@dataclass
class Check:
    """A sanity check: an identity that holds whatever the prompts learned (so it is not evidence)."""

    title: str
    why: str
    measured: str
    status: str  # "passed", "FAILED" or "not available"


def _rows(table: Any, **sel: Any) -> Any:
    t = table
    for k, v in sel.items():
        t = t[t[k].astype(str) == str(v)]
    return t


def _one(table: Any, **sel: Any) -> dict[str, Any] | None:
    t = _rows(table, **sel)
    if len(t) == 0:
        return None
    rec = t.iloc[0].to_dict()
    return rec if not _nan(rec["mean"]) else None


def _nan(x: Any) -> bool:
    try:
        return x is None or math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def _ci(rec: dict[str, Any] | None, digits: int = 3, unit: str = "") -> str:
    if rec is None:
        return "not available"
    m, lo, hi = float(rec["mean"]), float(rec["low"]), float(rec["high"])
    if digits >= 3 and abs(m) < 10 ** -digits and m != 0:
        digits = max(digits, 1 - math.floor(math.log10(abs(m))))  # tiny values keep one significant digit
    if _nan(lo) or (lo == hi == m):
        runs = int(rec.get("n_datasets", 1) or 1) * int(rec.get("n_seeds", 1) or 1)
        why = "a single run" if (runs <= 1 and not int(rec.get("n_items", 0) or 0)) else "no spread"
        return f"{m:.{digits}f}{unit} (no interval: {why})"
    return f"{m:.{digits}f}{unit} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _has_interval(rec: dict[str, Any] | None) -> bool:
    return rec is not None and not _nan(rec["low"]) and not (rec["low"] == rec["high"] == rec["mean"])


def _per_dataset(table: Any, digits: int = 3, **sel: Any) -> str:
    """``name: mean [low, high]`` for each dataset's own row (empty with a single dataset)."""
    t = _rows(table, **sel)
    t = t[t["dataset"].astype(str) != "all"]
    parts = [f"{rec['dataset']} {_ci(rec, digits)}" for rec in t.to_dict("records") if not _nan(rec["mean"])]
    return "; ".join(parts)


def _layer_rows(table: Any, **sel: Any) -> list[dict[str, Any]]:
    t = _rows(table, **sel)
    t = t[t["layers"].astype(str).str.fullmatch(r"\d+")]
    recs = t.to_dict("records")
    return sorted(recs, key=lambda r: int(r["layers"]))


# ---------------------------------------------------------------------------------------------- claims
def _dataset_bias(t: Any, split: str) -> Claim:
    sel = {"statistic": "bias_consistency", "tower": "vision", "method": "maple", "variant": "full", "split": split,
           "dataset": "all"}
    share = _one(t, **sel, measure="dataset_mean_share", layers="injected")
    share_c = _one(t, **sel, measure="dataset_mean_share", layers="carried")
    within = _one(t, **sel, measure="within_class", layers="injected")
    across_c = _one(t, **sel, measure="across_classes", layers="injected")
    across_d = _one(t, **sel, measure="across_datasets", layers="injected")
    text_share = _one(t, **{**sel, "tower": "text"}, measure="dataset_mean_share", layers="injected")
    c = Claim(
        "dataset_bias", "Prompts act as a dataset bias",
        "`bias_consistency` of the vision prompt bias β at `[cls]` (traced test images), injected layers",
        f"holds when the dataset mean of β explains more than {BIAS_SHARE_THRESHOLD:.0%} of its mean square "
        "(lower end of the interval) and β is more alike within a dataset than across datasets "
        "(across-class cosine interval above the across-dataset one)",
        UNTESTED,
        falsifier=f"the dataset mean explaining at most {BIAS_SHARE_THRESHOLD:.0%} of β's mean square (interval "
        "reaching that level), i.e. β changing direction or size from image to image; or, with several datasets, "
        "β of one dataset no more alike than β of different datasets",
    )
    c.numbers = [
        f"share of β's mean square explained by its dataset mean, injected layers: {_ci(share)}",
        f"… carried layers (β input dependent by construction): {_ci(share_c)}",
        f"cosine of β between images of one class: {_ci(within)}; of different classes: {_ci(across_c)}; "
        f"of different datasets: {_ci(across_d)}",
        f"text tower (class prompts), share explained by the mean over classes, injected layers: {_ci(text_share)}",
    ]
    per = _per_dataset(t, **{k: v for k, v in sel.items() if k != "dataset"}, measure="dataset_mean_share",
                       layers="injected")
    if per:
        c.numbers.append(f"per dataset, share (injected): {per}")
    if share is None:
        c.explanation = "β vectors were not available."
    else:
        bias_like = (share["low"] if _has_interval(share) else share["mean"]) > BIAS_SHARE_THRESHOLD
        specific = None
        if across_c is not None and across_d is not None:
            specific = (across_c["low"] > across_d["high"]) if _has_interval(across_c) else \
                across_c["mean"] > across_d["mean"]
        if bias_like and specific is not False:
            c.verdict = HOLDS
            c.explanation = ("In injected layers β is close to one vector per dataset"
                             + (", and that vector differs between datasets." if specific else
                                "; with a single dataset, whether it differs between datasets is not tested."))
        elif bias_like:
            c.verdict = PARTLY
            c.explanation = ("β is nearly constant within a dataset, but not more alike within a dataset than "
                             "across datasets: a bias shared by the datasets rather than a per-dataset one.")
        else:
            c.verdict = FAILS
            c.explanation = "β varies from image to image too much to be called a dataset bias."
    c.headline = f"[{c.verdict}] {c.title}: dataset-mean share of β (vision, injected) {_ci(share)}"
    return c


def _bias_route(t: Any, split: str, other: str) -> Claim:
    sel = {"statistic": "accuracy", "tower": "logits", "dataset": "all", "layers": ""}

    def acc(variant: str, s: str = split) -> dict[str, Any] | None:
        return _one(t.fillna({"layers": ""}), **sel, split=s, variant=variant)

    gain, b, r, k, d = (acc("full - zeroshot"), acc("bias_only - midpoint"), acc("redistribution_only - midpoint"),
                        acc("constant_bias - midpoint"), acc("drop_prompts - midpoint"))
    c = Claim(
        "bias_route", "The bias route carries most of the gain",
        "route ablations on the traced test images (paired, per image): accuracy of `bias_only` (keep β, drop the "
        "(1-α) scaling), `redistribution_only` (keep (1-α), drop β), `constant_bias` (β replaced by its "
        "training-set mean) relative to the midpoint between zero-shot and full prompts",
        "holds when prompts improve accuracy (gain interval above 0), bias_only keeps more than half of the gain "
        "(interval above the midpoint) and redistribution_only keeps less than half (interval below it)",
        UNTESTED,
        falsifier="bias_only's accuracy at or below the midpoint between zero-shot and full prompts (interval "
        "reaching it): β alone keeping half of the gain or less (with a gain to apportion; without one the claim "
        "is not tested)",
    )

    def frac(rec: dict[str, Any] | None) -> str:
        if rec is None or gain is None or not (gain["low"] > 0 if _has_interval(gain) else gain["mean"] > 0):
            return "no gain to apportion"
        return f"{(rec['mean'] + gain['mean'] / 2) / gain['mean']:.0%} of the gain"

    full, zs = acc("full"), acc("zeroshot")
    c.numbers = [
        f"{split}: zero-shot {_ci(zs, 1, '%')}, full prompts {_ci(full, 1, '%')}; gain {_ci(gain, 1, ' points')}",
        f"bias_only − midpoint: {_ci(b, 1, ' points')} ({frac(b)})",
        f"redistribution_only − midpoint: {_ci(r, 1, ' points')} ({frac(r)})",
        f"constant_bias − midpoint: {_ci(k, 1, ' points')} ({frac(k)}); drop_prompts − midpoint: "
        f"{_ci(d, 1, ' points')} ({frac(d)})",
    ]
    for variant, label in (("full - zeroshot", "gain"), ("bias_only - midpoint", "bias_only − midpoint")):
        per = _per_dataset(t.fillna({"layers": ""}), 1, statistic="accuracy", tower="logits", layers="", split=split,
                           variant=variant)
        if per:
            c.numbers.append(f"per dataset, {label}: {per}")
    g2, b2, r2 = acc("full - zeroshot", other), acc("bias_only - midpoint", other), \
        acc("redistribution_only - midpoint", other)
    if g2 is not None:
        c.numbers.append(f"{other} classes: gain {_ci(g2, 1, ' points')}; bias_only − midpoint {_ci(b2, 1)}; "
                         f"redistribution_only − midpoint {_ci(r2, 1)}")
    if gain is None or b is None or r is None:
        c.explanation = "The route ablations were not traced."
    elif not (gain["low"] > 0 if _has_interval(gain) else gain["mean"] > 0):
        c.verdict = UNTESTED
        c.explanation = (f"The prompts did not improve {split} accuracy measurably here (gain interval reaches 0), "
                         "so there is no gain to apportion between the routes.")
    else:
        keeps = b["low"] > 0 if _has_interval(b) else b["mean"] > 0
        loses = r["high"] < 0 if _has_interval(r) else r["mean"] < 0
        if keeps and loses:
            c.verdict = HOLDS
            c.explanation = "β alone keeps most of the gain; the attention redistribution alone does not."
        elif keeps:
            c.verdict = PARTLY
            c.explanation = "β alone keeps most of the gain, but so does the redistribution route alone."
        else:
            c.verdict = FAILS
            redistribution_keeps = r["low"] > 0 if _has_interval(r) else r["mean"] > 0
            c.explanation = "β alone is not shown to keep most of the gain (its interval reaches the midpoint)" + (
                "; the redistribution route alone does." if redistribution_keeps else
                "; neither does the redistribution route alone." if loses else
                "; nor is the redistribution route alone (its interval reaches the midpoint too).")
    c.headline = f"[{c.verdict}] {c.title}: bias_only − midpoint {_ci(b, 1, ' points')} (gain {_ci(gain, 1)})"
    return c


def _bias_tuning(t: Any, acc: Any, context: dict[str, Any]) -> Claim:
    c = Claim(
        "bias_tuning", "Bias tuning works as well as prompts",
        "accuracy of bias tuning (a learned vector per block, [math.md](math.md)) minus MaPLe, paired by dataset "
        "and seed, interval over seeds and datasets",
        f"holds when the lower end of the interval of (bias − MaPLe) is above −{NON_INFERIORITY_MARGIN:g} points "
        "on both base and novel classes",
        UNTESTED,
        falsifier=f"bias tuning more than {NON_INFERIORITY_MARGIN:g} points below MaPLe (lower end of the interval "
        "of the difference) on both base and novel classes",
    )
    rows = {s: _one(t.fillna({"layers": ""}), statistic="accuracy", tower="evaluate", variant="bias - maple",
                    split=s, dataset="all") for s in ("base", "novel")}
    if all(v is None for v in rows.values()):
        cited = context.get("bias_tuning_table")
        c.explanation = ("Bias tuning was not trained in this run (add `--methods maple bias`)."
                         + (f" The training results table `{cited}` compares it with MaPLe." if cited else ""))
        c.headline = f"[{c.verdict}] {c.title}: not trained in this run"
        return c
    if "trainable_parameters" in acc.coords:
        params = {str(m): int(n) for m, n in zip(acc["method"].values, acc["trainable_parameters"].values)}
        c.numbers.append("trainable parameters: " + ", ".join(f"{m} {n:,}" for m, n in params.items()))
    for s, rec in rows.items():
        m = _one(t.fillna({"layers": ""}), statistic="accuracy", tower="evaluate", variant="maple", split=s,
                 dataset="all")
        bb = _one(t.fillna({"layers": ""}), statistic="accuracy", tower="evaluate", variant="bias", split=s,
                  dataset="all")
        c.numbers.append(f"{s}: MaPLe {_ci(m, 1, '%')}, bias tuning {_ci(bb, 1, '%')}, difference "
                         f"{_ci(rec, 1, ' points')}")
    ok = [rec is not None and (rec["low"] if _has_interval(rec) else rec["mean"]) > -NON_INFERIORITY_MARGIN
          for rec in rows.values()]
    c.verdict = HOLDS if all(ok) else (PARTLY if any(ok) else FAILS)
    behind = [s for s, rec in rows.items() if rec is not None and rec["mean"] < -NON_INFERIORITY_MARGIN]
    c.explanation = {
        HOLDS: "Bias tuning is within the margin of MaPLe on base and novel classes.",
        PARTLY: "Bias tuning is within the margin on one split only.",
        FAILS: ("Bias tuning falls behind MaPLe by more than the margin on average"
                f" ({', '.join(behind)})." if behind else
                f"Bias tuning is not shown to be within {NON_INFERIORITY_MARGIN:g} points of MaPLe: the intervals of "
                "the difference reach below the margin, although the mean differences are above it (the "
                "intervals are too wide to decide)."),
    }[c.verdict]
    c.headline = f"[{c.verdict}] {c.title}: base difference {_ci(rows['base'], 1, ' points')}"
    return c


def _foreground_shift(t: Any, split: str) -> Claim:
    sel = {"statistic": "foreground_attention", "tower": "vision", "split": split, "dataset": "all",
           "measure": "share"}
    diff = _layer_rows(t, **sel, variant="full - zeroshot")
    c = Claim(
        "foreground_shift", "[cls] foreground focus shifts through earlier layers",
        "`foreground_attention` (share of `[cls]`'s patch attention â on foreground, exact toyworld masks), with "
        "minus without prompts on the same images, per layer after the first prompted block (there the shift is 0 "
        "by construction, [math.md](math.md) consequence 1: a sanity check below, not evidence)",
        f"holds when some block after the first prompted one shows a shift of at least {MIN_SHIFT:g} whose interval "
        "excludes 0",
        UNTESTED,
        falsifier=f"every later block's shift below {MIN_SHIFT:g} in size or with an interval containing 0: prompts "
        "leaving where [cls] looks unchanged",
    )
    if not diff:
        c.explanation = "No foreground masks in these datasets."
        c.headline = f"[{c.verdict}] {c.title}: no masks"
        return c
    with_p = {int(r["layers"]): r for r in _layer_rows(t, **sel, variant="full")}
    without = {int(r["layers"]): r for r in _layer_rows(t, **sel, variant="zeroshot")}
    first = _first_prompted(diff)
    later = [r for r in diff if int(r["layers"]) > int(first["layers"])]
    significant = [r for r in later if _has_interval(r) and (r["low"] > 0 or r["high"] < 0)
                   and abs(r["mean"]) >= MIN_SHIFT]
    biggest = max(later or diff, key=lambda r: abs(r["mean"]))
    for r in diff:
        layer = int(r["layers"])
        c.numbers.append(f"layer {layer} ({r['layer_kind']}): without {_ci(without.get(layer), 3)}, with "
                         f"{_ci(with_p.get(layer), 3)}, shift {_ci(r, 4)}")
    if not later:
        c.explanation = "No block after the first prompted one was traced."
    elif significant:
        c.verdict = HOLDS
        signs = {("towards" if r["mean"] > 0 else "away from") for r in significant}
        c.explanation = (f"From block {significant[0]['layers']} on the focus moves {' and '.join(sorted(signs))} "
                         f"the foreground (largest shift {biggest['mean']:+.3f} in block {biggest['layers']}).")
    else:
        c.verdict = FAILS
        c.explanation = (f"No block shows a shift of the foreground focus of at least {MIN_SHIFT:g} whose interval "
                         f"excludes 0 (largest: {biggest['mean']:+.4f} in block {biggest['layers']}).")
    c.headline = f"[{c.verdict}] {c.title}: largest shift {_ci(biggest, 4)} (block {biggest['layers']})"
    return c


def _first_prompted(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of the first block with prompts (layer kind not ``none``), else the first block."""
    return next((r for r in rows if str(r.get("layer_kind", "")) not in ("none", "")), rows[0])


def _background_prompts(t: Any, split: str) -> Claim:
    sel = {"statistic": "prompt_background_similarity", "tower": "vision", "split": split, "dataset": "all",
           "variant": "full"}
    key = _one(t, **sel, measure="key_background_minus_foreground", layers="injected")
    value = _one(t, **sel, measure="value_background_minus_foreground", layers="injected")
    key_c = _one(t, **sel, measure="key_background_minus_foreground", layers="carried")
    value_c = _one(t, **sel, measure="value_background_minus_foreground", layers="carried")
    kb, kf = (_one(t, **sel, measure=m, layers="injected") for m in ("key_background", "key_foreground"))
    c = Claim(
        "background_prompts", "Vision prompts resemble background",
        "`prompt_background_similarity`: cosine of the mean prompt key (value) with background patches minus "
        "with foreground patches, at the block inputs, injected layers",
        "holds when the key and value differences are both above 0 (lower end of the interval); partly when "
        "only one is. Keys are compared without b_K, which every key shares and the softmax cancels",
        UNTESTED,
        falsifier="both differences at or below 0 (intervals reaching 0): prompt keys and values no closer to the "
        "background patches than to the object",
    )
    c.numbers = [
        f"keys: background {_ci(kb)} vs foreground {_ci(kf)}; difference {_ci(key)}",
        f"values: difference {_ci(value)}",
        f"carried layers (prompt slots carry earlier outputs): key difference {_ci(key_c)}, value {_ci(value_c)}",
    ]
    per = _per_dataset(t, **{k: v for k, v in sel.items() if k != "dataset"},
                       measure="key_background_minus_foreground", layers="injected")
    if per:
        c.numbers.append(f"per dataset, key difference (injected): {per}")
    if key is None or value is None:
        c.explanation = "No foreground masks in these datasets."
    else:
        ok = [(r["low"] if _has_interval(r) else r["mean"]) > 0 for r in (key, value)]
        c.verdict = HOLDS if all(ok) else (PARTLY if any(ok) else FAILS)
        c.explanation = {HOLDS: "Prompt keys and values are closer to background patches than to the object.",
                         PARTLY: "Only one of keys / values is closer to background than to the object.",
                         FAILS: "Prompt keys and values are not closer to background than to the object."}[c.verdict]
    c.headline = f"[{c.verdict}] {c.title}: key cosine background − foreground {_ci(key)}"
    return c


def _text_reliance(t: Any, split: str) -> Claim:
    sel = {"statistic": "text_reliance", "tower": "text", "split": split, "dataset": "all"}
    # stores with the class-name role separate the class name from the template words
    cue = "classname" if _layer_rows(t, **sel, measure="classname", variant="full - zeroshot") else "word"
    what = "class-name tokens" if cue == "classname" else "word tokens (template and class name)"
    words = _layer_rows(t, **sel, measure=cue, variant="full - zeroshot")
    prompt = _layer_rows(t, **sel, measure="prompt", variant="full")
    versus = _layer_rows(t, **sel, measure=f"prompt_minus_{cue}", variant="full")
    words_inj = _one(t, **sel, measure=cue, variant="full - zeroshot", layers="injected")
    c = Claim(
        "text_reliance", "Text prompts shift reliance to dataset cues",
        f"`text_reliance`: attention of each class prompt's EOT on the {what} with minus without prompts, and, "
        f"with prompts, on the learned prompt tokens (shared by every class of a dataset) minus on the {what}",
        f"holds when, in the last block (where the text feature is read), EOT attends less to the {what} with "
        f"prompts (difference interval below 0) and attends more to the prompt tokens than to the {what} "
        "(interval above 0); partly when only one is. (Attention on the prompts alone is always above 0, being a "
        "softmax weight, so it cannot decide the claim.)",
        UNTESTED,
        falsifier=f"EOT attending as much or more to the {what} with prompts as without (interval reaching 0) and "
        f"no more to the prompt tokens than to the {what}",
    )
    if not words or not prompt or not versus:
        c.explanation = "The text group was not traced."
        c.headline = f"[{c.verdict}] {c.title}: not available"
        return c
    last_w, last_p, last_v = words[-1], prompt[-1], versus[-1]
    c.numbers = [
        f"last block ({last_w['layers']}): attention on {what} with − without prompts {_ci(last_w)}; with prompts, "
        f"attention on prompt tokens {_ci(last_p)}, prompt tokens − {what} {_ci(last_v)}",
        f"injected layers (mean): {cue} attention difference {_ci(words_inj)}",
        f"per block, {cue} difference: " + "; ".join(f"{r['layers']}: {r['mean']:+.3f}" for r in words),
    ]
    per = _per_dataset(t, **{k: v for k, v in sel.items() if k != "dataset"}, measure=cue,
                       variant="full - zeroshot", layers=last_w["layers"])
    if per:
        c.numbers.append(f"per dataset, {cue} difference in the last block: {per}")
    less = (last_w["high"] < 0) if _has_interval(last_w) else last_w["mean"] < 0
    more_on_prompts = (last_v["low"] > 0) if _has_interval(last_v) else last_v["mean"] > 0
    c.verdict = HOLDS if less and more_on_prompts else (PARTLY if more_on_prompts or less else FAILS)
    c.explanation = {
        HOLDS: f"With prompts, EOT moves attention from the {what} to the dataset-level prompt tokens.",
        PARTLY: f"EOT attends more to the prompt tokens than to the {what}, but its attention on the {what} does "
        "not drop measurably." if more_on_prompts else
        f"Attention on the {what} drops, but the prompt tokens do not draw more attention than the {what}.",
        FAILS: f"EOT's attention does not move from the {what} to the prompt tokens.",
    }[c.verdict]
    c.headline = f"[{c.verdict}] {c.title}: {cue} attention change at the readout {_ci(last_w)}"
    return c


def _bias_direction(t: Any, split: str) -> Claim:
    sel = {"statistic": "bias_alignment", "tower": "vision", "split": split, "dataset": "all", "layers": "injected"}
    same = _one(t, **sel, measure="same_dataset")
    other = _one(t, **sel, measure="other_datasets")
    chance = _one(t, **sel, measure="chance")
    text_same = _one(t, **{**sel, "tower": "text"}, measure="same_dataset")
    c = Claim(
        "bias_direction", "Bias tuning learns MaPLe's direction",
        "`bias_alignment`: cosine between MaPLe's dataset-mean β at `[cls]` and bias tuning's learned b, same "
        "dataset, seed and block, injected layers (traced base-class test images)",
        f"holds when the lower end of the cosine's interval exceeds {CHANCE_MULTIPLE:g}/√C (C channels; 1/√C is "
        "the spread of the cosine of two unrelated random directions) and, with several datasets, the cosine "
        "with the same dataset's b is above the cosine with other datasets' b (intervals apart); partly when only "
        "the first part holds",
        UNTESTED,
        falsifier=f"a cosine whose interval reaches down to {CHANCE_MULTIPLE:g}/√C or below (as unrelated or "
        "opposite directions give): the two methods pushing the stream in different directions",
    )
    norms = {m: _one(t, statistic="bias_norm_ratio", tower="vision", method=m, variant="full", split=split,
                     dataset="all", measure="bias_over_original", layers="injected") for m in ("maple", "bias")}
    shares = {m: _one(t, statistic="bias_consistency", tower="vision", method=m, variant="full", split=split,
                      dataset="all", measure="dataset_mean_share", layers="injected") for m in ("maple", "bias")}
    if same is None or chance is None:
        c.explanation = "Bias tuning was not traced in this run (it is, with `--methods maple bias`)."
        c.headline = f"[{c.verdict}] {c.title}: not traced"
        return c
    bound = CHANCE_MULTIPLE * float(chance["mean"])
    c.numbers = [
        f"cosine of MaPLe's mean β with b, same dataset: {_ci(same)}; with other datasets' b: {_ci(other)}; "
        f"chance level 1/√C = {float(chance['mean']):.3f} (bound {bound:.3f})",
        f"text tower (EOT), same dataset: {_ci(text_same)}",
        f"size, ‖bias term‖ / ‖(a)‖ (injected): MaPLe β {_ci(norms['maple'])}, bias tuning b {_ci(norms['bias'])}",
        f"share explained by the dataset mean (1 for a constant): MaPLe β {_ci(shares['maple'])}, bias tuning b "
        f"{_ci(shares['bias'])}",
    ]
    per = _per_dataset(t, **{k: v for k, v in sel.items() if k != "dataset"}, measure="same_dataset")
    if per:
        c.numbers.append(f"per dataset, same-dataset cosine: {per}")
    aligned = (same["low"] if _has_interval(same) else same["mean"]) > bound
    specific = None
    if other is not None:
        specific = same["low"] > other["high"] if _has_interval(same) and _has_interval(other) else \
            same["mean"] > other["mean"]
    if aligned and specific is not False:
        c.verdict = HOLDS
        c.explanation = ("MaPLe's mean β and bias tuning's b point the same way, beyond what unrelated directions "
                         "give" + (", and more so within a dataset than across datasets." if specific else
                                   "; with a single dataset, whether the direction is dataset-specific is not "
                                   "tested."))
    elif aligned:
        c.verdict = PARTLY
        c.explanation = ("The directions agree beyond chance, but no more with the same dataset's b than with other "
                         "datasets': a direction shared by the datasets.")
    else:
        c.verdict = FAILS
        c.explanation = ("The cosine's interval reaches down to 3/√C: the two methods' bias directions are not "
                         "shown to be more alike than unrelated directions can be by chance.")
    c.headline = f"[{c.verdict}] {c.title}: cosine (vision, injected) {_ci(same)}"
    return c


def sanity_checks(table: Any, *, split: str = "base") -> list[Check]:
    """Identities of the decomposition and of the methods, reported as checks of the pipeline (never evidence)."""
    t = table
    checks = []
    diff = _layer_rows(t, statistic="foreground_attention", tower="vision", split=split, dataset="all",
                       measure="share", variant="full - zeroshot")
    why = ("within a block prompts cannot change â ([math.md](math.md) consequence 1), and the first prompted "
           "block sees the same input with and without prompts")
    if diff:
        first = _first_prompted(diff)
        worst = max(abs(float(first[k])) for k in ("mean", "low", "high") if not _nan(first[k]))
        checks.append(Check(f"No foreground shift in block {first['layers']}, the first prompted block", why,
                            f"shift {_ci(first, 6)}", "passed" if worst < IDENTITY_TOLERANCE else "FAILED"))
    else:
        checks.append(Check("No foreground shift in the first prompted block", why, "no masks", "not available"))
    share = _one(t, statistic="bias_consistency", tower="vision", method="bias", variant="full", split=split,
                 dataset="all", measure="dataset_mean_share", layers="injected")
    why = "bias tuning's b is one learned vector per block, the same for every image"
    if share is None:
        checks.append(Check("Bias tuning's b is constant (dataset-mean share 1)", why, "not traced", "not available"))
    else:
        ok = abs(float(share["mean"]) - 1) < IDENTITY_TOLERANCE
        checks.append(Check("Bias tuning's b is constant (dataset-mean share 1)", why, _ci(share, 6),
                            "passed" if ok else "FAILED"))
    return checks


def evaluate_claims(table: Any, accuracy: Any, context: dict[str, Any], *, split: str = "base") -> list[Claim]:
    """Check each claim of the study against the statistics table (``statistics.csv``) and the evaluation.

    Verdicts follow fixed, stated rules (each :class:`Claim` has its ``rule``); the numbers come
    with 95% intervals (docs/statistics.md, "Intervals"). Claims are decided on the base classes (where the prompts were
    trained); novel-class numbers are listed alongside.
    """
    other = "novel" if split == "base" else "base"
    table = _normalised(table)
    return [
        _dataset_bias(table, split),
        _bias_route(table, split, other),
        _bias_tuning(table, accuracy, context),
        _bias_direction(table, split),
        _foreground_shift(table, split),
        _background_prompts(table, split),
        _text_reliance(table, split),
    ]


def _normalised(table: Any) -> Any:
    """A copy with ``layers`` as strings and a ``method`` column (tables written before it: all MaPLe)."""
    table = table.copy()
    table["layers"] = table["layers"].fillna("").astype(str)
    table["method"] = table["method"].fillna("maple").astype(str) if "method" in table else "maple"
    return table


def _descriptive(table: Any, split: str) -> list[str]:
    lines = []
    names = {"maple": "MaPLe (β)", "bias": "bias tuning (b)"}
    for method, name in names.items():
        for tower in ("vision", "text"):
            for kind in ("injected", "carried"):
                sel = {"tower": tower, "method": method, "split": split, "dataset": "all", "variant": "full",
                       "layers": kind}
                a = _one(table, statistic="prompt_mass", measure="readout", **sel)
                r = _one(table, statistic="bias_norm_ratio", measure="bias_over_original", **sel)
                share = _one(table, statistic="bias_consistency", measure="dataset_mean_share", **sel)
                if a is None and r is None:
                    continue
                alpha = _ci(a) if method == "maple" else "– (no prompts)"
                lines.append(f"| {name} | {tower} | {kind} | {alpha} | {_ci(r)} | {_ci(share)} |")
    if not lines:
        return []
    return ["| method | tower | layers | prompt mass α at the readout | ‖bias term‖ / ‖(a)‖ | "
            "share explained by the dataset mean |", "|---|---|---|---|---|---|", *lines]


def lens_section(lenses: dict[str, Any]) -> list[str]:
    """Markdown lines of "What the prompts learn": the text lens of each dataset (docs/lens.md), or none."""
    from mmlens.stats.lens import lens_markdown

    if not lenses:
        return []
    first = next(iter(lenses.values()))
    lines = ["## What the prompts learn", "",
             "The text lens ([lens.md](lens.md)): the dataset-mean prompt bias β of each prompted layer (summed over "
             "heads) and each injected prompt token's value, mapped into the joint space through the linearised "
             "readout and ranked against zero-shot text embeddings of the dataset's class names (*italics*), "
             "descriptive phrases and other datasets' class names (†); base classes' test images, the first seed "
             f"({first.attrs.get('seed', '?')}). `control (95%)`: the best cosine reached by directions with "
             "shuffled coordinates / by random residual-stream vectors through the same readout; `p`: the share of "
             "them reaching the observed top-1. A direction is not an effect (what β does through later blocks is "
             "not in it), and both controls are lenient: prompts at their initialisation pass them too "
             "([results/toyworld_prompt_lens.md](results/toyworld_prompt_lens.md) compares them).", ""]
    for dataset, ds in lenses.items():
        lines += [f"### {dataset}", "", lens_markdown(ds, heading=None, level=3)]
    return lines


def findings_markdown(claims: list[Claim], context: dict[str, Any], table: Any = None,
                      checks: list[Check] | None = None, lenses: dict[str, Any] | None = None) -> str:
    """The findings page: setting, one section per claim (statistic, rule, numbers, verdict), how to rerun.

    ``lenses`` (dataset -> lens Dataset of :func:`mmlens.lens`) adds the section "What the prompts learn".
    """
    ctx = context
    data = ctx["data"]
    recipe = ("imported published MaPLe checkpoints" if ctx.get("imported") else
              f"MaPLe prompts learned on the base classes: {ctx['shots']} shots, {ctx['epochs']} epochs, batch "
              f"{ctx['batch_size']}, lr {ctx['lr']:g}, depth {ctx['depth']}"
              + (", random crops of {:g}-{:g} of the image area".format(*ctx["crop_scale"])
                 if ctx.get("crop_scale") else ""))
    limit = f" (at most {ctx['max_images']} per split and dataset)" if ctx.get("max_images") else ""
    lines = [
        "# Findings",
        "",
        "<!-- Generated by `mmlens reproduce`; do not edit by hand. -->",
        "",
        f"What the study's claims look like when measured on **{', '.join(ctx['datasets'])}** with "
        f"**{ctx['model']}** ({ctx['pretrained']}), seeds {', '.join(map(str, ctx['seeds']))}. Data: {data}. "
        f"Prompts: {recipe}. Test images of the base and novel classes were traced with and without prompts "
        f"and under each route ablation{limit}.",
        "",
        "Numbers are means with 95% intervals over datasets, seeds and images (class prompts for the text "
        "tower) that follow the study's design — seeds crossed with images, images nested in datasets; a "
        "variance-components t interval when a factor has few levels, else a percentile bootstrap "
        f"({ctx['n_boot']} replicates; [statistics.md](statistics.md), \"Intervals\") — so they describe this toy "
        "setting, not ViT-B/16 on the eleven datasets. Claims are decided on the **base** classes by the rule stated "
        "under each; a claim that does not hold here is reported as such. Injected layers receive fresh learned "
        "prompts, carried layers carry earlier outputs in the prompt slots ([math.md](math.md), consequence 2).",
        "",
    ]
    if ctx.get("quick"):
        lines += ["> **Quick run** (1 dataset, 1 seed, few images and epochs): a smoke test of the pipeline; the "
                  "verdicts below are not evidence either way.", ""]
    lines += ["## Summary", "", "| claim | verdict | headline number |", "|---|---|---|"]
    for c in claims:
        number = c.headline.split(": ", 1)[1] if ": " in c.headline else ""
        lines.append(f"| {c.title} | **{c.verdict}** | {number} |")
    lines.append("")
    if checks:
        lines += ["## Sanity checks", "",
                  "Identities of the decomposition and of the methods: they hold whatever the prompts learned, so "
                  "they check the pipeline and are evidence for no claim. A failed check means a bug in the trace.",
                  "", "| check | why it must hold | measured | status |", "|---|---|---|---|"]
        lines += [f"| {k.title} | {k.why} | {k.measured} | **{k.status}** |" for k in checks]
        lines.append("")
    if table is not None:
        desc = _descriptive(_normalised(table), "base")
        if desc:
            lines += ["## How much the bias term is used (base classes, full model)", "",
                      "MaPLe's bias term is the prompt bias β, bias tuning's the learned b ([math.md](math.md), "
                      "\"Bias tuning\"), side by side.", "", *desc, ""]
    for i, c in enumerate(claims, 1):
        lines += [f"## {i}. {c.title} — {c.verdict}", "", f"- **Statistic**: {c.statistic}.",
                  f"- **Rule**: {c.rule}.", f"- **Would have failed if**: {c.falsifier}.",
                  "- **Measured**:" + ("" if c.numbers else " –")]
        lines += [f"  - {n}" for n in c.numbers]
        lines += [f"- **Verdict**: {c.verdict}. {c.explanation}", ""]
    lines += lens_section(lenses or {})
    minutes = ctx.get("compute_seconds", 0) / 60
    cpu = ctx.get("cpu_seconds")
    where = f"{ctx['device']}"
    if ctx.get("cores"):
        threads = int(ctx.get("threads") or 1)
        where += f", {threads} torch thread{'s' if threads > 1 else ''} on a {ctx['cores']}-core machine"
    load = f", load average {ctx['load_average']} at the end" if ctx.get("load_average") is not None else ""
    cpu_text = f", {cpu / 60:.1f} min of CPU time" if cpu else ""
    lines += [
        "## How this page was made",
        "",
        "```",
        ctx.get("command", "mmlens reproduce"),
        "```",
        "",
        f"Time of all steps: {minutes:.1f} min wall{cpu_text} ({where}{load}; mmlens {ctx['mmlens_version']}, "
        f"{ctx['date']}). In the output folder: tables `results/accuracy.md`, `results/statistics.md` (+ CSV), "
        "figures in `figures/`, the standalone report `report.html`, the stores under `stores/`. Definitions "
        "of the statistics: docs/statistics.md; the pipeline: docs/reproduce.md.",
        "",
    ]
    return "\n".join(lines)


def find_results_table(repo_root: str | Path, row: str = "bias") -> str | None:
    """A results table in ``docs/results/`` with a row for method ``row`` (the training colleague's), or None."""
    import re

    d = Path(repo_root) / "docs" / "results"
    if not d.is_dir():
        return None
    pattern = re.compile(rf"^\|\s*{re.escape(row)}\b[^_]", re.MULTILINE)
    for p in sorted(d.glob("*.md")):
        if pattern.search(p.read_text(errors="replace")):
            return str(p.relative_to(repo_root))
    return None
