"""Summaries of statistics: means with confidence intervals over images, seeds and datasets that follow the design."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from mmlens.stats._common import provenance
from mmlens.stats.intervals import (
    BOOTSTRAP,
    VARIANCE_COMPONENTS,
    choose_method,
    design_of,
    percentile_bootstrap,
    vc_interval,
)
from mmlens.store.select import layer_kinds_present

__all__ = ["bootstrap_ci", "summarize"]

ESTIMATES = ["mean", "low", "high"]


def bootstrap_ci(
    da: xr.DataArray,
    dims: Sequence[str] = ("image", "seed"),
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    nested: Mapping[str, str | Sequence[str]] | None = None,
    method: str = "auto",
) -> xr.DataArray:
    """Mean over ``dims`` with a confidence interval that follows the design (crossed and nested dims).

    The design says which resampled dims are nested in which (``nested``; default: images and
    classes nested in ``dataset``, see :func:`mmlens.stats.intervals.design_of`); every other pair
    is crossed, e.g. seeds and images (all seeds trace the same images). Two interval methods
    (docs/statistics.md, "Intervals"):

    - ``variance_components``: ANOVA estimates of the random effects of the design, Satterthwaite
      degrees of freedom, t quantile — right with few levels (3 seeds, 11 datasets);
    - ``percentile_bootstrap``: crossed factors resampled independently and applied jointly (one
      image resample shared by all seeds of a replicate), nested ones within each drawn parent
      level; all replicates from a few ``xr.dot`` contractions (works on dask arrays).

    ``method="auto"`` takes ``variance_components`` when some resampled dim has fewer than
    :data:`~mmlens.stats.intervals.AUTO_MIN_LEVELS` levels, else the bootstrap; the output's
    ``interval_method`` attribute says which. NaN entries are left out. Dims of ``dims`` that ``da``
    lacks (or of size 1) are averaged/ignored.

    Parameters
    ----------
    da
        A statistic (e.g. ``prompt_mass(...)``).
    dims
        Dims to average over and resample.
    n_boot
        Number of bootstrap replicates (bootstrap only).
    ci
        Coverage of the interval (0.95: 2.5 % and 97.5 % points).
    seed
        Seed of the resampling; the same seed gives the same interval.
    nested
        ``{dim: parent dim(s)}`` for dims nested in others, e.g. ``{"image": "dataset"}``; ``{}``
        makes all dims crossed; ``None`` takes the default of the store's structure.
    method
        ``"auto"``, ``"variance_components"`` or ``"percentile_bootstrap"``.

    Returns
    -------
    xarray.DataArray
        ``da``'s other dims plus ``estimate`` = ``mean``, ``low``, ``high``; attrs
        ``interval_method`` and ``summary`` (JSON: dims, design, method, n_boot, ci, seed).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> x = xr.DataArray(np.random.default_rng(0).normal(1.0, 1.0, 400), dims="image")
    >>> r = bootstrap_ci(x, n_boot=500)
    >>> bool(r.sel(estimate="low") < 1.0 < r.sel(estimate="high")), r.attrs["interval_method"]
    (True, 'percentile_bootstrap')
    >>> seeds = xr.DataArray(np.random.default_rng(0).normal(0.0, 1.0, (3, 50)), dims=("seed", "image"))
    >>> bootstrap_ci(seeds).attrs["interval_method"]
    'variance_components'
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be a coverage in (0, 1), found {ci}")
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2, found {n_boot}")
    present = [d for d in dims if d in da.dims]
    design = design_of(da, present, nested)
    chosen = choose_method(design, dict(da.sizes), method)
    mean = da.mean(present) if present else da
    single = [d for d in present if d not in design.factors]  # size-1 dims: nothing to resample
    x = da.mean(single) if single else da
    if not design.factors:
        low = high = mean
    elif chosen == VARIANCE_COMPONENTS:
        _, half, _ = vc_interval(x, design, ci)
        low, high = mean - half, mean + half
    else:
        low, high = percentile_bootstrap(x, design, n_boot=n_boot, ci=ci, rng=np.random.default_rng(seed))
    out = xr.concat([mean, low, high], dim="estimate", coords="minimal", compat="override", join="outer")
    out = out.assign_coords(estimate=ESTIMATES)
    out = out.transpose(*[d for d in out.dims if d != "estimate"], "estimate")
    out.name = da.name
    summary = {"over": present, "design": {"factors": list(design.factors), "nested": design.describe()},
               "method": chosen, "n_boot": n_boot if chosen == BOOTSTRAP else 0, "ci": ci, "seed": seed}
    out.attrs = {**provenance(da), "interval_method": chosen, "summary": json.dumps(summary)}
    return out


def summarize(
    da: xr.DataArray,
    *,
    over: Sequence[str] = ("image", "seed"),
    average: Sequence[str] = (),
    by_layer_kind: bool = True,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    nested: Mapping[str, str | Sequence[str]] | None = None,
    method: str = "auto",
) -> xr.DataArray:
    """Summarise a statistic: average some dims, group layers by kind, interval over images and seeds.

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
    n_boot, ci, seed, nested, method
        As in :func:`bootstrap_ci` (the design of ``over`` and the interval method).

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
    out = bootstrap_ci(x, over, n_boot=n_boot, ci=ci, seed=seed, nested=nested, method=method)
    out = out.drop_vars([c for c in out.coords if c not in out.dims])
    out.attrs["summary_averaged"] = json.dumps(list(average))
    out.attrs["summary_by_layer_kind"] = int(by_layer_kind)
    return out
