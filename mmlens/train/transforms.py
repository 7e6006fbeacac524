"""Training's random augmentation: seeded random-resized-crop + flip on batched tensors.

Datasets hand over float images in ``[0, 1]`` (what :class:`mmlens.data.ImageDataset` yields without a
transform, or :func:`mmlens.data.transforms.pil_to_tensor_transform`'s output, which with
:func:`~mmlens.data.transforms.input_spec` and :func:`~mmlens.data.transforms.resize_batch` is the
model's evaluation geometry and lives with the mask transform in :mod:`mmlens.data.transforms`).
Augmentation runs on batched tensors with an explicit :class:`torch.Generator`, so a training run is
reproducible from its seed alone (no hidden global RNG, no dependence on DataLoader workers).

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.rand(2, 3, 40, 48)
>>> random_resized_crop_flip(x, (32, 32), generator=g).shape
torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The evaluation geometry moved to mmlens.data.transforms (next to the mask transform); importable from
# here too so that code written against the old place keeps working.
from mmlens.data.transforms import InputSpec, input_spec, pil_to_tensor_transform, resize_batch

__all__ = [
    "InputSpec",
    "input_spec",
    "pil_to_tensor_transform",
    "random_resized_crop_flip",
    "resize_batch",
    "sample_crop",
]


def sample_crop(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Crop box ``(top, left, h, w)`` drawn as torchvision's ``RandomResizedCrop.get_params`` does.

    Ten tries at a random area fraction in ``scale`` and log-uniform aspect ratio in ``ratio``;
    then the largest central crop with a clamped ratio. Draws from ``generator`` only.

    Examples
    --------
    >>> sample_crop(10, 10, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    (0, 0, 10, 10)
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))

    for _ in range(10):
        target_area = area * uniform(*scale)
        aspect = math.exp(uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop_flip(
    images: torch.Tensor,
    size: tuple[int, int],
    *,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> torch.Tensor:
    """MaPLe's training augmentation on a batch ``[N, C, H, W]``: random resized crop, then horizontal flip.

    Each image gets its own crop (resized to ``size``, bicubic with antialiasing) and a flip with
    probability 1/2. All randomness comes from ``generator``.

    Examples
    --------
    >>> x = torch.arange(16.).view(1, 1, 4, 4).expand(1, 3, 4, 4)
    >>> g = torch.Generator().manual_seed(0)
    >>> y = random_resized_crop_flip(x, (4, 4), generator=g, scale=(1, 1), ratio=(1, 1))
    >>> bool(torch.equal(y, x) or torch.equal(y, x.flip(-1)))
    True
    """
    out = []
    height, width = images.shape[-2:]
    for img in images:
        top, left, h, w = sample_crop(height, width, generator, scale, ratio)
        crop = img[:, top:top + h, left:left + w]
        if (h, w) != tuple(size):
            crop = F.interpolate(crop[None], size=tuple(size), mode="bicubic", align_corners=False,
                                 antialias=True)[0]
        if flip and bool(torch.rand((), generator=generator) < 0.5):
            crop = crop.flip(-1)
        out.append(crop)
    return torch.stack(out)
