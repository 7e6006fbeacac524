"""The torch Dataset over labelled items: image decoding with clear errors, masks, collate, ``build``."""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import default_collate

from mmlens.data.loaders import Item, load_split
from mmlens.data.manifest import Manifest, get_manifest
from mmlens.data.protocol import base_novel, few_shot

__all__ = ["ImageDataset", "ImageDecodeError", "MaskSizeError", "build", "collate", "decode_image", "decode_item",
           "decode_mask"]


class ImageDecodeError(OSError):
    """An image (or mask) file is missing or cannot be decoded; ``.path`` names it."""

    def __init__(self, path: str, cause: BaseException, message: str | None = None):
        self.path = str(path)
        self.cause = cause
        super().__init__(message or (
            f"Could not read image {self.path}: {type(cause).__name__}: {cause}. Check or re-download the "
            "file (`mmlens data verify` lists all bad files), or pass on_error='skip' to skip and record it."
        ))


class MaskSizeError(ImageDecodeError):
    """A mask's size differs from its image's (after EXIF orientation); ``.path`` is the image, ``.mask_path``."""

    def __init__(self, path: str, mask_path: str, image_size: tuple[int, int], mask_size: tuple[int, int]):
        self.mask_path = str(mask_path)
        cause = ValueError(f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} pixels, its image is "
                           f"{image_size[0]}x{image_size[1]}")
        super().__init__(path, cause, (
            f"Mask {mask_path} is {mask_size[0]}x{mask_size[1]} pixels but its image {path} is "
            f"{image_size[0]}x{image_size[1]} (width x height, after EXIF orientation); expected the same size. "
            "The mask belongs to another image or was drawn on differently oriented pixels: fix or remove the "
            "mask file (`mmlens data verify` lists every mismatch), or pass on_error='skip' to skip the image."
        ))


#: EXIF tag of the orientation (1 = upright; 2-8 = mirrored and/or rotated, as cameras write it).
_EXIF_ORIENTATION = 0x0112
# Image.open is where Pillow warns about decompression bombs, without the file's name. The warning is
# caught there and raised again naming the file; catch_warnings is process-global, so openings that catch
# take turns (opening reads the header only: the decoding itself runs in parallel).
_OPEN_LOCK = threading.Lock()


def _open(path: str | Path) -> Image.Image:
    """``Image.open`` whose decompression-bomb warning names the file (other warnings pass unchanged)."""
    with _OPEN_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        im = Image.open(path)
    for w in caught:
        if issubclass(w.category, Image.DecompressionBombWarning):
            warnings.warn(f"{path}: {w.message}", Image.DecompressionBombWarning, stacklevel=3)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return im


def _orient(im: Image.Image, notes: list[str]) -> Image.Image:
    """Apply the EXIF orientation (cameras store pixels as the sensor read them and the turn in EXIF)."""
    orientation = im.getexif().get(_EXIF_ORIENTATION)
    if orientation in (None, 1):
        return im
    notes.append(f"EXIF orientation {orientation} applied")
    return ImageOps.exif_transpose(im)


def _range_scaled(arr: np.ndarray, top: float, what: str, notes: list[str]) -> Image.Image:
    """Grey values on ``0..top`` scaled to ``0..255`` (rounded), as an RGB image."""
    notes.append(f"{what} scaled from 0..{top:g} to 0..255")
    grey = np.rint(arr.astype(np.float64) * (255.0 / top)).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    """8-bit RGB of any Pillow mode, by the mode's real range (Pillow's own convert clips 16-bit at 255)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16"):  # 16-bit grey (PNG, TIFF, PGM), any byte order
        return _range_scaled(np.asarray(im), 65535, f"16-bit grey ({mode})", notes)
    if mode in ("I", "F"):
        arr = np.asarray(im)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        # the file does not say its range: 'I' is read as 16-bit (Pillow opens 16-bit PGM and old 16-bit PNG
        # as 'I'), 'F' as 0..1; values outside these ranges have no known meaning
        top = 65535.0 if mode == "I" else 1.0
        if lo < 0 or hi > top:
            raise ValueError(f"{'32-bit integer' if mode == 'I' else 'floating-point'} pixels (mode {mode}) in "
                             f"[{lo:g}, {hi:g}], outside the range 0..{top:g} the loader can read; convert the "
                             "file to 8- or 16-bit")
        return _range_scaled(arr, top, f"{'integer' if mode == 'I' else 'floating-point'} grey ({mode})", notes)
    if (mode == "P" and "transparency" in im.info) or mode == "PA":
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("LA", "RGBA"):
        alpha = np.asarray(im.getchannel("A"), dtype=np.float64)
        if alpha.size == 0 or alpha.min() == 255:
            return im.convert("RGB")
        # over black: a transparent pixel is black, whatever colour the encoder left under it
        notes.append(f"transparent pixels ({mode}) composited over black")
        colour = np.asarray(im.convert("RGB"), dtype=np.float64)
        return Image.fromarray(np.rint(colour * alpha[..., None] / 255.0).astype(np.uint8), mode="RGB")
    if mode == "CMYK":
        notes.append("CMYK converted to RGB without colour management")
    return im.convert("RGB")


def decode_image(path: str | Path, *, notes: list[str] | None = None) -> Image.Image:
    """Open and fully decode an image as upright 8-bit RGB; raise :class:`ImageDecodeError` naming the path.

    The EXIF orientation is applied; 16-bit, 32-bit integer and float grey images are scaled by their
    range (``0..65535``, ``0..65535``, ``0..1``), palette and CMYK images converted, and transparent pixels
    composited over black. Each such step is appended to ``notes`` (``mmlens data verify`` lists them).

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "deep.png")
    >>> Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16)).save(p)  # 16-bit grey PNG
    >>> notes = []
    >>> np.asarray(decode_image(p, notes=notes))[0, :, 0].tolist(), notes
    ([0, 100, 255], ['16-bit grey (I;16) scaled from 0..65535 to 0..255'])
    >>> decode_image("/nonexistent.jpg")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mmlens.data.dataset.ImageDecodeError: Could not read image /nonexistent.jpg: FileNotFoundError...
    """
    found: list[str] = []
    try:
        with _open(path) as im:
            rgb = _to_rgb(_orient(im, found), found)
            rgb.load()  # force the full decode inside the try
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise ImageDecodeError(str(path), exc) from exc
    if notes is not None:
        notes.extend(found)
    return rgb


def decode_mask(path: str | Path, foreground_values: Sequence[int], *, notes: list[str] | None = None) -> Image.Image:
    """Read a label/trimap image, upright, and return a binary ``L`` image: 255 where the value is foreground.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "m.png")
    >>> Image.fromarray(np.array([[1, 2], [3, 1]], dtype=np.uint8)).save(p)
    >>> np.asarray(decode_mask(p, [1])).tolist()
    [[255, 0], [0, 255]]
    """
    found: list[str] = []
    try:
        with _open(path) as im:
            arr = np.asarray(_orient(im, found))  # label values as stored (palette indices for 'P')
    except Exception as exc:
        raise ImageDecodeError(str(path), exc) from exc
    if notes is not None:
        notes.extend(f"mask: {n}" for n in found)
    if arr.ndim == 3:
        arr = arr[..., 0]
    fg = np.isin(arr, np.asarray(list(foreground_values)))
    return Image.fromarray((fg * 255).astype(np.uint8), mode="L")


def decode_item(item: Item, foreground_values: Sequence[int] = (1,), *,
                notes: list[str] | None = None) -> tuple[Image.Image, Image.Image | None]:
    """The upright RGB image of an item and its binary mask (None without one), checked to be the same size.

    Raises :class:`ImageDecodeError` naming the file that cannot be read, and :class:`MaskSizeError`
    naming both files when the sizes differ.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> Image.new("RGB", (4, 3)).save(os.path.join(d, "a.png"))
    >>> Image.new("L", (3, 4)).save(os.path.join(d, "a_mask.png"))
    >>> decode_item(Item(os.path.join(d, "a.png"), 0, "cat", os.path.join(d, "a_mask.png")))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mmlens.data.dataset.MaskSizeError: Mask .../a_mask.png is 3x4 pixels but its image .../a.png is 4x3 ...
    """
    img = decode_image(item.path, notes=notes)
    if item.mask_path is None:
        return img, None
    mask = decode_mask(item.mask_path, foreground_values, notes=notes)
    if mask.size != img.size:
        raise MaskSizeError(item.path, item.mask_path, img.size, mask.size)
    return img, mask


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
            img, mask = decode_item(it, self.foreground_values)
        except ImageDecodeError as exc:
            if self.on_error == "raise":
                raise
            error = f"{type(exc.cause).__name__}: {exc.cause}"  # "Truncated File Read" alone says too little
            self.failures.append((exc.path, error))
            return {"failed": True, "path": exc.path, "error": error, "index": index}
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
