"""Shared plumbing of the attribution methods: image batches, targets, the patch grid and labelled outputs."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from mmlens.models.prompted import ROLE_CODES

__all__ = ["ImageBatch", "as_image_batch", "resolve_target", "patch_grid", "progress", "variant_name"]


@dataclass
class ImageBatch:
    """Images and what is known about them (``None`` where unknown)."""

    images: torch.Tensor  # [batch, 3, H, W], preprocessed
    index: np.ndarray  # values of the ``image`` coordinate: position in the input, as mmlens.trace numbers images
    label: torch.Tensor | None = None
    classname: list[str] | None = None
    path: list[str] | None = None
    dataset_index: np.ndarray | None = None  # the batch dict's ``index`` (position in the dataset)
    split: list[str] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def select(self, rows: slice) -> ImageBatch:
        """The same batch restricted to ``rows``."""
        return ImageBatch(
            self.images[rows],
            self.index[rows],
            None if self.label is None else self.label[rows],
            None if self.classname is None else self.classname[rows],
            None if self.path is None else self.path[rows],
            None if self.dataset_index is None else self.dataset_index[rows],
            None if self.split is None else self.split[rows],
        )


def as_image_batch(
    images: torch.Tensor | Mapping[str, Any],
    *,
    labels: Sequence[int] | torch.Tensor | None = None,
    paths: Sequence[str] | None = None,
    classnames: Sequence[str] | None = None,
    model: Any = None,
) -> ImageBatch:
    """Normalise what a user passes as images: a ``[batch, 3, H, W]`` tensor or a collated batch dict.

    A batch dict (``mmlens.data.collate``) provides ``image`` and, when present, ``label``,
    ``classname``, ``path``, ``split`` and ``index`` (kept as ``dataset_index``); keyword arguments
    override its entries. Without class names, the model's ``classnames[label]`` are used. The
    ``image`` coordinate numbers the images by position, as :func:`mmlens.trace` does.
    """
    index = split = None
    if isinstance(images, Mapping):
        batch = images
        if "image" not in batch:
            raise ValueError(f"A batch dict needs an 'image' entry (as mmlens.data.collate makes); found keys "
                             f"{sorted(batch)}.")
        images = batch["image"]
        labels = batch.get("label") if labels is None else labels
        paths = batch.get("path") if paths is None else paths
        classnames = batch.get("classname") if classnames is None else classnames
        if batch.get("index") is not None:
            index = np.asarray(torch.as_tensor(batch["index"]).cpu().numpy())
        if batch.get("split") is not None:
            split = [str(s) for s in batch["split"]]
    if isinstance(images, (list, tuple)):
        raise ValueError("Images of different sizes cannot be attributed in one batch: found a list of "
                         f"{len(images)} tensors; resize them (the model's preprocess does) or pass them one by one.")
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        found = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"Expected images as a tensor [batch, channels, height, width], found {found}.")
    n = images.shape[0]
    label_t = None
    if labels is not None:
        label_t = torch.as_tensor(labels, dtype=torch.long).reshape(-1).cpu()
        _check_len("labels", len(label_t), n)
    if paths is not None:
        paths = [str(p) for p in paths]
        _check_len("paths", len(paths), n)
    if classnames is not None:
        classnames = [str(c) for c in classnames]
        _check_len("classnames", len(classnames), n)
    elif label_t is not None and model is not None:
        names = list(getattr(model, "classnames", []))
        if all(0 <= int(i) < len(names) for i in label_t):
            classnames = [names[int(i)] for i in label_t]
    return ImageBatch(images, np.arange(n), label_t, classnames, paths, index, split)


def _check_len(name: str, found: int, expected: int) -> None:
    if found != expected:
        raise ValueError(f"Expected one entry of {name} per image ({expected}), found {found}.")


def resolve_target(target: Any, batch: ImageBatch, n_classes: int, model: Any = None,
                   text_features: torch.Tensor | None = None) -> torch.Tensor:
    """The class index to explain for every image, ``LongTensor[batch]``.

    ``target`` may be ``None`` or ``"label"`` (the true class; needs labels), ``"predicted"`` (the
    model's top class), an ``int`` (the same class for every image), a class name, or a sequence /
    tensor with one class index per image.
    """
    n = len(batch)
    if target is None or (isinstance(target, str) and target == "label"):
        if batch.label is None:
            raise ValueError("target='label' (the default) needs the true classes: pass labels=..., a batch dict "
                             "with 'label', or an explicit target (a class index, or 'predicted').")
        out = batch.label.clone()
    elif isinstance(target, str) and target == "predicted":
        if model is None:
            raise ValueError("target='predicted' needs the model.")
        with torch.no_grad():
            out = model(batch.images, text_features).argmax(dim=-1).cpu()
    elif isinstance(target, str):
        names = list(getattr(model, "classnames", []))
        if target not in names:
            raise ValueError(f"target {target!r} is not one of the model's classes {names[:10]}"
                             f"{'...' if len(names) > 10 else ''}; pass a class index, 'label' or 'predicted'.")
        out = torch.full((n,), names.index(target), dtype=torch.long)
    elif isinstance(target, (int, np.integer)):
        out = torch.full((n,), int(target), dtype=torch.long)
    else:
        out = torch.as_tensor(target, dtype=torch.long).reshape(-1).cpu()
        if out.numel() == 1:
            out = out.expand(n).clone()
        _check_len("target", out.numel(), n)
    bad = [int(t) for t in out if not 0 <= int(t) < n_classes]
    if bad:
        raise ValueError(f"target class indices must lie in [0, {n_classes}) (the model's classes), found {bad[:5]}.")
    return out


@dataclass(frozen=True)
class PatchGrid:
    """How pixels map to ViT patches: ``rows x cols`` patches of ``patch_h x patch_w`` pixels."""

    rows: int
    cols: int
    patch_h: int
    patch_w: int


def patch_grid(model: Any, images: torch.Tensor) -> PatchGrid:
    """The patch grid of ``model``'s ViT for ``images`` (from ``conv1``'s kernel and stride)."""
    conv = model.clip.visual.conv1
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    if (kh, kw) != (sh, sw):
        raise ValueError(f"Expected a ViT patch embedding with kernel == stride, found kernel {(kh, kw)} and "
                         f"stride {(sh, sw)}; overlapping patches are not supported.")
    h, w = images.shape[-2:]
    if h % kh or w % kw:
        raise ValueError(f"Image size {(h, w)} is not a multiple of the patch size {(kh, kw)}; resize the images "
                         "with the model's preprocess.")
    return PatchGrid(h // kh, w // kw, kh, kw)


def patch_indices(roles: torch.Tensor, grid: PatchGrid) -> tuple[int, torch.Tensor]:
    """Position of ``[cls]`` and the token positions of the patches (row-major grid order), from role codes."""
    roles = roles.reshape(-1).cpu()
    cls = torch.nonzero(roles == ROLE_CODES["cls"]).reshape(-1)
    patches = torch.nonzero(roles == ROLE_CODES["patch"]).reshape(-1)
    if cls.numel() != 1 or patches.numel() != grid.rows * grid.cols:
        raise ValueError(f"Expected one [cls] token and {grid.rows * grid.cols} patch tokens, found {cls.numel()} "
                         f"and {patches.numel()}; patch dropout or a non-ViT tower is not supported.")
    return int(cls[0]), patches


def variant_name(model: Any) -> str:
    """``full`` when the model runs with its prompts, ``zeroshot`` when ``prompts_enabled`` is off."""
    return "full" if getattr(model, "prompts_enabled", True) else "zeroshot"


def image_coords(batch: ImageBatch, target: torch.Tensor, model: Any) -> dict[str, Any]:
    """Coordinates on the ``image`` dim: index, ``label``/``classname``/``path`` when known, the target."""
    coords: dict[str, Any] = {"image": ("image", batch.index)}
    if batch.label is not None:
        coords["label"] = ("image", batch.label.numpy().astype(np.int64))
    if batch.classname is not None:
        coords["classname"] = ("image", np.asarray(batch.classname, dtype=object))
    if batch.path is not None:
        coords["path"] = ("image", np.asarray(batch.path, dtype=object))
    if batch.split is not None:
        coords["split"] = ("image", np.asarray(batch.split, dtype=object))
    if batch.dataset_index is not None:
        coords["dataset_index"] = ("image", batch.dataset_index.astype(np.int64))
    coords["target"] = ("image", target.numpy().astype(np.int64))
    names = list(getattr(model, "classnames", []))
    if names:
        coords["target_classname"] = ("image", np.asarray([names[int(t)] for t in target], dtype=object))
    return coords


def grid_coords(grid: PatchGrid) -> dict[str, Any]:
    return {"patch_row": np.arange(grid.rows), "patch_col": np.arange(grid.cols)}


def layer_coords(model: Any, branch: str = "vision") -> dict[str, Any]:
    kinds = model.layer_kinds(branch)  # the method's layers, also when its prompts are switched off
    return {"layer": np.arange(len(kinds)), "layer_kind": ("layer", np.asarray(kinds, dtype=object))}


def model_attrs(model: Any) -> dict[str, Any]:
    """Storable attrs describing the model an attribution was computed on."""
    source = getattr(model, "clip_source", {}) or {}
    return {
        "model_name": str(source.get("name", "unknown")),
        "prompt_method": str(getattr(model, "method", "unknown")),
        "method_hparams": json.dumps(getattr(model, "hparams", {}), sort_keys=True, default=str),
    }


def progress(iterable: Sequence[Any] | range, *, enabled: bool, desc: str, total: int | None = None) -> Iterator[Any]:
    """A tqdm progress bar over ``iterable`` when ``enabled`` (and it has more than one step)."""
    items = list(iterable)
    if not enabled or len(items) <= 1:
        yield from items
        return
    from mmlens._progress import progress_bar

    yield from progress_bar(items, desc=desc, total=total or len(items), leave=False)


def chunks(n: int, size: int | None) -> list[slice]:
    """Slices covering ``range(n)`` in pieces of ``size`` (one piece when ``size`` is None)."""
    size = n if not size else max(1, int(size))
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def finish(data: np.ndarray, dims: Sequence[str], coords: dict[str, Any], *, name: str, model: Any,
           attrs: dict[str, Any]) -> xr.DataArray:
    """Build the labelled output with the model's variant as a scalar coordinate and storable attrs."""
    out = xr.DataArray(data, dims=tuple(dims), coords=coords, name=name)
    out = out.assign_coords(variant=variant_name(model))
    out.attrs.update(model_attrs(model))
    out.attrs.update({k: (json.dumps(v) if isinstance(v, (list, tuple, dict)) else v) for k, v in attrs.items()})
    return out
