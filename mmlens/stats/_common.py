"""Shared plumbing of the statistics: picking the group, the readout, required variables, provenance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import xarray as xr

from mmlens.store import schema
from mmlens.store.select import group_dataset, readout

STATS_VERSION = 1


def group_of(data: xr.Dataset | xr.DataTree, tower: str) -> xr.Dataset:
    """The Dataset a statistic works on: a group of a tree (with root provenance), or the Dataset itself.

    All-query outputs are reduced to the readout query first (docs/math.md's statistics are defined there).
    """
    if isinstance(data, xr.DataTree):
        root = data.root
        if data is root or data.parent is None:
            ds = group_dataset(root, tower)
        else:
            ds = data.to_dataset()
            ds.attrs = {**root.attrs, **ds.attrs, "mmlens_group": data.name}
    elif isinstance(data, xr.Dataset):
        ds = data
    else:
        raise TypeError(f"expected an xarray Dataset or DataTree, found {type(data).__name__}")
    group = schema.infer_group(ds)
    if "query" in ds.dims and group in schema.READOUT_ROLE:
        ds = readout(ds, group)
    return ds


def require(ds: xr.Dataset, names: Sequence[str], statistic: str, hint: str = "") -> None:
    """Raise a clear error when a statistic's inputs are missing."""
    missing = [n for n in names if n not in ds.variables]
    if missing:
        raise ValueError(
            f"{statistic} needs variables {list(names)}, this Dataset lacks {missing} "
            f"(it has {sorted(map(str, ds.data_vars))}){'; ' + hint if hint else ''}"
        )


def provenance(ds: xr.Dataset | xr.DataArray) -> dict[str, Any]:
    return {k: v for k, v in ds.attrs.items() if k != schema.PROGRESS_ATTR}


def with_provenance(
    result: xr.DataArray, source: xr.Dataset | xr.DataArray, statistic: str, definition: str, **extra: Any
) -> xr.DataArray:
    """Name the result and re-attach provenance (xarray drops attrs in most operations)."""
    result = result.rename(statistic)
    result.attrs = {
        **provenance(source),
        "statistic": statistic,
        "definition": definition,
        "mmlens_stats_version": STATS_VERSION,
        **{k: schema._storable_attr(k, v) for k, v in extra.items()},
    }
    return result


def stack_measures(parts: dict[str, xr.DataArray]) -> xr.DataArray:
    """Stack several DataArrays of the same shape along a labelled ``measure`` dim."""
    names = list(parts)
    out = xr.concat([parts[n] for n in names], dim="measure", coords="minimal", compat="override", join="outer")
    out = out.assign_coords(measure=names)
    return out.transpose(..., "measure")


def roles_of(da: xr.DataArray, roles: Sequence[str]) -> xr.DataArray:
    """Sum over the given key roles; roles absent from the coordinate contribute zero."""
    have = [str(r) for r in da.coords["key_role"].values]
    present = [r for r in roles if r in have]
    if not present:
        return xr.zeros_like(da.isel(key_role=0, drop=True))
    return da.sel(key_role=present).sum("key_role")
