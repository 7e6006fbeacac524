"""Attention statistics: prompt mass, foreground attention, prompt/background similarity, text reliance."""

from __future__ import annotations

import xarray as xr

from mmlens.stats._common import group_of, require, roles_of, stack_measures, with_provenance

__all__ = ["prompt_mass", "foreground_attention", "prompt_background_similarity", "text_reliance"]

_GRID = ["patch_row", "patch_col"]


def prompt_mass(data: xr.Dataset | xr.DataTree, *, tower: str = "vision") -> xr.DataArray:
    """Prompt mass α: attention mass of the readout query (and of the other queries) on prompt keys.

    ``α_i = Σ_{m∈P} a_im`` (docs/math.md). ``measure="readout"`` is α at ``[cls]`` (vision) or EOT
    (text); ``measure="other_queries"`` is the mean α over the other original queries, when stored.

    Parameters
    ----------
    data
        A store group Dataset, or a store tree (then ``tower`` picks the group).
    tower
        ``"vision"`` or ``"text"`` when ``data`` is a tree.

    Returns
    -------
    xarray.DataArray
        Dims of ``prompt_mass`` (variant, image/class, layer, head, ...) plus ``measure``.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> alpha = prompt_mass(example_tree())
    >>> alpha.measure.values.tolist(), float(alpha.sel(variant="zeroshot").max())
    (['readout', 'other_queries'], 0.0)
    """
    ds = group_of(data, tower)
    require(ds, ["prompt_mass"], "prompt_mass")
    parts = {"readout": ds["prompt_mass"]}
    if "prompt_mass_other_queries" in ds.data_vars:
        parts["other_queries"] = ds["prompt_mass_other_queries"]
    return with_provenance(stack_measures(parts), ds, "prompt_mass", "alpha = sum over prompt keys m of a_im")


def foreground_attention(data: xr.Dataset | xr.DataTree) -> xr.DataArray:
    """Attention of ``[cls]`` on foreground patches, from â (attention renormalised over the originals).

    ``measure="attention"``: ``Σ_j f_j â_cls,j`` with ``f_j`` the foreground fraction of patch j
    (docs/math.md's ``Σ_{j∈FG} â_cls,j`` for soft masks). ``"share"``: the same divided by
    ``Σ_j â_cls,j`` (the part of the patch attention on foreground, removing ``[cls]``'s attention
    to itself). ``"area"``: mean ``f_j``, what uniform attention over patches would give.
    Keep ``variant`` to compare with and without prompts (``.mml.with_vs_without()``).

    Returns
    -------
    xarray.DataArray
        (variant, image, layer, head, measure).

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> fa = foreground_attention(example_tree())
    >>> fa.dims[-1], fa.measure.values.tolist()
    ('measure', ['attention', 'share', 'area'])
    """
    ds = group_of(data, "vision")
    require(
        ds,
        ["cls_attention", "foreground"],
        "foreground_attention",
        "foreground masks exist only for datasets that have them (trace with masks=...)",
    )
    a_hat, fg = ds["cls_attention"], ds["foreground"]
    on_fg = (a_hat * fg).sum(_GRID, skipna=False)
    on_patches = a_hat.sum(_GRID, skipna=False)
    area = fg.mean(_GRID, skipna=False).broadcast_like(on_fg)
    out = stack_measures({"attention": on_fg, "share": on_fg / on_patches.where(on_patches > 0), "area": area})
    return with_provenance(out, ds, "foreground_attention", "sum_j foreground_j * a^_cls,j")


def prompt_background_similarity(data: xr.Dataset | xr.DataTree) -> xr.DataArray:
    """Mean cosine of the prompt keys/values with foreground vs background patch keys/values.

    With ``c_j`` the stored cosine of patch j's key (value) with the mean prompt key (value) and
    ``f_j`` its foreground fraction: foreground ``Σ f_j c_j / Σ f_j``, background
    ``Σ (1-f_j) c_j / Σ (1-f_j)``. Prompts "resembling background" means background > foreground.
    NaN where a block has no prompts (prompt-free variants, ``layer_kind="none"``) or an image has
    no foreground (background) at all.

    Returns
    -------
    xarray.DataArray
        (variant, image, layer, head, measure) with ``measure`` in ``key_foreground``,
        ``key_background``, ``value_foreground``, ``value_background``.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> sim = prompt_background_similarity(example_tree()).sel(variant="full")
    >>> bool((sim.sel(measure="key_background") > sim.sel(measure="key_foreground")).mean() > 0.5)
    True
    """
    ds = group_of(data, "vision")
    require(
        ds,
        ["prompt_key_cosine", "prompt_value_cosine", "foreground"],
        "prompt_background_similarity",
        "foreground masks exist only for datasets that have them",
    )
    fg = ds["foreground"]
    bg = 1.0 - fg
    parts = {}
    for kind in ("key", "value"):
        cos = ds[f"prompt_{kind}_cosine"]
        fg_total, bg_total = fg.sum(_GRID), bg.sum(_GRID)
        parts[f"{kind}_foreground"] = (cos * fg).sum(_GRID, skipna=False) / fg_total.where(fg_total > 0)
        parts[f"{kind}_background"] = (cos * bg).sum(_GRID, skipna=False) / bg_total.where(bg_total > 0)
    return with_provenance(
        stack_measures(parts),
        ds,
        "prompt_background_similarity",
        "sum_j w_j cos(k_j, mean prompt key) / sum_j w_j, w = foreground or background fraction",
    )


def text_reliance(data: xr.Dataset | xr.DataTree) -> xr.DataArray:
    """Where the EOT query of each class prompt looks: prompt vs class-name tokens (raw attention a).

    ``measure="prompt"``: ``Σ_{m∈P} a_eot,m`` (= α at EOT); ``"classname"``: mass on the class-name
    tokens; ``"word"``: mass on the other (template) words; ``"other"``: SOT, EOT and padding. The
    four sum to 1. Keep ``variant`` for with vs without prompts. Stores written before the
    ``classname`` role existed count class names under ``word``.

    Returns
    -------
    xarray.DataArray
        (variant, class, layer, head, measure).

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> r = text_reliance(example_tree())
    >>> float(r.sum("measure").mean().round(5))
    1.0
    """
    ds = group_of(data, "text")
    require(ds, ["attention_by_role"], "text_reliance", "it reads the text group's EOT attention")
    a = ds["attention_by_role"]
    out = stack_measures(
        {
            "prompt": roles_of(a, ["prompt"]),
            "classname": roles_of(a, ["classname"]),
            "word": roles_of(a, ["word"]),
            "other": roles_of(a, ["sot", "eot", "pad"]),
        }
    )
    return with_provenance(out, ds, "text_reliance", "sum of a_eot,j over key roles: prompt, classname, word, other")
