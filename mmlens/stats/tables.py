"""Accuracy results as tables: merging evaluation results, seed means with HM, markdown and CSV. No torch.

The input is the ``xarray.Dataset`` of :func:`mmlens.train.evaluate` (dims ``dataset, seed, method,
variant, split``; ``accuracy`` in %, ``correct``, ``total``). :func:`accuracy_summary` reduces it to
the published numbers (seed means; HM per dataset; the average HM as the harmonic mean of the mean
base and mean novel accuracy) and :func:`to_markdown` / :func:`to_csv` write tables. Views and the
study pipeline use these without importing the training code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from mmlens.stats.elementary import harmonic_mean
from mmlens.store.variants import parse_variant

__all__ = ["accuracy_summary", "combine_results", "to_csv", "to_markdown"]


def combine_results(results: Sequence[xr.Dataset]) -> xr.Dataset:
    """Merge :func:`evaluate` results of separate runs (e.g. one per job or machine) into one Dataset.

    Coordinates are the union (in order of first appearance); a cell evaluated in two results must
    agree. Counts of cells nobody evaluated are 0 and their accuracy NaN, as in :func:`evaluate`.

    Examples
    --------
    >>> from mmlens.data.toyworld import build_in_memory
    >>> from mmlens.train import evaluate
    >>> data = {"ToySatellite": {"novel": build_in_memory("satellite", "test", subset="novel")}}
    >>> a = evaluate(model, data, seeds=1, splits=["novel"], progress=False)
    >>> b = evaluate(model, data, seeds=2, splits=["novel"], progress=False)
    >>> both = combine_results([a, b])
    >>> both.seed.values.tolist(), dict(both.accuracy.sizes)
    ([1, 2], {'dataset': 1, 'seed': 2, 'method': 1, 'variant': 1, 'split': 1})
    """
    if not results:
        raise ValueError("combine_results() needs at least one evaluate() result.")
    dims = ("dataset", "seed", "method", "variant", "split")
    coords = {d: list(dict.fromkeys(v for r in results for v in r[d].values.tolist())) for d in dims}
    shape = tuple(len(coords[d]) for d in dims)
    correct = np.zeros(shape, dtype=np.int64)
    total = np.zeros(shape, dtype=np.int64)
    sha = np.full(shape[:3], "", dtype=object)
    params: dict[str, int] = {}
    skipped: list[str] = []
    for r in results:
        idx = [[coords[d].index(v) for v in r[d].values.tolist()] for d in dims]
        grid = np.ix_(*idx)
        t_new, c_new = r["total"].values, r["correct"].values
        both = (total[grid] > 0) & (t_new > 0)
        if ((total[grid] != t_new) | (correct[grid] != c_new))[both].any():
            raise ValueError("combine_results(): two results disagree on a cell they both evaluated.")
        total[grid] = np.where(t_new > 0, t_new, total[grid])
        correct[grid] = np.where(t_new > 0, c_new, correct[grid])
        s_new = r["prompt_sha256"].values.astype(object)
        sha[np.ix_(*idx[:3])] = np.where(s_new != "", s_new, sha[np.ix_(*idx[:3])])
        for m, n in zip(r["method"].values.tolist(), r["trainable_parameters"].values.tolist()):
            params.setdefault(m, int(n))
        skipped += [line for line in str(r.attrs.get("skipped", "")).split("\n") if line]
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(total > 0, 100.0 * correct / np.maximum(total, 1), np.nan)
    parsed = [parse_variant(v) for v in coords["variant"]]
    first = results[0]
    return xr.Dataset(
        {
            "accuracy": (dims, accuracy, dict(first["accuracy"].attrs)),
            "correct": (dims, correct, dict(first["correct"].attrs)),
            "total": (dims, total, dict(first["total"].attrs)),
            "prompt_sha256": (dims[:3], sha.astype(str), dict(first["prompt_sha256"].attrs)),
        },
        coords={
            **coords,
            "route": ("variant", [v.route for v in parsed]),
            "branch": ("variant", [v.branch for v in parsed]),
            "layers": ("variant", [v.layers for v in parsed]),
            "trainable_parameters": ("method", [params[m] for m in coords["method"]]),
        },
        attrs={**first.attrs, "skipped": "\n".join(dict.fromkeys(skipped))},
    )


def accuracy_summary(ds: xr.Dataset) -> xr.Dataset:
    """Seed-mean accuracies per dataset (plus an ``"Average"`` dataset), with HM where base/novel exist.

    Per dataset: ``base`` and ``novel`` are means over seeds, ``hm`` their harmonic mean. The
    ``Average`` row follows the published convention: mean base and mean novel over datasets, and
    ``hm`` = HM(mean base, mean novel) — not the mean of per-dataset HMs. Without base/novel splits,
    each split's seed mean is returned (``all`` for cross-dataset), averaged over datasets.
    ``std_*`` hold the standard deviation over seeds.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> acc = np.array([[[[[80.0, 60.0]]]], [[[[90.0, 40.0]]]]])  # 2 datasets, 1 seed/method/variant
    >>> ds = xr.Dataset({"accuracy": (("dataset", "seed", "method", "variant", "split"), acc)},
    ...                 coords={"dataset": ["a", "b"], "seed": [1], "method": ["m"], "variant": ["full"],
    ...                         "split": ["base", "novel"]})
    >>> s = accuracy_summary(ds)
    >>> round(float(s.hm.sel({"dataset": "Average", "method": "m", "variant": "full"})), 4)  # HM(85, 50)
    62.963
    """
    acc = ds["accuracy"]
    mean = acc.mean("seed", skipna=True)
    std = acc.std("seed", skipna=True)
    avg_mean = mean.mean("dataset", skipna=False).expand_dims(dataset=["Average"])
    avg_std = xr.full_like(avg_mean, np.nan)
    mean = xr.concat([mean, avg_mean], dim="dataset")
    std = xr.concat([std, avg_std], dim="dataset")
    out = xr.Dataset()
    for split in ds["split"].values.tolist():
        out[str(split)] = mean.sel(split=split, drop=True)
        out[f"std_{split}"] = std.sel(split=split, drop=True)
    if {"base", "novel"} <= set(ds["split"].values.tolist()):
        out["hm"] = harmonic_mean(out["base"], out["novel"])
    out.attrs = dict(ds.attrs)
    out.attrs["n_seeds"] = int(ds.sizes["seed"])
    for name in ("trainable_parameters", "route", "branch", "layers"):
        if name in ds.coords:
            out = out.assign_coords({name: ds.coords[name]})
    return out


def _fmt(x: float, digits: int) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _rows(ds: xr.Dataset) -> list[tuple[str, str]]:
    """(method, variant) pairs that hold any evaluated accuracy."""
    evaluated = ds["accuracy"].notnull().any(("dataset", "seed", "split"))
    return [(str(m), str(v)) for m in ds["method"].values for v in ds["variant"].values
            if bool(evaluated.sel({"method": m, "variant": v}))]


def to_markdown(ds: xr.Dataset, *, digits: int = 1, datasets: bool = True, params: bool = True) -> str:
    """A markdown table: one row per (method, variant), average and per-dataset columns.

    Base-to-novel results get ``Base``, ``Novel``, ``HM`` averages (HM of the means) and one
    ``base / novel / HM`` cell per dataset; other protocols one accuracy column per dataset and the
    average. Seed means throughout.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> acc = np.array([[[[[80.0, 60.0]]]]])
    >>> ds = xr.Dataset({"accuracy": (("dataset", "seed", "method", "variant", "split"), acc)},
    ...                 coords={"dataset": ["a"], "seed": [1], "method": ["maple"], "variant": ["full"],
    ...                         "split": ["base", "novel"]})
    >>> print(to_markdown(ds, params=False))
    | method | Base | Novel | HM | a |
    |---|---|---|---|---|
    | maple | 80.0 | 60.0 | 68.6 | 80.0 / 60.0 / 68.6 |
    """
    s = accuracy_summary(ds)
    names = [str(d) for d in ds["dataset"].values]
    one_variant = ds.sizes["variant"] == 1
    has_params = params and "trainable_parameters" in ds.coords
    header = ["method" if one_variant else "method / variant"]
    if has_params:
        header.append("params")
    b2n = "hm" in s
    header += ["Base", "Novel", "HM"] if b2n else [f"Avg {sp}" for sp in ds["split"].values.tolist()]
    if datasets:
        header += names if b2n else [f"{d} ({sp})" for d in names for sp in ds["split"].values.tolist()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, variant in _rows(ds):
        cell = s.sel({"method": method, "variant": variant})
        row = [method if one_variant else f"{method} / {variant}"]
        if has_params:
            row.append(f"{int(ds['trainable_parameters'].sel({'method': method})):,}")
        avg = cell.sel(dataset="Average")
        if b2n:
            row += [_fmt(float(avg[k]), digits) for k in ("base", "novel", "hm")]
            if datasets:
                row += [" / ".join(_fmt(float(cell[k].sel(dataset=d)), digits) for k in ("base", "novel", "hm"))
                        for d in names]
        else:
            splits = ds["split"].values.tolist()
            row += [_fmt(float(avg[sp]), digits) for sp in splits]
            if datasets:
                row += [_fmt(float(cell[sp].sel(dataset=d)), digits) for d in names for sp in splits]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def to_csv(ds: xr.Dataset, path: str | os.PathLike | None = None) -> str:
    """Long-format CSV (one row per evaluated dataset/seed/method/variant/split); written to ``path`` if given.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> acc = np.array([[[[[80.0, 60.0]]]]])
    >>> ds = xr.Dataset({"accuracy": (("dataset", "seed", "method", "variant", "split"), acc)},
    ...                 coords={"dataset": ["a"], "seed": [1], "method": ["m"], "variant": ["full"],
    ...                         "split": ["base", "novel"]})
    >>> print(to_csv(ds).splitlines()[1])
    a,1,m,full,base,80.0
    """
    keep = [v for v in ("accuracy", "correct", "total") if v in ds]
    df = ds[keep].reset_coords(drop=True).to_dataframe().reset_index()
    df = df[df["accuracy"].notna()]
    text = df.to_csv(index=False, lineterminator="\n")
    if path is not None:
        Path(path).write_text(text)
    return text
