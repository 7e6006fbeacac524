"""Statistics of attribution maps: agreement with the trace (rank correlation with [cls] attention, foreground mass).

Pure xarray/numpy/scipy (no torch), so stored attribution groups can be compared on a laptop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "GRID",
    "agreement",
    "foreground_chance",
    "foreground_mass",
    "map_agreement",
    "patch_foreground",
    "rank_correlation",
]

GRID = ("patch_row", "patch_col")


def _check_grid(da: xr.DataArray, what: str) -> None:
    missing = [d for d in GRID if d not in da.dims]
    if missing:
        raise ValueError(f"{what}: expected dims {GRID} (a map on the patch grid), found {da.dims}.")


def _comparable(a: xr.DataArray, ref: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """Match a map carrying a scalar ``variant`` to a reference with a ``variant`` dim; drop clashing coords."""
    for name in ("variant",):
        if name in a.coords and name not in a.dims and name in ref.dims:
            ref = ref.sel({name: a.coords[name].item()})
        if name in ref.coords and name not in ref.dims and name in a.dims:
            a = a.sel({name: ref.coords[name].item()})
    drop = [c for c in ref.coords if c not in ref.dims and c in a.coords]
    ref = ref.drop_vars(drop)
    return a, ref


def _promote_variant(out: xr.DataArray, attribution: xr.DataArray) -> xr.DataArray:
    """A map computed for one variant (scalar ``variant`` coord) gives a result with a length-1 ``variant`` dim,
    so that stacking with two-variant results leaves NaN for the variant it was not computed for."""
    if "variant" in attribution.coords and "variant" not in attribution.dims:
        value = attribution.coords["variant"].item()
        out = out.drop_vars("variant", errors="ignore").expand_dims(variant=[value])
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=-1, method="average")


def _pearson_last(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(axis=-1) / np.where(denom > 0, denom, 1.0), np.nan)


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = _pearson_last(_ranks(a), _ranks(b))
    bad = np.isnan(a).any(axis=-1) | np.isnan(b).any(axis=-1)
    return np.where(bad, np.nan, out)


def rank_correlation(attribution: xr.DataArray, reference: xr.DataArray) -> xr.DataArray:
    """Spearman rank correlation over the patch grid between an attribution map and a reference map.

    The reference is usually the trace's ``cls_attention`` (â, dims ``[variant,] image, layer,
    head, patch_row, patch_col``); the result keeps every other dim of both (broadcast by label),
    e.g. ``image x layer x head`` for a pixel map, matched layer by layer for a map that has its own
    ``layer`` dim (attention GradCAM). A map with a scalar ``variant`` coordinate is compared with
    the reference's matching variant. Constant maps (no ranking) give NaN.

    Examples
    --------
    >>> import xarray as xr, numpy as np
    >>> a = xr.DataArray(np.arange(4.0).reshape(1, 2, 2), dims=("image", "patch_row", "patch_col"))
    >>> ref = xr.DataArray(np.array([[[[[1.0, 2.0], [3.0, 9.0]]]]]),
    ...                    dims=("image", "layer", "head", "patch_row", "patch_col"))
    >>> float(rank_correlation(a, ref).squeeze())
    1.0
    """
    _check_grid(attribution, "attribution")
    _check_grid(reference, "reference")
    a, ref = _comparable(attribution, reference)
    a = a.transpose(..., *GRID).stack(_patch=GRID)
    ref = ref.transpose(..., *GRID).stack(_patch=GRID)
    out = xr.apply_ufunc(_spearman, a, ref, input_core_dims=[["_patch"], ["_patch"]], join="inner",
                         dask="parallelized", output_dtypes=[float])
    empty = [d for d in out.dims if out.sizes[d] == 0]
    if empty:
        raise ValueError(f"The map and the reference share no labels along {empty}; pass the same images "
                         "(the 'image' coordinate values must match).")
    out.name = "rank_correlation"
    return _promote_variant(out, attribution)


def foreground_mass(attribution: xr.DataArray, foreground: xr.DataArray) -> xr.DataArray:
    """Share of a map's absolute mass on the foreground: ``sum_j |m_j| fg_j / sum_j |m_j|``.

    ``foreground`` is the fraction of foreground pixels per patch (``image x patch_row x patch_col``,
    the trace's ``foreground``). A map with no mass gives NaN. Compare with :func:`foreground_chance`,
    the value of a uniform map.

    Examples
    --------
    >>> import xarray as xr, numpy as np
    >>> fg = xr.DataArray([[[1.0, 0.0], [0.0, 0.0]]], dims=("image", "patch_row", "patch_col"))
    >>> m = xr.DataArray([[[3.0, -1.0], [0.0, 0.0]]], dims=("image", "patch_row", "patch_col"))
    >>> float(foreground_mass(m, fg)[0]), float(foreground_chance(fg)[0])
    (0.75, 0.25)
    """
    _check_grid(attribution, "attribution")
    _check_grid(foreground, "foreground")
    a, fg = _comparable(attribution, foreground)
    mass = abs(a)
    total = mass.sum(GRID)
    out = (mass * fg).sum(GRID) / total.where(total > 0)
    out.name = "foreground_mass"
    return _promote_variant(out, attribution)


def map_agreement(attribution: np.ndarray, attention: np.ndarray, foreground: np.ndarray | None) -> dict[str, float]:
    """:func:`rank_correlation` and :func:`foreground_mass` of one image's maps, as plain floats (for views).

    Parameters
    ----------
    attribution, attention
        (patch_row, patch_col) maps.
    foreground
        (patch_row, patch_col) foreground fractions, or ``None``.

    Returns
    -------
    dict
        ``spearman``: rank correlation of the two maps over patches (NaN for a constant or non-finite
        map); with a mask, ``foreground_mass``: ``Σ|m_j| f_j / Σ|m_j|`` and ``foreground_chance``:
        ``mean_j f_j`` (the mass of a uniform map).

    Examples
    --------
    >>> a = np.arange(16.0).reshape(4, 4)
    >>> map_agreement(a, a, None)
    {'spearman': 1.0}
    >>> out = map_agreement(np.array([[3.0, -1.0], [0.0, 0.0]]), a[:2, :2], np.array([[1.0, 0.0], [0.0, 0.0]]))
    >>> {k: round(v, 3) for k, v in out.items()}
    {'spearman': -0.316, 'foreground_mass': 0.75, 'foreground_chance': 0.25}
    """
    x = np.ravel(attribution).astype(np.float64)
    y = np.ravel(attention).astype(np.float64)
    out: dict[str, float] = {"spearman": float("nan")}
    if np.isfinite(x).all() and np.isfinite(y).all():
        out["spearman"] = float(_spearman(x[None], y[None])[0])
    if foreground is not None:
        fg = xr.DataArray(np.asarray(foreground, dtype=np.float64), dims=GRID)
        amap = xr.DataArray(np.asarray(attribution, dtype=np.float64), dims=GRID)
        out["foreground_mass"] = float(foreground_mass(amap, fg))
        out["foreground_chance"] = float(foreground_chance(fg))
    return out


def foreground_chance(foreground: xr.DataArray) -> xr.DataArray:
    """The foreground mass of a uniform map: the mean foreground fraction over patches, per image."""
    _check_grid(foreground, "foreground")
    out = foreground.mean(GRID)
    out.name = "foreground_chance"
    return out


def patch_foreground(masks: Any, patch_size: int | Sequence[int], *, image: Sequence[Any] | None = None
                     ) -> xr.DataArray:
    """Fraction of foreground pixels per ViT patch from pixel masks ``[image, H, W]`` (values in [0, 1]).

    Images without a mask (all-NaN, as ``mmlens.data.collate`` fills them) stay NaN.

    Examples
    --------
    >>> m = np.zeros((1, 4, 4)); m[0, :2, :2] = 1; m[0, 2, 2] = 1
    >>> patch_foreground(m, 2).values[0].tolist()
    [[1.0, 0.0], [0.0, 0.25]]
    """
    arr = np.asarray(masks, dtype=np.float64)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"Expected masks [image, height, width], found shape {arr.shape}.")
    ph, pw = (patch_size, patch_size) if np.isscalar(patch_size) else tuple(patch_size)
    n, h, w = arr.shape
    if h % ph or w % pw:
        raise ValueError(f"Mask size {(h, w)} is not a multiple of the patch size {(ph, pw)}; use masks at the "
                         "model's input resolution.")
    frac = arr.reshape(n, h // ph, ph, w // pw, pw).mean(axis=(2, 4))
    coords = {"image": np.arange(n) if image is None else np.asarray(image),
              "patch_row": np.arange(h // ph), "patch_col": np.arange(w // pw)}
    return xr.DataArray(frac, dims=("image", *GRID), coords=coords, name="foreground")


def agreement(
    maps: Mapping[str, xr.DataArray] | xr.Dataset,
    *,
    cls_attention: xr.DataArray | None = None,
    foreground: xr.DataArray | None = None,
) -> xr.Dataset:
    """Agreement of several attribution maps with the trace, stacked along an ``attribution`` dim.

    (The dim is not called ``method``: ``.sel(method=...)`` is xarray's fill-method argument.)

    Parameters
    ----------
    maps : dict or Dataset
        Maps on the patch grid (e.g. ``{"occlusion": occ, "ig_pixels": ig}`` or an attribution
        Dataset from :func:`mmlens.attribution.to_dataset`); variables without the grid are skipped.
    cls_attention : DataArray, optional
        The trace's â (``[variant,] image, layer, head, patch_row, patch_col``).
    foreground : DataArray, optional
        Foreground fraction per patch (``image, patch_row, patch_col``).

    Returns
    -------
    xarray.Dataset
        ``rank_correlation`` (attribution, ..., layer, head) when ``cls_attention`` is given;
        ``foreground_mass`` (attribution, ...) and ``foreground_chance`` (image) when ``foreground`` is.
        Maps without a ``layer`` dim have the same foreground mass at every layer after stacking.
    """
    items = {str(k): v for k, v in (maps.data_vars.items() if isinstance(maps, xr.Dataset) else maps.items())
             if all(d in v.dims for d in GRID)}
    if not items:
        raise ValueError("agreement needs at least one map with dims patch_row and patch_col.")
    out = xr.Dataset()
    if cls_attention is not None:
        out["rank_correlation"] = _stack({k: rank_correlation(v, cls_attention) for k, v in items.items()})
    if foreground is not None:
        out["foreground_mass"] = _stack({k: foreground_mass(v, foreground) for k, v in items.items()})
        out["foreground_chance"] = foreground_chance(foreground)
    if not out.data_vars:
        raise ValueError("agreement needs cls_attention=... and/or foreground=... to compare the maps with.")
    return out


def _stack(parts: Mapping[str, xr.DataArray]) -> xr.DataArray:
    arrays = list(xr.broadcast(*parts.values()))
    return xr.concat(arrays, dim=xr.Variable("attribution", list(parts)), join="outer", coords="minimal",
                     compat="override")
