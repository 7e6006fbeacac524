"""Geometric transforms shared by images and their foreground masks."""

from __future__ import annotations

from collections.abc import Callable


def eval_mask_transform(image_size: int | tuple[int, int]) -> Callable:
    """The geometry of open_clip's evaluation transform (resize shorter side, centre crop) for masks.

    Nearest-neighbour resizing keeps masks binary, so the per-patch foreground fractions stay exact.

    Examples
    --------
    >>> from PIL import Image
    >>> eval_mask_transform(32)(Image.new("L", (64, 48))).size
    (32, 32)
    """
    from torchvision import transforms as T

    size = image_size if isinstance(image_size, int) else min(image_size)
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.NEAREST), T.CenterCrop(image_size)])
