"""Chunks sized for scale (issue V): the old layout (zarr format 2, one 32-image chunk per batch) against schema 3's
(zarr format 3, shards sized by bytes along ``image``), on the same synthetic study.

For each patch grid (default 4 x 4 and 14 x 14), writes ``--datasets`` run stores of ``--images`` images
(``mmlens.store.synthetic.example_tree``: 12 layers, 12 heads, full + zeroshot), streamed in batches of 32 images
as ``trace_to_store`` writes them, once in each layout, then prints side by side:

- files and bytes on disk (every file, metadata included);
- write amplification of the streaming writer: bytes written into chunk/shard files over the bytes they hold
  at the end (a partly filled last shard is read and rewritten by every append that adds to it);
- the statistic-to-plain-pass ratio: ``bias_norm_ratio`` (three per-layer norm variables, 12 x smaller than
  ``prompt_mass`` together) over one pass over ``prompt_mass`` (its mean over images), both opened with
  ``mmlens.open`` (checked reads) and computed over every store, median of interleaved repeats;
- the file count of the full ViT-B/16 study (11 datasets' test sets, 3 seeds, 5 variants, a 14 x 14 grid), from
  each layout's rule applied to the arrays a default trace writes.

    python benchmarks/store_chunks.py [--datasets 11] [--images 2000] [--grids 4 14] [--repeats 5] [--dir DIR]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # a shared machine: one core
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import dask  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved_medians  # noqa: E402

import mmlens  # noqa: E402
from mmlens.store import integrity  # noqa: E402
from mmlens.store._encoding import image_encoding, images_per_shard, vlen_strings  # noqa: E402
from mmlens.store.synthetic import example_tree  # noqa: E402
from mmlens.store.writer import StoreWriter  # noqa: E402

BATCH = 32  # images per batch (trace_to_store's default batch size): the old layout's chunk
PIECE = 256  # images generated at a time (memory); a multiple of BATCH
SIZES = dict(n_layers=12, n_heads=12, n_classes=10, width=8, with_vectors=False)
#: Test-set images of the 11 datasets (CoOp's splits: docs/datasets.md lists the datasets).
TEST_IMAGES = {"ImageNet": 50000, "Caltech101": 2465, "OxfordPets": 3669, "StanfordCars": 8041, "Flowers102": 2463,
               "Food101": 30300, "FGVCAircraft": 3333, "SUN397": 19850, "DTD": 1692, "EuroSAT": 8100, "UCF101": 3783}
VARIANTS = ("full", "zeroshot", "bias_only", "redistribution_only", "constant_bias")


# ------------------------------------------------------------------------------------------------
# counting bytes written
# ------------------------------------------------------------------------------------------------

_written = {"chunks": 0}


def _count_chunk_writes() -> None:
    """Count bytes zarr writes into chunk/shard files (not metadata), for the write amplification."""
    import zarr.storage

    orig = zarr.storage.LocalStore.set

    async def set_(self, key, value, *a, **k):
        if not key.rsplit("/", 1)[-1].startswith((".z", "zarr.json")):
            _written["chunks"] += len(value)
        return await orig(self, key, value, *a, **k)

    zarr.storage.LocalStore.set = set_


def _chunk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.name.startswith((".z", "zarr.json")))


# ------------------------------------------------------------------------------------------------
# the two layouts
# ------------------------------------------------------------------------------------------------


def pieces(d: int, n_images: int, grid: int):
    for lo in range(0, n_images, PIECE):
        yield example_tree(n_images=min(PIECE, n_images - lo), grid=grid, seed=1000 * d + lo, dataset=f"dataset{d}",
                           **SIZES)


def write_old(path: Path, d: int, n_images: int, grid: int) -> None:
    """Format 2, one 32-image chunk per batch, record in ``.zattrs``: what the schema-2 writer wrote."""
    import json

    import zarr

    root = zarr.open_group(path, mode="w", zarr_format=2)
    first = True
    start = 0
    attrs = {}
    for tree in pieces(d, n_images, grid):
        for lo in range(0, tree["vision"].sizes["image"], BATCH):
            batch = tree.isel(image=slice(lo, lo + BATCH))
            n = batch["vision"].sizes["image"]
            for name, node in batch.children.items():
                ds = vlen_strings(node.to_dataset(inherit=False))
                if "image" in ds.dims:
                    ds = ds.assign_coords(image=range(start, start + n))
                if first:
                    enc = {v: {"chunks": tuple(BATCH if k == "image" else s for k, s in ds[v].sizes.items())}
                           for v in ds.variables if "image" in ds[v].dims}
                    ds.to_zarr(path, group=name, mode="a", zarr_format=2, consolidated=False, encoding=enc)
                elif "image" in ds.dims:
                    ds = ds[[v for v in ds.data_vars if "image" in ds[v].dims]]
                    ds = ds.drop_vars([c for c in ds.coords if "image" not in ds[c].dims])
                    ds.to_zarr(path, group=name, mode="a", zarr_format=2, consolidated=False, append_dim="image")
            attrs = dict(tree.attrs)
            first = False
            start += n
    record = integrity.update_record(path, {})
    root.attrs.put({**attrs, "mmlens_schema": 2, "_chunks": json.dumps(record)})
    zarr.consolidate_metadata(path, zarr_format=2)


def write_new(path: Path, d: int, n_images: int, grid: int) -> None:
    writer = None
    for tree in pieces(d, n_images, grid):
        if writer is None:
            writer = StoreWriter(path, dict(tree.attrs), total=n_images, overwrite=True)
        for lo in range(0, tree["vision"].sizes["image"], BATCH):
            writer.append(tree.isel(image=slice(lo, lo + BATCH)))
    writer.close()


# ------------------------------------------------------------------------------------------------
# the full study, on paper
# ------------------------------------------------------------------------------------------------


def full_study_files() -> dict[str, int]:
    """Files of the full ViT-B/16 study in each layout, from each layout's rule and one image of every array."""
    tree = example_tree(n_images=1, n_layers=12, n_heads=12, grid=14, width=768, variants=VARIANTS,
                        with_vectors=False, n_classes=1000)
    groups = {name: node.to_dataset(inherit=False) for name, node in tree.children.items()}
    region = images_per_shard(groups)
    image_arrays = sum(1 for ds in groups.values() for v in ds.variables if "image" in ds[v].dims)
    other_arrays = sum(1 for ds in groups.values() for v in ds.variables if "image" not in ds[v].dims)
    nodes = image_arrays + other_arrays + len(groups) + 1  # one metadata file per array and group, and the root
    # schema 3: each variable's shard sized by its own bytes, all dividing the region
    encodings = {name: image_encoding(ds, region) for name, ds in groups.items()}
    shards = [enc["shards"][groups[g][v].dims.index("image")] for g, e in encodings.items() for v, enc in e.items()]
    old = new = same = 0
    for n in TEST_IMAGES.values():
        # format 2: .zarray + .zattrs per array, .zgroup + .zattrs per group, .zmetadata
        old += 3 * (image_arrays * math.ceil(n / BATCH) + other_arrays + 2 * nodes + 1)
        # format 3: zarr.json per array and group, the root's and its copy
        new += 3 * (sum(math.ceil(n / k) for k in shards) + other_arrays + nodes + 1)
        # for comparison: every variable cut like the largest one
        same += 3 * (image_arrays * math.ceil(n / min(shards)) + other_arrays + nodes + 1)
    enc = encodings["vision"]["cls_attention"]
    return {"old": old, "new": new, "same_shards": same, "images_per_shard": region, "largest_shard": min(shards),
            "image_arrays": image_arrays, "inner_chunk": enc["chunks"][1], "images": 3 * sum(TEST_IMAGES.values())}


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=int, default=11)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--grids", type=int, nargs="+", default=[4, 14])
    parser.add_argument("--large-datasets", type=int, default=2,
                        help="datasets for grids above 8 x 8 (a 14 x 14 store of 2000 images is 1.4 GB per layout)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="keep the stores here (default: a temporary folder)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    _count_chunk_writes()
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="store_chunks_"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"study: {args.datasets} datasets x {args.images} images, 12 layers x 12 heads, full + zeroshot, "
          f"batches of {BATCH}; stores in {folder}")
    for grid in args.grids:
        n_datasets = args.datasets if grid <= 8 else min(args.datasets, args.large_datasets)
        print(f"\n{grid} x {grid} grid: {n_datasets} datasets")
        paths = {}
        stats = {}
        for layout, write in (("old", write_old), ("new", write_new)):
            paths[layout] = [folder / f"g{grid}_{layout}_{d:02d}.zarr" for d in range(n_datasets)]
            _written["chunks"] = 0
            start = time.perf_counter()
            for d, p in enumerate(paths[layout]):
                write(p, d, args.images, grid)
            seconds = time.perf_counter() - start
            files = sum(1 for p in paths[layout] for f in p.rglob("*") if f.is_file())
            size = sum(f.stat().st_size for p in paths[layout] for f in p.rglob("*") if f.is_file())
            held = sum(_chunk_bytes(p) for p in paths[layout])
            stats[layout] = dict(files=files, bytes=size, amplification=_written["chunks"] / held, seconds=seconds)
        meta, _ = integrity.read_metadata(paths["new"][0])
        import json

        shard = json.loads(integrity.root_attrs(meta)["_progress"])["images_per_shard"]

        def run(layout: str, what: str, paths: dict[str, list[Path]] = paths) -> None:
            for p in paths[layout]:
                vision = mmlens.open(p)["vision"]
                if what == "plain":
                    vision["prompt_mass"].mean("image").compute()
                else:
                    vision.to_dataset().mml.bias_norm_ratio().mean("image").compute()

        with dask.config.set(scheduler="synchronous"):
            times = interleaved_medians({f"{layout} {what}": (lambda lay=layout, w=what: run(lay, w))
                                         for layout in ("old", "new") for what in ("plain", "statistic")},
                                        repeats=args.repeats)
        print(f"new layout: {shard} images per shard")
        print(f"{'':38s} {'old (fmt 2, 32/chunk)':>22s} {'new (fmt 3, shards)':>20s} {'new / old':>10s}")
        o, n = stats["old"], stats["new"]
        print(f"{'files':38s} {o['files']:22d} {n['files']:20d} {n['files'] / o['files']:10.3f}")
        print(f"{'MB on disk':38s} {o['bytes'] / 1e6:22.1f} {n['bytes'] / 1e6:20.1f} {n['bytes'] / o['bytes']:10.3f}")
        print(f"{'write amplification (written / held)':38s} {o['amplification']:22.2f} {n['amplification']:20.2f}")
        print(f"{'write time s (incl. generating data)':38s} {o['seconds']:22.1f} {n['seconds']:20.1f} "
              f"{n['seconds'] / o['seconds']:10.3f}")
        for what in ("plain", "statistic"):
            label = "plain pass: prompt_mass mean s" if what == "plain" else "statistic: bias_norm_ratio mean s"
            a, b = times[f"old {what}"], times[f"new {what}"]
            print(f"{label:38s} {a:22.3f} {b:20.3f} {b / a:10.3f}")
        r_old = times["old statistic"] / times["old plain"]
        r_new = times["new statistic"] / times["new plain"]
        print(f"{'statistic / plain pass':38s} {r_old:22.2f} {r_new:20.2f}")
    full = full_study_files()
    print(f"\nfull ViT-B/16 study on paper: 11 test sets x 3 seeds = {full['images']} images, 5 variants, 14 x 14 grid,"
          f" {full['image_arrays']} arrays along image; new layout: regions of {full['images_per_shard']} images, "
          f"shards of {full['largest_shard']} images for the largest variable (inner chunks of {full['inner_chunk']})")
    print(f"files: old {full['old']}, new {full['new']}, new / old {full['new'] / full['old']:.3f}")
    print(f"(every variable cut like the largest: {full['same_shards']} files, "
          f"{full['same_shards'] / full['old']:.3f} of the old)")


if __name__ == "__main__":
    main()
