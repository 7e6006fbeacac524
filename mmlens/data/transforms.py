"""Geometric transforms shared by images and their foreground masks."""

from __future__ import annotations

from collections.abc import Callable


def eval_mask_transform(image_size: int | tuple[int, int]) -> Callable:
    """The geometry of open_clip's evaluation transform (resize shorter side, centre crop) for masks.

    Takes a PIL mask (``L``, 255 = foreground) and returns a float tensor ``[H, W]`` in which each pixel
    holds the exact fraction of its area that was foreground in the original mask (box filter over the
    covered source area). Per-patch foreground fractions averaged from it are therefore exact as well; a
    nearest-neighbour resize would sample one source pixel per output pixel instead.

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
    """
    import numpy as np
    import torch
    from torchvision import transforms as T

    size = image_size if isinstance(image_size, int) else min(image_size)
    crop = T.CenterCrop(image_size)

    def transform(mask):
        w, h = mask.size
        # torchvision's Resize(size) rule: the shorter side becomes `size`, the longer is truncated
        new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        fg = np.asarray(mask.convert("L"), dtype=np.float64) / 255.0
        resized = _area_weights(h, new_h) @ fg @ _area_weights(w, new_w).T
        return crop(torch.from_numpy(resized.astype(np.float32)))

    return transform


def _area_weights(n: int, m: int):
    """``[m, n]`` matrix resizing a length-``n`` axis to ``m``: output pixel ``i`` covers the source interval
    ``[i n/m, (i+1) n/m)`` and takes each source pixel with the fraction of that interval it overlaps."""
    import numpy as np

    edges = np.arange(m + 1) * (n / m)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(n)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / (n / m)
