"""Stores written region by region by many processes (a distributed trace): layout, pending record, compaction.

Torch-free. A distributed trace (:mod:`mmlens.tracing.distributed`) lays a store out over its *input
items*: image slot ``i`` holds input item ``i``, and a region is ``images_per_shard`` slots (the store's
region of :func:`~mmlens.store._encoding.images_per_shard`: every variable's zarr-3 shard along ``image``
divides it, so a region is whole shard files of every variable, never part of one; the last region, and
the last shard of each variable in it, may be partial). Every region is therefore written by exactly one
process, and a rewrite of it is idempotent. The store's metadata and coordinates are written first
(:func:`create`), each worker writes its own regions (:func:`write_region`) and the client alone commits
each finished region into the store's ``_progress`` and integrity record (:func:`commit_region`: one
replace of the root ``zarr.json``, :func:`~mmlens.store._encoding.write_root`). A region not committed yet
is *pending*: readers see the complete prefix, never a half-written region.

Unreadable items leave a masked slot (NaN, label -1, empty strings). When a run had any, a compacting
pass (:func:`create_compacted` then :func:`copy_region` per output region, then :func:`swap_in`) copies
the readable images into a store laid out over images, so the finished store equals the one a
single-process ``trace_to_store`` writes (docs/scaling.md, "Unreadable items").
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from mmlens.store import integrity, schema
from mmlens.store._encoding import (
    CHUNK_KEY_ENCODING,
    ZARR_FORMAT,
    image_encoding,
    images_per_shard,
    plain_strings,
    restore_root,
    vlen_strings,
    write_root,
)
from mmlens.store.writer import _static_encoding

__all__ = [
    "LAYOUT",
    "RegionStatus",
    "shard_ranges",
    "shard_size",
    "create",
    "write_region",
    "read_progress",
    "commit_region",
    "region_status",
    "finalize",
    "create_compacted",
    "copy_region",
    "swap_in",
    "recover",
    "COMPACTED_SUFFIX",
]

#: ``_progress["layout"]`` of a store written by regions (a StoreWriter store has no ``layout``).
LAYOUT = "regions"
#: The compacted copy of a store is written next to it, then renamed into place.
COMPACTED_SUFFIX = ".compacted"
_FAILURE_DIM = "failure"


class RegionStatus(NamedTuple):
    """Which regions of a region-written store are complete (committed) and which are pending."""

    n_regions: int
    complete: tuple[int, ...]
    pending: tuple[int, ...]
    images_per_shard: int


def shard_ranges(n_items: int, per_shard: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` of every region over ``n_items`` slots, ``per_shard`` each (the last may be shorter).

    Examples
    --------
    >>> shard_ranges(10, 4)
    [(0, 4), (4, 8), (8, 10)]
    """
    return [(lo, min(lo + per_shard, n_items)) for lo in range(0, n_items, per_shard)]


def shard_size(batch: Mapping[str, xr.Dataset], batch_size: int, *, override: int | None = None) -> int:
    """Images per region: the store's byte-sized policy (``images_per_shard``), a multiple of ``batch_size``.

    A multiple of the batch size, so that every region is traced in exactly the batches a
    single-process run forms (the same images in each batch: the same numbers, bit for bit). The
    store is then created with this number as its ``images_per_shard``, so every variable's shard
    divides it (:func:`~mmlens.store._encoding.image_encoding`).

    Examples
    --------
    >>> shard_size({}, 32, override=70)
    64
    """
    wanted = override if override is not None else images_per_shard(batch)
    return max(batch_size, int(wanted) // batch_size * batch_size)


# ----------------------------------------------------------------------------------------------
# creating the layout (metadata and coordinates first)
# ----------------------------------------------------------------------------------------------


def _fill(dtype: np.dtype) -> Any:
    if dtype.kind == "f":
        return np.nan
    if dtype.kind in "iu":
        return -1
    if dtype.kind == "b":
        return False
    return ""


def _image_template(ds: xr.Dataset, n: int, per_shard: int) -> xr.Dataset:
    """``ds`` (a few images) as ``n`` unwritten slots: lazy numbers (only metadata is written), empty strings."""
    import dask.array as da

    out = {}
    for name, var in ds.variables.items():
        if "image" not in var.dims or name == "image":
            continue
        shape = tuple(n if d == "image" else s for d, s in zip(var.dims, var.shape))
        if var.dtype.kind in "OUST":
            # strings are written now (xarray cannot declare a lazy string array): small 1-D coordinates
            data: Any = np.full(shape, "", dtype=object)
        else:
            chunks = tuple(per_shard if d == "image" else s for d, s in zip(var.dims, var.shape))
            data = da.full(shape, _fill(var.dtype), dtype=var.dtype, chunks=chunks)
        out[name] = xr.Variable(var.dims, data, attrs=var.attrs)
    data_vars = {k: v for k, v in out.items() if k in ds.data_vars}
    coords = {k: v for k, v in out.items() if k not in ds.data_vars}
    coords["image"] = np.arange(n)
    static = ds.drop_vars([v for v in ds.variables if "image" in ds[v].dims or _FAILURE_DIM in ds[v].dims])
    return static.assign(data_vars).assign_coords(coords).assign_attrs(ds.attrs)


def create(
    path: str | os.PathLike,
    groups: Mapping[str, xr.Dataset],
    *,
    n_items: int,
    per_shard: int,
    provenance: Mapping[str, Any],
) -> dict[str, Any]:
    """Write a store's metadata and coordinates for ``n_items`` slots; no image data yet.

    ``groups`` is a trace of a few images (its image variables give names, dims and dtypes; its
    other variables, e.g. the ``text`` group, are written as they are). The store is written into
    ``<path>.partial`` and renamed into place, so it exists whole or not at all. Returns its
    ``_progress`` record.

    Examples
    --------
    >>> import tempfile
    >>> from mmlens.store.synthetic import example_tree
    >>> tree = example_tree(n_images=2)
    >>> groups = {k: v.to_dataset() for k, v in tree.children.items()}
    >>> path = tempfile.mkdtemp() + "/run.zarr"
    >>> progress = create(path, groups, n_items=10, per_shard=4, provenance=dict(tree.attrs))
    >>> region_status(path).pending
    (0, 1, 2)
    """
    import zarr

    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    zarr.open_group(partial, mode="w", zarr_format=ZARR_FORMAT)
    image_arrays: list[str] = []
    placeholders: list[str] = []  # string arrays xarray wrote at once: emptied again below
    for name, ds in groups.items():
        ds = ds.drop_vars([v for v in ds.variables if _FAILURE_DIM in ds[v].dims])
        encoding = _static_encoding(ds)
        if "image" in ds.dims:
            ds = _image_template(ds, n_items, per_shard)
            encoding.update(image_encoding(ds, per_shard))
            image_arrays += [f"{name}/{v}" for v in ds.variables if "image" in ds[v].dims and v != "image"]
            placeholders += [f"{name}/{v}" for v in ds.variables if "image" in ds[v].dims and ds[v].dtype == object]
        vlen_strings(ds).to_zarr(partial, group=name, mode="a", zarr_format=ZARR_FORMAT, consolidated=False,
                                 compute=False, encoding=encoding)
    for array in placeholders:
        _drop_chunks(partial / array)
    record = integrity.update_record(partial, {})  # the `image` index is written whole, now, and recorded
    for array in image_arrays:  # the image variables: recorded region by region, as each is committed
        record[array] = {}
    progress = {
        "layout": LAYOUT, "images": 0, "failures": 0, "items": 0, "batches": 0, "complete": False,
        "arrays": sorted(record), "total": int(n_items), "runs": [], "images_per_shard": int(per_shard),
        "image_arrays": sorted(image_arrays), "regions": {}, "item_failures": [], "run": 0,
    }
    write_root(partial, {**dict(provenance), schema.PROGRESS_ATTR: _dumps(progress),
                         schema.CHUNKS_ATTR: _dumps(record)})
    os.replace(partial, path)
    return progress


def _drop_chunks(array: Path) -> None:
    """Delete the shard files of a just-created array, keeping its metadata: every region is then unwritten.

    xarray writes string arrays at once (it cannot declare a lazy one), so their placeholder chunks would
    otherwise sit in pending regions as files the integrity record does not know.
    """
    if not array.is_dir():
        return
    for entry in array.iterdir():
        if entry.name in integrity.META_FILES:
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# ----------------------------------------------------------------------------------------------
# workers: one region each
# ----------------------------------------------------------------------------------------------


def write_region(
    path: str | os.PathLike,
    groups: Mapping[str, xr.Dataset],
    lo: int,
    hi: int,
    positions: Sequence[int],
    image_arrays: Sequence[str],
) -> dict[str, dict[str, list[int]]]:
    """Write one region (slots ``lo:hi``) from the images traced there; return its integrity entries.

    ``groups`` hold the region's readable images in order, ``positions`` their slots; the other slots
    (unreadable items) are masked: NaN, label -1, empty strings. Idempotent: writing the same region
    twice leaves the same bytes. ``lo:hi`` is a region of :func:`shard_ranges`, so it covers whole shard
    files of every variable (the last region ends with the array, and so does its last shard): only the
    region's own files are written, and no other process writes them.

    Returns the integrity entries (byte size, crc32) of the region's shard files of ``image_arrays``,
    read while they are in this process's page cache (:func:`~mmlens.store.integrity.update_record`
    with ``{"image": (lo, hi)}``); the client records them with :func:`commit_region`.
    """
    slots = np.arange(lo, hi)
    positions = np.asarray(positions, dtype=np.int64)
    for name, ds in groups.items():
        keep = [v for v in ds.variables if "image" in ds[v].dims and v != "image"]
        if not keep:
            continue
        part = ds[[v for v in keep if v in ds.data_vars]]
        part = part.drop_vars([c for c in part.coords if "image" not in part[c].dims])
        part = part.assign_coords({c: ds[c].variable for c in keep if c in ds.coords})
        part = part.assign_coords(image=positions)
        if len(positions) != hi - lo:
            fill = {v: _fill(part[v].dtype) for v in part.variables if v != "image"}
            part = part.reindex(image=slots, fill_value=fill)
            for v in part.variables:  # reindex widens ints to float where it filled; give them their dtype back
                if v in ds.variables and part[v].dtype != ds[v].dtype and ds[v].dtype.kind in "iub":
                    part[v] = part[v].astype(ds[v].dtype)
        part = vlen_strings(part.drop_vars("image"))
        part.attrs = {}
        part.to_zarr(path, group=name, mode="r+", region={"image": slice(lo, hi)}, zarr_format=ZARR_FORMAT,
                     consolidated=False)
    # every array known to update_record, so that it reads only this region's files (arrays it does not
    # know it would record whole); only the image arrays' entries change
    known = {a: {} for a in integrity._meta_arrays(integrity.read_metadata(path)[0])}
    entries = integrity.update_record(path, known, {"image": (lo, hi)})
    return {a: entries[a] for a in image_arrays if a in entries}


# ----------------------------------------------------------------------------------------------
# the client: commits
# ----------------------------------------------------------------------------------------------


def read_progress(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(progress, record, provenance)`` of a store, from its root ``zarr.json``."""
    attrs = integrity.root_attrs(integrity.read_metadata(path)[0])
    progress = json.loads(attrs.get(schema.PROGRESS_ATTR, "{}"))
    record = json.loads(attrs.get(schema.CHUNKS_ATTR, "{}"))
    provenance = {k: v for k, v in attrs.items() if k not in schema.BOOKKEEPING_ATTRS}
    return progress, record, provenance


def _prefix_images(progress: Mapping[str, Any]) -> int:
    """Slots of the complete prefix of regions before the first unreadable item: images a reader may see."""
    per, total = progress["images_per_shard"], progress["total"]
    done = progress["regions"]
    n = 0
    for k, (_, hi) in enumerate(shard_ranges(total, per)):
        entry = done.get(str(k))
        if entry is None:
            break
        if entry["failures"]:
            break
        n = hi
    return n


def _write_attrs(path: Path, progress: Mapping[str, Any], record: Mapping[str, Any],
                 extra: Mapping[str, Any] | None = None) -> None:
    """Counts, record and consolidated metadata in one replace of the root ``zarr.json`` (the commit)."""
    attrs = integrity.root_attrs(integrity.read_metadata(path)[0])
    write_root(path, {**attrs, **dict(extra or {}), schema.PROGRESS_ATTR: _dumps(progress),
                      schema.CHUNKS_ATTR: _dumps(record)})


def commit_region(
    path: str | os.PathLike,
    progress: dict[str, Any],
    record: dict[str, Any],
    region: int,
    *,
    n_images: int,
    failures: Sequence[Sequence[Any]],
    entries: Mapping[str, Mapping[str, list[int]]],
) -> None:
    """Record a finished region (its images, its unreadable items, its shards' bytes and crc32), in place.

    ``entries`` are what :func:`write_region` returned for the region. Only the client calls this: the
    root ``zarr.json`` has one writer.
    """
    per, total = progress["images_per_shard"], progress["total"]
    for array, chunks in entries.items():
        record.setdefault(array, {}).update({k: list(v) for k, v in chunks.items()})
    progress["regions"][str(region)] = {"images": int(n_images), "failures": len(failures),
                                        "run": progress.get("run", 0)}
    known = {int(f[0]) for f in progress["item_failures"]}
    progress["item_failures"] = sorted([*progress["item_failures"],
                                        *([int(f[0]), str(f[1]), str(f[2])] for f in failures
                                          if int(f[0]) not in known)])
    progress["items"] = sum(b - a for k, (a, b) in enumerate(shard_ranges(total, per))
                            if str(k) in progress["regions"])
    progress["images"] = _prefix_images(progress)
    progress["batches"] = len(progress["regions"])
    _write_attrs(Path(path), progress, record)


def region_status(path: str | os.PathLike) -> RegionStatus | None:
    """Complete and pending regions of a region-written store (None for a store written otherwise).

    Examples
    --------
    >>> import tempfile
    >>> from mmlens.store.io import to_zarr
    >>> from mmlens.store.synthetic import example_tree
    >>> region_status(to_zarr(example_tree(), tempfile.mkdtemp() + "/run.zarr")) is None
    True
    """
    meta, _ = integrity.read_metadata(path)
    raw = integrity.root_attrs(meta).get(schema.PROGRESS_ATTR)
    progress = json.loads(raw) if raw else {}
    if progress.get("layout") != LAYOUT:
        return None
    n = len(shard_ranges(progress["total"], progress["images_per_shard"]))
    done = tuple(k for k in range(n) if str(k) in progress["regions"])
    if progress.get("complete"):
        done = tuple(range(n))
    return RegionStatus(n, done, tuple(k for k in range(n) if k not in done), progress["images_per_shard"])


def pending_note(progress: Mapping[str, Any]) -> str:
    """``"; 3 of 8 regions pending (...)"`` for the messages of an unfinished region-written store, else ``""``."""
    if progress.get("layout") != LAYOUT or progress.get("complete"):
        return ""
    n = len(shard_ranges(progress["total"], progress["images_per_shard"]))
    pending = n - len(progress.get("regions", {}))
    return (f"; {pending} of {n} regions pending (a distributed trace: the images shown are the complete "
            "prefix of regions; a pending region is not damage)")


# ----------------------------------------------------------------------------------------------
# finishing: failures, compaction
# ----------------------------------------------------------------------------------------------


def finalize(
    path: str | os.PathLike,
    progress: dict[str, Any],
    record: dict[str, Any],
    *,
    n_images: int,
    failures: Sequence[Sequence[Any]],
    runs: Sequence[Sequence[int]],
    extra_attrs: Mapping[str, Any] | None = None,
) -> None:
    """Mark a store laid out over images complete: its ``vision/failures`` and final counts.

    ``failures`` are ``(item, path, error)`` in item order, written as the single-process writer
    writes them (``failures`` along ``failure`` with the ``failure_path`` coordinate).
    """
    path = Path(path)
    if failures:
        ds = xr.Dataset(
            {"failures": (_FAILURE_DIM, np.array([str(f[2]) for f in failures], dtype=object))},
            coords={"failure_path": (_FAILURE_DIM, np.array([str(f[1]) for f in failures], dtype=object))})
        n = len(failures)
        encoding = {v: {"chunks": (max(n, 64),), "chunk_key_encoding": dict(CHUNK_KEY_ENCODING)} for v in ds.variables}
        ds.to_zarr(path, group="vision", mode="a", zarr_format=ZARR_FORMAT, consolidated=False, encoding=encoding)
        integrity.update_record(path, record, {_FAILURE_DIM: (0, n)})
    progress.update(images=int(n_images), failures=len(failures), items=int(progress["total"]),
                    complete=True, runs=[list(map(int, r)) for r in runs], arrays=sorted(record))
    _write_attrs(path, progress, record, extra_attrs)


def create_compacted(src: str | os.PathLike, dst: str | os.PathLike, *, n_images: int, per_shard: int) -> None:
    """The metadata of ``dst``: ``src`` (laid out over items) laid out over its ``n_images`` readable images."""
    src = Path(src)
    progress, _, provenance = read_progress(src)
    tree = xr.open_datatree(src, engine="zarr", zarr_format=ZARR_FORMAT, consolidated=True, chunks=None)
    readable = _readable(progress)
    groups = {}
    for name, node in tree.children.items():
        ds = node.to_dataset(inherit=False)
        if "image" in ds.dims:
            ds = ds.isel(image=readable[:1])
        groups[name] = _plain(ds.load())
    create(dst, groups, n_items=n_images, per_shard=per_shard, provenance=provenance)


def _readable(progress: Mapping[str, Any]) -> np.ndarray:
    failed = {int(f[0]) for f in progress["item_failures"]}
    return np.array([i for i in range(progress["total"]) if i not in failed], dtype=np.int64)


def _plain(ds: xr.Dataset) -> xr.Dataset:
    return plain_strings(ds).drop_encoding()


def copy_region(src: str | os.PathLike, dst: str | os.PathLike, lo: int, hi: int) -> dict[str, dict[str, list[int]]]:
    """Copy images ``lo:hi`` of the compacted layout from ``src`` (over items) into ``dst``; its integrity entries."""
    progress, _, _ = read_progress(src)
    positions = _readable(progress)[lo:hi]
    dst_progress, _, _ = read_progress(dst)
    groups = {}
    for name in {a.split("/")[0] for a in progress["image_arrays"]}:
        ds = xr.open_zarr(src, group=name, zarr_format=ZARR_FORMAT, consolidated=True, chunks=None)
        ds = ds[[v for v in ds.data_vars if "image" in ds[v].dims]]
        groups[name] = _plain(ds.isel(image=positions).load())
    return write_region(dst, groups, lo, hi, np.arange(lo, hi), dst_progress["image_arrays"])


def swap_in(path: str | os.PathLike, compacted: str | os.PathLike) -> None:
    """Replace the store at ``path`` by its finished compacted copy (renames; the old one is deleted last)."""
    path, compacted = Path(path), Path(compacted)
    old = path.with_name(path.name + ".items")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(compacted, path)
    shutil.rmtree(old, ignore_errors=True)


def recover(path: str | os.PathLike) -> None:
    """Finish what an interrupted compaction left: a complete copy is swapped in, an incomplete one deleted."""
    path = Path(path)
    compacted = path.with_name(path.name + COMPACTED_SUFFIX)
    old = path.with_name(path.name + ".items")
    if path.is_dir():  # the atomic metadata writes of a killed client that never reached their rename
        for leftover in path.glob("*.partial"):
            leftover.unlink(missing_ok=True)
        restore_root(path)  # a root zarr.json lost with the client comes back from its copy
    if compacted.exists():
        try:
            done = bool(read_progress(compacted)[0].get("complete"))
        except Exception:  # noqa: BLE001 - a copy that does not even open is as good as absent
            done = False
        if done and path.exists():
            swap_in(path, compacted)
        elif done:  # killed between the two renames of a swap
            os.replace(compacted, path)
        else:
            shutil.rmtree(compacted)
    if old.exists() and path.exists():
        shutil.rmtree(old)
    elif old.exists():  # killed between the renames, the copy lost since: the items store is still whole
        os.replace(old, path)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
