"""Distributed trace (issue V): images/s with 1 vs 2 local workers, the per-region overhead of the distributed path,
and (``--vit-b16``) the per-image trace cost and store size of ViT-B/16 that docs/scaling.md scales up.

1. The shipped toy CLIP on a fake EuroSAT tree (``--images``, default 160) traced three ways into zarr stores:
   in one process (``mmlens trace``'s path), on a LocalCluster of 1 worker and of 2 workers (one thread each);
   cluster start-up and the once-per-worker model build are timed apart. Prints images/s side by side, the
   ratio 2 workers / 1 worker, and the overhead per region of the distributed path against one process
   ((1-worker time - one-process time) / regions).
2. ``--vit-b16``: random ViT-B-16 weights, MaPLe prompts (depth 9), ``--vit-images`` images (8) of 224 px, 10
   classes, one thread: seconds per image and bytes per image of the store, for the default options (variant
   ``full``) and for the study's (``mmlens reproduce``: full, zeroshot and the four route ablations, β vectors).

Run: python benchmarks/trace_cluster.py [--images 160] [--per-region 32] [--vit-b16] [--vit-images 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def _du(path: Path, skip: tuple[str, ...] = ()) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        if any(part in Path(dirpath).relative_to(path).parts for part in skip):
            continue
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


def cluster_ratio(n_images: int, per_region: int, batch: int) -> None:
    import torch
    from distributed import Client, LocalCluster

    import mmlens
    from mmlens.data import make_fake_tree
    from mmlens.tracing.spec import TraceSpec

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    per_class = max(1, n_images // 10)
    make_fake_tree(tmp / "data", ["EuroSAT"], image_size=40, per_class={"train": 1, "val": 1, "test": per_class})
    spec = TraceSpec(dataset="EuroSAT", data_root=str(tmp / "data"), batch_size=batch, with_reference=True)
    n = per_class * 10
    regions = -(-n // per_region)

    built = spec.build(quiet=True)
    options = dict(built.options)
    t0 = time.perf_counter()
    with built.precision.autocast():
        mmlens.trace_to_store(built.model, built.loader(), tmp / "single.zarr", variants=options.pop("variants"),
                              batch_size=options.pop("batch_size"), total=len(built.dataset),
                              provenance=built.provenance, progress=False, **options)
    single = time.perf_counter() - t0

    results = {}
    for workers in (1, 2):
        t0 = time.perf_counter()
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                          scheduler_kwargs={"dashboard": False}, silence_logs=40) as cluster, Client(cluster) as c:
            up = time.perf_counter() - t0
            # the model build once per worker (plugin setup) is part of the first call; a warm-up store
            # on the same spec builds it, so the timed run below is the steady state
            t0 = time.perf_counter()
            mmlens.trace_to_store(spec, tmp / f"warm{workers}.zarr", client=c, images_per_shard=per_region,
                                  progress=False)
            warm = time.perf_counter() - t0
            t0 = time.perf_counter()
            mmlens.trace_to_store(spec, tmp / f"cluster{workers}.zarr", client=c, images_per_shard=per_region,
                                  progress=False)
            results[workers] = (time.perf_counter() - t0, up, warm)
    print(f"toy CLIP, {n} images (with reference), batch {batch}, regions of {per_region} ({regions} regions), "
          f"{os.cpu_count()} CPUs (shared machine)")
    print(f"{'run':<26}{'seconds':>9}{'images/s':>10}")
    print(f"{'one process':<26}{single:>9.2f}{n / single:>10.1f}")
    for w, (sec, up, warm) in results.items():
        print(f"{f'cluster, {w} worker(s)':<26}{sec:>9.2f}{n / sec:>10.1f}   (cluster start {up:.1f} s, "
              f"first run with model build {warm:.1f} s)")
    ratio = results[1][0] / results[2][0]
    overhead = (results[1][0] - single) / regions
    print(f"images/s, 2 workers / 1 worker: {ratio:.2f}x")
    print(f"overhead per region, 1 worker vs one process: {overhead * 1000:.0f} ms "
          f"({overhead / (single / regions):.0%} of a region's one-process trace time)")
    shutil.rmtree(tmp, ignore_errors=True)


def vit_b16_cost(n_images: int, batch: int) -> None:
    import torch

    import mmlens
    from mmlens import PromptedCLIP, load_clip
    from mmlens.store import schema

    torch.set_num_threads(1)
    torch.manual_seed(0)
    clip = load_clip("ViT-B-16")  # random weights
    model = PromptedCLIP(clip, [f"class {i}" for i in range(10)], method="maple", depth=9)
    images = torch.randn(n_images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(n_images) % 10
    print(f"ViT-B-16 random weights, MaPLe depth 9, {n_images} images of 224 px, 10 classes, batch {batch}, "
          f"{torch.get_num_threads()} torch thread")
    with torch.no_grad():  # the plain forward (open_clip, no prompts, no split): the unit of the GPU estimates
        text = clip.model.encode_text(clip.tokenizer([f"a photo of a class {i}." for i in range(10)]))
        t0 = time.perf_counter()
        for lo in range(0, n_images, batch):
            clip.model.encode_image(images[lo:lo + batch]) @ text.T
        plain = (time.perf_counter() - t0) / n_images
    print(f"plain open_clip forward: {plain:.2f} s/image")
    print(f"{'options':<44}{'s/image':>9}{'x plain':>9}{'bytes/image':>13}{'text+static':>13}")
    for name, kw in (("default (variant full)", {}),
                     ("study (6 variants, beta vectors)", {"variants": list(schema.VARIANTS),
                                                           "store_bias_vectors": True})):
        tmp = Path(tempfile.mkdtemp())
        batches = [{"image": images[lo:lo + batch], "label": labels[lo:lo + batch]}
                   for lo in range(0, n_images, batch)]
        if "constant_bias" in kw.get("variants", []):  # the ablation needs the dataset-mean β (measured apart)
            from mmlens.tracing.interventions import measure_mean_bias

            kw = {**kw, "mean_bias": measure_mean_bias(model, [images[:batch]])}
        t0 = time.perf_counter()
        mmlens.trace_to_store(model, batches, tmp / "s.zarr", batch_size=batch, progress=False, **kw)
        sec = time.perf_counter() - t0
        image_bytes = _du(tmp / "s.zarr", skip=("text",)) - _static_bytes(tmp / "s.zarr")
        static = _du(tmp / "s.zarr") - image_bytes
        print(f"{name:<44}{sec / n_images:>9.2f}{sec / n_images / plain:>9.1f}{image_bytes / n_images:>13,.0f}"
              f"{static:>13,}")
        shutil.rmtree(tmp, ignore_errors=True)


def _static_bytes(path: Path) -> int:
    """Bytes of the vision/logits arrays without an ``image`` dim (written once per store)."""
    import json

    total = 0
    for group in ("vision", "logits"):
        for array in (path / group).iterdir() if (path / group).is_dir() else ():
            doc = array / "zarr.json"  # zarr format 3: the dims are the array document's dimension_names
            if doc.is_file() and "image" not in (json.loads(doc.read_text()).get("dimension_names") or []):
                total += _du(array)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--per-region", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vit-b16", action="store_true")
    parser.add_argument("--vit-images", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.vit_b16:
        vit_b16_cost(args.vit_images, min(args.batch, args.vit_images))
    else:
        cluster_ratio(args.images, args.per_region, args.batch)


if __name__ == "__main__":
    main()
