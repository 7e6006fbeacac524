"""Stack per-run trace stores (one per dataset and seed) into one study tree (docs/store_schema.md, "Studies")."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["stack_runs"]

# Variables that do not depend on the prompt-training seed (the images and the frozen model).
_SEED_FREE = ("foreground", "output_bias_norm", "failures")
_ITEM_COORDS = {"image": ("label", "classname", "split", "path"), "class": ("classname", "split")}


def _group(tree: xr.DataTree, name: str) -> xr.Dataset | None:
    return tree[name].to_dataset() if name in tree.children else None


def _per_item_coords(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """The per-image / per-class coordinates of one run (label, classname, split, path)."""
    out = {}
    for dim, names in _ITEM_COORDS.items():
        for name in names:
            if name in ds.coords and ds.coords[name].dims == (dim,):
                out[name] = ds.coords[name].reset_coords(drop=True)
    return out


def _stack_group(runs: Mapping[tuple[str, int], xr.Dataset], datasets: list[str], seeds: list[int]) -> xr.Dataset:
    """One group of every run -> a Dataset with leading ``dataset`` and ``seed`` dims (padded)."""
    per_dataset = []
    item_coords: dict[str, list[xr.DataArray]] = {}
    constants = None
    for name in datasets:
        parts = {s: runs[name, s] for s in seeds if (name, s) in runs}
        if not parts:
            continue
        first = next(iter(parts.values()))
        coords = _per_item_coords(first)
        for other in parts.values():  # the seeds of one dataset must have traced the same images
            for key, value in _per_item_coords(other).items():
                if key in coords and not np.array_equal(np.asarray(value.values), np.asarray(coords[key].values)):
                    raise ValueError(
                        f"the runs of {name} do not share their {key!r} coordinate: every seed must trace the "
                        "same images and classes (same data root, subset and --max-images)"
                    )
        for key, value in coords.items():
            item_coords.setdefault(key, []).append(value.expand_dims(dataset=[name]))
        drop = [v for v in _SEED_FREE if v in first.data_vars] + list(coords)
        by_seed = xr.concat([ds.drop_vars(drop, errors="ignore").expand_dims(seed=[s]) for s, ds in parts.items()],
                            dim="seed", join="outer", coords="minimal", compat="override",
                            combine_attrs="drop_conflicts")
        if "foreground" in first.data_vars:
            by_seed["foreground"] = first["foreground"].reset_coords(drop=True)
        if constants is None and "output_bias_norm" in first.data_vars:
            constants = first["output_bias_norm"].reset_coords(drop=True)
        per_dataset.append(by_seed.expand_dims(dataset=[name]))
    per_dataset = _fill_missing(per_dataset)
    out = xr.concat(per_dataset, dim="dataset", join="outer", coords="minimal", compat="override",
                    combine_attrs="drop_conflicts")
    for key, values in item_coords.items():
        da = xr.concat(values, dim="dataset", join="outer")
        da = da.fillna(-1).astype(np.int64) if key == "label" else da.fillna("").astype(object)
        out = out.assign_coords({key: da})
    if constants is not None:
        out["output_bias_norm"] = constants
    return out


def _fill_missing(parts: list[xr.Dataset]) -> list[xr.Dataset]:
    """Give every part the variables some parts have (e.g. ``foreground`` where masks exist), as NaN."""
    names = list(dict.fromkeys(n for p in parts for n in p.data_vars))
    out = []
    for p in parts:
        for n in names:
            if n in p.data_vars:
                continue
            template = next(q[n] for q in parts if n in q.data_vars)
            shape = tuple(p.sizes.get(d, template.sizes[d]) if d != "dataset" else 1 for d in template.dims)
            coords = {d: p[d] for d in template.dims if d in p.coords}
            p = p.assign({n: xr.DataArray(np.full(shape, np.nan, dtype=template.dtype if template.dtype.kind == "f"
                                                  else np.float32), dims=template.dims, coords=coords)})
        out.append(p)
    return out


def stack_runs(stores: Mapping[tuple[str, int], Any], *, attrs: Mapping[str, Any] | None = None) -> xr.DataTree:
    """Stack run stores ``{(dataset, seed): path or DataTree}`` into one study tree.

    Every group gains leading ``dataset`` and ``seed`` dims; per-image coordinates become 2-D
    ``(dataset, image)`` and per-class ones ``(dataset, class)``. Datasets with fewer images or
    classes are padded with NaN (``label = -1``, empty strings), as in
    :func:`mmlens.store.synthetic.example_study`. Stores opened lazily stay lazy (dask).

    Parameters
    ----------
    stores
        Run stores keyed by (dataset name, seed); all of one method and model.
    attrs
        Extra root attributes (the root gets the shared provenance, ``dataset="study"``,
        ``seed=-1`` and ``runs``: a JSON list of the stacked (dataset, seed) pairs).

    Returns
    -------
    xarray.DataTree

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> runs = {("a", 1): example_tree(n_images=4), ("b", 1): example_tree(n_images=3)}
    >>> study = stack_runs(runs)
    >>> study["vision"]["prompt_mass"].dims[:3], int(study["vision"]["label"].sel(dataset="b", image=3))
    (('dataset', 'seed', 'variant'), -1)
    """
    from mmlens.store.io import open as open_store

    if not stores:
        raise ValueError("stack_runs() needs at least one run store.")
    trees = {key: (open_store(v) if not isinstance(v, xr.DataTree) else v) for key, v in stores.items()}
    datasets = list(dict.fromkeys(d for d, _ in trees))
    seeds = sorted({int(s) for _, s in trees})
    groups = {}
    for name in ("vision", "text", "logits"):
        runs = {key: g for key, t in trees.items() if (g := _group(t, name)) is not None}
        if runs:
            groups[name] = _stack_group(runs, datasets, seeds)
    first = next(iter(trees.values()))
    root = {k: v for k, v in first.attrs.items() if all(t.attrs.get(k) == v for t in trees.values())}
    for key in ("model_name", "pretrained", "weights_sha256", "method", "method_hparams"):
        values = {str(t.attrs.get(key)) for t in trees.values()}
        if len(values) > 1:
            raise ValueError(f"cannot stack runs of different {key}: found {sorted(values)}")
    root.update({k: first.attrs[k] for k in first.attrs if k not in root and k not in ("created", "_progress")
                 and k not in ("prompt_sha256", "dataset", "seed")})
    root.update(dataset="study", seed=-1, prompt_sha256="per run", created=str(first.attrs.get("created", "")),
                runs=json.dumps([[d, int(s)] for d, s in trees]))
    root.update(dict(attrs or {}))
    return xr.DataTree.from_dict({"/": xr.Dataset(attrs=root), **groups})
