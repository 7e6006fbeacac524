"""How fast the explorer follows its selectors on a ViT-B/16-sized study read lazily from zarr.

Builds (once, then reuses) a synthetic study store of 11 datasets x 2000 images x 12 layers x 12
heads x 14x14 patches (``example_study``; ``cls_attention`` alone is ~4.5 GB on disk), chunked along
``image`` like ``mmlens.trace_to_store`` writes it (one chunk per batch of 32 images), opens it
lazily, and replays a seeded session of state changes (layer, head, image, class, variant,
dataset moves in the proportions of a user clicking around). For each change it times:

- ``slice``: the selection change plus every view's data (heatmaps, curves, image maps, text
  roles, accuracy table) read from the store or the explorer's caches;
- ``slice+plot``: the same plus building the HoloViews elements the changed views show.

Both the default dask-backed opening (``mmlens.open(path)``) and dask-free lazy indexing
(``mmlens.open(path, chunks=False)``) are measured, interleaved in the same run. It also reports
the one-off cost of first views (cold caches) and, for a layer move, the full server-side update
of a live Panel document (HoloViews updating the Bokeh models; what a browser then draws).

Run: python benchmarks/explorer_latency.py [--images 2000] [--changes 200] [--store PATH] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

VARIABLES = (
    "prompt_mass", "original_norm", "bias_head_norm", "original_total_norm", "bias_norm", "residual_norm",
    "attention_by_role", "cls_attention", "foreground", "output_bias_norm",
)
# how often a user moves each selector (a session mostly scrubs layers/heads and flips images)
WEIGHTS = {"layer": 0.35, "head": 0.25, "image": 0.2, "class_": 0.1, "variant": 0.05, "dataset": 0.05}


def build_store(path: Path, *, n_datasets: int, n_images: int, chunk: int, rebuild: bool) -> Path:
    from mmlens.store.io import to_zarr
    from mmlens.store.synthetic import example_study

    config = {"n_datasets": n_datasets, "n_images": n_images, "chunk": chunk, "layers": 12, "heads": 12, "grid": 14}
    stamp = path / "benchmark_config.json"
    if path.exists() and not rebuild and stamp.is_file() and json.loads(stamp.read_text()) == config:
        print(f"reusing {path}")
        return path
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    study = example_study(
        n_datasets=n_datasets, n_images=n_images, n_layers=12, n_heads=12, grid=14, n_classes=100, width=16,
        chunks=chunk, with_vectors=False, variables=VARIABLES,
    )
    to_zarr(study, path)
    stamp.write_text(json.dumps(config))
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9
    print(f"built {path}: {size:.1f} GB in {time.perf_counter() - start:.0f} s")
    return path


def all_view_data(app) -> None:
    """What the views read after a change (unchanged views hit the caches)."""
    from mmlens.viz.slices import MissingData

    for tower, measure in (("vision", "prompt_mass"), ("vision", "bias_ratio"), ("vision", "foreground_attention"),
                           ("text", "prompt_mass"), ("text", "bias_ratio")):
        app.heatmap_data(tower, measure)
    for tower in ("vision", "text"):
        try:
            app.curve_data(tower)
        except MissingData:
            pass
    app.image_data()
    app.roles_data()
    app.accuracy_data()


def plots_of(app, kind: str) -> None:
    """The HoloViews elements the Panel app rebuilds after a change of ``kind``."""
    if kind in ("dataset", "variant", "method"):
        for tower, measure in (("vision", "prompt_mass"), ("vision", "bias_ratio"),
                               ("vision", "foreground_attention"), ("text", "prompt_mass"), ("text", "bias_ratio")):
            app.plot_heatmap(tower, measure)
    if kind in ("layer",):
        app.plot_curves("vision")
        app.plot_curves("text")
    if kind in ("layer", "head", "image", "dataset"):
        for slot in app.image_slots():
            app.plot_image_slot(slot)
    if kind in ("image", "dataset"):  # picture and mask outline follow the image only
        app.plot_picture()
        app.plot_mask_contour()
    if kind in ("layer", "head", "class_", "dataset", "variant"):
        app.plot_roles()
        app.plot_roles_all()


def session(app, n: int, seed: int) -> list[tuple[str, object]]:
    rng = np.random.default_rng(seed)
    s = app.state
    kinds = rng.choice(list(WEIGHTS), size=n, p=list(WEIGHTS.values()))
    changes = []
    for kind in kinds:
        if kind == "image":
            lo, hi = s.param["image"].bounds
            value = int(rng.integers(lo, hi + 1))
        elif kind == "class_":
            value = rng.choice(list(s.param["class_"].objects))
        else:
            value = rng.choice(list(s.param[kind].objects))
        changes.append((str(kind), value.item() if hasattr(value, "item") else value))
    return changes


def replay(app, changes, with_plots: bool) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    for kind, value in changes:
        start = time.perf_counter()
        setattr(app.state, kind, value)
        all_view_data(app)
        if with_plots:
            plots_of(app, kind)
        times.setdefault(kind, []).append(time.perf_counter() - start)
    return times


def summary(times: dict[str, list[float]]) -> tuple[float, float, dict[str, float]]:
    flat = [t for ts in times.values() for t in ts]
    per_kind = {k: statistics.median(v) for k, v in sorted(times.items())}
    return statistics.median(flat), float(np.percentile(flat, 90)), per_kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=int, default=11)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=32, help="images per zarr chunk (trace_to_store's batch)")
    parser.add_argument("--changes", type=int, default=200, help="state changes replayed per opening mode")
    parser.add_argument("--store", type=Path, default=None, help="where to build / reuse the store")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import dask

    import mmlens
    from mmlens.viz.explorer import Explorer

    dask.config.set(scheduler="threads", num_workers=2)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    default = Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / (
        f"mmlens_explorer_latency_{args.datasets}x{args.images}_c{args.chunk}.zarr")
    path = build_store(args.store or default, n_datasets=args.datasets, n_images=args.images, chunk=args.chunk,
                       rebuild=args.rebuild)

    modes = {"dask (mmlens.open)": {}, "no dask (chunks=False)": {"chunks": False}}
    apps, cold = {}, {}
    for name, kw in modes.items():
        start = time.perf_counter()
        app = Explorer(mmlens.open(path, **kw))
        all_view_data(app)  # first views: heatmaps, curves across 11 datasets, first image, tables
        cold[name] = time.perf_counter() - start
        apps[name] = app
    changes = session(next(iter(apps.values())), args.changes, args.seed)

    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    half = len(changes) // 2
    for part in (changes[:half], changes[half:]):  # interleave the modes so machine load hits both alike
        for name, app in apps.items():
            for with_plots in (False, True):
                key = (name, "slice+plot" if with_plots else "slice")
                for kind, ts in replay(app, part, with_plots).items():
                    results.setdefault(key, {}).setdefault(kind, []).extend(ts)

    print(f"\nstore: {args.datasets} datasets x {args.images} images x 12 layers x 12 heads x 14x14 patches, "
          f"chunks of {args.chunk} images; {len(changes)} state changes per row, interleaved\n")
    print(f"{'opening':<24} {'measure':<11} {'median ms':>9} {'p90 ms':>8}   median per change kind (ms)")
    medians = {}
    for (name, what), times in results.items():
        med, p90, per_kind = summary(times)
        medians[(name, what)] = med
        kinds = ", ".join(f"{k.rstrip('_')} {1e3 * v:.1f}" for k, v in per_kind.items())
        print(f"{name:<24} {what:<11} {1e3 * med:9.1f} {1e3 * p90:8.1f}   {kinds}")
    names = list(apps)
    print(f"\nratio of medians (slice), {names[1]} / {names[0]}: "
          f"{medians[(names[1], 'slice')] / medians[(names[0], 'slice')]:.2f}")
    for name, seconds in cold.items():
        print(f"first views (cold caches), {name}: {seconds:.1f} s")

    # one-off: the foreground-attention curves over all datasets (fg_max_images per dataset)
    for name, app in apps.items():
        app.state.curve_measure = "foreground_attention"
        start = time.perf_counter()
        app.curve_data("vision")
        print(f"foreground-attention curves across datasets, first time, {name}: {time.perf_counter() - start:.1f} s")

    # the full server-side update of a live Panel document for a layer move (bokeh models updated)
    from bokeh.document import Document

    app = apps[names[0]]
    app.panel().get_root(Document())
    layers = app.state.param["layer"].objects
    full = []
    for k in range(10):
        start = time.perf_counter()
        app.state.layer = layers[(k * 5 + 1) % len(layers)]
        full.append(time.perf_counter() - start)
    print(f"live Panel document, layer move incl. HoloViews/Bokeh model updates: median "
          f"{1e3 * statistics.median(full):.0f} ms (not counted in the slice numbers above)")


if __name__ == "__main__":
    main()
