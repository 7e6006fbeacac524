"""In-memory toyworld datasets: the same samples as the on-disk loaders, without writing files.

:func:`build_in_memory` mirrors :func:`mmlens.data.build` (few-shot draw, base/novel subset, transforms)
and yields the same sample dicts (``image``, ``label``, ``classname``, ``path``, ``mask``, ``index``), so
tests and the demo can use a toy domain without a data root. Paths are the ones the files would have
under a data root, prefixed ``toyworld://`` (``toyworld://toy_sketch/images/red_star/test_00003.png``),
so a few-shot draw picks the same images in memory and on disk.

>>> ds = build_in_memory("ToySketch", "train", shots=2, subset="base", size="small")
>>> len(ds), ds.classnames[0], sorted(ds[0])
(48, 'red circle', ['classname', 'image', 'index', 'label', 'mask', 'path'])
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmlens.data.toyworld.domains import get_domain
from mmlens.data.toyworld.export import IMAGE_DIR, split_items
from mmlens.data.toyworld.generate import SIZES, SPLITS, generate

URL_PREFIX = "toyworld://"


def _to_tensor(img: Image.Image) -> torch.Tensor:
    arr = torch.from_numpy(np.array(img))
    if arr.ndim == 2:
        return arr.float() / 255.0
    return arr.permute(2, 0, 1).float() / 255.0


@functools.lru_cache(maxsize=32)
def _generated(key: str, split: str, n_per_class: int, seed: int):
    g = generate(key, n_per_class, seed=seed, split=split)
    g.images.setflags(write=False)
    g.masks.setflags(write=False)
    return g


class ToyworldDataset(torch.utils.data.Dataset):
    """A toy domain split held in memory; samples are dicts like :class:`mmlens.data.ImageDataset`'s.

    ``image`` is ``transform(PIL RGB image)`` (a float ``[3, 64, 64]`` tensor in [0, 1] without a
    transform); ``mask`` is ``mask_transform(PIL L mask)`` as a float tensor (0/1 ``[64, 64]`` without
    one; per-pixel foreground fractions with ``eval_mask_transform``). Generation is cached per
    (domain, split, size, seed).

    Parameters
    ----------
    domain
        Domain key or dataset name (``"sketch"``, ``"ToySketch"``).
    split
        ``train``, ``val`` or ``test``.
    size
        ``"small"`` or ``"full"`` (images per class: :data:`mmlens.data.toyworld.SIZES`), or an int.
    data_seed
        Generator seed (the one given to ``mmlens data toyworld --seed``).
    items, classnames
        Optional subset (``(row, label, classname)`` over the generated split) and its class list; used by
        :func:`build_in_memory` after a few-shot draw or base/novel split.
    """

    def __init__(
        self,
        domain: str,
        split: str,
        *,
        size: str | int = "small",
        data_seed: int = 0,
        transform: Callable | None = None,
        mask_transform: Callable | None = None,
        items: list[tuple[int, int, str]] | None = None,
        classnames: list[str] | None = None,
    ) -> None:
        d = get_domain(domain)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        n = SIZES[size][split] if isinstance(size, str) else int(size)
        self.domain = d
        self.split = split
        self.generated = _generated(d.key, split, n, int(data_seed))
        rows = split_items(d, split, n)
        self.paths = [f"{URL_PREFIX}{d.folder}/{IMAGE_DIR}/{r[0]}" for r in rows]
        if items is None:
            items = [(i, r[1], r[2]) for i, r in enumerate(rows)]
        self.items = list(items)
        self.classnames = list(classnames) if classnames is not None else d.classnames
        self.transform = transform
        self.mask_transform = mask_transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row, label, classname = self.items[index]
        img = Image.fromarray(self.generated.images[row], mode="RGB")
        mask = Image.fromarray(self.generated.masks[row].astype(np.uint8) * 255, mode="L")
        image = self.transform(img) if self.transform is not None else _to_tensor(img)
        m = self.mask_transform(mask) if self.mask_transform is not None else mask
        m = m if isinstance(m, torch.Tensor) else _to_tensor(m)
        return {
            "image": image,
            "label": int(label),
            "classname": classname,
            "path": self.paths[row],
            "mask": m.float(),
            "index": index,
        }


def build_in_memory(
    name: str,
    split: str,
    *,
    shots: int | None = None,
    seed: int = 1,
    subset: str = "all",
    transform: Callable | None = None,
    mask_transform: Callable | None = None,
    size: str | int = "small",
    data_seed: int = 0,
) -> ToyworldDataset:
    """:func:`mmlens.data.build` for a toy domain, generated in memory instead of read from a data root.

    ``shots``/``seed`` draw a few-shot subset with the protocol's seeded draw (the same images that
    :func:`mmlens.data.build` picks from a tree written by ``mmlens data toyworld`` with the same
    ``size`` and ``data_seed``); ``subset`` keeps ``base``/``novel`` classes, re-indexed from 0.

    Examples
    --------
    >>> ds = build_in_memory("satellite", "test", subset="novel")
    >>> len(ds.classnames), ds[0]["label"], ds[0]["mask"].shape
    (16, 0, torch.Size([64, 64]))
    """
    from mmlens.data.loaders import Item
    from mmlens.data.protocol import base_novel, few_shot

    full = ToyworldDataset(name, split, size=size, data_seed=data_seed)
    items = [Item(full.paths[row], label, cname) for row, label, cname in full.items]
    if shots is not None:
        items = few_shot(items, shots, seed, key=(full.domain.name, split))
    items, classnames = base_novel(items, full.domain.classnames, subset)
    row_of = {p: i for i, p in enumerate(full.paths)}
    return ToyworldDataset(
        name, split, size=size, data_seed=data_seed, transform=transform, mask_transform=mask_transform,
        items=[(row_of[it.path], it.label, it.classname) for it in items], classnames=classnames,
    )
