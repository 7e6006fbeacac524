"""Combining the stores of several runs (datasets x seeds) into one study tree."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from mmlens.store import schema

__all__ = ["combine_runs"]

_STRING_FILL = {name: schema.STUDY_PADDING for name in ("classname", "split", "path")}
_DROPPED = ("failures", "failure_path")  # failures stay in each run's own store
#: Root attrs that name the model and method: runs that differ in one of them cannot form a study.
_IDENTITY = ("model_name", "pretrained", "weights_sha256", "method", "method_hparams")

RunStore = xr.DataTree | str | os.PathLike


def combine_runs(
    runs: Iterable[RunStore] | Mapping[tuple[str, int], RunStore], *, attrs: Mapping[str, Any] | None = None
) -> xr.DataTree:
    """Stack the runs of one method along ``dataset`` and ``seed`` (the study layout of the schema).

    The one study builder: the pipeline, the notebooks and :func:`mmlens.store.synthetic.example_study`
    all stack through it. A run is a trace tree or the path of a store (opened lazily with
    :func:`mmlens.store.io.open`). Each run is placed by its ``dataset`` and ``seed`` attributes,
    or by its key when ``runs`` is a mapping ``{(dataset, seed): run}``. Per-run outputs (variables with
    a ``variant`` dim) gain both dims; seed-independent ones (``foreground``, ``output_bias_norm``)
    are taken from the first seed of each dataset and gain only ``dataset``. Datasets with fewer
    images (classes) are padded: NaN in variables, ``label = -1`` and empty strings in
    coordinates. Root attrs keep what all runs share; ``dataset`` becomes ``"study"``, ``seed``
    ``-1``, and any other differing key a JSON object ``{"<dataset>/<seed>": value}``.
    ``failures`` are not carried over (they stay in each run's store). A variable some datasets
    lack (``foreground`` without masks) is NaN for them. Lazy inputs stay lazy.

    Parameters
    ----------
    runs
        Trace trees (in memory or opened with ``mmlens.open``) or store paths, one per (dataset, seed);
        or a mapping from (dataset, seed) to them.
    attrs
        Extra root attributes (after the shared provenance).

    Returns
    -------
    xarray.DataTree
        A schema-valid study tree.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> runs = [example_tree(n_images=n, dataset=d, seed=s) for d, n in (("a", 4), ("b", 6)) for s in (1, 2)]
    >>> study = combine_runs(runs)
    >>> study["vision"]["prompt_mass"].dims, study["vision"].sizes["image"]
    (('dataset', 'seed', 'variant', 'image', 'layer', 'head'), 6)
    """
    if isinstance(runs, Mapping):
        keys = [(str(d), int(s)) for d, s in runs]
        runs = [_as_tree(run) for run in runs.values()]
    else:
        runs = [_as_tree(run) for run in runs]
        keys = []
        for tree in runs:
            missing = [k for k in ("dataset", "seed") if k not in tree.attrs]
            if missing:
                raise ValueError(
                    f"every run needs 'dataset' and 'seed' attrs to be placed in a study; one lacks {missing}"
                )
            keys.append((str(tree.attrs["dataset"]), int(tree.attrs["seed"])))
    if not runs:
        raise ValueError("combine_runs needs at least one run tree, found none")
    for key in _IDENTITY:
        values = {str(tree.attrs.get(key)) for tree in runs}
        if len(values) > 1:
            raise ValueError(f"a study combines runs of one model and method; found different {key}: {sorted(values)}")
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"each (dataset, seed) may appear once, found repeats {dupes}")
    datasets = list(dict.fromkeys(d for d, _ in keys))
    seeds = sorted({s for _, s in keys})
    by_key = dict(zip(keys, runs))
    missing_runs = [(d, s) for d in datasets for s in seeds if (d, s) not in by_key]
    if missing_runs:
        raise ValueError(
            f"a study needs every dataset for every seed; missing runs {missing_runs} (combine the complete ones)"
        )

    groups = list(dict.fromkeys(name for tree in runs for name in tree.children))
    _check_same_shapes(runs, keys, groups)
    nodes: dict[str, Any] = {"/": xr.Dataset(attrs={**_study_attrs(runs, keys), **dict(attrs or {})})}
    for name in groups:
        per_dataset = []
        for d in datasets:
            parts = [_group(by_key[d, s], name, d, s) for s in seeds]
            per_dataset.append(_stack_seeds(parts, seeds))
        nodes[name] = _stack_datasets(_fill_missing(per_dataset), datasets)
    return schema.validate(xr.DataTree.from_dict(nodes))


def _as_tree(run: RunStore) -> xr.DataTree:
    if isinstance(run, xr.DataTree):
        return run
    if isinstance(run, (str, os.PathLike)):
        from mmlens.store.io import open as open_store

        return open_store(run)
    raise TypeError(f"expected a trace tree or a store path per run, found {type(run).__name__}")


def _fill_missing(parts: list[xr.Dataset]) -> list[xr.Dataset]:
    """Give every dataset's part the variables another part has (e.g. ``foreground`` where masks exist), as NaN."""
    names = list(dict.fromkeys(n for p in parts for n in p.data_vars))
    out = []
    for p in parts:
        for n in names:
            if n in p.data_vars:
                continue
            template = next(q[n] for q in parts if n in q.data_vars)
            dtype = template.dtype if template.dtype.kind == "f" else np.float32
            shape = tuple(p.sizes.get(d, template.sizes[d]) for d in template.dims)
            coords = {d: p[d] for d in template.dims if d in p.coords}
            p = p.assign({n: xr.DataArray(np.full(shape, np.nan, dtype=dtype), dims=template.dims, coords=coords)})
        out.append(p)
    return out


_PER_RUN_DIMS = ("image", "class", "failure", "dataset", "seed")


def _check_same_shapes(runs: list[xr.DataTree], keys: list[tuple[str, int]], groups: list[str]) -> None:
    """All runs must share model-side dims (variants, layers, heads, channels, patch grid, roles)."""
    for name in groups:
        ref = None
        for key, tree in zip(keys, runs):
            if name not in tree.children:
                continue
            sizes = {d: n for d, n in tree[name].to_dataset().sizes.items() if d not in _PER_RUN_DIMS}
            if ref is None:
                ref = (key, sizes)
            elif sizes != ref[1]:
                raise ValueError(
                    f"runs {ref[0]} and {key} differ in the shape of group {name!r}: {ref[1]} vs {sizes}; "
                    "a study combines runs of one model and method"
                )


def _group(tree: xr.DataTree, name: str, dataset: str, seed: int) -> xr.Dataset:
    if name not in tree.children:
        raise ValueError(f"run ({dataset}, {seed}) has no {name!r} group; all runs need the same groups")
    ds = tree[name].to_dataset()
    ds = ds.drop_vars([v for v in _DROPPED if v in ds.variables])
    ds.attrs = {}
    return ds


def _stack_seeds(parts: list[xr.Dataset], seeds: list[int]) -> xr.Dataset:
    first = parts[0]
    for seed, part in zip(seeds[1:], parts[1:]):
        for coord in ("label", "path", "classname"):
            if coord in first.coords and not first.coords[coord].equals(part.coords.get(coord)):
                raise ValueError(
                    f"seed {seed} was traced on other images/classes than seed {seeds[0]} (its {coord!r} "
                    "differs); a study needs the same images for every seed of a dataset"
                )
    per_run = [v for v in first.data_vars if "variant" in first[v].dims]
    static = first.drop_vars(per_run)
    stacked = xr.concat(
        [p[per_run] for p in parts],
        dim=pd.Index(seeds, name="seed"),
        coords="minimal",
        compat="override",
        join="outer",
    )
    return xr.merge([stacked, static], compat="override", join="outer")


def _stack_datasets(parts: list[xr.Dataset], datasets: list[str]) -> xr.Dataset:
    fill = {**_STRING_FILL, "label": -1}
    # per-image and per-class coordinates belong to one dataset: (dataset, image) / (dataset, class) always,
    # even where two datasets happen to agree (or there is only one), so that the layout never depends on values
    parts = [
        p.assign_coords({
            c: p.coords[c].expand_dims(dataset=1)
            for c in p.coords
            if c not in p.dims and {"image", "class"} & set(p.coords[c].dims)
        })
        for p in parts
    ]
    out = xr.concat(
        parts,
        dim=pd.Index(datasets, name="dataset"),
        data_vars="all",
        coords="different",
        compat="equals",
        join="outer",
        fill_value={**{v: float("nan") for p in parts for v in p.data_vars}, **fill},
    )
    out = out.assign_coords(dataset=np.array(datasets))  # numpy strings, not pandas' string dtype
    if "label" in out.coords and out.coords["label"].dtype.kind == "f":
        out = out.assign_coords(label=out.coords["label"].fillna(-1).astype("int64"))
    return out


def _study_attrs(runs: list[xr.DataTree], keys: list[tuple[str, int]]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    names = [k for k in runs[0].attrs if k != schema.PROGRESS_ATTR]
    for key in names:
        values = [tree.attrs.get(key) for tree in runs]
        if all(v == values[0] for v in values):
            attrs[key] = values[0]
        else:
            attrs[key] = json.dumps({f"{d}/{s}": v for (d, s), v in zip(keys, values)}, sort_keys=True, default=str)
    attrs["dataset"] = "study"
    attrs["seed"] = -1
    return attrs
