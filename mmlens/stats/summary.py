"""Summaries of statistics: means with bootstrap confidence intervals over images and seeds."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import xarray as xr

from mmlens.stats._common import layer_kinds_present, provenance

__all__ = ["bootstrap_ci", "summarize"]

ESTIMATES = ["mean", "low", "high"]


def bootstrap_ci(
    da: xr.DataArray,
    dims: Sequence[str] = ("image", "seed"),
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> xr.DataArray:
    """Mean over ``dims`` with a percentile bootstrap confidence interval, vectorised and seeded.

    Resampling is nested in the order of ``dims`` as given, outermost last: with the default,
    seeds are resampled and, within the drawn seeds, images (a two-stage bootstrap). Every
    replicate is a weighted mean ``Σ w x / Σ w`` whose weights are products of multinomial
    counts, so all ``n_boot`` replicates come from one ``xr.dot`` (works on dask arrays). NaN
    entries are left out of both sums. Dims of ``dims`` that ``da`` does not have are ignored.

    Parameters
    ----------
    da
        A statistic (e.g. ``prompt_mass(...)``).
    dims
        Dims to average over and resample.
    n_boot
        Number of bootstrap replicates.
    ci
        Coverage of the interval (0.95: 2.5 % and 97.5 % percentiles).
    seed
        Seed of the resampling; the same seed gives the same interval.

    Returns
    -------
    xarray.DataArray
        ``da``'s other dims plus ``estimate`` = ``mean``, ``low``, ``high``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> x = xr.DataArray(np.random.default_rng(0).normal(1.0, 1.0, 400), dims="image")
    >>> r = bootstrap_ci(x, n_boot=500)
    >>> bool(r.sel(estimate="low") < 1.0 < r.sel(estimate="high"))
    True
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be a coverage in (0, 1), found {ci}")
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2, found {n_boot}")
    present = [d for d in dims if d in da.dims]
    mean = da.mean(present) if present else da
    if not present:
        low = high = mean
    else:
        weights = _weights(da, present[::-1], n_boot, np.random.default_rng(seed))
        valid = da.notnull()
        num = xr.dot(da.fillna(0.0), weights, dim=present)
        den = xr.dot(valid.astype(np.float64), weights, dim=present)
        reps = num / den
        alpha = (1.0 - ci) / 2.0
        q = reps.quantile([alpha, 1.0 - alpha], dim="boot", skipna=True)
        low, high = q.isel(quantile=0, drop=True), q.isel(quantile=1, drop=True)
    out = xr.concat([mean, low, high], dim="estimate", coords="minimal", compat="override", join="outer")
    out = out.assign_coords(estimate=ESTIMATES)
    out = out.transpose(*[d for d in out.dims if d != "estimate"], "estimate")
    out.name = da.name
    out.attrs = {
        **provenance(da),
        "summary": json.dumps({"over": present, "n_boot": n_boot, "ci": ci, "seed": seed, "method": "percentile"}),
    }
    return out


def _weights(da: xr.DataArray, order: list[str], n_boot: int, rng: np.random.Generator) -> xr.DataArray:
    """Products of multinomial resampling counts, outermost dim first: (boot, *order)."""
    w = np.ones((n_boot,))
    dims: list[str] = []
    for dim in order:
        n = da.sizes[dim]
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=(n_boot, *w.shape[1:]))
        w = w[..., None] * counts
        dims.append(dim)
    return xr.DataArray(w, dims=["boot", *dims])


def summarize(
    da: xr.DataArray,
    *,
    over: Sequence[str] = ("image", "seed"),
    average: Sequence[str] = (),
    by_layer_kind: bool = True,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> xr.DataArray:
    """Summarise a statistic: average some dims, group layers by kind, bootstrap over images and seeds.

    Injected and carried layers are reported separately (docs/math.md, consequence 2): with
    ``by_layer_kind`` each image's values are first averaged over the layers of each kind, so
    ``layer`` becomes ``layer_kind`` (``injected``, ``carried``, ``none`` — those present).

    Parameters
    ----------
    da
        A statistic with a ``layer`` dim carrying the ``layer_kind`` coordinate (or without ``layer``).
    over
        Dims to resample (see :func:`bootstrap_ci`).
    average
        Dims to average before resampling (e.g. ``("head",)``); NaN are skipped.
    by_layer_kind
        Group layers by ``layer_kind``; ``False`` keeps every layer (``layer_kind`` stays a coordinate).
    n_boot, ci, seed
        As in :func:`bootstrap_ci`.

    Returns
    -------
    xarray.DataArray
        Remaining dims, ``layer_kind`` (or ``layer``), and ``estimate`` = mean/low/high.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> from mmlens.stats import prompt_mass
    >>> s = summarize(prompt_mass(example_tree()).sel(measure="readout"), average=("head",), n_boot=200)
    >>> s.layer_kind.values.tolist(), s.dims
    (['injected', 'carried'], ('variant', 'layer_kind', 'estimate'))
    """
    attrs = provenance(da)
    x = da
    missing = [d for d in average if d not in x.dims]
    if missing:
        raise ValueError(f"cannot average over {missing}: not dims of this statistic {tuple(x.dims)}")
    if average:
        x = x.mean(list(average))
    if by_layer_kind and "layer" in x.dims:
        if "layer_kind" not in x.coords:
            raise ValueError(
                "by_layer_kind needs the 'layer_kind' coordinate on 'layer'; pass by_layer_kind=False to keep layers"
            )
        order = ["layer_kind" if d == "layer" else d for d in x.dims]
        kinds = layer_kinds_present(x)
        kind_of = np.asarray(x.coords["layer_kind"].values, dtype=object)
        x = xr.concat(
            [x.isel(layer=np.flatnonzero(kind_of == k)).mean("layer") for k in kinds],
            dim="layer_kind",
            coords="minimal",
            compat="override",
            join="outer",
        ).assign_coords(layer_kind=kinds)
        x = x.transpose(*order)
        x = x.drop_vars([c for c in x.coords if c not in x.dims and "layer_kind" in x[c].dims and c != "layer_kind"])
    x.attrs = attrs
    out = bootstrap_ci(x, over, n_boot=n_boot, ci=ci, seed=seed)
    out = out.drop_vars([c for c in out.coords if c not in out.dims])
    out.attrs["summary_averaged"] = json.dumps(list(average))
    out.attrs["summary_by_layer_kind"] = int(by_layer_kind)
    return out
