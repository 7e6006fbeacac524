"""Elementary derived numbers shared by every table and view: the harmonic mean and the NaN-safe ratio."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

__all__ = ["harmonic_mean", "safe_ratio"]


def harmonic_mean(base: Any, novel: Any) -> Any:
    """HM = 2 B N / (B + N), the base-to-novel summary; 0 when both are 0, NaN when either is NaN.

    Works on numbers, numpy arrays and xarray objects alike (element-wise); a number gives a float.

    Examples
    --------
    >>> harmonic_mean(80.0, 60.0)
    68.57142857142857
    >>> harmonic_mean(0.0, 0.0), harmonic_mean(float("nan"), 50.0)
    (0.0, nan)
    >>> harmonic_mean(np.array([80.0, 0.0]), np.array([60.0, 0.0])).round(2).tolist()
    [68.57, 0.0]
    """
    if isinstance(base, (xr.DataArray, xr.Dataset)) or isinstance(novel, (xr.DataArray, xr.Dataset)):
        return xr.apply_ufunc(harmonic_mean, base, novel, dask="allowed", keep_attrs=True)
    b, n = np.asarray(base, dtype=float), np.asarray(novel, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        # the limit of 2BN/(B+N) at B = N = 0 is 0 (the published convention); NaN stays NaN
        out = np.where(b + n == 0, 0.0, 2 * b * n / (b + n))
    return float(out) if out.ndim == 0 else out


def safe_ratio(num: xr.DataArray, den: xr.DataArray) -> xr.DataArray:
    """``num / den``, NaN (without a warning) where the denominator is not positive (nothing to divide by).

    Examples
    --------
    >>> safe_ratio(xr.DataArray([1.0, 2.0]), xr.DataArray([2.0, 0.0])).values.tolist()
    [0.5, nan]
    """
    return num / den.where(den > 0)
