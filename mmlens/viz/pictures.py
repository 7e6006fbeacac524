"""Pictures under the patch maps, cut with the model's own resize and crop so pixels line up with patches."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Preprocess", "preprocess_of", "model_view", "picture_from", "read_picture"]


@dataclass(frozen=True)
class Preprocess:
    """How the model's transform turned a picture into its square input (docs/store_schema.md, ``preprocess``).

    ``resize_mode`` follows open_clip's ``PreprocessCfg``: ``shortest`` (shortest side to ``size``,
    then a centre crop: open_clip's default), ``longest`` (longest side to ``size``, then padding
    to a square) or ``squash`` (both sides to ``size``, aspect ratio lost).
    """

    size: int = 224
    resize_mode: str = "shortest"
    crop: str = "center"


def preprocess_of(attrs: Mapping[str, Any]) -> Preprocess:
    """The geometry recorded in a store's provenance (attr ``preprocess``), else open_clip's default.

    Examples
    --------
    >>> preprocess_of({"preprocess": '{"size": 32, "resize_mode": "squash"}'})
    Preprocess(size=32, resize_mode='squash', crop='center')
    >>> preprocess_of({}).resize_mode
    'shortest'
    """
    raw = attrs.get("preprocess")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    if not isinstance(raw, Mapping):
        return Preprocess()
    size = raw.get("size", 224)
    if isinstance(size, (list, tuple)):  # open_clip stores (H, W); the towers here are square
        size = size[0]
    mode = str(raw.get("resize_mode", "shortest"))
    if mode not in ("shortest", "longest", "squash"):
        raise ValueError(f"preprocess.resize_mode must be shortest, longest or squash, found {mode!r}; "
                         "see docs/store_schema.md")
    return Preprocess(size=int(size), resize_mode=mode, crop=str(raw.get("crop", "center")))


def model_view(picture: np.ndarray, geometry: Preprocess) -> np.ndarray:
    """The part of ``picture`` (H x W x 3 uint8) the model saw, as a ``size x size`` picture.

    Parameters
    ----------
    picture
        The original picture.
    geometry
        The model's resize / crop.

    Returns
    -------
    numpy.ndarray
        ``size x size x 3`` uint8 (``longest`` pads with black, as open_clip's centre crop does).

    Examples
    --------
    >>> wide = np.zeros((40, 60, 3), np.uint8); wide[:, :10] = 255    # a white band on the left
    >>> int(model_view(wide, Preprocess(size=20))[:, 3:].max())        # cropped away by the centre crop
    0
    """
    from PIL import Image

    size = geometry.size
    im = Image.fromarray(np.asarray(picture, dtype=np.uint8)[..., :3])
    w, h = im.size
    if geometry.resize_mode == "squash":
        return np.asarray(im.resize((size, size), Image.BICUBIC))
    scale = size / (min(w, h) if geometry.resize_mode == "shortest" else max(w, h))
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    im = im.resize((nw, nh), Image.BICUBIC)
    # centre crop (or centre pad when a side is shorter than size), as torchvision's CenterCrop
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    out = Image.new("RGB", (size, size))
    out.paste(im, (-left, -top))
    return np.asarray(out)


def read_picture(path: str | None, data_root: str | os.PathLike | None, geometry: Preprocess) -> np.ndarray | None:
    """The model's view of the picture at ``path`` (relative paths under ``data_root``), or ``None``."""
    if not path:
        return None
    p = Path(path)
    if not p.is_absolute() and data_root is not None:
        p = Path(data_root) / p
    if not p.is_file():
        return None
    try:
        from PIL import Image

        with Image.open(p) as im:
            return model_view(np.asarray(im.convert("RGB")), geometry)
    except OSError:
        return None


def picture_from(source: Any, dataset: str, image: int, path: str | None) -> np.ndarray | None:
    """An ``H x W x 3`` uint8 picture of one image from a dataset, a ``{dataset: ...}`` mapping or a callable.

    A dataset's samples are already transformed (the tensor the model saw), so no geometry is applied.
    """
    if callable(source) and not hasattr(source, "__getitem__"):
        item = source(dataset, image, path)
    else:
        if isinstance(source, Mapping):
            source = source.get(dataset)
            if source is None:
                return None
        try:
            item = source[image]
        except (IndexError, KeyError):
            return None
    if isinstance(item, Mapping):
        if item.get("path") is not None and path is not None and str(item["path"]) != path:
            return None  # the sequence is not the traced one: better no picture than a wrong one
        item = item.get("image")
    if item is None:
        return None
    array = np.asarray(item.detach().cpu().numpy() if hasattr(item, "detach") else item)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.dtype != np.uint8:
        lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
        if lo < 0.0 or hi > 1.0:  # normalised tensors: stretch to [0, 1] for display
            array = (array - lo) / (hi - lo or 1.0)
        array = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array[..., :3]
