"""Intervals that follow the design: exact ANOVA checks and a simulation suite of coverage (docs/statistics.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats
import xarray as xr

from mmlens.stats import bootstrap_ci, summarize
from mmlens.stats.intervals import (
    BOOTSTRAP,
    VARIANCE_COMPONENTS,
    Design,
    bootstrap_counts,
    choose_method,
    design_of,
    variance_components,
    vc_interval,
)

# ------------------------------------------------------------------------------------------------
# exact checks on hand-made tables
# ------------------------------------------------------------------------------------------------

TABLE = np.array([[1.0, 4.0, 2.0, 7.0], [2.0, 6.0, 2.0, 9.0], [6.0, 5.0, 4.0, 12.0]])  # 3 seeds x 4 images


def test_crossed_anova_matches_the_hand_computation():
    s, i = TABLE.shape
    grand = TABLE.mean()
    rows, cols = TABLE.mean(1), TABLE.mean(0)
    ms_s = i * ((rows - grand) ** 2).sum() / (s - 1)
    ms_i = s * ((cols - grand) ** 2).sum() / (i - 1)
    resid = TABLE - rows[:, None] - cols[None, :] + grand
    ms_e = (resid**2).sum() / ((s - 1) * (i - 1))
    vc = variance_components(xr.DataArray(TABLE, dims=("seed", "image")), Design(("seed", "image")))
    np.testing.assert_allclose(vc["ms"].sel(term=["seed", "image", "image*seed"]), [ms_s, ms_i, ms_e])
    np.testing.assert_allclose(vc["df"].sel(term=["seed", "image", "image*seed"]), [2, 3, 6])
    # E MS_seed = σ²_e + I σ²_s, E MS_image = σ²_e + S σ²_i, E MS_e = σ²_e
    np.testing.assert_allclose(vc["component"].sel(term=["seed", "image", "image*seed"]),
                               [(ms_s - ms_e) / i, (ms_i - ms_e) / s, ms_e])
    # the interval: Var(ȳ) = σ²_s/S + σ²_i/I + σ²_e/(SI) = (MS_s + MS_i − MS_e)/(SI), Satterthwaite df
    n = s * i
    var = (ms_s + ms_i - ms_e) / n
    df = (ms_s + ms_i - ms_e) ** 2 / (ms_s**2 / 2 + ms_i**2 / 3 + ms_e**2 / 6)
    mean, half, dof = vc_interval(xr.DataArray(TABLE, dims=("seed", "image")), Design(("seed", "image")))
    assert float(mean) == pytest.approx(grand)
    assert float(dof) == pytest.approx(df)
    assert float(half) == pytest.approx(scipy.stats.t.ppf(0.975, df) * np.sqrt(var))


def test_nested_anova_matches_scipy_one_way_on_unequal_groups():
    rng = np.random.default_rng(3)
    sizes = [5, 9, 7, 3]
    groups = [rng.normal(g, 1.0, n) for g, n in enumerate(sizes)]
    x = np.full((4, 9), np.nan)  # datasets padded to the largest, as in a study
    for d, g in enumerate(groups):
        x[d, : len(g)] = g
    da = xr.DataArray(x, dims=("dataset", "image"))
    vc = variance_components(da, Design(("dataset", "image"), {"image": ("dataset",)}))
    f = vc["ms"].sel(term="dataset") / vc["ms"].sel(term="dataset*image")
    assert float(f) == pytest.approx(scipy.stats.f_oneway(*groups).statistic)
    np.testing.assert_allclose(vc["df"].sel(term=["dataset", "dataset*image"]), [3, sum(sizes) - 4])


def test_nested_balanced_interval_is_the_t_interval_of_the_dataset_means():
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 1.0, (6, 1)) + rng.normal(0.0, 0.3, (6, 10))  # 6 datasets x 10 images
    means = x.mean(1)
    lo, hi = scipy.stats.t.interval(0.95, 5, loc=means.mean(), scale=scipy.stats.sem(means))
    # the dataset is the unit: Var(ȳ) = var(dataset means)/D exactly, with D - 1 degrees of freedom
    out = bootstrap_ci(xr.DataArray(x, dims=("dataset", "image")), dims=("image", "dataset"))
    np.testing.assert_allclose(out.values, [means.mean(), lo, hi])
    assert out.attrs["interval_method"] == VARIANCE_COMPONENTS
    # with seeds nested too, a negative seed component is set to zero (a little more variance, more df)
    y = x[:, None, :] + rng.normal(0.0, 0.3, (6, 3, 10))
    means = y.mean((1, 2))
    lo, hi = scipy.stats.t.interval(0.95, 5, loc=means.mean(), scale=scipy.stats.sem(means))
    out = bootstrap_ci(xr.DataArray(y, dims=("dataset", "seed", "image")), dims=("image", "seed", "dataset"),
                       nested={"image": "dataset", "seed": "dataset"})
    width = float(out.sel(estimate="high") - out.sel(estimate="low"))
    assert width == pytest.approx(hi - lo, rel=0.05)


def test_design_terms_nesting_and_the_default_of_a_study():
    da = xr.DataArray(np.zeros((2, 3, 4, 5)), dims=("dataset", "seed", "image", "layer"))
    d = design_of(da, ("image", "seed", "dataset"))
    assert d.describe() == {"image": ["dataset"]}
    assert sorted(map(sorted, d.terms)) == sorted(
        [["dataset"], ["seed"], ["dataset", "seed"], ["dataset", "image"], ["dataset", "image", "seed"]])
    assert sorted(d.leaves) == ["image", "seed"]
    assert design_of(da, ("image", "seed")).describe() == {}  # dataset not resampled: a "by" dim
    assert design_of(da, ("image", "seed", "dataset"), nested={}).describe() == {}
    one = xr.DataArray(np.zeros((1, 3, 4)), dims=("dataset", "seed", "image"))
    assert design_of(one, ("image", "seed", "dataset")).factors == ("image", "seed")  # size 1: nothing to resample
    # the study's declared design, applied to per-dataset rows: dataset is a "by" dim, its nesting drops
    assert design_of(da, ("image", "seed"), nested={"image": ("dataset",)}).describe() == {}
    with pytest.raises(ValueError, match="not among the resampled dims"):
        design_of(da, ("image", "seed"), nested={"image": "datasets"})  # a dim da does not have: a typo
    with pytest.raises(ValueError, match="circular"):
        Design(("a", "b"), {"a": ("b",), "b": ("a",)})
    assert choose_method(Design(("seed", "image")), {"seed": 3, "image": 500}) == VARIANCE_COMPONENTS
    assert choose_method(Design(("seed", "image")), {"seed": 25, "image": 500}) == BOOTSTRAP
    assert choose_method(Design(("seed", "image")), {"seed": 3, "image": 500}, BOOTSTRAP) == BOOTSTRAP
    with pytest.raises(ValueError, match="method must be one of"):
        choose_method(Design(("seed",)), {"seed": 3}, "bca")


def test_bootstrap_counts_follow_the_design():
    d = Design(("dataset", "seed", "image"), {"image": ("dataset",)})
    c = bootstrap_counts(d, {"dataset": 5, "seed": 3, "image": 40}, 200, np.random.default_rng(0))
    assert c["seed"].dims == ("boot", "seed") and c["image"].dims == ("boot", "dataset", "image")
    # a dataset drawn k times gets k independent image resamples: Multinomial(k·n), so its images sum to k·n
    np.testing.assert_array_equal(c["image"].sum("image").values, 40 * c["dataset"].values)
    assert (c["image"].where(c["dataset"] >= 2).max() > 2).item()  # more than one copy's worth of draws


def test_crossed_bootstrap_shares_one_image_resample_across_seeds():
    # values depend on the image only: the crossed replicate is the image-only replicate, whatever the seeds
    rng = np.random.default_rng(5)
    per_image = rng.normal(0.0, 1.0, 80)
    da = xr.DataArray(np.broadcast_to(per_image, (10, 80)), dims=("seed", "image"))
    crossed = bootstrap_ci(da, dims=("image", "seed"), method=BOOTSTRAP, n_boot=2000, seed=1)
    alone = bootstrap_ci(xr.DataArray(per_image, dims="image"), dims=("image",), n_boot=2000, seed=1)
    np.testing.assert_allclose(crossed.values, alone.values, atol=0.03)
    old = _old_nested_bootstrap(da.expand_dims(sim=1), n_boot=2000, seed=1)[:, 0]  # 10 seeds average image draws
    assert float(old[1] - old[0]) < 0.6 * float(crossed.sel(estimate="high") - crossed.sel(estimate="low"))


def test_outputs_record_the_method_and_work_lazily():
    dask = pytest.importorskip("dask")
    del dask
    rng = np.random.default_rng(6)
    x = rng.normal(0.0, 1.0, (3, 4, 30, 2))
    x[:, 3, 20:] = np.nan  # a dataset with fewer images (padding)
    da = xr.DataArray(x, dims=("seed", "dataset", "image", "layer"))
    for method in (VARIANCE_COMPONENTS, BOOTSTRAP):
        eager = bootstrap_ci(da, dims=("image", "seed", "dataset"), method=method, n_boot=100)
        lazy = bootstrap_ci(da.chunk({"image": 10}), dims=("image", "seed", "dataset"), method=method, n_boot=100)
        assert lazy.chunks is not None
        xr.testing.assert_allclose(eager, lazy.compute())
        assert eager.attrs["interval_method"] == method
        summary = json.loads(eager.attrs["summary"])
        assert summary["method"] == method and summary["design"]["nested"] == {"image": ["dataset"]}
        assert np.isfinite(eager.values).all() and (eager.sel(estimate="low") < eager.sel(estimate="high")).all()
    s = summarize(da, over=("image", "seed", "dataset"), by_layer_kind=False, n_boot=50)
    assert s.attrs["interval_method"] == VARIANCE_COMPONENTS and s.dims == ("layer", "estimate")


# ------------------------------------------------------------------------------------------------
# simulation suite: coverage of nominal 95 % intervals against a known truth
# ------------------------------------------------------------------------------------------------

N_SIM = 1000  # studies per design: Monte-Carlo SE of a coverage of 0.95 is sqrt(.95·.05/1000) = 0.007
TRUTH = 1.0
SPREAD = {  # standard deviations of the effects; the named one dominates
    "image": dict(d=0.1, s=0.05, ds=0.05, i=1.0, e=0.5),
    "seed": dict(d=0.1, s=0.3, ds=1.0, i=0.1, e=0.5),
    "dataset": dict(d=1.0, s=0.05, ds=0.1, i=0.3, e=0.5),
    "residual": dict(d=0.05, s=0.05, ds=0.05, i=0.1, e=1.0),
}


def simulate(rng: np.random.Generator, n_sim: int, *, datasets: int, seeds: int, images: int, dominant: str,
             unequal: bool = False) -> xr.DataArray:
    """Studies x = μ + a_d + b_s + c_ds + e_i(d) + f_si(d): seeds cross images (and datasets), images nest in datasets.

    ``datasets=0``: a single dataset (no dataset dim, no a_d); ``seeds=0``: a single run (image dim only).
    ``unequal``: datasets have between a third of and all ``images`` (the rest NaN, as a study pads them).
    """
    sd = SPREAD[dominant]
    d, s, i = max(datasets, 1), max(seeds, 1), images
    x = (TRUTH + (sd["d"] * rng.normal(size=(n_sim, d, 1, 1)) if datasets else 0.0)
         + sd["s"] * rng.normal(size=(n_sim, 1, s, 1)) * (seeds > 0) + sd["ds"] * rng.normal(size=(n_sim, d, s, 1))
         * (seeds > 0) + sd["i"] * rng.normal(size=(n_sim, d, 1, i)) + sd["e"] * rng.normal(size=(n_sim, d, s, i)))
    if unequal:
        keep = np.arange(i)[None, :] < np.linspace(i // 3, i, d).astype(int)[:, None]
        x = np.where(keep[None, :, None, :], x, np.nan)
    da = xr.DataArray(x, dims=("sim", "dataset", "seed", "image"))
    return da.isel(dataset=0 if not datasets else slice(None), seed=0 if not seeds else slice(None), drop=True)


def coverage(out: xr.DataArray) -> tuple[float, float]:
    lo, hi = out.sel(estimate="low").values, out.sel(estimate="high").values
    return float(np.mean((lo <= TRUTH) & (TRUTH <= hi))), float(np.mean(hi - lo))


DESIGNS = [  # (name, simulate kwargs)
    *[(f"crossed {dom} {s} seeds x {i} images", dict(datasets=0, seeds=s, images=i, dominant=dom))
      for dom in ("image", "seed") for s in (3, 10) for i in (30, 200)],
    ("crossed residual 3 seeds x 30 images", dict(datasets=0, seeds=3, images=30, dominant="residual")),
    *[(f"nested {dom} 11 datasets x 3 seeds x 30-60 images",
       dict(datasets=11, seeds=3, images=60, dominant=dom, unequal=True)) for dom in ("dataset", "image", "seed")],
    *[(f"nested {dom} 4 datasets x 10 seeds x 100 images",
       dict(datasets=4, seeds=10, images=100, dominant=dom)) for dom in ("dataset", "image", "seed")],
    ("single run 30 images", dict(datasets=0, seeds=0, images=30, dominant="image")),
    ("single run 200 images", dict(datasets=0, seeds=0, images=200, dominant="image")),
]


def run_design(index: int, **kw) -> tuple[float, float, str]:
    name, spec = DESIGNS[index]
    da = simulate(np.random.default_rng(100 + index), N_SIM, **spec)
    out = bootstrap_ci(da, dims=[d for d in da.dims if d != "sim"], n_boot=1000, **kw)
    return (*coverage(out), out.attrs["interval_method"])


@pytest.mark.parametrize("index", range(len(DESIGNS)), ids=[name for name, _ in DESIGNS])
def test_nominal_95_intervals_cover_the_truth_in_every_design(index):
    cov, _, method = run_design(index)
    assert cov >= 0.92, f"{DESIGNS[index][0]}: coverage {cov:.3f} with {method}"
    assert cov <= 0.995, f"{DESIGNS[index][0]}: coverage {cov:.3f} with {method}: intervals far too wide"


def _old_nested_bootstrap(da: xr.DataArray, n_boot: int, seed: int, ci: float = 0.95) -> np.ndarray:
    """The scheme bootstrap_ci used before: seeds drawn, then images within each drawn seed (nested).

    Re-implemented from its description: a replicate weights cell (s, i) by seed count × image
    count, one image draw per seed *index*, so a seed drawn twice repeats its draw. ``da`` is
    ``(sim, seed, image)``; returns ``(low, high)`` per simulated study.
    """
    rng = np.random.default_rng(seed)
    s, i = da.sizes["seed"], da.sizes["image"]
    seeds = rng.multinomial(s, np.full(s, 1 / s), size=n_boot)  # (boot, seed)
    images = rng.multinomial(i, np.full(i, 1 / i), size=(n_boot, s))  # (boot, seed, image)
    w = seeds[:, :, None] * images
    reps = np.einsum("nsi,bsi->nb", da.values, w) / w.sum((1, 2))
    return np.quantile(reps, [(1 - ci) / 2, (1 + ci) / 2], axis=1)


@pytest.mark.parametrize("seeds", [3, 10])
def test_the_old_nested_scheme_falls_short_on_crossed_image_dominant_studies(seeds):
    da = simulate(np.random.default_rng(7), N_SIM, datasets=0, seeds=seeds, images=60, dominant="image")
    lo, hi = _old_nested_bootstrap(da, n_boot=400, seed=0)
    old = float(np.mean((lo <= TRUTH) & (TRUTH <= hi)))
    new, _ = coverage(bootstrap_ci(da, dims=("image", "seed")))
    boot, _ = coverage(bootstrap_ci(da, dims=("image", "seed"), method=BOOTSTRAP, n_boot=400))
    assert old < 0.88, f"old nested scheme covers {old:.3f}"
    assert new >= 0.92 and boot >= 0.9, f"new: variance components {new:.3f}, crossed bootstrap {boot:.3f}"


if __name__ == "__main__":  # the coverage table of docs/statistics.md and the report
    import time

    for k, (name, _) in enumerate(DESIGNS):
        start = time.perf_counter()
        cov, width, method = run_design(k)
        boot = run_design(k, method=BOOTSTRAP) if method != BOOTSTRAP else (cov, width, method)
        print(f"{name:50s} {method:20s} coverage {cov:.3f} width {width:.3f} | percentile bootstrap {boot[0]:.3f} "
              f"({time.perf_counter() - start:.1f} s)")
    for seeds in (3, 10):
        da = simulate(np.random.default_rng(7), N_SIM, datasets=0, seeds=seeds, images=60, dominant="image")
        lo, hi = _old_nested_bootstrap(da, n_boot=400, seed=0)
        new = coverage(bootstrap_ci(da, dims=("image", "seed")))
        boot = coverage(bootstrap_ci(da, dims=("image", "seed"), method=BOOTSTRAP, n_boot=400))
        print(f"crossed image {seeds} seeds x 60 images: old nested {np.mean((lo <= 1) & (1 <= hi)):.3f} width "
              f"{np.mean(hi - lo):.3f}; variance components {new[0]:.3f} width {new[1]:.3f}; crossed bootstrap "
              f"{boot[0]:.3f} width {boot[1]:.3f}")
