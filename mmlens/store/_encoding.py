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
