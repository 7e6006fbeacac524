"""Every statistic of the study, summarised with 95 % intervals into one tidy table (``statistics.csv``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import xarray as xr

from mmlens.stats.accuracy import image_accuracy
from mmlens.store import schema

__all__ = ["COLUMNS", "study_statistics", "bias_comparison", "image_accuracy", "method_comparison"]

#: Columns of the statistics table. ``method`` is the traced method (``maple``, ``bias``; ``maple, bias``
#: for statistics of both, ``bias - maple`` for paired differences); ``layers`` is a layer kind
#: (``injected``/``carried``/``none``, the mean over the layers of that kind) or one layer index;
#: ``dataset`` is a dataset name or ``all`` (pooled: datasets, seeds and images resampled together);
#: ``interval`` the method of the interval (``variance_components`` or ``percentile_bootstrap``,
#: docs/statistics.md "Intervals").
COLUMNS = ["statistic", "tower", "method", "measure", "variant", "split", "dataset", "layers", "layer_kind", "mean",
           "low", "high", "n_datasets", "n_seeds", "n_items", "interval"]

#: The design of a study (:func:`mmlens.store.study.combine_runs`): every seed of a dataset traces the same images and
#: class prompts (seeds cross items), each dataset has its own (items nest in datasets), and seeds
#: are crossed with datasets (one seed number may share e.g. the prompt initialisation).
STUDY_NESTING = {"image": ("dataset",), "class": ("dataset",)}

_MID = "midpoint"  # (full + zeroshot) / 2: a route keeping more than half of the gain lies above it


def _variants_with_diffs(da: xr.DataArray, diffs: Sequence[tuple[str, str]]) -> xr.DataArray:
    """``da`` over its variants plus paired differences ``a - b`` as extra variants (``"a - b"``)."""
    have = [str(v) for v in da["variant"].values]
    parts = [da]
    for a, b in diffs:
        if a in have and b in have:
            parts.append((da.sel(variant=a) - da.sel(variant=b)).expand_dims(variant=[f"{a} - {b}"]))
    return xr.concat(parts, dim="variant", coords="minimal", compat="override", join="outer")


def _records(summary: xr.DataArray, base: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the table from a summary with dims among (dataset, variant, measure, layer/layer_kind, estimate)."""
    s = summary.reset_coords(drop=True)
    extra = [d for d in s.dims if d not in ("dataset", "variant", "measure", "layer", "layer_kind", "estimate")]
    if extra:
        raise ValueError(f"unexpected dims {extra} in a statistic summary")
    frame = s.to_series().unstack("estimate").reset_index()
    rows = []
    for rec in frame.to_dict("records"):
        row = dict(base)
        row["variant"] = str(rec.get("variant", base.get("variant", "")))
        row["measure"] = str(rec.get("measure", base.get("measure", "")))
        row["dataset"] = str(rec.get("dataset", base.get("dataset", "all")))
        if "layer_kind" in rec:
            row["layers"] = str(rec["layer_kind"])
            row["layer_kind"] = str(rec["layer_kind"])
        elif "layer" in rec:
            row["layers"] = str(int(rec["layer"]))
            row["layer_kind"] = base["_kinds"].get(int(rec["layer"]), "")
        else:
            row["layers"] = ""
            row["layer_kind"] = ""
        row.update(mean=float(rec["mean"]), low=float(rec["low"]), high=float(rec["high"]),
                   interval=str(summary.attrs.get("interval_method", "")))
        row.pop("_kinds", None)
        rows.append(row)
    return rows


def _summaries(da: xr.DataArray, over: Sequence[str], n_boot: int, base: dict[str, Any],
               per_layer: bool = True) -> list[dict[str, Any]]:
    """Pooled and per-dataset summaries, by layer kind and (optionally) per layer."""
    from mmlens.stats import summarize

    da = da.compute()
    kinds = {}
    if "layer" in da.dims:
        kinds = {int(v): str(k) for v, k in zip(da["layer"].values, da["layer_kind"].values)}
    base = {**base, "_kinds": kinds}
    n_datasets = int(da.sizes.get("dataset", 1))
    n_seeds = int(da.sizes.get("seed", 1))
    item = next((d for d in ("image", "class") if d in da.dims), None)
    n_items = int(da.sizes[item]) if item else 0
    base.update(n_datasets=n_datasets, n_seeds=n_seeds, n_items=n_items)
    rows = []
    pooled_over = [*over, "dataset"]
    layer_modes = [True, False] if (per_layer and "layer" in da.dims) else [True]
    with warnings.catch_warnings():
        # cells with nothing to average (e.g. across-dataset cosines of a single dataset) are NaN by design
        warnings.filterwarnings("ignore", message="All-NaN slice", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message="Mean of empty slice", category=RuntimeWarning)
        for by_kind in layer_modes:
            pooled = summarize(da, over=pooled_over, by_layer_kind=by_kind, n_boot=n_boot, nested=STUDY_NESTING)
            rows += _records(pooled, {**base, "dataset": "all"})
            if n_datasets > 1:
                per = summarize(da, over=list(over), by_layer_kind=by_kind, n_boot=n_boot, nested=STUDY_NESTING)
                rows += _records(per, {**base, "n_datasets": 1})
    return rows


def study_statistics(study: xr.DataTree, split: str, *, n_boot: int = 1000) -> tuple[list[dict[str, Any]], list[str]]:
    """Every statistic of the study on one split's study tree, summarised with 95 % intervals.

    Intervals follow the study's design (:data:`STUDY_NESTING`; :func:`mmlens.stats.bootstrap_ci`).
    Vision statistics resample images and seeds (and datasets for the pooled rows); text ones
    resample class prompts and seeds; ``bias_consistency`` (one value per dataset and seed)
    resamples seeds (and datasets). Injected and carried layers are separate rows.

    Returns
    -------
    (rows, notes)
        Table rows (:data:`COLUMNS`) and notes on statistics that could not be computed.
    """
    from mmlens.stats import (
        bias_consistency,
        bias_norm_ratio,
        foreground_attention,
        prompt_background_similarity,
        prompt_mass,
        text_reliance,
    )

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    vision_over, text_over = ("image", "seed"), ("class", "seed")

    def base(statistic: str, tower: str) -> dict[str, Any]:
        return {"statistic": statistic, "tower": tower, "split": split, "method": "maple"}

    for tower, over in (("vision", vision_over), ("text", text_over)):
        alpha = prompt_mass(study, tower=tower).sel(variant=["full"]).mean("head")
        rows += _summaries(alpha, over, n_boot, base("prompt_mass", tower))
        ratio = bias_norm_ratio(study, tower=tower).sel(variant=["full"])
        rows += _summaries(ratio, over, n_boot, base("bias_norm_ratio", tower))
        try:
            cons = bias_consistency(study, tower=tower).sel(variant=["full"])
            rows += _summaries(cons, ("seed",), n_boot, base("bias_consistency", tower))
        except ValueError as err:
            notes.append(f"bias_consistency ({tower}): {err}")

    vision = study["vision"].to_dataset()
    has_fg = "foreground" in vision and bool(vision["foreground"].notnull().any())
    if has_fg:
        fg = foreground_attention(study).sel(variant=["full", "zeroshot"]).mean("head")
        fg = _variants_with_diffs(fg, [("full", "zeroshot")])
        rows += _summaries(fg, vision_over, n_boot, base("foreground_attention", "vision"))
        sim = prompt_background_similarity(study).sel(variant=["full"]).mean("head", skipna=True)
        diffs = [
            (sim.sel(measure=f"{k}_background") - sim.sel(measure=f"{k}_foreground")).expand_dims(
                measure=[f"{k}_background_minus_foreground"])
            for k in ("key", "value")
        ]
        sim = xr.concat([sim, *diffs], dim="measure", coords="minimal", compat="override", join="outer")
        rows += _summaries(sim, vision_over, n_boot, base("prompt_background_similarity", "vision"))
    else:
        notes.append("foreground_attention, prompt_background_similarity: no foreground masks in these datasets")

    reliance = text_reliance(study).sel(variant=["full", "zeroshot"]).mean("head")
    # EOT's attention on the prompts against its attention on the class name (or, in stores without the
    # class-name role, on all words): positive when the prompts draw more of it. Attention on the prompts
    # alone is positive whatever they learned (a softmax weight), so it cannot decide a claim by itself.
    reliance = xr.concat(
        [reliance, *[(reliance.sel(measure="prompt") - reliance.sel(measure=cue)).expand_dims(
            measure=[f"prompt_minus_{cue}"]) for cue in ("classname", "word")]],
        dim="measure", coords="minimal", compat="override", join="outer")
    reliance = _variants_with_diffs(reliance, [("full", "zeroshot")])
    rows += _summaries(reliance, text_over, n_boot, base("text_reliance", "text"))

    acc = image_accuracy(study)
    have = [str(v) for v in acc["variant"].values]
    parts = [acc]
    if "full" in have and "zeroshot" in have:
        mid = (acc.sel(variant="full") + acc.sel(variant="zeroshot")) / 2
        parts.append((acc.sel(variant="full") - acc.sel(variant="zeroshot")).expand_dims(variant=["full - zeroshot"]))
        for route in schema.ABLATION_ROUTES:
            if route in have:
                parts.append((acc.sel(variant=route) - mid).expand_dims(variant=[f"{route} - {_MID}"]))
    acc = xr.concat(parts, dim="variant", coords="minimal", compat="override", join="outer")
    rows += _summaries(acc, vision_over, n_boot, {**base("accuracy", "logits"), "measure": "top1"})
    return rows, notes


def bias_comparison(prompted: xr.DataTree, learned: xr.DataTree, split: str, *,
                    n_boot: int = 1000) -> tuple[list[dict[str, Any]], list[str]]:
    """Bias tuning's b next to MaPLe's β: its norm ratio and consistency, and the cosine of the two.

    ``prompted`` and ``learned`` are the study trees of MaPLe and of bias tuning on the same images
    (``learned`` traced with variant ``full`` only). Rows: ``bias_norm_ratio`` and
    ``bias_consistency`` with ``method="bias"`` (MaPLe's own rows come from :func:`study_statistics`),
    and ``bias_alignment`` (``method="maple, bias"``) per layer kind, resampling seeds (and datasets).
    """
    from mmlens.stats import bias_alignment, bias_consistency, bias_norm_ratio

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for tower, over in (("vision", ("image", "seed")), ("text", ("class", "seed"))):
        base = {"tower": tower, "split": split, "method": "bias"}
        ratio = bias_norm_ratio(learned, tower=tower).sel(variant=["full"])
        rows += _summaries(ratio, over, n_boot, {**base, "statistic": "bias_norm_ratio"})
        try:
            cons = bias_consistency(learned, tower=tower).sel(variant=["full"])
            rows += _summaries(cons, ("seed",), n_boot, {**base, "statistic": "bias_consistency"})
            cos = bias_alignment(prompted, learned, tower=tower)
            rows += _summaries(cos, ("seed",), n_boot, {**base, "statistic": "bias_alignment", "variant": "full",
                                                         "method": "maple, bias"})
        except ValueError as err:
            notes.append(f"bias tuning vs MaPLe ({tower}): {err}")
    return rows, notes


def method_comparison(evaluation: xr.Dataset, method: str, reference: str = "maple", *,
                      n_boot: int = 1000) -> list[dict[str, Any]]:
    """Accuracy of ``method`` minus ``reference`` (variant ``full``) per split; interval over seeds and datasets.

    The unit is one (dataset, seed) evaluation; the difference is paired (same dataset and seed);
    seeds and datasets are crossed (:data:`STUDY_NESTING`).
    """
    from mmlens.stats import bootstrap_ci

    acc = evaluation["accuracy"].sel(variant="full")
    rows = []
    for split in [str(s) for s in evaluation["split"].values]:
        a = acc.sel({"method": method, "split": split}, drop=True)
        b = acc.sel({"method": reference, "split": split}, drop=True)
        for label, da in ((method, a), (reference, b), (f"{method} - {reference}", a - b)):
            ci = bootstrap_ci(da.reset_coords(drop=True), dims=("seed", "dataset"), n_boot=n_boot,
                              nested=STUDY_NESTING)
            rows.append({"statistic": "accuracy", "tower": "evaluate", "method": label, "measure": "top1",
                         "variant": label,
                         "split": split, "dataset": "all", "layers": "", "layer_kind": "",
                         "mean": float(ci.sel(estimate="mean")), "low": float(ci.sel(estimate="low")),
                         "high": float(ci.sel(estimate="high")), "n_datasets": int(acc.sizes["dataset"]),
                         "n_seeds": int(acc.sizes["seed"]), "n_items": 0, "interval": ci.attrs["interval_method"]})
    return rows
