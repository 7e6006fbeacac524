"""Loader throughput: mmlens ImageDataset + collate vs a plain PIL loop, same transform and worker count.

Generates N 224x224 JPEGs in a temporary folder, then times decode + transform (CLIP preprocessing) for
both, alternating runs. Prints images/s (best run) and the ratio mmlens time / plain time (goal <= 1.1),
both from the best runs and as the median of the ratios of back-to-back pairs, and the ratio of median
CPU time (this process + joined worker processes), which a busy shared machine disturbs least.

    python benchmarks/loader_throughput.py [--n 1000] [--workers 0 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from mmlens.data import ImageDataset, Item, collate

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def make_images(folder: Path, n: int, seed: int = 0) -> list[Item]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        small = rng.integers(0, 256, size=(28, 28, 3), dtype=np.uint8)  # smooth-ish content: upsampled noise
        img = Image.fromarray(small).resize((224, 224), Image.BILINEAR)
        path = folder / f"c{i % 10}" / f"img_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=90)
        items.append(Item(str(path), i % 10, f"class {i % 10}"))
    return items


class PlainPIL(torch.utils.data.Dataset):
    """The baseline: open with PIL, convert, transform; default collate."""

    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(Image.open(self.paths[i]).convert("RGB"))


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished (joined) children, e.g. loader workers."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run."""
    c, t = cpu_seconds(), time.perf_counter()
    fn(*args)
    return time.perf_counter() - t, cpu_seconds() - c


def run_plain(paths, tf, workers, batch_size):
    t = time.perf_counter()
    if workers == 0:  # literally a loop
        batch = []
        for p in paths:
            batch.append(tf(Image.open(p).convert("RGB")))
            if len(batch) == batch_size:
                torch.stack(batch)
                batch = []
        if batch:
            torch.stack(batch)
    else:
        for _ in torch.utils.data.DataLoader(PlainPIL(paths, tf), batch_size=batch_size, num_workers=workers):
            pass
    return time.perf_counter() - t


def run_mmlens(items, tf, workers, batch_size):
    ds = ImageDataset(items, [f"class {i}" for i in range(10)], transform=tf)
    t = time.perf_counter()
    for _ in torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate):
        pass
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tf = transforms.Compose(
        [
            transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        items = make_images(Path(tmp), args.n)
        paths = [it.path for it in items]
        run_plain(paths[:64], tf, 0, args.batch_size)  # warm the page cache and the code paths
        run_mmlens(items[:64], tf, 0, args.batch_size)
        print(f"{args.n} JPEGs 224x224, CLIP preprocessing, batch {args.batch_size}, best of {args.repeats}")
        print(
            f"{'workers':>7}  {'plain PIL img/s':>15}  {'mmlens img/s':>12}  {'ratio (best)':>12}  "
            f"{'ratio (median of pairs)':>23}  {'CPU-time ratio':>14}"
        )
        for w in args.workers:
            plain, ours, cpu_plain, cpu_ours = [], [], [], []
            for _ in range(args.repeats):  # alternate so that machine load hits both alike
                wall, cpu = timed(run_plain, paths, tf, w, args.batch_size)
                plain.append(wall)
                cpu_plain.append(cpu)
                wall, cpu = timed(run_mmlens, items, tf, w, args.batch_size)
                ours.append(wall)
                cpu_ours.append(cpu)
            p, o = min(plain), min(ours)
            paired = float(np.median([b / a for a, b in zip(plain, ours)]))
            cpu_ratio = float(np.median(cpu_ours) / np.median(cpu_plain))
            print(
                f"{w:>7}  {args.n / p:>15.1f}  {args.n / o:>12.1f}  {o / p:>12.3f}  {paired:>23.3f}  {cpu_ratio:>14.3f}"
            )


if __name__ == "__main__":
    main()
