"""Assemble attribution results into the trace's ``attribution`` group, with and without prompts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import xarray as xr

__all__ = ["PER_RESULT_COORDS", "attribute_variants", "to_dataset"]

#: Per-image coordinates that belong to one method's run; they become variables ``<name>_<coord>``.
PER_RESULT_COORDS = ("convergence_delta", "logit", "baseline_logit", "prompt_relevance")


def attribute_variants(method: Any, images: Any, target: Any = None, *,
                       variants: Sequence[str] = ("full", "zeroshot"), **kwargs: Any) -> xr.DataArray:
    """Run one attribution method with the prompts on (``full``) and off (``zeroshot``), stacked along ``variant``.

    Parameters
    ----------
    method
        An attribution object (e.g. :class:`~mmlens.attribution.PatchOcclusion`) built on a PromptedCLIP.
    images, target, **kwargs
        Passed to ``method.attribute``. The same target is explained in every variant (with
        ``target="predicted"`` each variant explains its own prediction).
    variants : sequence of {"full", "zeroshot"}
        ``zeroshot`` switches ``model.prompts_enabled`` off for that run (restored afterwards).

    Examples
    --------
    >>> from mmlens.attribution import PatchOcclusion
    >>> occ = attribute_variants(PatchOcclusion(model, progress=False), images, "label", labels=labels)
    >>> shift = occ.sel(variant="full") - occ.sel(variant="zeroshot")   # what the prompts change
    >>> occ.variant.values.tolist(), shift.dims
    (['full', 'zeroshot'], ('image', 'patch_row', 'patch_col'))
    """
    model = method.model
    unknown = [v for v in variants if v not in ("full", "zeroshot")]
    if unknown:
        raise ValueError(f"variants must be 'full' and/or 'zeroshot', found {unknown}; route ablations run through "
                         "`with mmlens.intervene(model, ...)` around a single `.attribute(...)` call instead.")
    before = model.prompts_enabled
    parts = []
    try:
        for v in variants:
            model.prompts_enabled = v == "full"
            parts.append(method.attribute(images, target, **kwargs))
    finally:
        model.prompts_enabled = before
    out = _concat_variants(parts)
    return out.transpose("variant", ...)


def _concat_variants(parts: Sequence[xr.DataArray]) -> xr.DataArray:
    """Concatenate per-variant results; per-run coordinates always gain the ``variant`` dim."""
    per_run = [c for c in PER_RESULT_COORDS if c in parts[0].coords]
    return xr.concat(list(parts), dim="variant", coords=per_run, compat="equals", join="exact")


def to_dataset(results: Mapping[str, xr.DataArray | Sequence[xr.DataArray]],
               attrs: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Merge attribution results into one Dataset for the trace's ``attribution`` group.

    Parameters
    ----------
    results : mapping name -> DataArray or sequence of DataArrays
        One entry per method (e.g. ``{"occlusion": occ, "attention_gradcam": cam}``); a sequence
        (one result per variant) is concatenated along ``variant``. A result's scalar ``variant``
        coordinate becomes a ``variant`` dim of length 1 so that variants line up with the trace.
    attrs : mapping, optional
        Extra Dataset attrs (provenance is the trace's business; each variable keeps its own attrs).

    Returns
    -------
    xarray.Dataset
        One variable per name; per-run coordinates (``convergence_delta``, ``logit``,
        ``baseline_logit``, ``prompt_relevance``) become variables ``<name>_<coord>``; image metadata
        (``label``, ``classname``, ``path``, ``target``) stays as coordinates.

    Examples
    --------
    >>> from mmlens.attribution import AttentionGradCAM, PatchOcclusion
    >>> occ = PatchOcclusion(model, progress=False).attribute(images, labels=labels)
    >>> cam = AttentionGradCAM(model, progress=False).attribute(images, labels=labels)
    >>> ds = to_dataset({"occlusion": occ, "attention_gradcam": cam})
    >>> sorted(ds.data_vars)
    ['attention_gradcam', 'attention_gradcam_logit', 'occlusion', 'occlusion_logit']
    >>> tree = mmlens.trace(model, images, progress=False)
    >>> tree["attribution"] = xr.DataTree(ds)
    """
    pieces = []
    for name, value in results.items():
        if isinstance(value, xr.DataArray):
            da = value
        else:
            da = _concat_variants(value)
        if "variant" in da.coords and "variant" not in da.dims:
            da = da.expand_dims("variant")
        extra = {c: da.coords[c] for c in PER_RESULT_COORDS if c in da.coords}
        da = da.drop_vars(list(extra))
        variables = {str(name): da.rename(str(name))}
        for c, coord in extra.items():
            var = coord.variable.copy()
            if "variant" in da.dims and "variant" not in var.dims:
                var = var.set_dims({"variant": da.sizes["variant"], **dict(var.sizes)})
            variables[f"{name}_{c}"] = var
        pieces.append(xr.Dataset({k: v for k, v in variables.items()},
                                 coords={k: v for k, v in da.coords.items()}))
    ds = xr.merge(pieces, compat="no_conflicts", join="outer", combine_attrs="drop")
    for name, value in results.items():
        first = value if isinstance(value, xr.DataArray) else value[0]
        ds[str(name)].attrs = dict(first.attrs)
    ds.attrs.update({"mmlens_group": "attribution", **dict(attrs or {})})
    return ds
