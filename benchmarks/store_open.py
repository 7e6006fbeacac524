"""Cost of the default integrity check: ``mmlens.open`` with and without it, on an 11 x 2000-image study.

Writes 11 run stores of 2000 synthetic images each (``mmlens.store.synthetic.example_tree``, streamed by
``StoreWriter`` in chunks of 32 images, as ``trace_to_store`` writes them), then times, interleaved:

- opening all 11 stores with the default check (directory listings against the integrity record, and
  checked reads of the coordinates xarray loads on opening) and without it (``check=False``), and the
  listing check alone;
- reading one variable of every store whole (``prompt_mass``), with checked reads (size and crc32 of
  every chunk) and without.

Prints median seconds and the ratios checked / unchecked.

    python benchmarks/store_open.py [--datasets 11] [--images 2000] [--repeats 7] [--dir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

from _timing import interleaved_medians

import mmlens
from mmlens.store.synthetic import example_tree
from mmlens.store.writer import StoreWriter

CHUNK = 32


def make_stores(folder: Path, n_datasets: int, n_images: int) -> list[Path]:
    paths = []
    for d in range(n_datasets):
        path = folder / f"run{d:02d}.zarr"
        paths.append(path)
        if path.exists():
            continue
        tree = example_tree(n_images=n_images, n_layers=12, n_heads=4, grid=4, n_classes=10, width=8,
                            dataset=f"dataset{d}", with_vectors=False)
        with StoreWriter(path, dict(tree.attrs), chunk_images=CHUNK, total=n_images) as writer:
            for lo in range(0, n_images, 250):
                writer.append(tree.isel(image=slice(lo, lo + 250)))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=int, default=11)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dir", default=None, help="keep the stores here (default: a temporary folder)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="store_open_"))
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    paths = make_stores(folder, args.datasets, args.images)
    n_chunks = sum(1 for p in paths for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    print(f"{len(paths)} stores x {args.images} images, {n_chunks} chunk files, written in "
          f"{time.perf_counter() - start:.1f} s ({folder})")

    from mmlens.store import integrity

    def listing_check() -> None:
        for p in paths:
            meta, _ = integrity.read_metadata(p)
            assert not integrity.listing_problems(p, meta, integrity.load_record(integrity.root_attrs(meta)))

    check_only = interleaved_medians({"check": listing_check}, repeats=args.repeats)["check"]
    opens = interleaved_medians({
        "checked": lambda: [mmlens.open(p) for p in paths],
        "unchecked": lambda: [mmlens.open(p, check=False) for p in paths],
    }, repeats=args.repeats)
    reads = interleaved_medians({
        "checked": lambda: [mmlens.open(p)["vision"]["prompt_mass"].values for p in paths],
        "unchecked": lambda: [mmlens.open(p, check=False)["vision"]["prompt_mass"].values for p in paths],
    }, repeats=args.repeats)
    print(f"open all {len(paths)} stores : checked {opens['checked']:.3f} s, unchecked {opens['unchecked']:.3f} s, "
          f"ratio {opens['checked'] / opens['unchecked']:.3f}")
    print(f"the listing check alone: {check_only:.3f} s ({100 * check_only / opens['unchecked']:.1f} % of an "
          "unchecked open)")
    print(f"open + read prompt_mass: checked {reads['checked']:.3f} s, unchecked {reads['unchecked']:.3f} s, "
          f"ratio {reads['checked'] / reads['unchecked']:.3f}")


if __name__ == "__main__":
    main()
