"""The text lens on MaPLe's prompt bias (and bias tuning's learned b) on every toyworld dataset.

Writes ``docs/results/toyworld_prompt_lens.md``: trains MaPLe (and bias tuning) 16-shot on the base classes of
each toyworld dataset with the toyworld recipe (``scripts/toyworld_base_to_novel.py``'s training job, resumable
under ``--runs``), then runs :func:`mmlens.lens` on the dataset's test images with the trained prompts and, as
the reference, with the same prompts at their initialisation (before training). Each run's lens is saved as
``lens.nc`` under ``--runs``.

    python scripts/toyworld_prompt_lens.py --out docs/results/toyworld_prompt_lens.md
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from toyworld_base_to_novel import (  # noqa: E402  (a sibling script: one training job, one data check)
    DATASETS,
    _architecture,
    _clip,
    _hhmmss,
    ensure_data,
    run_job,
)

METHOD_LABEL = {"maple": "MaPLe", "bias": "bias tuning"}


def _test_loader(model, dataset: str, root: Path) -> object:
    """The dataset's test images (base and novel classes) in the model's preprocessing, batches of 64."""
    import torch

    from mmlens.data import build, collate, get_manifest

    data = build(get_manifest(dataset), root, "test", transform=model.preprocess)
    return torch.utils.data.DataLoader(data, batch_size=64, collate_fn=collate)


def _lens_run(model, dataset: str, loader, args) -> object:
    import mmlens
    from mmlens.data import get_manifest
    from mmlens.tracing.lens import other_classnames

    manifest = get_manifest(dataset)
    return mmlens.lens(model, loader, other_classnames=other_classnames(dataset), top=args.top,
                       n_shuffles=args.shuffles, seed=0, progress=False,
                       provenance={"dataset": manifest.name, "manifest_version": str(manifest.manifest_version),
                                   "seed": args.seed, "split": "test", "subset": "all"})


#: (tower, layer group) pairs of the direct-effects table; bias tuning has no carried layer.
DIRECT_COLUMNS = (("vision", "all"), ("vision", "injected"), ("vision", "carried"), ("text", "all"))


def _direct_shares(model, loader) -> dict:
    """How much of the margin gain over zero-shot the trained run's β (bias tuning: b) carries directly.

    The test images are traced with and without prompts and with direct effects (docs/math.md, "Direct logit
    effects"); :func:`mmlens.stats.bias_gain_share` gives the share with its interval over images.
    """
    import mmlens
    from mmlens.stats import bias_gain_share

    tree = mmlens.trace(model, loader, with_reference=True, direct_effects=True, progress=False)
    out: dict = {}
    for tower, group in DIRECT_COLUMNS:
        share = bias_gain_share(tree, tower=tower, layer_group=group, seed=0)
        out[(tower, group)] = {m: [float(share.sel(measure=m, estimate=e)) for e in ("mean", "low", "high")]
                               for m in ("share", "bias_direct", "gain")}
    return out


def lens_job(job: dict, args) -> dict:
    """The lens of a trained run (its prompts file) and of the same model at its initialisation, and the share
    of the margin gain that the trained run's bias writes directly (one CLIP, one test set for all three)."""
    from mmlens import PromptedCLIP, load_prompts
    from mmlens.data import get_manifest

    clip = _clip(job["pretrained"])
    classnames = list(get_manifest(job["dataset"]).classnames)
    started = time.perf_counter()
    trained = load_prompts(Path(job["run_dir"]) / "prompts.safetensors", clip, classnames=classnames)
    loader = _test_loader(trained, job["dataset"], Path(job["data_root"]))  # the same CLIP: one preprocessing
    ds = _lens_run(trained, job["dataset"], loader, args)
    ds.to_netcdf(Path(job["run_dir"]) / "lens.nc", engine="h5netcdf")
    ds_init = None
    if job["method"] != "bias":  # bias tuning starts at b = 0: no direction to look at before training
        init = PromptedCLIP(clip, classnames, job["method"], n_ctx=job["n_ctx"], depth=job["depth"],
                            init_seed=job["seed"])
        ds_init = _lens_run(init, job["dataset"], loader, args)
    lens_seconds = time.perf_counter() - started
    direct = _direct_shares(trained, loader)
    return {"lens": ds, "init": ds_init, "seconds": lens_seconds, "direct": direct,
            "direct_seconds": time.perf_counter() - started - lens_seconds}


def _interval(values: list[float], digits: int = 2) -> str:
    mean, low, high = values
    if mean != mean:  # NaN: no layer of that group, or no gain to share
        return "–"
    def bound(v: float) -> str:
        return "∞" if v == float("inf") else "-∞" if v == float("-inf") else f"{v:.{digits}f}"

    return f"{mean:.{digits}f} [{bound(low)}, {bound(high)}]"


def _direct_rows(results: dict, datasets: list[str], methods: list[str]) -> list[str]:
    rows = []
    for d in datasets:
        for m in methods:
            r = results.get((d, m), {}).get("direct")
            if r is None:
                continue
            gain = r[("vision", "all")]["gain"]
            rows.append(f"| {d} | {METHOD_LABEL[m]} | {_interval(gain)} | "
                        + " | ".join(_interval(r[c]["share"]) for c in DIRECT_COLUMNS) + " |")
    return rows


def _passing(ds, kinds=("layer_bias", "prompt_value"), alpha: float = 0.05,
             control: str = "control_p") -> tuple[int, int]:
    """Directions of ``kinds`` whose ``control`` p-value is below ``alpha``, and how many there are."""
    import numpy as np

    keep = np.isin(ds["kind"].values.astype(str), kinds)
    p = ds[control].values[keep]
    return int((p < alpha).sum()), int(keep.sum())


def _moved(trained, init) -> str:
    """Cosine of each layer's mapped β after training with the same β at initialisation, per tower."""
    import numpy as np

    out = []
    for tower in ("vision", "text"):
        cells = []
        for i in range(trained.sizes["direction"]):
            if str(trained["tower"].values[i]) != tower or str(trained["kind"].values[i]) != "layer_bias":
                continue
            layer = int(trained["layer"].values[i])
            match = [j for j in range(init.sizes["direction"]) if str(init["tower"].values[j]) == tower
                     and str(init["kind"].values[j]) == "layer_bias" and int(init["layer"].values[j]) == layer]
            if not match:
                continue
            a, b = trained["joint_direction"].values[i], init["joint_direction"].values[match[0]]
            cells.append(f"{layer}: {float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))):.2f}")
        if cells:
            out.append(f"{tower} " + ", ".join(cells))
    return "; ".join(out)


def caption_words(n: int = 20000) -> set[str]:
    """Words of the toy CLIP's pre-training captions (a sample of ``n``): the words its text tower was trained on."""
    from mmlens.data.toyworld import caption_batch
    from mmlens.models.toy import get_tokenizer

    tok = get_tokenizer()
    captions, _ = caption_batch(n, seed=0, step=0)
    return {w for c in captions for w in tok.split(c)}


def _observations(results: dict, datasets: list[str], methods: list[str], known: set[str],
                  counts: dict | None = None) -> list[str]:
    """Rows: per dataset and method, the layers whose β (b) passes the readout control, with its top-1 entry.

    ``counts`` (when given) is filled with how many such top-1 entries are of each kind, per method.
    """
    from mmlens.models.toy import get_tokenizer

    tok = get_tokenizer()
    rows = []
    counts = {} if counts is None else counts
    for d in datasets:
        for m in methods:
            r = results.get((d, m))
            if r is None:
                continue
            ds, init = r["lens"]["lens"], r["lens"]["init"]
            cells = []
            for i in range(ds.sizes["direction"]):
                if str(ds["kind"].values[i]) != "layer_bias" or not float(ds["readout_control_p"].values[i]) < 0.05:
                    continue
                tower, layer = str(ds["tower"].values[i]), int(ds["layer"].values[i])
                phrase, cos = str(ds["phrase"].values[i, 0]), float(ds["cosine"].values[i, 0])
                source = str(ds["source"].values[i, 0])
                shown = f"*{phrase}*" if source == "classname" else (f"{phrase}†" if source == "other_classname"
                                                                      else phrase)
                untrained = any(w not in known for w in tok.split(phrase))
                if untrained:
                    shown += "°"
                tally = counts.setdefault(m, {"class": 0, "phrase": 0, "untrained": 0, "at_init": 0, "all": 0})
                tally["all"] += 1
                tally["class" if source != "phrase" else "phrase"] += 1
                tally["untrained"] += untrained
                same = ""
                if init is not None:
                    j = [k for k in range(init.sizes["direction"]) if str(init["tower"].values[k]) == tower
                         and str(init["kind"].values[k]) == "layer_bias" and int(init["layer"].values[k]) == layer]
                    if j and str(init["phrase"].values[j[0], 0]) == phrase:
                        same = ", also at init"
                        tally["at_init"] += 1
                cells.append(f"{tower} {layer}: {shown} ({cos:.2f}{same})")
            rows.append(f"| {d} | {METHOD_LABEL[m]} | {'; '.join(cells) or '–'} |")
    return rows


def _summary_rows(results: dict, datasets: list[str], method: str) -> list[str]:
    lines = []
    for d in datasets:
        r = results.get((d, method))
        if r is None:
            continue
        ds, init = r["lens"]["lens"], r["lens"]["init"]
        cells = []
        for tower in ("vision", "text"):
            for which in (ds, init):
                if which is None:
                    cells.append("–")
                    continue
                sub = which.where(which["tower"] == tower, drop=True)
                if sub.sizes.get("direction", 0) == 0:
                    cells.append("–")
                    continue
                n_pass, n = _passing(sub)
                n_readout, _ = _passing(sub, control="readout_control_p")
                top1 = sub["cosine"].sel(rank=1)
                cells.append(f"{n_pass} / {n_readout} of {n} (median top-1 {float(top1.median()):.2f})")
        acc = r["train"]["result"]["accuracy"].sel(variant="full").squeeze()
        lines.append(f"| {d} | {float(acc.sel(split='base')):.1f} / {float(acc.sel(split='novel')):.1f} | "
                     + " | ".join(cells) + " |")
    return lines


def write_page(path: Path, args, command: str, results: dict, timings: dict, zeroshot: dict) -> None:
    import open_clip
    import torch

    from mmlens._version import __version__
    from mmlens.stats.lens import lens_markdown

    clip = _clip(args.pretrained_arg)
    sha = clip.pretrained.get("sha256")
    any_lens = next(iter(results.values()))["lens"]["lens"]
    n_voc = int(any_lens.attrs["n_vocabulary"])
    fresh = sum(1 for r in results.values() if r["train"]["resumed_from_epoch"] == 0)
    maple = [r["lens"] for (_d, m), r in results.items() if m == "maple"]
    trained_pass, trained_n = (sum(x) for x in zip(*[_passing(r["lens"]) for r in maple], strict=True)) \
        if maple else (0, 0)
    init_pass, init_n = (sum(x) for x in zip(*[_passing(r["init"]) for r in maple], strict=True)) \
        if maple else (0, 0)
    import numpy as np

    readout = "readout_control_p"
    trained_strict = sum(_passing(r["lens"], control=readout)[0] for r in maple)
    init_strict = sum(_passing(r["init"], control=readout)[0] for r in maple)
    readout_median = float(np.median(np.concatenate(
        [r["lens"]["lens"]["readout_control_cosine"].values for r in results.values()])))
    control_median = float(np.median(np.concatenate(
        [r["lens"]["lens"]["control_cosine"].values for r in results.values()])))
    lines = [
        "# toyworld: what the prompts learn, through the text lens",
        "",
        "Produced by one command (from the repository root):",
        "",
        "```",
        command,
        "```",
        "",
        f"- Model: `mmlens-toy` ({_architecture()}), weights `{args.pretrained}` (sha256 `{str(sha)[:16]}…`).",
        f"- Data: toyworld, size `{args.size}` (data seed {args.data_seed}): prompts trained on the base classes' "
        f"`train` split; the lens measured on all `test` images of the dataset (base and novel classes), the "
        "text tower over all the dataset's class prompts.",
        f"- Protocol: {', '.join(METHOD_LABEL[m] for m in args.methods)}, {args.shots} shots per base class, "
        f"**one seed ({args.seed})** (time: the lens of one run is what this page reads; seeds are not "
        "compared here), the toyworld recipe (SGD lr 0.0035, batch 4, "
        f"{args.epochs} epochs, crops {args.crop_scale[0]:g}-{args.crop_scale[1]:g}), n_ctx {args.n_ctx}, "
        f"depth {args.depth} of 6 blocks (blocks 0..{args.depth - 1} injected, block 5 carried).",
        f"- Lens ([docs/lens.md](../lens.md)): vocabulary of {n_voc} entries (the dataset's class names, "
        "the phrases of `mmlens/assets/lens_vocabulary.txt`, the other toyworld datasets' class names), "
        f"template `{any_lens.attrs['template']}`, embedded by the frozen text encoder without prompts; "
        "cosines against the vocabulary centred on its mean; controls: "
        f"{args.shuffles} shuffles of each direction's coordinates, and {args.shuffles} random residual-stream "
        "vectors per tower through the same readout.",
        f"- Time: {_hhmmss(timings['total'])} wall on {args.jobs} worker process(es) x 1 torch thread "
        f"({os.cpu_count()} CPUs visible, shared with other work; load average {timings['load'][0]:.1f} at the "
        f"start, {timings['load'][1]:.1f} at the end): data {_hhmmss(timings['data'])}, training and "
        f"evaluation {_hhmmss(timings['train'])} wall, the lenses {_hhmmss(timings['lens'])} wall "
        f"({_hhmmss(sum(r['lens']['seconds'] for r in results.values()))} summed, two lenses per run), the "
        f"direct effects {_hhmmss(timings['direct'])} wall. "
        f"{fresh} of {len(results)} runs trained in this invocation"
        + ("." if fresh == len(results) else " (the others were finished runs found under --runs)."),
        f"- Software: mmlens {__version__}, torch {torch.__version__}, open_clip {open_clip.__version__}, "
        f"Python {platform.python_version()}; {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        "## How to read this page, and what it does not show",
        "",
        "For each prompted block the lens takes a direction in the residual stream — the dataset-mean prompt "
        "bias β at the readout token summed over heads (`β`), or an injected prompt token's value through W_O "
        "(`prompt token m value`; in an injected block β is a mixture of these, weighted by attention) — maps it "
        "into the joint image-text space through the linearised readout (final LayerNorm's γ and centering, then "
        "the projection), and ranks the vocabulary's text embeddings by cosine with it. *Italics*: the dataset's "
        "own class names; † another toyworld dataset's class name; plain: a descriptive phrase.",
        "",
        "- **A direction is not an effect.** The lens reads where β points *directly* at the output. β also "
        "changes every later block's input; what it does there is not in this direction. A phrase at the top "
        "says the vector is aligned with that phrase's text embedding, not that the prompts make the model "
        "see the image as that phrase, nor that removing β would remove it (the route ablations and direct "
        "effects measure that).",
        "- **Cosines of unrelated directions are not 0 here.** The joint space has 64 dimensions; the best of "
        f"{n_voc} entries for a direction with shuffled coordinates reaches {control_median:.2f} (median of "
        "`control (95%)` over all directions on this page). "
        f"`p` is the share of {args.shuffles} shuffled directions whose best cosine reaches the observed one "
        f"(`< {1 / args.shuffles:g}`: none did).",
        "- **Two controls, both lenient; the untrained prompts are the reference.** Shuffling coordinates "
        "destroys every structure of the direction, including what any vector passed through the readout "
        "shares. The *readout* control instead draws random vectors in the residual stream (isotropic "
        f"Gaussian, {args.shuffles} per tower) and maps them through the same readout: its 95th percentile is "
        f"higher ({readout_median:.2f}, median over the page). The page also lenses the *same* MaPLe model at "
        f"its initialisation (before training): {init_pass} / {init_strict} of its {init_n} directions pass "
        f"the shuffled / readout control (p < 0.05), against {trained_pass} / {trained_strict} of {trained_n} "
        "after training. Passing a control is not by itself evidence that training put meaning into a "
        "direction; a phrase that appears after training and not before, and fits the dataset's known shift, "
        "is better evidence (still of a direction, not of an effect).",
        "- **The toy text encoder knows few words.** It was pre-trained on captions of colours, shapes, "
        "patterns, sizes, positions and background colours. Words that never occur in those captions (night, "
        "sketch, above, satellite, cluttered, ...) are in its word list, but their token embeddings never "
        "received a gradient (they are still their random initialisation), so the lens cannot answer "
        "\"does the low-light bias point to *night*?\" on this model; it can point to *dark* (a background "
        "colour of the captions), a colour, a pattern or a shape. The same command on a real CLIP would "
        "answer in a richer vocabulary.",
        "",
        "## Summary",
        "",
        "Directions (β per layer and injected prompt values) whose top-1 cosine passes the shuffled control / "
        "the readout control (p < 0.05) of all such directions, after training and at initialisation, and the "
        "median top-1 cosine. Accuracy: the trained prompts' top-1 (%) on base / novel test classes (zero-shot "
        "in the per-dataset sections).",
        "",
    ]
    for method in args.methods:
        lines += [f"**{METHOD_LABEL[method]}**", "",
                  "| dataset | base / novel acc. | vision: trained | vision: init | text: trained | text: init |",
                  "|---|---|---|---|---|---|", *_summary_rows(results, args.datasets, method), ""]
    lines += ["## What β writes directly into the margin", "",
              "The other half of the question, in numbers rather than words: the test images traced with and "
              "without the trained prompts and with direct effects ([docs/math.md](../math.md), \"Direct logit "
              "effects\"; [docs/statistics.md](../statistics.md), `bias_gain_share`). *gain*: the mean margin "
              "(label logit minus the mean of the other classes' logits, logit units) with prompts minus without; "
              "the other columns: the share of that gain that the layers' β (bias tuning: the learned b) writes "
              "*directly* into the margin, through the frozen final LayerNorm and projection, with 95 % intervals "
              "over images (`∞`: the gain's own interval reaches 0, so the share is unbounded). A direct effect is "
              "not a total effect: β also acts through every later block, which this share leaves out (the route "
              "ablations measure the total), and a share above 1 or below 0 is possible (other components may "
              "lose what β gains). `–`: the mean gain is not positive, so there is no gain to share (the "
              "margin is against the *mean* of the other classes, so it can fall while top-1 accuracy rises: "
              "accuracy depends on the strongest other class only), or the method has no layer of that group. "
              "Both methods on one axis: MaPLe's β and bias tuning's b.", "",
              "| dataset | method | gain | vision β, all layers | vision β, injected | vision β, carried "
              "| text β, all layers |", "|---|---|---|---|---|---|---|",
              *_direct_rows(results, args.datasets, args.methods), ""]
    lines += ["## Which layers pass the readout control", "",
              "Layers whose β (MaPLe; bias tuning: b) has a top-1 cosine that passes the readout control "
              "(p < 0.05), with that top-1 entry. *Italics*: the dataset's class; †: another dataset's class; "
              "°: contains a word that never occurs in the toy CLIP's pre-training captions (its embedding is "
              "untrained: read it as an unnamed direction); \"also at init\": the same top-1 before training.",
              "", "| dataset | method | layers passing (top-1 entry, cosine) |", "|---|---|---|"]
    counts: dict = {}
    lines += [*_observations(results, args.datasets, args.methods, caption_words(), counts), ""]
    for m in args.methods:
        c = counts.get(m)
        if c:
            lines.append(f"- {METHOD_LABEL[m]}: {c['all']} layers pass; their top-1 entry is a class name (this "
                         f"or another dataset's) in {c['class']}, a phrase of the list (its single colours, shapes and "
                         f"patterns included) in {c['phrase']} "
                         f"({c['untrained']} of all {c['all']} contain a word the toy never saw in its captions)"
                         + (f"; {c['at_init']} have the same top-1 entry at initialisation" if m == "maple" else "")
                         + ".")
    lines.append("")
    for d in args.datasets:
        lines += [f"## {d}", ""]
        zs = zeroshot.get(d)
        for method in args.methods:
            r = results.get((d, method))
            if r is None:
                continue
            acc = r["train"]["result"]["accuracy"].sel(variant="full").squeeze()
            zs_text = (f" (zero-shot {zs[0]:.1f} / {zs[1]:.1f})" if zs else "")
            lines += [f"**{METHOD_LABEL[method]}**: test accuracy base {float(acc.sel(split='base')):.1f} / novel "
                      f"{float(acc.sel(split='novel')):.1f}{zs_text}.", ""]
            lines += [lens_markdown(r["lens"]["lens"], heading=None, level=3, top=args.show)]
            if method == "maple":
                init = r["lens"]["init"]
                lines += ["How far training turned each layer's β (cosine of the mapped β after training with "
                          f"the same at initialisation; 1: not turned): {_moved(r['lens']['lens'], init)}.", ""]
                lines += ["<details><summary>the same model at initialisation (untrained prompts)</summary>", "",
                          lens_markdown(init, heading=None, level=4, top=args.show), "</details>", ""]
    lines += ["Per run: the prompts, checkpoints and the lens (`lens.nc`, all directions including per head, "
              f"top {args.top}) under `--runs` ({args.runs_display}).", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def _zeroshot_accuracy(results: dict) -> dict:
    """Zero-shot base / novel accuracy per dataset, from the evaluations' ``zeroshot`` variant when present."""
    out = {}
    for (d, _m), r in results.items():
        acc = r["train"]["result"]["accuracy"]
        if "zeroshot" in acc["variant"].values and d not in out:
            z = acc.sel(variant="zeroshot").squeeze()
            out[d] = (float(z.sel(split="base")), float(z.sel(split="novel")))
    return out


def main(argv: list[str] | None = None) -> int:
    from mmlens.train.recipes import TOY_RECIPE, prompt_depth

    toy_depth, _ = prompt_depth(6)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--methods", nargs="+", default=["maple", "bias"], choices=sorted(METHOD_LABEL))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shots", type=int, default=TOY_RECIPE["shots"])
    parser.add_argument("--epochs", type=int, default=TOY_RECIPE["epochs"])
    parser.add_argument("--n-ctx", type=int, default=2)
    parser.add_argument("--crop-scale", type=float, nargs=2, default=list(TOY_RECIPE["crop_scale"]))
    parser.add_argument("--depth", type=int, default=toy_depth)
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--data-root", default=str(Path.home() / ".cache" / "mmlens" / "toyworld"))
    parser.add_argument("--runs", default=str(REPO / "runs" / "toyworld_prompt_lens"))
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "toyworld_prompt_lens.md"))
    parser.add_argument("--pretrained", default="toyworld")
    parser.add_argument("--top", type=int, default=5, help="entries kept per direction in lens.nc")
    parser.add_argument("--show", type=int, default=3, help="entries shown per direction on the page")
    parser.add_argument("--shuffles", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    command = "python scripts/toyworld_prompt_lens.py" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    args.pretrained_arg = None if args.pretrained == "none" else args.pretrained
    try:
        _clip(args.pretrained_arg)
    except FileNotFoundError as err:
        print(f"Cannot load the toy CLIP: {err}", file=sys.stderr)
        return 2
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    root, runs_dir = Path(args.data_root).expanduser(), Path(args.runs).expanduser()
    try:
        args.runs_display = str(runs_dir.relative_to(REPO))
    except ValueError:
        args.runs_display = str(runs_dir)
    t_data = ensure_data(root, args.datasets, args.size, args.data_seed)
    jobs = [{"dataset": d, "method": m, "seed": args.seed, "shots": args.shots, "epochs": args.epochs,
             "crop_scale": tuple(args.crop_scale), "n_ctx": args.n_ctx, "depth": args.depth,
             "data_root": str(root), "pretrained": args.pretrained_arg, "threads": 1,
             "variants": ["full", "zeroshot"], "run_dir": str(runs_dir / d / m / f"seed{args.seed}")}
            for d in args.datasets for m in args.methods]
    results: dict = {}
    t_train = time.perf_counter()
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for i, out in enumerate(pool.imap_unordered(run_job, jobs), 1):
            j = out["job"]
            acc = out["result"]["accuracy"].sel(variant="full").squeeze()
            print(f"[{i}/{len(jobs)}] trained {j['dataset']:15s} {j['method']:6s}: base "
                  f"{float(acc.sel(split='base')):5.1f} novel {float(acc.sel(split='novel')):5.1f} "
                  f"(fit {out['fit_seconds']:.0f} s, {time.perf_counter() - started:.0f} s elapsed)", flush=True)
            results[(j["dataset"], j["method"])] = {"train": out}
    t_train = time.perf_counter() - t_train
    t_lens = t_direct = 0.0  # one process, one job after the other: the sums are wall times
    for job in jobs:
        out = lens_job(job, args)
        results[(job["dataset"], job["method"])].update(lens=out, direct=out["direct"])
        t_lens, t_direct = t_lens + out["seconds"], t_direct + out["direct_seconds"]
        print(f"lens {job['dataset']:15s} {job['method']:6s}: {out['seconds']:.0f} s, direct effects "
              f"{out['direct_seconds']:.0f} s", flush=True)
    timings = {"total": time.perf_counter() - started, "data": t_data, "train": t_train, "lens": t_lens,
               "direct": t_direct,
               "load": (load_start, os.getloadavg()[0])}
    write_page(Path(args.out), args, command, results, timings, _zeroshot_accuracy(results))
    print(f"written: {args.out} ({_hhmmss(timings['total'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
