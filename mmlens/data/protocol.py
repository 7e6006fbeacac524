"""The evaluation protocol: seeded few-shot draws, base/novel class split, cross-dataset and DG roles."""

from __future__ import annotations

import hashlib
import math
import random
from collections import defaultdict
from collections.abc import Sequence

from mmlens.data.loaders import Item
from mmlens.data.manifest import get_manifest, list_manifests

__all__ = [
    "VAL_SHOTS_CAP",
    "base_novel",
    "base_to_novel_datasets",
    "cross_dataset_source",
    "cross_dataset_targets",
    "domain_generalisation_targets",
    "few_shot",
    "few_shot_seed",
]

VAL_SHOTS_CAP = 4
"""Validation few-shot draws use ``min(k, VAL_SHOTS_CAP)`` images per class (CoOp)."""


def _canonical(dataset: str) -> str:
    try:
        return get_manifest(dataset).name
    except ValueError:  # a dataset without a manifest (user data): case-insensitive key anyway
        return str(dataset).lower()


def few_shot_seed(dataset: str, split: str, k: int, seed: int, label: int | None = None) -> int:
    """The RNG seed of a few-shot draw: a SHA-256 hash of (dataset, split, k, seed[, label]).

    Independent of Python's hash randomisation, the global RNG and the order of the input items.

    Examples
    --------
    >>> few_shot_seed("EuroSAT", "train", 16, 1) == few_shot_seed("eurosat", "train", 16, 1)
    True
    """
    text = f"mmlens-fewshot|{_canonical(dataset)}|{split.lower()}|{int(k)}|{int(seed)}"
    if label is not None:
        text += f"|{int(label)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def few_shot(items: Sequence[Item], k: int, seed: int, *, key: tuple[str, str]) -> list[Item]:
    """Draw ``k`` items per class, reproducibly from (dataset, split, k, seed) alone.

    Each class is drawn with its own RNG seeded by :func:`few_shot_seed` (dataset, split, k, seed, label),
    from its items sorted by path; so the draw does not depend on the input order, on other classes, or
    on any global RNG state. The ``val`` split uses ``min(k, 4)`` per class. A class with fewer than the
    requested number of images keeps all of them (no repeats). Output is ordered by label, then path.

    Parameters
    ----------
    items
        Items of one split (e.g. ``load_split(...).items``).
    k
        Shots per class (``k >= 1``).
    seed
        Protocol seed (1, 2, 3 in the papers).
    key
        ``(dataset, split)``; the dataset name is canonicalised (case-insensitive).

    Examples
    --------
    >>> items = [Item(f"img{i}.jpg", i % 2, "ab"[i % 2]) for i in range(10)]
    >>> draw = few_shot(items, 2, seed=1, key=("toy", "train"))
    >>> [it.label for it in draw]
    [0, 0, 1, 1]
    >>> draw == few_shot(list(reversed(items)), 2, seed=1, key=("toy", "train"))
    True
    """
    if not (isinstance(key, tuple) and len(key) == 2):
        raise TypeError(f"key must be (dataset, split), e.g. ('EuroSAT', 'train'); got {key!r}")
    if int(k) < 1:
        raise ValueError(f"k (shots per class) must be >= 1, got {k}")
    dataset, split = key
    k_eff = min(int(k), VAL_SHOTS_CAP) if split.lower() == "val" else int(k)
    by_label: dict[int, list[Item]] = defaultdict(list)
    for it in items:
        by_label[it.label].append(it)
    out: list[Item] = []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda it: it.path)
        if len(group) <= k_eff:
            out.extend(group)
            continue
        rng = random.Random(few_shot_seed(dataset, split, int(k), seed, label))
        picked = sorted(rng.sample(range(len(group)), k_eff))
        out.extend(group[i] for i in picked)
    return out


def base_novel(items: Sequence[Item], classnames: Sequence[str], which: str = "base") -> tuple[list[Item], list[str]]:
    """Keep the base (first ceil(n/2) labels) or novel (the rest) classes, re-indexed from 0.

    Examples
    --------
    >>> items = [Item(f"{i}.jpg", i, c) for i, c in enumerate("abcde")]
    >>> base_novel(items, list("abcde"), "base")[1], base_novel(items, list("abcde"), "novel")[1]
    (['a', 'b', 'c'], ['d', 'e'])
    >>> [it.label for it in base_novel(items, list("abcde"), "novel")[0]]
    [0, 1]
    """
    which = which.lower()
    if which not in ("base", "novel", "all"):
        raise ValueError(f"which must be 'base', 'novel' or 'all', got {which!r}")
    n = len(classnames)
    if which == "all":
        return list(items), list(classnames)
    m = math.ceil(n / 2)
    keep = list(range(m)) if which == "base" else list(range(m, n))
    relabel = {old: new for new, old in enumerate(keep)}
    out = [it._replace(label=relabel[it.label]) for it in items if it.label in relabel]
    return out, [classnames[i] for i in keep]


def base_to_novel_datasets(kind: str = "real") -> list[str]:
    """Datasets of the base-to-novel benchmark (``protocol.base_to_novel``) of one ``kind``.

    ``kind="real"``: the eleven; ``kind="toyworld"``: their toyworld analogues; ``None``: all.

    Examples
    --------
    >>> len(base_to_novel_datasets())
    11
    """
    return [n for n in list_manifests(kind) if get_manifest(n).protocol.get("base_to_novel")]


def cross_dataset_source(kind: str = "real") -> str:
    """The source dataset of the cross-dataset protocol among manifests of ``kind`` (``ImageNet``).

    Examples
    --------
    >>> cross_dataset_source()
    'ImageNet'
    """
    sources = [n for n in list_manifests(kind) if get_manifest(n).protocol.get("cross_dataset_source")]
    if len(sources) != 1:
        raise ValueError(
            f"expected exactly one {kind} manifest with protocol.cross_dataset_source: true, found {sources}"
        )
    return sources[0]


def cross_dataset_targets(source: str = "ImageNet") -> list[str]:
    """Datasets (of the source's kind) evaluated zero-shot after training on ``source``.

    Examples
    --------
    >>> len(cross_dataset_targets()), "ImageNet" in cross_dataset_targets()
    (10, False)
    """
    m = get_manifest(source)
    if not m.protocol.get("cross_dataset_source"):
        raise ValueError(
            f"{m.name} is not a cross-dataset source; the {m.kind} protocol trains on {cross_dataset_source(m.kind)}"
        )
    return [n for n in list_manifests(m.kind) if n != m.name and get_manifest(n).protocol.get("cross_dataset_target")]


def domain_generalisation_targets(source: str = "ImageNet") -> list[str]:
    """Shifted versions of ``source`` (ImageNet-V2, -Sketch, -A, -R for ImageNet).

    Examples
    --------
    >>> domain_generalisation_targets()
    ['ImageNet-A', 'ImageNet-R', 'ImageNet-Sketch', 'ImageNet-V2']
    """
    src = get_manifest(source).name
    return [n for n in list_manifests() if get_manifest(n).protocol.get("domain_generalisation_of") == src]

