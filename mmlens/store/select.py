"""Selections on trace stores by label: token roles, the readout query, layer kinds, runs, groups with provenance.

Public and torch-free: the ``.mml`` accessor (:mod:`mmlens.stats.accessor`), the statistics and the
views all select through these functions, so a selection means the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from mmlens.store import schema

__all__ = [
    "check_names",
    "group_dataset",
    "layer_kind_runs",
    "layer_kinds_present",
    "layers_of_kind",
    "per_dataset",
    "prompts",
    "queries_of_role",
    "readout",
    "select_run",
    "with_vs_without",
]


def check_names(obj: xr.Dataset | xr.DataArray) -> None:
    """Fail early on names the package does not know (typos such as ``layers``, unknown roles).

    Examples
    --------
    >>> check_names(xr.Dataset({"x": (("layers",), [1.0])}))
    Traceback (most recent call last):
    ...
    mmlens.store.schema.SchemaError: the .mml accessor needs mmlens names (docs/store_schema.md):
      - expected dims among [...], found unknown ['layers']
    """
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


def layers_of_kind(obj: Any, kind: str) -> Any:
    """The layers whose ``layer_kind`` is ``kind`` (``injected``, ``carried`` or ``none``).

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> layers_of_kind(example_tree()["vision"].to_dataset(), "carried").layer.values.tolist()
    [2, 3]
    """
    if "layer" not in obj.dims:
        raise ValueError(f"selecting {kind} layers needs a 'layer' dim; found dims {tuple(obj.dims)}")
    if "layer_kind" not in obj.coords:
        raise ValueError(
            "selecting layers by kind needs the 'layer_kind' coordinate on 'layer' (injected/carried/none), "
            "found none; stores written by mmlens carry it"
        )
    mask = np.asarray(obj.coords["layer_kind"].values, dtype=object) == kind
    return obj.isel(layer=np.flatnonzero(mask))


def layer_kind_runs(kinds: Mapping[int, str]) -> list[tuple[int, int, str]]:
    """Consecutive layers of one kind as ``(first, last, kind)`` runs, e.g. to shade them in a plot.

    Examples
    --------
    >>> layer_kind_runs({0: "injected", 1: "injected", 2: "carried"})
    [(0, 1, 'injected'), (2, 2, 'carried')]
    """
    runs: list[tuple[int, int, str]] = []
    for ell in sorted(kinds):
        if runs and runs[-1][2] == kinds[ell] and runs[-1][1] == ell - 1:
            runs[-1] = (runs[-1][0], ell, kinds[ell])
        else:
            runs.append((ell, ell, kinds[ell]))
    return runs


def layer_kinds_present(da: xr.DataArray) -> list[str]:
    """The layer kinds of ``da``'s ``layer_kind`` coordinate, in schema order."""
    values = {str(v) for v in np.asarray(da.coords["layer_kind"].values, dtype=object)}
    return [k for k in schema.LAYER_KINDS if k in values]


def with_vs_without(
    obj: Any, prompted: str = schema.PROMPTED_VARIANT, reference: str = schema.REFERENCE_VARIANT
) -> Any:
    """``prompted - reference`` (default ``full - zeroshot``) for every variable with a ``variant`` dim."""
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


def queries_of_role(obj: Any, role: str, *, squeeze: bool) -> Any:
    """Queries of one token role; a 1-D role selects positions, a 2-D one (per class) masks them.

    With ``squeeze`` exactly one query of that role is expected (per row) and the ``query`` dim goes.
    """
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


def readout(obj: Any, group: str) -> Any:
    """Variables at the readout query of ``group`` (``[cls]`` for vision, EOT for text); others unchanged."""
    role = schema.READOUT_ROLE.get(group)
    if role is None:
        raise ValueError(f"no readout query for group {group!r}; expected one of {list(schema.READOUT_ROLE)}")
    if "query" not in obj.dims:
        return obj
    if isinstance(obj, xr.DataArray):
        return queries_of_role(obj, role, squeeze=True)
    with_q = [n for n in obj.data_vars if "query" in obj[n].dims]
    rest = obj.drop_vars(with_q).drop_dims("query", errors="ignore")
    picked = queries_of_role(obj[with_q], role, squeeze=True)
    return xr.merge([rest, picked], combine_attrs="override", compat="override", join="outer")


def prompts(obj: Any) -> Any:
    """Only what concerns prompt tokens: ``key_role="prompt"`` and queries with ``token_role="prompt"``."""
    if isinstance(obj, xr.DataArray):
        if "key_role" in obj.dims:
            obj = obj.sel(key_role=schema.PROMPT_ROLE)
        if "query" in obj.dims:
            obj = queries_of_role(obj, schema.PROMPT_ROLE, squeeze=False)
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
        out = queries_of_role(out, schema.PROMPT_ROLE, squeeze=False)
    return out


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


def select_run(obj: Any, **indexers: Any) -> Any:
    """``.sel`` on the dims that exist: a single run has no ``dataset``/``seed`` dims to select.

    Examples
    --------
    >>> da = xr.DataArray([1.0, 2.0], dims="variant", coords={"variant": ["full", "zeroshot"]})
    >>> float(select_run(da, dataset="a", seed=1, variant="full"))
    1.0
    """
    present = {k: v for k, v in indexers.items() if k in obj.dims}
    return obj.sel(present) if present else obj


def per_dataset(coord: xr.DataArray, dataset: str) -> xr.DataArray:
    """A coordinate of one dataset: 2-D ``(dataset, item)`` coords of a study are sliced, 1-D ones kept."""
    if "dataset" in coord.dims:
        return coord.sel(dataset=dataset)
    return coord
