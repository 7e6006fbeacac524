"""Geometric transforms shared by images and their foreground masks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: open_clip's resize modes (``PreprocessCfg.resize_mode``)
RESIZE_MODES = ("shortest", "squash", "longest")


def eval_mask_transform(image_size: int | tuple[int, int] | Any, *, resize_mode: str = "shortest") -> Callable:
    """The geometry of open_clip's evaluation transform, for masks, in each of its resize modes.

    ``shortest`` (OpenAI's): resize the shorter side, centre crop. ``squash`` (DFN, CLIPA tags): resize
    each side to the target, no crop. ``longest``: resize the longer side, centre pad with background.
    The sizes and offsets follow ``open_clip.image_transform`` (torchvision's ``Resize`` for square
    targets, open_clip's ``ResizeKeepRatio`` otherwise), so mask and image cover the same scene.

    Takes a PIL mask (``L``, 255 = foreground) and returns a float tensor ``[H, W]`` in which each pixel
    holds the exact fraction of its area that was foreground in the original mask (box filter over the
    covered source area). Per-patch foreground fractions averaged from it are therefore exact as well; a
    nearest-neighbour resize would sample one source pixel per output pixel instead.

    Parameters
    ----------
    image_size : int, (height, width), or an input spec
        The model's input size; an object with ``size`` and ``resize_mode`` attributes (such as
        :func:`mmlens.train.transforms.input_spec`'s result) gives both.
    resize_mode : str
        One of :data:`RESIZE_MODES` (ignored when ``image_size`` carries its own).

    Examples
    --------
    >>> import numpy as np
    >>> from PIL import Image
    >>> m = np.zeros((64, 64), np.uint8); m[10, 10:13] = 255        # three foreground pixels
    >>> out = eval_mask_transform(32)(Image.fromarray(m))
    >>> tuple(out.shape), out[5, 5:7].tolist(), float(out.sum()) * 4  # 2x2 blocks: 2/4 and 1/4 covered
    ((32, 32), [0.5, 0.25], 3.0)
    >>> m = np.zeros((64, 48), np.uint8); m[20:30, 10:20] = 255     # 100 pixels; 48 -> 32 wide, 64 -> 42 high
    >>> round(float(eval_mask_transform(32)(Image.fromarray(m)).sum()) * (48 / 32) * (64 / 42), 3)
    100.0
    >>> squashed = eval_mask_transform(32, resize_mode="squash")(Image.fromarray(m))  # nothing cropped
    >>> round(float(squashed.sum()) * (48 / 32) * (64 / 32), 3)
    100.0
    """
    import numpy as np
    import torch
    from torchvision import transforms as T

    size, resize_mode = _geometry(image_size, resize_mode)
    th, tw = size

    def transform(mask):
        w, h = mask.size
        if resize_mode == "squash":
            new_h, new_w = th, tw
        elif resize_mode == "shortest" and th == tw:
            # torchvision's Resize(size) rule: the shorter side becomes `size`, the longer is truncated
            new_w, new_h = (th, int(th * h / w)) if w <= h else (int(th * w / h), th)
        else:
            # open_clip's ResizeKeepRatio: one ratio for both sides (the smaller for shortest, else larger)
            pick = min if resize_mode == "shortest" else max
            ratio = pick(h / th, w / tw)
            new_h, new_w = round(h / ratio), round(w / ratio)
        fg = np.asarray(mask.convert("L"), dtype=np.float64) / 255.0
        resized = torch.from_numpy((_area_weights(h, new_h) @ fg @ _area_weights(w, new_w).T).astype(np.float32))
        if resize_mode == "squash":
            return resized
        if resize_mode == "shortest":
            return T.CenterCrop(size)(resized)
        from open_clip.transform import center_crop_or_pad  # open_clip's own offsets; padding is background

        return center_crop_or_pad(resized[None], list(size), fill=0)[0]

    return transform


def _geometry(image_size: Any, resize_mode: str) -> tuple[tuple[int, int], str]:
    """((height, width), resize_mode) from an int, a pair, or an object with ``size``/``resize_mode``."""
    if hasattr(image_size, "size") and not isinstance(image_size, (int, tuple, list)):
        resize_mode = getattr(image_size, "resize_mode", resize_mode)
        image_size = image_size.size
    size = (int(image_size), int(image_size)) if isinstance(image_size, int) else (
        int(image_size[0]), int(image_size[1]))
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode={resize_mode!r} is not one of open_clip's {RESIZE_MODES}.")
    return size, resize_mode


def _area_weights(n: int, m: int):
    """``[m, n]`` matrix resizing a length-``n`` axis to ``m``: output pixel ``i`` covers the source interval
    ``[i n/m, (i+1) n/m)`` and takes each source pixel with the fraction of that interval it overlaps."""
    import numpy as np

    edges = np.arange(m + 1) * (n / m)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(n)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / (n / m)
