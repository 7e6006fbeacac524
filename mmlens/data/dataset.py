"""The torch Dataset over labelled items: image decoding with clear errors, masks, collate, ``build``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

from mmlens.data.loaders import Item, load_split
from mmlens.data.manifest import Manifest, get_manifest
from mmlens.data.protocol import base_novel, few_shot

__all__ = ["ImageDataset", "ImageDecodeError", "build", "collate", "decode_image", "decode_mask"]


class ImageDecodeError(OSError):
    """An image (or mask) file is missing or cannot be decoded; ``.path`` names it."""

    def __init__(self, path: str, cause: BaseException):
        self.path = str(path)
        self.cause = cause
        super().__init__(
            f"Could not read image {self.path}: {type(cause).__name__}: {cause}. Check or re-download the "
            "file (`mmlens data verify` lists all bad files), or pass on_error='skip' to skip and record it."
        )


def decode_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB; raise :class:`ImageDecodeError` naming the path.

    Examples
    --------
    >>> decode_image("/nonexistent.jpg")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mmlens.data.dataset.ImageDecodeError: Could not read image /nonexistent.jpg: FileNotFoundError...
    """
    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # convert() forces the full decode inside the try
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise ImageDecodeError(str(path), exc) from exc


def decode_mask(path: str | Path, foreground_values: Sequence[int]) -> Image.Image:
    """Read a label/trimap image and return a binary ``L`` image: 255 where the value is foreground.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "m.png")
    >>> Image.fromarray(np.array([[1, 2], [3, 1]], dtype=np.uint8)).save(p)
    >>> np.asarray(decode_mask(p, [1])).tolist()
    [[255, 0], [0, 255]]
    """
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except Exception as exc:
        raise ImageDecodeError(str(path), exc) from exc
    if arr.ndim == 3:
        arr = arr[..., 0]
    fg = np.isin(arr, np.asarray(list(foreground_values)))
    return Image.fromarray((fg * 255).astype(np.uint8), mode="L")


def _to_tensor(img: Any) -> torch.Tensor:
    if isinstance(img, torch.Tensor):
        return img
    arr = np.asarray(img)
    t = torch.from_numpy(arr.copy())
    if t.ndim == 2:
        return t.float() / 255.0
    return t.permute(2, 0, 1).float() / 255.0


class ImageDataset(torch.utils.data.Dataset):
    """A torch Dataset of labelled images; each sample is a dict.

    Sample keys: ``image`` (``transform(PIL RGB image)``, or a float CHW tensor in [0, 1] when
    ``transform`` is None), ``label`` (int), ``classname``, ``path``, ``mask`` (float tensor of foreground,
    0/1, or per-pixel foreground fractions after ``mmlens.data.transforms.eval_mask_transform``;
    ``mask_transform`` is applied to the binary ``L`` PIL mask first; None when the item has no mask) and ``index``.

    Parameters
    ----------
    items
        Labelled items (:class:`~mmlens.data.Item`), e.g. from :func:`~mmlens.data.load_split`.
    classnames
        Class names indexed by label.
    transform, mask_transform
        Callables applied to the PIL image / PIL mask (e.g. torchvision transforms).
    on_error
        ``"raise"``: a file that fails to decode raises :class:`ImageDecodeError` naming the path.
        ``"skip"``: the sample is returned as ``{"failed": True, "path", "error", "index"}``, recorded in
        ``.failures`` (of the process that decoded it) and dropped by :func:`collate`, which lists it in
        ``batch["failures"]`` (so failures in DataLoader worker processes reach the caller too).
    foreground_values
        Mask values counted as foreground (from the manifest's ``masks.foreground_values``).

    Examples
    --------
    >>> import tempfile
    >>> from mmlens.data.fake import make_fake_tree
    >>> root = tempfile.mkdtemp()
    >>> _ = make_fake_tree(root, ["OxfordPets"])
    >>> ds = build("oxfordpets", root, "test")
    >>> s = ds[0]
    >>> s["image"].shape[0], s["mask"].dtype, s["classname"] == ds.classnames[s["label"]]
    (3, torch.float32, True)
    """

    def __init__(
        self,
        items: Sequence[Item],
        classnames: Sequence[str],
        transform: Callable | None = None,
        mask_transform: Callable | None = None,
        on_error: str = "raise",
        *,
        foreground_values: Sequence[int] = (1,),
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.items = list(items)
        self.classnames = list(classnames)
        self.transform = transform
        self.mask_transform = mask_transform
        self.on_error = on_error
        self.foreground_values = tuple(foreground_values)
        self.failures: list[tuple[str, str]] = []
        bad = [it for it in self.items if not 0 <= it.label < len(self.classnames)]
        if bad:
            raise ValueError(
                f"{len(bad)} item(s) have labels outside 0..{len(self.classnames) - 1}, e.g. {bad[0]}; "
                "pass the classnames that match the items (after base_novel, use its classnames)."
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        it = self.items[index]
        try:
            img = decode_image(it.path)
            mask = None
            if it.mask_path is not None:
                mask = decode_mask(it.mask_path, self.foreground_values)
        except ImageDecodeError as exc:
            if self.on_error == "raise":
                raise
            self.failures.append((exc.path, str(exc.cause)))
            return {"failed": True, "path": exc.path, "error": str(exc.cause), "index": index}
        image = self.transform(img) if self.transform is not None else _to_tensor(img)
        if mask is not None:
            mask = _to_tensor(self.mask_transform(mask) if self.mask_transform is not None else mask).float()
        return {
            "image": image,
            "label": it.label,
            "classname": it.classname,
            "path": it.path,
            "mask": mask,
            "index": index,
        }


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples of :class:`ImageDataset`; drop failed ones; handle missing masks.

    Returns a dict: ``image`` (stacked tensor, or a list if the shapes differ), ``label`` (long tensor),
    ``classname``, ``path`` (lists), ``index`` (long tensor), ``mask`` (None if no sample has a mask;
    else a stacked float tensor where samples without a mask are all-NaN), ``has_mask`` (bool tensor)
    and ``failures`` (list of (path, error) of the dropped samples).

    Examples
    --------
    >>> s = {"image": torch.zeros(3, 2, 2), "label": 1, "classname": "a", "path": "p", "index": 0}
    >>> s["mask"] = None
    >>> b = collate([s, dict(s, mask=torch.ones(2, 2))])
    >>> b["has_mask"].tolist(), bool(b["mask"][0].isnan().all()), b["mask"][1].sum().item()
    ([False, True], True, 4.0)
    """
    failures = [(s["path"], s["error"]) for s in samples if s.get("failed")]
    good = [s for s in samples if not s.get("failed")]
    images = [s["image"] for s in good]
    if images and all(isinstance(x, torch.Tensor) and x.shape == images[0].shape for x in images):
        # default_collate stacks straight into shared memory inside DataLoader workers (no extra copy)
        image: Any = default_collate(images)
    else:
        image = images
    masks = [s["mask"] for s in good]
    present = [m for m in masks if m is not None]
    mask: Any = None
    if present:
        if all(m.shape == present[0].shape for m in present):
            filler = torch.full_like(present[0], math.nan)
            mask = default_collate([m if m is not None else filler for m in masks])
        else:
            mask = masks
    return {
        "image": image,
        "label": torch.tensor([s["label"] for s in good], dtype=torch.long),
        "classname": [s["classname"] for s in good],
        "path": [s["path"] for s in good],
        "index": torch.tensor([s["index"] for s in good], dtype=torch.long),
        "mask": mask,
        "has_mask": torch.tensor([m is not None for m in masks], dtype=torch.bool),
        "failures": failures,
    }


def build(
    name: str | Manifest,
    root: str | Path,
    split: str,
    *,
    shots: int | None = None,
    seed: int = 1,
    subset: str = "all",
    transform: Callable | None = None,
    mask_transform: Callable | None = None,
    on_error: str = "raise",
) -> ImageDataset:
    """Load a split, optionally draw ``shots`` per class (seeded), keep base/novel classes: an ImageDataset.

    The order follows CoOp: the few-shot draw is made on all classes, then the base/novel subset is
    taken and re-indexed.

    Examples
    --------
    >>> import tempfile
    >>> from mmlens.data.fake import make_fake_tree
    >>> root = tempfile.mkdtemp()
    >>> _ = make_fake_tree(root, ["EuroSAT"], per_class={"train": 3, "val": 1, "test": 1})
    >>> ds = build("EuroSAT", root, "train", shots=2, seed=1, subset="novel")
    >>> len(ds), ds.classnames[0]
    (10, 'Pasture Land')
    """
    m = get_manifest(name)
    data = load_split(m, root, split)
    items = data.items
    if shots is not None:
        items = few_shot(items, shots, seed, key=(m.name, split))
    items, classnames = base_novel(items, data.classnames, subset)
    fg = m.masks["foreground_values"] if m.masks else (1,)
    return ImageDataset(items, classnames, transform, mask_transform, on_error, foreground_values=fg)
