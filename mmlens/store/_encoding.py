"""How trace trees sit in zarr: format 2, and strings made variable-length on write and plain objects on read.

Shared by :mod:`mmlens.store.io` (open, whole-tree export) and :mod:`mmlens.store.writer` (streaming).
"""

from __future__ import annotations

from typing import Any

import xarray as xr

#: zarr format of every store mmlens writes (v2 keeps variable-length strings readable by older readers)
ZARR_FORMAT = 2


def map_groups(tree: xr.DataTree, fn: Any, keep_root: bool = False) -> xr.DataTree:
    root = tree.to_dataset(inherit=False) if keep_root else xr.Dataset()
    nodes = {"/": root.assign_attrs(dict(tree.attrs))}
    for node in tree.subtree:
        if node is tree:
            continue
        nodes[node.relative_to(tree)] = fn(node.to_dataset(inherit=False))
    return xr.DataTree.from_dict(nodes)


def plain_strings(ds: xr.Dataset) -> xr.Dataset:
    """zarr 3 reads variable-length strings as numpy StringDType; give them back as object arrays.

    Only string variables are loaded (coordinates and ``failures``: small); numbers stay lazy.
    """
    changed = {name: var.load().astype(object) for name, var in ds.variables.items() if var.dtype.kind == "T"}
    if not changed:
        return ds
    data = {k: v for k, v in changed.items() if k in ds.data_vars}
    coords = {k: v for k, v in changed.items() if k not in ds.data_vars}
    return ds.assign(data).assign_coords(coords)


def vlen_strings(ds: xr.Dataset) -> xr.Dataset:
    """Fixed-width numpy strings -> object arrays, which zarr v2 stores as variable-length UTF-8."""
    ds = ds.drop_encoding()
    changed = {
        name: var.astype(object)
        for name, var in ds.variables.items()
        if var.dtype.kind in "UT"  # numpy fixed-width and StringDType strings
    }
    if not changed:
        return ds
    data = {k: v for k, v in changed.items() if k in ds.data_vars}
    coords = {k: v for k, v in changed.items() if k not in ds.data_vars}
    return ds.assign(data).assign_coords(coords)


# ----------------------------------------------------------------------------------------------
# Format-2 stand-ins for the sharding policy of SPECS V-A (the store helper's zarr-3 versions replace
# these at merge; same names and signatures). Format 2 has no shards: a "shard" is one chunk here.
# ----------------------------------------------------------------------------------------------

#: Bytes of image data per shard the policy aims at (all image variables of all groups together).
SHARD_BYTES = 64 * 2**20
#: Bytes per chunk inside a shard (format 2: unused, a chunk is a shard).
CHUNK_BYTES = 4 * 2**20


def images_per_shard(batch: Any, *, shard_bytes: int = SHARD_BYTES) -> int:
    """Images per shard along ``image``: one number for the whole store, sized by bytes.

    ``batch`` maps group names to Datasets holding some images (any number); every variable with an
    ``image`` dim counts. A region of whole shards is one unit of work for a distributed trace.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"x": (("image", "c"), np.zeros((2, 1024), "float32"))})
    >>> images_per_shard({"vision": ds}, shard_bytes=2**20)  # 4 KiB per image
    256
    """
    per_image = 0
    for ds in batch.values():
        n = ds.sizes.get("image", 0)
        if not n:
            continue
        per_image += sum(v.nbytes for v in ds.variables.values() if "image" in v.dims) / n
    return max(1, int(shard_bytes // max(per_image, 1)))


def image_encoding(ds: xr.Dataset, images_per_shard: int, *, chunk_bytes: int = CHUNK_BYTES) -> dict:
    """The zarr encoding (``chunks``) of every variable of ``ds`` with an ``image`` dim.

    Format 2 stand-in: one chunk per shard (``images_per_shard`` images; the other dims whole).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"x": (("variant", "image"), np.zeros((2, 10)))})
    >>> image_encoding(ds, 4)
    {'x': {'chunks': (2, 4)}}
    """
    del chunk_bytes  # no inner chunks without sharding
    return {
        str(name): {"chunks": tuple(images_per_shard if d == "image" else s for d, s in zip(var.dims, var.shape))}
        for name, var in ds.variables.items()
        if "image" in var.dims
    }
