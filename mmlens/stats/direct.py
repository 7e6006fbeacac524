"""Direct logit effects of the stored components (the ``direct`` group): β's effect on the margin and its gain share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from mmlens.stats._common import provenance, require, stack_measures, with_provenance
from mmlens.stats.elementary import safe_ratio
from mmlens.stats.summary import bootstrap_ci
from mmlens.store import schema
from mmlens.store.select import group_dataset, layers_of_kind

__all__ = [
    "bias_gain_share",
    "bias_margin_effect",
    "compare_bias_sources",
    "direct_effects",
    "require_direct",
]

#: The store group written by ``mmlens.trace(..., direct_effects=True)`` (docs/store_schema.md).
DIRECT_GROUP = "direct"
#: Layer groups of :func:`bias_gain_share`: every block, or the blocks of one prompted layer kind.
LAYER_GROUPS: tuple[str, ...] = schema.LAYER_GROUPS
#: The non-index coordinates that label the flat ``component`` dim (docs/store_schema.md, the `direct` group).
_COMPONENT_COORDS = ("tower", "kind", "layer", "head")
_RETRACE = "re-trace with `mmlens trace --direct-effects` (direct_effects=True)"


def require_direct(data: xr.Dataset | xr.DataTree) -> xr.Dataset:
    """The ``direct`` group of a store (with its provenance), or a clear error naming the flag to re-trace with.

    Every direct-effect statistic starts here.

    Parameters
    ----------
    data
        A whole store (``xarray.DataTree``, e.g. ``mmlens.open(path)``) or the ``direct`` group as a Dataset.

    Returns
    -------
    xarray.Dataset
        The ``direct`` group; from a tree, with the root's provenance attrs (``mmlens_group="direct"``).

    Raises
    ------
    ValueError
        When the store was traced without direct effects.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> require_direct(example_tree())
    Traceback (most recent call last):
    ...
    ValueError: this store was traced without direct effects: expected a 'direct' group, found groups ['logits', \
'text', 'vision']; re-trace with `mmlens trace --direct-effects` (direct_effects=True)
    """
    if isinstance(data, xr.DataTree):
        root = data.root
        if DIRECT_GROUP in root.children:
            return group_dataset(root, DIRECT_GROUP)
        found = f"expected a {DIRECT_GROUP!r} group, found groups {sorted(root.children)}"
    elif isinstance(data, xr.Dataset):
        if "direct_effect" in data.data_vars:
            return data
        found = f"expected a 'direct_effect' variable, found variables {sorted(map(str, data.data_vars))}"
    else:
        raise TypeError(f"expected an xarray Dataset or DataTree (a trace store), found {type(data).__name__}")
    raise ValueError(f"this store was traced without direct effects: {found}; {_RETRACE}")


def direct_effects(data: xr.Dataset | xr.DataTree, *, tower: str, kind: str, target: str = "margin") -> xr.DataArray:
    """The direct effects of one kind of component of one tower, with ``layer`` (and ``head``) as dims.

    The store keeps every component on one flat ``component`` dim labelled by the coordinates
    ``tower``, ``kind``, ``layer`` and ``head`` (docs/store_schema.md, "direct"); this selects the
    components of ``tower`` and ``kind`` and lays them out by layer, and by head when the kind is per
    head (``original``, and ``bias`` for prompt methods; bias tuning's learned bias is one component
    per layer). Layer-less kinds (``embedding``, ``ln_bias``) get ``layer = -1``. A (layer, head)
    pair the store lacks is NaN. With a whole store, the layers carry the ``layer_kind`` of the
    tower's group (``injected``/``carried``/``none``; ``none`` for ``layer = -1``).

    Parameters
    ----------
    data
        A store (tree) or its ``direct`` group.
    tower
        ``"vision"`` or ``"text"``.
    kind
        A component kind of the store (``embedding``, ``original``, ``bias``, ``output_bias``, ``mlp``, ``ln_bias``).
    target
        ``"margin"`` (the label logit minus the mean of the other classes' logits) or ``"label"``.

    Returns
    -------
    xarray.DataArray
        ``(variant, image, layer[, head])`` plus ``dataset``/``seed`` in a study; NaN for images without a label.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> comp = {"tower": ("component", ["vision"] * 3), "kind": ("component", ["bias", "bias", "mlp"]),
    ...         "layer": ("component", [0, 1, 1]), "head": ("component", [-1, -1, -1])}
    >>> ds = xr.Dataset({"direct_effect": (("variant", "image", "component", "target"), [[[[1.0], [2.0], [3.0]]]])},
    ...                 coords={"variant": ["full"], "target": ["margin"], **comp})
    >>> e = direct_effects(ds, tower="vision", kind="bias")
    >>> e.dims, e.values.tolist()
    (('variant', 'image', 'layer'), [[[1.0, 2.0]]])
    """
    ds = require_direct(data)
    require(ds, ["direct_effect", *_COMPONENT_COORDS], "direct_effects",
            f"the direct group labels 'component' with {list(_COMPONENT_COORDS)}; {_RETRACE}")
    effect = ds["direct_effect"]
    targets = [str(t) for t in effect.coords["target"].values] if "target" in effect.coords else []
    if target not in targets:
        raise ValueError(f"direct_effects: expected target among {targets}, found {target!r}")
    towers = _values(ds, "tower").astype(str)
    kinds = _values(ds, "kind").astype(str)
    layers = _values(ds, "layer").astype(np.int64)
    heads = _values(ds, "head").astype(np.int64)
    if tower not in set(towers):
        raise ValueError(f"direct_effects: expected tower among {sorted({str(t) for t in towers})}, found {tower!r}")
    of_tower = towers == tower
    if kind not in set(kinds[of_tower]):
        raise ValueError(f"direct_effects: expected kind among the {tower} components' "
                         f"{sorted({str(k) for k in kinds[of_tower]})}, found {kind!r}")
    picked = np.flatnonzero(of_tower & (kinds == kind))
    layer_values = np.unique(layers[picked])
    head_values = np.unique(heads[picked])
    per_head = bool((head_values >= 0).any())
    if per_head and (head_values < 0).any():
        raise ValueError(f"direct_effects: the {tower} {kind!r} components mix per-head and whole-layer entries "
                         f"(heads {head_values.tolist()}); expected one or the other")
    shape = (len(layer_values), len(head_values)) if per_head else (len(layer_values),)
    table = np.full(shape, -1, dtype=np.int64)
    for j in picked:
        at = (np.searchsorted(layer_values, layers[j]),)
        if per_head:
            at = (*at, np.searchsorted(head_values, heads[j]))
        if table[at] >= 0:
            raise ValueError(f"direct_effects: two {tower} {kind!r} components share layer {layers[j]}"
                             + (f" head {heads[j]}" if per_head else "") + "; expected one each")
        table[at] = j
    along = ("layer", "head") if per_head else ("layer",)
    # the flat dim's labels go: they become the new dims' index coordinates below
    x = effect.sel(target=target, drop=True)
    x = x.drop_vars([c for c in x.coords if "component" in x.coords[c].dims])
    out = x.isel(component=xr.DataArray(np.maximum(table, 0), dims=along))
    if (table < 0).any():
        out = out.where(xr.DataArray(table >= 0, dims=along))
    out = out.assign_coords(layer=layer_values, **({"head": head_values} if per_head else {}))
    order = [d for d in out.dims if d not in along] + list(along)
    out = out.transpose(*order)
    kinds_by_layer = _layer_kinds(data, ds, tower)
    if kinds_by_layer is not None:
        out = out.assign_coords(layer_kind=("layer", [kinds_by_layer.get(int(ell), "none") for ell in layer_values]))
    return with_provenance(out, ds, "direct_effect",
                           f"direct effect of the {tower} {kind!r} components on the {target} (linearised readout)",
                           tower=tower, kind=kind, target=target)


def bias_margin_effect(
    data: xr.Dataset | xr.DataTree,
    *,
    tower: str,
    per_head: bool = True,
    variant: str = schema.PROMPTED_VARIANT,
    target: str = "margin",
    over: Sequence[str] = ("image", "seed"),
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    nested: Mapping[str, str | Sequence[str]] | None = None,
    method: str = "auto",
) -> xr.DataArray:
    """β's direct effect on the correct-class margin: its mean over images per layer (and head), with intervals.

    ``mean_i E_i^{β, ℓ[, h]}`` with ``E_i`` the stored direct effect of the bias component on image
    i's margin (variant ``full``): how much of the margin the bias term writes *directly* into the
    readout, through the frozen final LayerNorm scale and feature norm. For bias tuning
    (``bias_source = "learned"``) it is the learned b^ℓ, one per layer (no ``head`` dim). The
    interval is :func:`mmlens.stats.bootstrap_ci` over ``over`` with the study's design (images
    nested in datasets, seeds crossed; ``method="auto"``): in a study, datasets stay rows unless
    ``"dataset"`` is in ``over``. Images without a label (NaN) are left out.

    Parameters
    ----------
    data
        A store or study (tree, which also gives ``layer_kind``) or its ``direct`` group.
    tower
        ``"vision"`` or ``"text"``.
    per_head
        Keep heads apart; ``False`` sums β over the heads of each layer (the layer's β).
    variant
        The traced variant (``full``: the model as trained; a route ablation to see β under it).
    target
        ``"margin"`` or ``"label"`` (the label logit).
    over, n_boot, ci, seed, nested, method
        As in :func:`mmlens.stats.bootstrap_ci`.

    Returns
    -------
    xarray.DataArray
        ``([dataset,] [seed,] layer[, head], estimate)`` with ``estimate`` = mean/low/high, ``layer_kind``
        on ``layer`` when known; attrs ``interval_method`` and ``summary`` as ``bootstrap_ci``'s.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> comp = {"tower": ("component", ["vision"] * 2), "kind": ("component", ["bias"] * 2),
    ...         "layer": ("component", [0, 1]), "head": ("component", [0, 1])}
    >>> eff = np.random.default_rng(0).normal(1.0, 0.1, (1, 40, 2, 1))  # (variant, image, component, target)
    >>> ds = xr.Dataset({"direct_effect": (("variant", "image", "component", "target"), eff)},
    ...                 coords={"variant": ["full"], "target": ["margin"], **comp})
    >>> r = bias_margin_effect(ds, tower="vision", per_head=False, n_boot=200)
    >>> r.dims, bool((r.sel(estimate="low") < 1.0).all() and (r.sel(estimate="high") > 0.9).all())
    (('layer', 'estimate'), True)
    """
    effect = direct_effects(data, tower=tower, kind="bias", target=target)
    _require_variants(effect, (variant,), "bias_margin_effect")
    x = effect.sel(variant=variant, drop=True)
    if not per_head and "head" in x.dims:
        x = x.sum("head", min_count=1)  # min_count: an unlabelled image (all NaN) stays NaN
    out = bootstrap_ci(x, over, n_boot=n_boot, ci=ci, seed=seed, nested=nested, method=method)
    out = _with_layer_kind(out, x)
    return _finish(out, effect, "bias_margin_effect",
                   f"mean over images of the direct effect of the bias term on the {target} (variant {variant})",
                   tower=tower, variant=variant, target=target, per_head=per_head)


def bias_gain_share(
    data: xr.Dataset | xr.DataTree,
    *,
    tower: str,
    layer_group: str = "all",
    target: str = "margin",
    over: Sequence[str] = ("image", "seed"),
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    nested: Mapping[str, str | Sequence[str]] | None = None,
    method: str = "auto",
) -> xr.DataArray:
    """The share of the full-minus-zero-shot margin gain that the bias term carries directly.

    With ``G_i = M_i^full − M_i^zeroshot`` the gain of image i's margin (``direct_total``) and
    ``B_i = Σ_{ℓ∈group} Σ_h E_i^{β, ℓ, h}`` the direct effect of the bias components of the layer
    group in the ``full`` variant, the share is the ratio of means ``S = mean_i B_i / mean_i G_i``
    (:func:`~mmlens.stats.elementary.safe_ratio`: NaN when the mean gain is not positive). The
    same function reads bias tuning's stores (``bias_source = "learned"``), so the two methods
    compare on one axis (:func:`compare_bias_sources`). Layer groups use the ``layer_kind`` of the
    tower's group: ``all``, ``injected`` (fresh prompts) or ``carried``; a group with no layer in
    this model gives NaN.

    The interval of S linearises the ratio (delta method): with ``z_i = (B_i − S G_i) / mean G``,
    ``S`` has the interval ``S + [low, high]`` of ``mean z`` from :func:`mmlens.stats.bootstrap_ci`,
    which follows the design (images nested in datasets, seeds crossed) and picks the method.
    Where the gain's own interval reaches 0, the ratio is not bounded at this coverage (Fieller):
    ``low``/``high`` of the share are NaN.

    Parameters
    ----------
    data
        A store or study (tree: the layer kinds come from its ``vision``/``text`` group), or the
        ``direct`` group (only ``layer_group="all"`` unless it carries ``layer_kind`` on ``component``).
    tower
        ``"vision"`` or ``"text"``: whose bias components.
    layer_group
        ``"all"``, ``"injected"`` or ``"carried"``.
    target
        ``"margin"`` or ``"label"``.
    over, n_boot, ci, seed, nested, method
        As in :func:`mmlens.stats.bootstrap_ci`.

    Returns
    -------
    xarray.DataArray
        ``([dataset,] [seed,] measure, estimate)`` with ``measure`` = ``share`` (S), ``bias_direct``
        (mean B) and ``gain`` (mean G); scalar coordinates ``layer_group`` and ``bias_source``.

    Raises
    ------
    ValueError
        Without direct effects (names ``--direct-effects``) or without the ``zeroshot`` variant
        (names ``--with-reference``).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> comp = {"tower": ("component", ["vision"] * 2), "kind": ("component", ["bias", "mlp"]),
    ...         "layer": ("component", [0, 0]), "head": ("component", [-1, -1])}
    >>> eff = np.zeros((2, 30, 2, 1))  # (variant, image, component, target)
    >>> eff[0, :, 0], eff[0, :, 1], eff[1, :, 1] = 1.0, 3.0, 2.0  # full: β 1 + MLP 3; zeroshot: MLP 2
    >>> ds = xr.Dataset({"direct_effect": (("variant", "image", "component", "target"), eff),
    ...                  "direct_total": (("variant", "image", "target"), eff.sum(2))},
    ...                 coords={"variant": ["full", "zeroshot"], "target": ["margin"], **comp})
    >>> bias_gain_share(ds, tower="vision", n_boot=200).sel(estimate="mean").values.tolist()  # 1 / (4 - 2)
    [0.5, 1.0, 2.0]
    """
    if layer_group not in LAYER_GROUPS:
        raise ValueError(f"bias_gain_share: expected layer_group among {list(LAYER_GROUPS)}, found {layer_group!r}")
    ds = require_direct(data)
    require(ds, ["direct_effect", "direct_total"], "bias_gain_share", _RETRACE)
    _require_variants(ds, (schema.PROMPTED_VARIANT, schema.REFERENCE_VARIANT), "bias_gain_share")
    effect = direct_effects(data, tower=tower, kind="bias", target=target)
    beta = effect.sel(variant=schema.PROMPTED_VARIANT, drop=True)
    if "head" in beta.dims:
        beta = beta.sum("head", min_count=1)
    if layer_group != "all":
        if "layer_kind" not in beta.coords:
            raise ValueError(
                f"bias_gain_share: layer_group={layer_group!r} needs the layer kinds of the {tower} tower, which "
                "this Dataset lacks; pass the whole store (mmlens.open(path)), whose vision/text groups record them"
            )
        beta = layers_of_kind(beta, layer_group)
    empty = beta.sizes["layer"] == 0  # no block of this kind in this model (bias tuning has no carried layers)
    carried = beta.sum("layer", min_count=0 if empty else 1)
    carried = carried.drop_vars([c for c in carried.coords if c not in carried.dims and c != "bias_source"
                                 and "image" not in carried.coords[c].dims])
    total = ds["direct_total"].sel(target=target, drop=True)
    gain = total.sel(variant=schema.PROMPTED_VARIANT, drop=True) - total.sel(variant=schema.REFERENCE_VARIANT,
                                                                               drop=True)
    carried, gain = xr.align(carried, gain, join="exact")
    valid = carried.notnull() & gain.notnull()
    carried, gain = carried.where(valid), gain.where(valid)

    kwargs = {"n_boot": n_boot, "ci": ci, "seed": seed, "nested": nested, "method": method}
    dims = [d for d in over if d in carried.dims]
    mean_gain = gain.mean(dims)
    share = safe_ratio(carried.mean(dims), mean_gain)
    # influence of each cell on the ratio of means: its mean is exactly 0, its spread is the ratio's (delta method)
    z = (carried - share * gain) / mean_gain.where(mean_gain > 0)
    z = z.where(share.notnull(), 0.0)  # no share to bound: zeros spare the interval an all-NaN slice
    z_ci = bootstrap_ci(z, over, **kwargs)
    carried_ci = bootstrap_ci(carried, over, **kwargs)
    gain_ci = bootstrap_ci(gain, over, **kwargs)
    # Fieller: when the gain's interval reaches 0 the ratio's confidence set is unbounded
    bounded = (gain_ci.sel(estimate="low", drop=True) > 0) | share.isnull()
    share_ci = xr.concat(
        [share, (share + z_ci.sel(estimate="low", drop=True)).where(bounded, -np.inf),
         (share + z_ci.sel(estimate="high", drop=True)).where(bounded, np.inf)],
        dim="estimate", coords="minimal", compat="override", join="outer",
    ).assign_coords(estimate=list(gain_ci["estimate"].values))
    if empty:  # nothing to share, rather than a share of 0
        share_ci, carried_ci = xr.full_like(share_ci, np.nan), xr.full_like(carried_ci, np.nan)
    out = stack_measures({"share": share_ci, "bias_direct": carried_ci, "gain": gain_ci})
    out = out.transpose(*[d for d in out.dims if d not in ("measure", "estimate")], "measure", "estimate")
    out = out.drop_vars([c for c in out.coords if c not in out.dims and c != "bias_source"])
    out = out.assign_coords(layer_group=layer_group)
    out.attrs = {"interval_method": z_ci.attrs["interval_method"], "summary": z_ci.attrs["summary"]}
    return _finish(out, ds, "bias_gain_share",
                   f"mean_i sum of the {tower} bias components' direct effects on the {target} in {layer_group} "
                   f"layers (full) / mean_i ({target} full - {target} zeroshot); delta-method interval",
                   tower=tower, layer_group=layer_group, target=target)


def compare_bias_sources(
    prompted: xr.Dataset | xr.DataTree,
    learned: xr.Dataset | xr.DataTree,
    *,
    tower: str = "vision",
    layer_groups: Sequence[str] = ("all", "injected"),
    **kwargs: object,
) -> xr.DataArray:
    """A prompt method's and bias tuning's gain shares side by side (:func:`bias_gain_share` of each).

    Parameters
    ----------
    prompted, learned
        Stores (or studies) of a prompt method (``bias_source = "prompt"``, e.g. MaPLe) and of bias
        tuning (``bias_source = "learned"``), traced with direct effects and the zero-shot reference.
    tower
        Whose bias components.
    layer_groups
        Layer groups to compare. Bias tuning's layers are ``injected`` (with a learned bias) or
        ``none``, so ``carried`` is NaN for it.
    **kwargs
        Passed to :func:`bias_gain_share` (``target``, ``over``, ``n_boot``, ``seed``, ...).

    Returns
    -------
    xarray.DataArray
        ``(bias_source, layer_group, [dataset,] [seed,] measure, estimate)``; ``bias_source`` =
        ``prompt``, ``learned``. A table: ``.sel(measure="share").to_series().unstack("estimate")``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> def store(source, beta):
    ...     comp = {"tower": ("component", ["vision"] * 2), "kind": ("component", ["bias", "mlp"]),
    ...             "layer": ("component", [0, 0]), "head": ("component", [-1, -1])}
    ...     eff = np.zeros((2, 30, 2, 1))
    ...     eff[0, :, 0], eff[0, :, 1], eff[1, :, 1] = beta, 3.0, 2.0
    ...     return xr.Dataset({"direct_effect": (("variant", "image", "component", "target"), eff),
    ...                        "direct_total": (("variant", "image", "target"), eff.sum(2))},
    ...                       coords={"variant": ["full", "zeroshot"], "target": ["margin"], "bias_source": source,
    ...                               **comp})
    >>> t = compare_bias_sources(store("prompt", 1.0), store("learned", 3.0), layer_groups=("all",), n_boot=200)
    >>> t.sel(measure="share", estimate="mean", layer_group="all").values.tolist()  # 1/2 and 3/4
    [0.5, 0.75]
    """
    rows = []
    for data, want in ((prompted, "prompt"), (learned, "learned")):
        found = _bias_source(require_direct(data))
        if found is not None and found != want:
            raise ValueError(f"compare_bias_sources: expected a store with bias_source={want!r} in this argument, "
                             f"found {found!r}; pass the prompt method's store first and bias tuning's second")
        parts = [bias_gain_share(data, tower=tower, layer_group=g, **kwargs).drop_vars(
            ["layer_group", "bias_source"], errors="ignore") for g in layer_groups]
        rows.append(xr.concat(parts, dim="layer_group", coords="minimal", compat="override", join="outer")
                    .assign_coords(layer_group=list(layer_groups)))
    out = xr.concat(rows, dim="bias_source", coords="minimal", compat="override", join="outer")
    out = out.assign_coords(bias_source=list(schema.BIAS_SOURCES))
    out.attrs = {**provenance(require_direct(prompted)), "statistic": "compare_bias_sources",
                 "definition": "bias_gain_share of a prompt method and of bias tuning, side by side",
                 "interval_method": rows[0].attrs.get("interval_method", ""), "tower": tower}
    return out.rename("compare_bias_sources")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _values(ds: xr.Dataset, name: str) -> np.ndarray:
    coord = ds.coords[name]
    if coord.dims != ("component",):
        raise ValueError(f"direct effects: expected the coordinate {name!r} along 'component' only, "
                         f"found dims {coord.dims}")
    return np.asarray(coord.values)


def _require_variants(obj: xr.Dataset | xr.DataArray, wanted: Sequence[str], statistic: str) -> None:
    have = [str(v) for v in obj.coords["variant"].values] if "variant" in obj.coords else []
    missing = [v for v in wanted if v not in have]
    if not missing:
        return
    hint = ""
    if schema.REFERENCE_VARIANT in missing:
        hint = ("; the gain needs the prompt-free reference on the same images: re-trace with "
                "`mmlens trace --with-reference --direct-effects` (with_reference=True, direct_effects=True)")
    raise ValueError(f"{statistic}: expected variants {list(wanted)}, found {have}{hint}")


def _layer_kinds(data: xr.Dataset | xr.DataTree, direct: xr.Dataset, tower: str) -> dict[int, str] | None:
    """``{layer: layer_kind}`` of a tower: from its store group (a tree), or from the direct group's own coordinate."""
    if isinstance(data, xr.DataTree) and tower in data.root.children:
        group = group_dataset(data.root, tower)
        if "layer_kind" in group.coords and "layer" in group.coords:
            kinds = group.coords["layer_kind"]
            if kinds.dims != ("layer",):
                raise ValueError(f"expected the {tower} group's layer_kind along 'layer' only, found {kinds.dims}")
            return {int(ell): str(k) for ell, k in zip(group.coords["layer"].values, kinds.values)}
    if "layer_kind" in direct.coords and direct.coords["layer_kind"].dims == ("component",):
        towers = _values(direct, "tower").astype(str)
        layers = _values(direct, "layer").astype(np.int64)
        kinds = np.asarray(direct.coords["layer_kind"].values).astype(str)
        return {int(ell): str(k) for t, ell, k in zip(towers, layers, kinds) if t == tower and ell >= 0}
    return None


def _with_layer_kind(out: xr.DataArray, source: xr.DataArray) -> xr.DataArray:
    if "layer_kind" in source.coords and "layer" in out.dims:
        out = out.assign_coords(layer_kind=source.coords["layer_kind"])
    return out


def _bias_source(ds: xr.Dataset) -> str | None:
    return str(ds.coords["bias_source"].item()) if "bias_source" in ds.coords else None


def _finish(out: xr.DataArray, source: xr.Dataset | xr.DataArray, statistic: str, definition: str,
            **extra: object) -> xr.DataArray:
    """Provenance re-attached, keeping the interval's own attrs (``interval_method``, ``summary``)."""
    interval = {k: out.attrs[k] for k in ("interval_method", "summary") if k in out.attrs}
    source_attrs = {k: v for k, v in source.attrs.items() if k not in ("statistic", "definition")}
    carrier = xr.DataArray(attrs=source_attrs)
    out = with_provenance(out, carrier, statistic, definition, **extra)
    out.attrs.update(interval)
    return out
