"""The toyworld base-to-novel table (8 methods x 6 datasets x 3 seeds) and MaPLe's route-ablation table.

Writes ``docs/results/toyworld_base_to_novel.md`` (both tables, the command, the recipe, timings) and,
under ``--runs``, every run's checkpoints and prompts, ``results.nc`` (the xarray of all accuracies) and
``results.csv``. Runs are resumable: a finished (dataset, method, seed) is not trained again.

    python scripts/toyworld_base_to_novel.py                      # the committed table
    python scripts/toyworld_base_to_novel.py --pretrained none --datasets ToySatellite --seeds 1 \\
        --out /tmp/t.md --runs /tmp/runs                          # a smoke run on random weights

Needs the shipped toy CLIP weights (``load_clip("mmlens-toy", pretrained="toyworld")``); generates the
toyworld datasets under ``--data-root`` when they are missing (``mmlens data toyworld``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATASETS = ["ToySatellite", "ToySketch", "ToyTexture", "ToyLowLight", "ToyFineGrained", "ToyClutter"]
METHODS = ["zeroshot", "coop", "deep_vision", "deep_language", "ivlp", "maple", "bias", "bias_coupled"]
# relative training cost, to start the long jobs first
_COST = {"maple": 6, "ivlp": 6, "bias_coupled": 5, "deep_language": 5, "bias": 5, "coop": 4, "deep_vision": 2,
         "zeroshot": 0}


def _architecture() -> str:
    from mmlens.models import toy

    v, t = toy.TOY_MODEL_CONFIG["vision_cfg"], toy.TOY_MODEL_CONFIG["text_cfg"]
    return (f"ViT {v['layers']} blocks, width {v['width']}, {v['image_size']}px input, patch {v['patch_size']}; "
            f"text {t['layers']} blocks, width {t['width']}")


def ablation_grid() -> list[str]:
    """full, zeroshot; each route on both branches, on one branch, and on the injected / carried layers."""
    from mmlens.store.schema import ABLATION_ROUTES
    from mmlens.train import ablation_variants

    grid = ["full", "zeroshot"]
    for route in ABLATION_ROUTES:  # grouped by route: both, vision, text, injected blocks, carried blocks
        grid += ablation_variants([route], ["both", "vision", "text"], ["all"], reference=False)
        grid += ablation_variants([route], ["both"], ["injected", "carried"], reference=False)
    return grid


# ------------------------------------------------------------------------------------------ data
def ensure_data(root: Path, datasets: list[str], size: str, data_seed: int) -> float:
    """Generate the toyworld datasets that are missing (or of another size, seed, generator) under ``root``."""
    from mmlens.data import get_manifest
    from mmlens.data.toyworld.export import GENERATOR_VERSION, write_domain

    started = time.perf_counter()
    for name in datasets:
        info_file = get_manifest(name).dataset_dir(root) / "toyworld.json"
        if info_file.is_file():
            info = json.loads(info_file.read_text())
            wanted = {"size": size, "seed": data_seed, "generator_version": GENERATOR_VERSION}
            if all(info.get(k) == v for k, v in wanted.items()) and _same_pixels(name, root, size, data_seed):
                continue
        print(f"generating {name} ({size}, seed {data_seed}) under {root}", flush=True)
        write_domain(name, root, seed=data_seed, size=size)
    return time.perf_counter() - started


def _same_pixels(name: str, root: Path, size: str, data_seed: int) -> bool:
    """Whether the first test image on disk is what the current generator draws (catches generator edits)."""
    import numpy as np
    from PIL import Image

    from mmlens.data import get_manifest
    from mmlens.data.toyworld import SIZES, generate
    from mmlens.data.toyworld.export import IMAGE_DIR, split_items

    rel = split_items(name, "test", SIZES[size]["test"])[0][0]
    path = get_manifest(name).dataset_dir(root) / IMAGE_DIR / rel
    if not path.is_file():
        return False
    fresh = generate(name, SIZES[size]["test"], seed=data_seed, split="test").images[0]
    with Image.open(path) as im:
        return bool(np.array_equal(np.asarray(im.convert("RGB")), fresh))


# ------------------------------------------------------------------------------------------ jobs
_CLIP = {}


def _clip(pretrained: str | None):
    from mmlens import load_clip

    if pretrained not in _CLIP:
        _CLIP[pretrained] = load_clip("mmlens-toy", pretrained=pretrained)
    return _CLIP[pretrained]


def run_job(job: dict) -> dict:
    """Train one (dataset, method, seed) and evaluate it; runs in a worker process."""
    import torch

    from mmlens import PromptedCLIP
    from mmlens.train import evaluate, fit

    torch.set_num_threads(job["threads"])
    clip = _clip(job["pretrained"])
    model = PromptedCLIP(clip, ["object"], job["method"], n_ctx=job["n_ctx"], depth=job["depth"],
                         init_seed=job["seed"])
    started, cpu = time.perf_counter(), time.process_time()
    result = fit(model, job["dataset"], root=job["data_root"], shots=job["shots"], seed=job["seed"],
                 epochs=job["epochs"], crop_scale=job["crop_scale"], checkpoint_dir=job["run_dir"], progress=False)
    fit_seconds, fit_cpu = time.perf_counter() - started, time.process_time() - cpu
    started, cpu = time.perf_counter(), time.process_time()
    ds = evaluate(result.prompts_path, job["dataset"], root=job["data_root"], clip=clip, variants=job["variants"],
                  batch_size=128, progress=False)
    return {"job": job, "result": ds, "fit_seconds": fit_seconds, "eval_seconds": time.perf_counter() - started,
            "cpu_seconds": fit_cpu + time.process_time() - cpu,
            "resumed_from_epoch": result.resumed_from_epoch, "history": result.history,
            "trainable_parameters": result.trainable_parameters}


# ------------------------------------------------------------------------------------------ report
def _hhmmss(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s"


def write_report(path: Path, ds, args, command: str, timings: dict, runs: list[dict]) -> None:
    import open_clip
    import torch

    from mmlens._version import __version__
    from mmlens.train import to_markdown

    full = ds.sel({"variant": ["full"]})
    ablation = ds.sel({"method": ["maple"]}) if "maple" in ds["method"].values.tolist() else None
    clip = _clip(None if args.pretrained == "none" else args.pretrained)
    sha = clip.pretrained.get("sha256")
    fresh = [r for r in runs if r["resumed_from_epoch"] == 0]
    lines = [
        "# toyworld: base-to-novel generalisation of prompt methods, and MaPLe's route ablations",
        "",
        "Produced by one command (from the repository root):",
        "",
        "```",
        command,
        "```",
        "",
    ]
    if args.pretrained == "none":
        lines += ["> **Random toy CLIP weights (`--pretrained none`): a smoke run, not a result.**", ""]
    lines += [
        f"- Model: `mmlens-toy` ({_architecture()}), weights `{args.pretrained}` (sha256 `{str(sha)[:16]}…`).",
        f"- Data: toyworld, size `{args.size}` (data seed {args.data_seed}); datasets {', '.join(args.datasets)}; "
        "base = first half of the classes, novel = the rest; test split.",
        f"- Protocol: {args.shots} shots per base class, seeds {', '.join(map(str, args.seeds))}; "
        f"MaPLe's recipe: SGD lr 0.0035, momentum 0.9, weight decay 5e-4, batch 4, {args.epochs} epochs "
        "(cosine, 1 constant warm-up epoch at 1e-5), random resized crop ({:g}-{:g} of the area; MaPLe: "
        "0.08-1, which on toyworld often crops the small objects out) + flip, last epoch kept."
        .format(*args.crop_scale),
        f"- Prompts: n_ctx {args.n_ctx}, depth {args.depth} of 6 blocks (MaPLe: 9 of 12); CoOp = learned text "
        "context at the input only; the deep methods and bias tuning act on blocks "
        f"0..{args.depth - 1}.",
        "- Numbers: top-1 accuracy (%), mean over seeds. A dataset's HM is the harmonic mean of its mean base "
        "and mean novel accuracy; the average HM is the HM of the average base and average novel accuracy "
        "(the published convention).",
        f"- Time: {_hhmmss(timings['total'])} wall for everything on {args.jobs} worker process(es) x "
        f"{args.threads} torch thread(s) ({os.cpu_count()} CPUs visible, shared with other work): data "
        f"{_hhmmss(timings['data'])}, training {_hhmmss(sum(r['fit_seconds'] for r in runs))} and evaluation "
        f"{_hhmmss(sum(r['eval_seconds'] for r in runs))} summed over jobs; CPU time of the jobs "
        f"{_hhmmss(sum(r['cpu_seconds'] for r in runs))} (i.e. {_hhmmss(sum(r['cpu_seconds'] for r in runs) / 2)} "
        f"on two otherwise idle cores); load average {timings['load'][0]:.1f} at the start, "
        f"{timings['load'][1]:.1f} at the end. "
        f"{len(fresh)} of {len(runs)} runs trained in this invocation"
        + ("." if len(fresh) == len(runs) else " (the others were finished runs found under --runs)."),
        f"- Software: mmlens {__version__}, torch {torch.__version__}, open_clip {open_clip.__version__}, "
        f"Python {platform.python_version()}; {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        "## Base-to-novel (all methods)",
        "",
        "Columns per dataset: base / novel / HM. `params`: trained parameters.",
        "",
        to_markdown(full, digits=1),
        "",
        *gain_table(full),
    ]
    if ablation is not None and ablation.sizes["variant"] > 1:
        lines += [
            "## MaPLe route ablations ([math.md](../math.md))",
            "",
            "The trained MaPLe prompts evaluated with one route of the prompts removed. `full`: as trained; "
            "`zeroshot`: prompts off (frozen CLIP); `bias_only`: keep the prompt bias β, drop the (1-α) "
            "rescaling of the original path; `redistribution_only`: keep (1-α), drop β; `constant_bias`: "
            "β replaced by its mean over the seed's few-shot training images, prompts out of the softmax; "
            "`drop_prompts`: prompts out of the softmax, no β. `:vision` / `:text`: only that tower; "
            "`:both:injected` / `:both:carried`: only the blocks with fresh learned prompts "
            f"(0..{args.depth - 1}) / the later blocks whose prompt slots carry earlier outputs.",
            "",
            to_markdown(ablation, digits=1, params=False),
            "",
        ]
    lines += [
        "Per run: checkpoints and `prompts.safetensors` under `--runs`; all accuracies (per seed, with counts) in "
        "`results.nc` / `results.csv` there.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def gain_table(full) -> list[str]:
    """Markdown lines: each method's gain over zero-shot in points (mean over seeds; the seeds' range in
    brackets), base / novel per dataset, and on how many datasets the mean base gain reaches 10 points."""
    methods = [str(m) for m in full["method"].values]
    if "zeroshot" not in methods or len(methods) < 2:
        return []
    acc = full["accuracy"].sel({"variant": "full"})
    gain = acc - acc.sel({"method": "zeroshot"})
    datasets = [str(d) for d in full["dataset"].values]
    lines = ["## Gain over zero-shot", "",
             "Points of top-1 accuracy: mean over seeds [lowest, highest seed], base / novel.", "",
             "| method | " + " | ".join(datasets) + " | base +10 on | novel raised on |",
             "|---|" + "---|" * (len(datasets) + 2)]
    for m in methods:
        if m == "zeroshot":
            continue
        cells, base_10, novel_up = [], 0, 0
        for d in datasets:
            g = gain.sel({"method": m, "dataset": d})
            b, n = g.sel({"split": "base"}), g.sel({"split": "novel"})
            b_mean, n_mean = float(b.mean()), float(n.mean())
            cells.append(f"{b_mean:+.1f} [{float(b.min()):+.1f}, {float(b.max()):+.1f}] / "
                         f"{n_mean:+.1f} [{float(n.min()):+.1f}, {float(n.max()):+.1f}]")
            base_10 += b_mean >= 10
            novel_up += n_mean > 0
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {base_10} of {len(datasets)} | "
                     f"{novel_up} of {len(datasets)} |")
    return [*lines, ""]


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    from mmlens.train.recipes import TOY_RECIPE, prompt_depth

    toy_depth, _ = prompt_depth(6)  # the toy CLIP's 6 blocks

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    # The one protocol choice that departs from the recipe: 4 shots, so that 8 methods x 6 datasets x 3 seeds
    # (144 runs) fit in about ten minutes; the 16-shot MaPLe row is docs/results/toyworld_maple16.md.
    parser.add_argument("--shots", type=int, default=4,
                        help=f"shots per base class (default 4; the recipe's {TOY_RECIPE['shots']} takes 4x as long)")
    parser.add_argument("--epochs", type=int, default=TOY_RECIPE["epochs"])
    parser.add_argument("--n-ctx", type=int, default=2)
    parser.add_argument("--crop-scale", type=float, nargs=2, default=list(TOY_RECIPE["crop_scale"]),
                        metavar=("MIN", "MAX"), help="random-resized-crop area fraction (default: the toyworld "
                        "recipe's {:g} {:g}; MaPLe's is 0.08 1)".format(*TOY_RECIPE["crop_scale"]))
    parser.add_argument("--depth", type=int, default=toy_depth,
                        help=f"prompt depth (default: the recipe's, clipped to the toy's 6 blocks: {toy_depth})")
    parser.add_argument("--size", choices=["small", "full"], default="small", help="toyworld size (default small)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--data-root", default=str(Path.home() / ".cache" / "mmlens" / "toyworld"))
    parser.add_argument("--runs", default=str(REPO / "runs" / "toyworld_base_to_novel"))
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "toyworld_base_to_novel.md"))
    parser.add_argument("--pretrained", default="toyworld", help="toy weights: toyworld, a file, or none (random)")
    parser.add_argument("--no-ablation", action="store_true", help="skip MaPLe's route-ablation table")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = "python scripts/toyworld_base_to_novel.py" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    pretrained = None if args.pretrained == "none" else args.pretrained
    try:
        _clip(pretrained)
    except FileNotFoundError as err:
        print(f"Cannot load the toy CLIP: {err}", file=sys.stderr)
        return 2

    started, load_start = time.perf_counter(), os.getloadavg()[0]
    root, runs_dir = Path(args.data_root).expanduser(), Path(args.runs).expanduser()
    t_data = ensure_data(root, args.datasets, args.size, args.data_seed)
    grid = ablation_grid()
    jobs = []
    for dataset in args.datasets:
        for method in args.methods:
            for seed in args.seeds:
                variants = grid if (method == "maple" and not args.no_ablation) else ["full"]
                jobs.append({"dataset": dataset, "method": method, "seed": seed, "shots": args.shots,
                             "epochs": args.epochs, "crop_scale": tuple(args.crop_scale), "n_ctx": args.n_ctx,
                             "depth": args.depth,
                             "data_root": str(root), "pretrained": pretrained, "threads": args.threads,
                             "variants": variants, "run_dir": str(runs_dir / dataset / method / f"seed{seed}")})
    jobs.sort(key=lambda j: -_COST.get(j["method"], 3))
    results = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs) as pool:
        for i, out in enumerate(pool.imap_unordered(run_job, jobs), 1):
            j = out["job"]
            acc = out["result"]["accuracy"].sel({"variant": "full"}).squeeze()
            print(f"[{i}/{len(jobs)}] {j['dataset']:15s} {j['method']:14s} seed {j['seed']}: "
                  f"base {float(acc.sel(split='base')):5.1f} novel {float(acc.sel(split='novel')):5.1f}  "
                  f"(fit {out['fit_seconds']:.0f} s, eval {out['eval_seconds']:.0f} s, "
                  f"{time.perf_counter() - started:.0f} s elapsed)", flush=True)
            results.append(out)
    from mmlens.train import combine, to_csv, to_markdown

    ds = combine([r["result"] for r in results])
    ds = ds.sel({"dataset": [d for d in args.datasets if d in ds.dataset.values],
                 "method": [m for m in args.methods if m in ds.method.values]})
    ds.attrs["command"] = command
    runs_dir.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(runs_dir / "results.nc", engine="h5netcdf")
    to_csv(ds, runs_dir / "results.csv")
    timings = {"total": time.perf_counter() - started, "data": t_data, "load": (load_start, os.getloadavg()[0])}
    write_report(Path(args.out), ds, args, command, timings, results)
    print(to_markdown(ds.sel({"variant": ["full"]})))
    print(f"written: {args.out} ({_hhmmss(timings['total'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
