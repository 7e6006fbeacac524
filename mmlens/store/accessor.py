"""The ``.mml`` accessor on xarray Datasets, DataArrays and DataTrees: common selections and statistics."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from mmlens.store import schema

__all__ = ["MmlDatasetAccessor", "MmlDataArrayAccessor", "MmlTreeAccessor", "group_dataset"]


# ----------------------------------------------------------------------------------------------
# shared selection logic (Dataset and DataArray)
# ----------------------------------------------------------------------------------------------


def _check_entry(obj: xr.Dataset | xr.DataArray) -> None:
    """Fail early on names the package does not know (typos such as ``layers``, unknown roles)."""
    allowed = (*schema.DIMS, *schema.RESULT_DIMS)
    problems = []
    unknown = [str(d) for d in obj.dims if d not in allowed]
    if unknown:
        problems.append(f"expected dims among {list(allowed)}, found unknown {unknown}")
    if "query" in obj.dims and "token_role" not in obj.coords:
        problems.append("expected a 'token_role' coordinate on the 'query' dim, found none")
    for coord, values in (
        ("token_role", schema.TOKEN_ROLES),
        ("key_role", schema.TOKEN_ROLES),
        ("layer_kind", schema.LAYER_KINDS),
    ):
        if coord in obj.coords:
            bad = sorted({str(x) for x in np.asarray(obj.coords[coord].values, dtype=object).ravel()} - set(values))
            if bad:
                problems.append(f"expected {coord!r} values among {list(values)}, found {bad}")
    if problems:
        raise schema.SchemaError(
            "the .mml accessor needs mmlens names (docs/store_schema.md):\n  - " + "\n  - ".join(problems)
        )


def _select_layers(obj: Any, kind: str) -> Any:
    if "layer" not in obj.dims:
        raise ValueError(f"selecting {kind} layers needs a 'layer' dim; found dims {tuple(obj.dims)}")
    if "layer_kind" not in obj.coords:
        raise ValueError(
            "selecting layers by kind needs the 'layer_kind' coordinate on 'layer' (injected/carried/none), "
            "found none; stores written by mmlens carry it"
        )
    mask = np.asarray(obj.coords["layer_kind"].values, dtype=object) == kind
    return obj.isel(layer=np.flatnonzero(mask))


def _with_vs_without(obj: Any, prompted: str, reference: str) -> Any:
    if "variant" not in obj.dims:
        raise ValueError(f"with-vs-without needs a 'variant' dim; found dims {tuple(obj.dims)}")
    have = [str(v) for v in obj.coords["variant"].values] if "variant" in obj.coords else []
    missing = [v for v in (prompted, reference) if v not in have]
    if missing:
        raise ValueError(
            f"with-vs-without needs variants {prompted!r} and {reference!r}, found {have}; trace with "
            "with_reference=True to store the prompt-free reference on the same images"
        )
    if isinstance(obj, xr.Dataset):
        obj = obj[[name for name in obj.data_vars if "variant" in obj[name].dims]]
    with xr.set_options(keep_attrs=True):
        out = obj.sel(variant=prompted, drop=True) - obj.sel(variant=reference, drop=True)
    out.attrs = {**obj.attrs, "difference": f"{prompted} - {reference}"}
    return out


def _token_mask(obj: Any, role: str) -> xr.DataArray:
    roles = obj.coords["token_role"]
    return xr.DataArray(np.asarray(roles.values, dtype=object) == role, dims=roles.dims, coords=roles.coords)


def _select_queries(obj: Any, role: str, *, squeeze: bool) -> Any:
    """Queries of one token role; a 1-D role selects positions, a 2-D one (per class) masks them."""
    mask = _token_mask(obj, role)
    if mask.ndim == 1:
        idx = np.flatnonzero(mask.values)
        if squeeze:
            if len(idx) != 1:
                raise ValueError(f"expected exactly one {role!r} query, found {len(idx)}")
            return obj.isel(query=int(idx[0]), drop=True)
        return obj.isel(query=idx)
    if squeeze:  # e.g. EOT at a class-dependent position: exactly one per row
        counts = mask.sum("query")
        if int(counts.min()) != 1 or int(counts.max()) != 1:
            raise ValueError(f"expected exactly one {role!r} query per {mask.dims[0]}, found counts {counts.values}")
        out = obj.where(mask).sum("query", min_count=1)
        return out.drop_vars("token_role", errors="ignore")
    return obj.where(mask, drop=True)


def _readout(obj: Any, group: str) -> Any:
    role = schema.READOUT_ROLE.get(group)
    if role is None:
        raise ValueError(f"no readout query for group {group!r}; expected one of {list(schema.READOUT_ROLE)}")
    if "query" not in obj.dims:
        return obj
    if isinstance(obj, xr.DataArray):
        return _select_queries(obj, role, squeeze=True)
    with_q = [n for n in obj.data_vars if "query" in obj[n].dims]
    rest = obj.drop_vars(with_q).drop_dims("query", errors="ignore")
    picked = _select_queries(obj[with_q], role, squeeze=True)
    return xr.merge([rest, picked], combine_attrs="override", compat="override", join="outer")


def _prompts(obj: Any) -> Any:
    if isinstance(obj, xr.DataArray):
        if "key_role" in obj.dims:
            obj = obj.sel(key_role=schema.PROMPT_ROLE)
        if "query" in obj.dims:
            obj = _select_queries(obj, schema.PROMPT_ROLE, squeeze=False)
        return obj
    names = [n for n in obj.data_vars if {"key_role", "query"} & set(obj[n].dims)]
    if not names:
        raise ValueError(
            "prompts() selects along 'key_role' or 'query' (token_role='prompt'), but no variable has either dim; "
            f"variables: {sorted(obj.data_vars)}"
        )
    out = obj[names]
    if "key_role" in out.dims:
        roles = [str(r) for r in out.coords["key_role"].values]
        if schema.PROMPT_ROLE not in roles:
            raise ValueError(f"no 'prompt' key_role in this group; found roles {roles}")
        out = out.sel(key_role=schema.PROMPT_ROLE)
    if "query" in out.dims:
        out = _select_queries(out, schema.PROMPT_ROLE, squeeze=False)
    return out


# ----------------------------------------------------------------------------------------------
# Dataset accessor
# ----------------------------------------------------------------------------------------------


@xr.register_dataset_accessor("mml")
class MmlDatasetAccessor:
    """``ds.mml``: selections by label and the statistics of docs/math.md on one group of a trace store.

    Dims and token roles are checked when the accessor is first used, so a Dataset with foreign
    names fails early with a message saying what was expected.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> ds = example_tree()["vision"].to_dataset()
    >>> ds.mml.injected_layers().sizes["layer"], ds.mml.prompts()["attention_by_role"].dims
    (2, ('variant', 'image', 'layer', 'head'))
    """

    def __init__(self, ds: xr.Dataset) -> None:
        _check_entry(ds)
        self._ds = ds

    @property
    def group(self) -> str:
        """Which store group this Dataset is (``vision``, ``text``, ``logits``)."""
        return schema.infer_group(self._ds)

    def readout(self) -> xr.Dataset:
        """Variables at the readout query (``[cls]`` / EOT): all-query outputs lose their ``query`` dim."""
        return _readout(self._ds, self.group)

    def prompts(self) -> xr.Dataset:
        """Only what concerns prompt tokens: ``key_role="prompt"`` and queries with ``token_role="prompt"``."""
        return _prompts(self._ds)

    def injected_layers(self) -> xr.Dataset:
        """Layers where fresh learned prompts enter (``layer_kind="injected"``)."""
        return _select_layers(self._ds, "injected")

    def carried_layers(self) -> xr.Dataset:
        """Layers whose prompt slots carry earlier outputs (``layer_kind="carried"``)."""
        return _select_layers(self._ds, "carried")

    def with_vs_without(self, prompted: str = schema.PROMPTED_VARIANT, reference: str = schema.REFERENCE_VARIANT):
        """``full - zeroshot`` for every variable with a ``variant`` dim (the others are dropped)."""
        return _with_vs_without(self._ds, prompted, reference)

    # statistics (mmlens.stats) -------------------------------------------------------------------

    def prompt_mass(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.prompt_mass`."""
        from mmlens import stats

        return stats.prompt_mass(self._ds, **kwargs)

    def bias_norm_ratio(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.bias_norm_ratio`."""
        from mmlens import stats

        return stats.bias_norm_ratio(self._ds, **kwargs)

    def bias_consistency(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.bias_consistency`."""
        from mmlens import stats

        return stats.bias_consistency(self._ds, **kwargs)

    def foreground_attention(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.foreground_attention`."""
        from mmlens import stats

        return stats.foreground_attention(self._ds, **kwargs)

    def prompt_background_similarity(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.prompt_background_similarity`."""
        from mmlens import stats

        return stats.prompt_background_similarity(self._ds, **kwargs)

    def text_reliance(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.text_reliance`."""
        from mmlens import stats

        return stats.text_reliance(self._ds, **kwargs)


# ----------------------------------------------------------------------------------------------
# DataArray accessor (statistics results, single variables)
# ----------------------------------------------------------------------------------------------


@xr.register_dataarray_accessor("mml")
class MmlDataArrayAccessor:
    """``da.mml``: the same selections on one variable or statistic, plus summaries.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> alpha = example_tree()["vision"]["prompt_mass"]
    >>> alpha.mml.summarize(average=("head",), n_boot=200).dims
    ('variant', 'layer_kind', 'estimate')
    """

    def __init__(self, da: xr.DataArray) -> None:
        _check_entry(da)
        self._da = da

    def readout(self, group: str = "vision") -> xr.DataArray:
        """The readout query of an all-query variable (``group`` says which tower it came from)."""
        return _readout(self._da, group)

    def prompts(self) -> xr.DataArray:
        """Select ``key_role="prompt"`` and/or prompt queries."""
        return _prompts(self._da)

    def injected_layers(self) -> xr.DataArray:
        """Layers with fresh learned prompts."""
        return _select_layers(self._da, "injected")

    def carried_layers(self) -> xr.DataArray:
        """Layers whose prompt slots carry earlier outputs."""
        return _select_layers(self._da, "carried")

    def with_vs_without(self, prompted: str = schema.PROMPTED_VARIANT, reference: str = schema.REFERENCE_VARIANT):
        """``full - zeroshot``."""
        return _with_vs_without(self._da, prompted, reference)

    def summarize(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.summarize`."""
        from mmlens import stats

        return stats.summarize(self._da, **kwargs)

    def bootstrap_ci(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.bootstrap_ci`."""
        from mmlens import stats

        return stats.bootstrap_ci(self._da, **kwargs)


# ----------------------------------------------------------------------------------------------
# DataTree accessor (a whole store)
# ----------------------------------------------------------------------------------------------


def group_dataset(tree: xr.DataTree, group: str) -> xr.Dataset:
    """One group of a store as a self-describing Dataset: root provenance attrs + ``mmlens_group``.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> ds = group_dataset(example_tree(), "text")
    >>> ds.attrs["mmlens_group"], ds.attrs["method"]
    ('text', 'maple')
    """
    root = tree.root
    if group not in root.children:
        raise KeyError(f"this store has no {group!r} group; it has {sorted(root.children)}")
    ds = root[group].to_dataset()
    ds.attrs = {**root.attrs, **ds.attrs, "mmlens_group": group}
    ds.attrs.pop(schema.PROGRESS_ATTR, None)
    return ds


@xr.register_datatree_accessor("mml")
class MmlTreeAccessor:
    """``tree.mml``: a store's groups as self-describing Datasets, and statistics by tower.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> tree = example_tree()
    >>> tree.mml.vision.attrs["mmlens_group"]
    'vision'
    """

    def __init__(self, tree: xr.DataTree) -> None:
        self._tree = tree

    @property
    def vision(self) -> xr.Dataset:
        """The ``vision`` group with provenance attrs."""
        return group_dataset(self._tree, "vision")

    @property
    def text(self) -> xr.Dataset:
        """The ``text`` group with provenance attrs."""
        return group_dataset(self._tree, "text")

    @property
    def logits(self) -> xr.Dataset:
        """The ``logits`` group with provenance attrs."""
        return group_dataset(self._tree, "logits")

    def validate(self) -> xr.DataTree:
        """Check the tree against the schema (see :func:`mmlens.store.schema.validate`)."""
        return schema.validate(self._tree)

    def prompt_mass(self, tower: str = "vision", **kwargs: Any) -> xr.DataArray:
        """:func:`mmlens.stats.prompt_mass` on one tower."""
        return group_dataset(self._tree, tower).mml.prompt_mass(**kwargs)

    def bias_norm_ratio(self, tower: str = "vision", **kwargs: Any) -> xr.DataArray:
        """:func:`mmlens.stats.bias_norm_ratio` on one tower."""
        return group_dataset(self._tree, tower).mml.bias_norm_ratio(**kwargs)

    def bias_consistency(self, tower: str = "vision", **kwargs: Any) -> xr.DataArray:
        """:func:`mmlens.stats.bias_consistency` on one tower."""
        return group_dataset(self._tree, tower).mml.bias_consistency(**kwargs)

    def foreground_attention(self, **kwargs: Any) -> xr.DataArray:
        """:func:`mmlens.stats.foreground_attention` (vision)."""
        return self.vision.mml.foreground_attention(**kwargs)

    def prompt_background_similarity(self, **kwargs: Any) -> xr.DataArray:
        """:func:`mmlens.stats.prompt_background_similarity` (vision)."""
        return self.vision.mml.prompt_background_similarity(**kwargs)

    def text_reliance(self, **kwargs: Any) -> xr.DataArray:
        """:func:`mmlens.stats.text_reliance` (text)."""
        return self.text.mml.text_reliance(**kwargs)
