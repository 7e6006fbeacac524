"""Resolve the ``dataset`` arguments of fit/evaluate into torch Datasets with class names; batch loaders."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from mmlens.data.transforms import InputSpec, pil_to_tensor_transform, resize_batch

__all__ = ["classnames_of", "dataset_present", "build_split", "batches", "dataset_identity", "model_inputs"]


def classnames_of(dataset: Any, fallback: Sequence[str] | None = None) -> list[str]:
    """The class names of a dataset (``.classnames``, also through ``Subset``), else ``fallback``."""
    d = dataset
    while d is not None:
        names = getattr(d, "classnames", None)
        if names is not None:
            return [str(c) for c in names]
        d = getattr(d, "dataset", None)  # torch.utils.data.Subset
    if fallback is None:
        raise ValueError(
            f"{type(dataset).__name__} has no `classnames` attribute. Give the dataset a `.classnames` list "
            "(label -> class name), e.g. use mmlens.data.ImageDataset, or build the model with the right classes."
        )
    return [str(c) for c in fallback]


def dataset_present(name: str, root: str | Path | None) -> bool:
    """Whether the folder of dataset ``name`` exists under ``root`` (manifest layout)."""
    if root is None:
        return False
    from mmlens.data.manifest import get_manifest

    return get_manifest(name).dataset_dir(root).is_dir()


def build_split(
    name: str,
    root: str | Path,
    split: str,
    size: tuple[int, int] | InputSpec,
    *,
    shots: int | None = None,
    seed: int = 1,
    subset: str = "all",
) -> torch.utils.data.Dataset:
    """``mmlens.data.build`` with images as ``[0, 1]`` tensors in the model's geometry (``size``: an
    :class:`InputSpec`, or a bare size for OpenAI's resize-and-centre-crop)."""
    from mmlens.data.dataset import build

    if root is None:
        raise ValueError(f"Dataset {name!r} given by name needs its data root: pass root=DIR (--data-root DIR).")
    ds = build(name, root, split, shots=shots, seed=seed, subset=subset, transform=pil_to_tensor_transform(size))
    ds.name = name
    return ds


def dataset_identity(dataset: Any) -> str:
    """A short hash of what a dataset holds (item paths and labels when known, else its length)."""
    items = getattr(dataset, "items", None)
    h = hashlib.sha256()
    if items is not None:
        for it in items:
            h.update(f"{getattr(it, 'path', it)}|{getattr(it, 'label', '')}\n".encode())
    else:  # a custom Dataset: reading every item to hash it would decode all images
        h.update(f"{len(dataset)}".encode())
    return h.hexdigest()[:16]


def _collate(samples: Sequence[Any]) -> dict[str, Any]:
    from mmlens.data.dataset import collate

    if samples and isinstance(samples[0], (tuple, list)):  # (image, label) pairs
        samples = [{"image": s[0], "label": int(s[1]), "classname": "", "path": "", "mask": None, "index": i}
                   for i, s in enumerate(samples)]
    return collate(samples)


def batches(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    *,
    order: Iterable[int] | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
) -> Iterator[dict[str, Any]]:
    """Batches of item dicts (``image``, ``label`` ...) in ``order`` (default: dataset order)."""
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=list(order) if order is not None else None,
        shuffle=False,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    for batch in loader:
        if batch.get("failures"):
            paths = ", ".join(p for p, _ in batch["failures"][:3])
            import warnings

            warnings.warn(f"Skipped {len(batch['failures'])} unreadable image(s): {paths}", stacklevel=2)
        if len(batch["label"]):
            yield batch


def model_inputs(images: Any, spec: InputSpec, normalize: bool) -> torch.Tensor:
    """Batch images to ``spec.size`` and normalise (no augmentation): the evaluation input."""
    x = resize_batch(images, spec)
    return spec.normalize(x) if normalize else x
