"""Confidence intervals of means that follow the study's design: crossed and nested factors (docs/statistics.md)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from scipy import special

__all__ = [
    "AUTO_MIN_LEVELS",
    "BOOTSTRAP",
    "DEFAULT_NESTING",
    "VARIANCE_COMPONENTS",
    "Design",
    "choose_method",
    "design_of",
    "percentile_bootstrap",
    "variance_components",
    "vc_interval",
]

VARIANCE_COMPONENTS = "variance_components"
BOOTSTRAP = "percentile_bootstrap"
METHODS = ("auto", VARIANCE_COMPONENTS, BOOTSTRAP)

#: ``method="auto"`` uses the bootstrap only when every resampled factor has at least this many levels.
#: A percentile bootstrap over k units behaves like a z interval with variance (k-1)/k of the truth, so
#: with 3 seeds it covers ~0.72 instead of 0.95; from ~20 levels on its shortfall is below 0.01.
AUTO_MIN_LEVELS = 20

#: Dims whose levels differ between datasets: image i (class c) of one dataset is not image i of another.
DEFAULT_NESTING: dict[str, tuple[str, ...]] = {"image": ("dataset",), "class": ("dataset",)}


@dataclass(frozen=True)
class Design:
    """Which resampled dims are nested in which; all other pairs are crossed.

    ``nested[f]`` lists the dims ``f`` is nested in (its levels are different units for every
    level of those); two dims neither of which is nested in the other are crossed (every level of
    one meets every level of the other, e.g. all seeds trace the same images).

    Examples
    --------
    >>> d = Design(("dataset", "seed", "image"), {"image": ("dataset",)})
    >>> [sorted(t) for t in d.terms]
    [['dataset'], ['seed'], ['dataset', 'seed'], ['dataset', 'image'], ['dataset', 'image', 'seed']]
    """

    factors: tuple[str, ...]
    nested: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f, parents in self.nested.items():
            if f not in self.factors:
                raise ValueError(f"nested names {f!r}, which is not a resampled dim {self.factors}")
            for p in parents:
                if p not in self.factors:
                    raise ValueError(f"{f!r} is declared nested in {p!r}, which is not a resampled dim {self.factors}")
        for f in self.factors:
            if f in self.ancestors(f):
                raise ValueError(f"the nesting {dict(self.nested)} is circular at {f!r}")

    def ancestors(self, f: str) -> set[str]:
        """Every dim ``f`` is (directly or through others) nested in."""
        out: set[str] = set()
        todo = list(self.nested.get(f, ()))
        while todo:
            p = todo.pop()
            if p not in out:
                out.add(p)
                if p == f:
                    break
                todo.extend(self.nested.get(p, ()))
        return out

    @property
    def terms(self) -> list[frozenset[str]]:
        """The random effects: every set of factors closed under nesting (a nested factor needs its parents)."""
        out = []
        for r in range(1, len(self.factors) + 1):
            for combo in itertools.combinations(self.factors, r):
                s = frozenset(combo)
                if all(self.ancestors(f) <= s for f in s):
                    out.append(s)
        return out

    def live(self, term: frozenset[str]) -> frozenset[str]:
        """Factors of ``term`` that no other factor of ``term`` is nested in (its own sources of variation)."""
        return frozenset(f for f in term if not any(f in self.ancestors(g) for g in term if g != f))

    @property
    def leaves(self) -> list[str]:
        """Factors no other factor is nested in: a cell's bootstrap weight is the product of their counts."""
        return [f for f in self.factors if not any(f in self.ancestors(g) for g in self.factors)]

    def describe(self) -> dict[str, list[str]]:
        return {f: sorted(self.nested[f]) for f in self.factors if self.nested.get(f)}


def design_of(da: xr.DataArray, dims: Sequence[str], nested: Mapping[str, str | Sequence[str]] | None = None) -> Design:
    """The design of the resampled ``dims`` of ``da``: the caller's ``nested``, else the store's structure.

    Dims of size 1 and dims ``da`` lacks are left out (nothing to resample). Without ``nested``,
    item dims (``image``, ``class``) are nested in ``dataset`` (a study's datasets have their own
    images and classes: per-item coordinates are 2-D ``(dataset, image)``), and every other pair is
    crossed: seeds share the images of their dataset (``experiments/_study.py`` requires it), and
    seeds are crossed with datasets, which is right when a seed number carries something shared
    (e.g. the prompt initialisation) and costs only a few degrees of freedom when it does not.
    Nesting in a dim that is not resampled is dropped (that dim is then a "by" dim).

    Examples
    --------
    >>> da = xr.DataArray(np.zeros((2, 3, 4)), dims=("dataset", "seed", "image"))
    >>> design_of(da, ("image", "seed", "dataset")).describe()
    {'image': ['dataset']}
    >>> design_of(da, ("image", "seed")).describe()
    {}
    """
    factors = tuple(d for d in dict.fromkeys(dims) if d in da.dims and da.sizes[d] > 1)
    given = DEFAULT_NESTING if nested is None else nested
    clean: dict[str, tuple[str, ...]] = {}
    for f, parents in given.items():
        if f not in factors:
            continue
        ps = (parents,) if isinstance(parents, str) else tuple(parents)
        ps = tuple(p for p in ps if p in factors)
        if ps:
            clean[f] = ps
    if nested is not None:
        # a parent that is a dim of ``da`` but not resampled is a "by" dim (e.g. per-dataset rows of a
        # study design): its nesting is dropped, as above; a parent ``da`` does not have is a mistake
        unknown = [p for f, ps in nested.items() for p in ((ps,) if isinstance(ps, str) else ps)
                   if f in factors and p not in dims and p not in da.dims]
        if unknown:
            raise ValueError(f"nested refers to dims {unknown} that are not among the resampled dims {tuple(dims)}; "
                             "list them in dims or drop them from nested")
    return Design(factors, clean)


def choose_method(design: Design, sizes: Mapping[str, int], method: str = "auto",
                  min_levels: int = AUTO_MIN_LEVELS) -> str:
    """The interval method: the caller's, or by the rule of :data:`AUTO_MIN_LEVELS`.

    ``auto`` gives :data:`VARIANCE_COMPONENTS` when some resampled factor has fewer than
    ``min_levels`` levels (per level of its parents for a nested factor), else :data:`BOOTSTRAP`.

    Examples
    --------
    >>> choose_method(Design(("seed", "image")), {"seed": 3, "image": 500})
    'variance_components'
    >>> choose_method(Design(("image",)), {"image": 500})
    'percentile_bootstrap'
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, found {method!r}")
    if method != "auto":
        return method
    if not design.factors:
        return BOOTSTRAP
    return VARIANCE_COMPONENTS if min(sizes[f] for f in design.factors) < min_levels else BOOTSTRAP


# ------------------------------------------------------------------------------------------------
# variance components (ANOVA, Satterthwaite)
# ------------------------------------------------------------------------------------------------


def _key(term: frozenset[str]) -> str:
    return "*".join(sorted(term))


def variance_components(da: xr.DataArray, design: Design) -> xr.Dataset:
    """ANOVA of a random-effects model of ``da`` over the design's factors, cell by cell of the other dims.

    Model: ``x = μ + Σ_T u_T`` with one independent zero-mean effect per term ``T`` of the design
    (:attr:`Design.terms`; the term of all factors is the residual), variance ``σ²_T``. For each
    term: the sum of squares ``SS_T = Σ_{S⊆live(T)} (−1)^|S| R_{T∖S}`` from the raw sums of squares
    ``R_U = Σ_u N_u ȳ_u²`` (``ȳ_u`` the mean of level ``u`` of ``U``, ``N_u`` its number of observed
    cells; ``R`` of all factors is ``Σ x²``), i.e. ``Σ_t N_t e_t²`` of the effects ``e_T = Σ_{S⊆live(T)}
    (−1)^|S| ȳ_{T∖S}`` when balanced; degrees of freedom ``df_T = Σ_{S⊆live(T)} (−1)^|S| L_{T∖S}``
    (``L_U`` the number of observed levels of ``U``), ``MS_T = SS_T / df_T``. Expected mean squares (Cornfield–Tukey,
    all effects random): ``E MS_T = Σ_{U⊇T} k_U σ²_U`` with ``k_U = N / L_U`` cells per level,
    solved exactly: ``k_T σ̂²_T = Σ_U Z⁻¹_TU MS_U`` (``Z`` the inclusion matrix of the terms).
    Balanced data (after dropping levels with no observed cell) give the textbook ANOVA; a nested
    factor with unequal counts per parent level gives the exact unbalanced sums of squares (one-way
    ANOVA, checked against scipy); otherwise ``k_U`` is an average and the estimates are
    approximate. NaN cells are left out. Marginal sums are taken from the smallest computed
    superset, so the data are read about ``2 + 2·(number of largest proper terms)`` times.

    Returns
    -------
    xarray.Dataset
        Variables ``ms``, ``df``, ``component`` (σ̂², may be negative), ``weight`` (``q_T = Σ_t
        (N_t/N)²``, the factor of ``σ²_T`` in the variance of the mean: ``1/n_T`` when balanced),
        ``k`` along a ``term`` dim (names like ``"dataset*image"``), plus ``mean`` and ``n``.

    Examples
    --------
    >>> x = xr.DataArray([[1.0, 2.0, 3.0], [3.0, 4.0, 8.0]], dims=("seed", "image"))
    >>> vc = variance_components(x, Design(("seed", "image")))
    >>> vc["ms"].sel(term="seed").item(), vc["df"].sel(term="image*seed").item()
    (13.5, 2.0)
    """
    terms = design.terms
    factors = list(design.factors)
    full = frozenset(factors)
    valid = da.notnull()
    filled = da.astype(np.result_type(da.dtype, np.float64)).where(valid, 0.0)
    needed = {t - frozenset(c) for t in terms for r in range(len(design.live(t)) + 1)
              for c in itertools.combinations(sorted(design.live(t)), r)} | {frozenset()}
    sums: dict[frozenset[str], xr.DataArray] = {full: filled}
    counts: dict[frozenset[str], xr.DataArray] = {full: valid}
    for u in sorted(needed - {full}, key=len, reverse=True):  # each from its smallest computed superset
        v = min((w for w in sums if u < w), key=len)
        drop = [f for f in factors if f in v and f not in u]
        # NaN were filled with 0: skipna=False avoids xarray's nansum copies of the data
        sums[u], counts[u] = sums[v].sum(drop, skipna=False), counts[v].sum(drop).astype(np.float64)
    raw = {u: (sums[u] ** 2 / counts[u].where(counts[u] > 0)).fillna(0.0).sum(list(u), skipna=False)
           for u in needed if u != full}
    raw[full] = (filled**2).sum(factors, skipna=False)
    n_total = counts[frozenset()]
    levels = {u: (counts[u] > 0).sum(list(u)) for u in needed if u != full}
    levels[full] = n_total  # cells are 0/1: no full-size pass needed for these
    mean = sums[frozenset()] / n_total.where(n_total > 0)

    ss, df, weight, k = [], [], [], []
    for t in terms:
        live = sorted(design.live(t))
        total = 0.0
        dof = 0
        for r in range(len(live) + 1):
            for c in itertools.combinations(live, r):
                u = t - frozenset(c)
                total = total + (-1) ** r * raw[u]
                dof = dof + (-1) ** r * levels[u]
        ss.append(total.clip(min=0.0))  # rounding can leave a tiny negative for an exactly zero effect
        df.append(dof)
        sq = n_total if t == full else (counts[t] ** 2).sum(list(t))
        weight.append(sq / (n_total**2).where(n_total > 0))
        k.append(n_total / levels[t].where(levels[t] > 0))
    names = [_key(t) for t in terms]
    stack = {"term": names}
    ss_a = xr.concat(ss, dim="term", coords="minimal", compat="override").assign_coords(stack)
    df_a = xr.concat(df, dim="term", coords="minimal", compat="override").assign_coords(stack).astype(np.float64)
    ms = (ss_a / df_a.where(df_a > 0)).fillna(0.0)
    z = np.array([[1.0 if t <= u else 0.0 for u in terms] for t in terms])
    zinv = xr.DataArray(np.rint(np.linalg.inv(z)), dims=("term", "term_u"), coords={"term": names, "term_u": names})
    scaled = xr.dot(zinv, ms.rename(term="term_u"), dim="term_u")  # k_T σ̂²_T
    k_a = xr.concat(k, dim="term", coords="minimal", compat="override").assign_coords(stack)
    w_a = xr.concat(weight, dim="term", coords="minimal", compat="override").assign_coords(stack)
    return xr.Dataset({"ms": ms, "df": df_a, "component": scaled / k_a.where(k_a > 0), "scaled": scaled,
                       "weight": w_a, "k": k_a, "mean": mean, "n": n_total, "zinv": zinv})


def vc_interval(da: xr.DataArray, design: Design, ci: float = 0.95) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Mean and t interval from the variance components (Satterthwaite degrees of freedom).

    ``Var̂(ȳ) = Σ_T q_T max(σ̂²_T, 0)`` (negative ANOVA estimates are set to zero, as in
    generalizability theory), a linear combination ``Σ_U c_U MS_U`` of mean squares whose
    degrees of freedom are Satterthwaite's ``(Σ c_U MS_U)² / Σ (c_U MS_U)² / df_U``; the interval
    is ``ȳ ± t_{df, (1+ci)/2} √Var̂``. A zero variance gives a zero-width interval.

    Returns
    -------
    (mean, half_width, df)
    """
    if not design.factors:
        m = da.mean()
        return m, xr.zeros_like(m), xr.full_like(m, np.inf)
    vc = variance_components(da, design)
    # truncating negative components, rather than only a negative total, keeps the Satterthwaite
    # combination away from differences of mean squares, whose df collapse and whose t explodes
    kept = vc["scaled"] > 0
    coef_t = (vc["weight"] / vc["k"].where(vc["k"] > 0)).where(kept, 0.0).fillna(0.0)  # per term T: q_T / k_T if kept
    c_u = xr.dot(coef_t, vc["zinv"], dim="term").rename(term_u="term")
    parts = c_u * vc["ms"]
    var = parts.sum("term")
    denom = (parts**2 / vc["df"].where(vc["df"] > 0)).fillna(0.0).sum("term")
    dof = var**2 / denom.where(denom > 0)
    q = xr.apply_ufunc(special.stdtrit, dof.where(dof > 0), (1.0 + ci) / 2.0, dask="allowed")
    half = (q * np.sqrt(var.clip(min=0.0))).where(var > 0, 0.0)
    return vc["mean"], half, dof


# ------------------------------------------------------------------------------------------------
# percentile bootstrap that follows the design
# ------------------------------------------------------------------------------------------------


def bootstrap_counts(design: Design, sizes: Mapping[str, int], n_boot: int,
                     rng: np.random.Generator) -> dict[str, xr.DataArray]:
    """Resampling counts of every factor, ``(boot, *parents, factor)``, parents before children.

    A top-level factor draws ``Multinomial(n, 1/n)`` counts per replicate, independently of the
    factors it is crossed with (one draw shared by all their levels). A nested factor draws
    within each level of its parents ``Multinomial(c·n, 1/n)``, ``c`` the product of the parents'
    counts: the sum of ``c`` independent resamples, one per copy of the parent level.
    """
    order: list[str] = []
    todo = list(design.factors)
    while todo:  # parents first
        for f in todo:
            if design.ancestors(f) <= set(order):
                order.append(f)
                todo.remove(f)
                break
    out: dict[str, xr.DataArray] = {}
    for f in order:
        n = sizes[f]
        parents = [p for p in order if p in design.ancestors(f)]
        if not parents:
            c = rng.multinomial(n, np.full(n, 1.0 / n), size=(n_boot,))
            out[f] = xr.DataArray(c, dims=("boot", f))
            continue
        # copies of a parent level = counts of the innermost parents (their counts include the outer ones')
        inner = [p for p in parents if not any(p in design.ancestors(q) for q in parents)]
        mult = out[inner[0]]
        for p in inner[1:]:
            mult = mult * out[p]
        mult = mult.transpose("boot", *parents)
        c = rng.multinomial(mult.values * n, np.full(n, 1.0 / n))
        out[f] = xr.DataArray(c, dims=("boot", *parents, f))
    return out


def percentile_bootstrap(da: xr.DataArray, design: Design, *, n_boot: int, ci: float,
                         rng: np.random.Generator) -> tuple[xr.DataArray, xr.DataArray]:
    """Percentile interval of the mean over the design's factors (pigeonhole bootstrap for crossed factors).

    A replicate is ``Σ w x / Σ w`` over non-NaN cells with ``w`` the product of the counts of the
    design's leaves (:func:`bootstrap_counts`); the sums are contracted one leaf at a time, so the
    cost is about ``n_boot`` passes over the data and no ``(boot, *cells)`` array is built.

    Returns
    -------
    (low, high)
    """
    counts = bootstrap_counts(design, {f: da.sizes[f] for f in design.factors}, n_boot, rng)
    leaves = design.leaves
    dtype = np.result_type(da.dtype, np.float64)
    both = xr.concat([da.fillna(0.0).astype(dtype), da.notnull().astype(dtype)], dim="_part")
    acc = both
    for i, leaf in enumerate(leaves):
        w = counts[leaf].astype(dtype)
        later = {d for other in leaves[i + 1:] for d in counts[other].dims}
        contract = [d for d in w.dims if d != "boot" and d not in later]
        acc = xr.dot(acc, w, dim=contract, optimize=True)  # optimize: BLAS instead of einsum's C loops
    den = acc.isel(_part=1, drop=True)
    reps = acc.isel(_part=0, drop=True) / den.where(den > 0)
    alpha = (1.0 - ci) / 2.0
    if getattr(reps.data, "chunks", None) is not None:
        reps = reps.chunk({"boot": -1})
    q = reps.quantile([alpha, 1.0 - alpha], dim="boot", skipna=True)
    return q.isel(quantile=0, drop=True), q.isel(quantile=1, drop=True)
