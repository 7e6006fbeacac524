"""Top-1 accuracy from stored logits: per image, per split (base among base classes, novel among novel), tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from mmlens.stats.elementary import harmonic_mean
from mmlens.store.select import per_dataset, select_run

__all__ = ["ACCURACY_COLUMNS", "accuracy_table", "image_accuracy", "split_accuracy"]

#: Columns of :func:`accuracy_table`.
ACCURACY_COLUMNS = ["dataset", "seed", "variant", "base", "novel", "HM", "all"]


def image_accuracy(store: xr.Dataset | xr.DataTree) -> xr.DataArray:
    """Per-image correctness (0 or 100) of every traced variant, from the stored logits; NaN for padding.

    Parameters
    ----------
    store
        A trace tree (its ``logits`` group is used) or the ``logits`` group itself.

    Returns
    -------
    xarray.DataArray
        The logits' dims without ``class`` (e.g. ``(dataset, seed, variant, image)``), in %.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> acc = image_accuracy(example_tree(n_images=4))
    >>> acc.dims, sorted(set(acc.values.ravel().tolist()) - {0.0, 100.0})
    (('variant', 'image'), [])
    """
    logits = store["logits"].to_dataset() if isinstance(store, xr.DataTree) else store
    scores = logits["logits"].fillna(-np.inf)
    pred = scores.argmax("class")
    label = logits["label"]
    correct = (pred == label).astype(np.float64) * 100.0
    valid = (label >= 0) & logits["logits"].notnull().any("class")
    return correct.where(valid).rename("accuracy")


def split_accuracy(
    logits: np.ndarray,
    labels: np.ndarray,
    image_split: np.ndarray | None,
    class_split: np.ndarray | None,
    split: str,
) -> float:
    """Top-1 accuracy (%) of the images of one split, each classified among that split's classes.

    The base-to-novel protocol: a ``base`` image competes only with base classes, a ``novel`` one
    only with novel classes. NaN when the split has no images (or no classes, or no split labels).

    Examples
    --------
    >>> logits = np.array([[0.0, 5.0], [1.0, 0.0]])   # image 0 prefers class 1 (novel), image 1 class 0
    >>> split_accuracy(logits, np.array([0, 0]), np.array(["base", "base"]), np.array(["base", "novel"]), "base")
    100.0
    """
    if image_split is None:
        return float("nan")
    rows = image_split == split
    if not rows.any():
        return float("nan")
    scores = logits[rows]
    if class_split is not None:
        allowed = class_split == split
        if not allowed.any():
            return float("nan")
        scores = np.where(allowed[None, :], scores, -np.inf)
    return 100.0 * float(np.mean(scores.argmax(axis=1) == labels[rows]))


def _class_split(groups: Mapping[str, xr.Dataset]) -> xr.DataArray | None:
    for name in ("logits", "text"):
        ds = groups.get(name)
        if ds is not None and "split" in ds.coords and "class" in ds.coords["split"].dims:
            return ds.coords["split"]
    return None


def _image_split(groups: Mapping[str, xr.Dataset], dataset: str) -> np.ndarray | None:
    for name in ("logits", "vision"):
        ds = groups.get(name)
        if ds is not None and "split" in ds.coords and "image" in ds.coords["split"].dims:
            return np.asarray(per_dataset(ds.coords["split"], dataset).values)
    return None


def accuracy_table(groups: Mapping[str, xr.Dataset], datasets: Sequence[str], seeds: Sequence[int]) -> Any:
    """Top-1 accuracy (%) per dataset, seed and variant on base and novel images, with HM, from stored logits.

    An image of the ``base`` split is classified among the base classes, a ``novel`` one among the
    novel classes (the base-to-novel protocol), ``all`` among every traced class. Route ablations
    are simply more variants. Works on one run (no ``dataset``/``seed`` dims) and on a study.

    Parameters
    ----------
    groups
        The store's groups by name; ``logits`` is required, ``text``/``vision`` may carry the splits.
    datasets, seeds
        The runs to score (a single run: its one dataset and seed).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`ACCURACY_COLUMNS` (NaN where a split is empty).

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> tree = example_tree(n_images=4)
    >>> table = accuracy_table({k: v.to_dataset() for k, v in tree.children.items()}, ["synthetic"], [0])
    >>> list(table.columns), len(table)
    (['dataset', 'seed', 'variant', 'base', 'novel', 'HM', 'all'], 2)
    """
    import pandas as pd

    ds = groups["logits"]
    logits = ds["logits"]
    class_split = _class_split(groups)
    rows = []
    for dataset in datasets:
        info = select_run(ds, dataset=dataset)
        if "label" not in info.coords:
            raise ValueError("'logits' holds no 'label' coordinate: cannot score predictions")
        labels = np.asarray(info["label"].values)
        image_split = _image_split(groups, dataset)
        csplit = None if class_split is None else np.asarray(per_dataset(class_split, dataset).values)
        for seed in seeds:
            for variant in [str(v) for v in logits["variant"].values]:
                lg = select_run(logits, dataset=dataset, seed=seed, variant=variant).transpose("image", "class")
                values = np.asarray(lg.values, dtype=np.float64)
                real = labels >= 0  # label -1: padding of a study (combine_runs)
                row: dict[str, Any] = {"dataset": dataset, "seed": seed, "variant": variant}
                scores = values[real]
                if csplit is not None:  # padded classes have no split: never predicted
                    scores = np.where(np.isin(csplit, ("base", "novel", "all"))[None, :], scores, -np.inf)
                row["all"] = 100.0 * float(np.mean(scores.argmax(axis=1) == labels[real])) if real.any() else np.nan
                isplit = None if image_split is None else image_split[real]
                for split in ("base", "novel"):
                    row[split] = split_accuracy(values[real], labels[real], isplit, csplit, split)
                row["HM"] = harmonic_mean(row["base"], row["novel"])
                rows.append(row)
    return pd.DataFrame(rows, columns=ACCURACY_COLUMNS)
