"""Image tensors for training and evaluation: resize, seeded random-resized-crop + flip, normalisation.

Datasets hand over float images in ``[0, 1]`` (what :class:`mmlens.data.ImageDataset` yields without a
transform, or :func:`pil_to_tensor_transform`'s output). Augmentation runs on batched tensors with an
explicit :class:`torch.Generator`, so a training run is reproducible from its seed alone (no hidden
global RNG, no dependence on DataLoader workers).

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.rand(2, 3, 40, 48)
>>> random_resized_crop_flip(x, (32, 32), generator=g).shape
torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "InputSpec",
    "input_spec",
    "pil_to_tensor_transform",
    "random_resized_crop_flip",
    "resize_batch",
    "sample_crop",
]

# OpenAI CLIP's normalisation, open_clip's default when a config does not say otherwise.
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class InputSpec:
    """What a CLIP image tower expects: ``size`` (height, width), per-channel ``mean`` and ``std``, and the
    geometry of its evaluation transform (open_clip's ``resize_mode``, ``interpolation``, ``fill_color``)."""

    size: tuple[int, int]
    mean: tuple[float, ...] = _OPENAI_MEAN
    std: tuple[float, ...] = _OPENAI_STD
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    fill_color: int = 0

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(images - mean) / std`` per channel, for a batch ``[N, C, H, W]`` in ``[0, 1]``."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (images - mean) / std


def input_spec(model: Any) -> InputSpec:
    """Read the input size, normalisation and resize geometry of a :class:`~mmlens.PromptedCLIP`, a
    :class:`~mmlens.models.LoadedCLIP` or an open_clip CLIP, from the model's own preprocess config
    (``open_clip.get_model_preprocess_cfg``: what a pretrained tag set, e.g. ``squash`` for DFN).

    Examples
    --------
    >>> from mmlens import load_clip
    >>> input_spec(load_clip("mmlens-toy", pretrained="toyworld")).size
    (32, 32)
    """
    import open_clip

    clip = getattr(model, "clip", None) or getattr(model, "model", None) or model
    visual = clip.visual
    cfg = dict(open_clip.get_model_preprocess_cfg(clip) or {})
    size = cfg.get("size", getattr(visual, "image_size", None))
    if size is None:
        raise ValueError(f"Cannot read the input size of {type(visual).__name__}: no preprocess_cfg or image_size.")
    size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    mean = tuple(float(v) for v in (cfg.get("mean") or _OPENAI_MEAN))
    std = tuple(float(v) for v in (cfg.get("std") or _OPENAI_STD))
    return InputSpec(size, mean, std, resize_mode=cfg.get("resize_mode") or "shortest",
                     interpolation=cfg.get("interpolation") or "bicubic", fill_color=int(cfg.get("fill_color") or 0))


def pil_to_tensor_transform(size: int | tuple[int, int] | InputSpec) -> Callable:
    """PIL image -> float ``[3, H, W]`` in ``[0, 1]``: the model's own evaluation transform, unnormalised.

    Built by ``open_clip.image_transform`` from the spec's geometry (resize mode, interpolation, fill),
    so that training and evaluation see exactly what ``trace`` (the model's ``preprocess``) sees;
    normalisation happens after augmentation (:meth:`InputSpec.normalize`). A bare size means
    OpenAI's geometry: shorter side bicubic, centre crop.

    Examples
    --------
    >>> from PIL import Image
    >>> pil_to_tensor_transform(32)(Image.new("RGB", (50, 40))).shape
    torch.Size([3, 32, 32])
    >>> pil_to_tensor_transform(InputSpec((32, 32), resize_mode="squash"))(Image.new("RGB", (50, 40))).shape
    torch.Size([3, 32, 32])
    """
    import open_clip

    spec = size if isinstance(size, InputSpec) else InputSpec(
        (size, size) if isinstance(size, int) else (int(size[0]), int(size[1])))
    # mean 0 / std 1: open_clip's Normalize becomes the identity, everything before it is the model's own
    return open_clip.image_transform(spec.size, is_train=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                                     resize_mode=spec.resize_mode, interpolation=spec.interpolation,
                                     fill_color=spec.fill_color)


def resize_batch(images: torch.Tensor | Sequence[torch.Tensor], size: tuple[int, int] | InputSpec) -> torch.Tensor:
    """Stack images to ``[N, C, *size]``; images of another size are brought to it in the spec's resize mode
    (``shortest``: short side + centre crop, the default for a bare size; ``squash``; ``longest``: + pad).

    Examples
    --------
    >>> resize_batch([torch.rand(3, 20, 30), torch.rand(3, 16, 16)], (16, 16)).shape
    torch.Size([2, 3, 16, 16])
    >>> resize_batch([torch.rand(3, 20, 30)], InputSpec((16, 16), resize_mode="squash")).shape
    torch.Size([1, 3, 16, 16])
    """
    mode, fill = "shortest", 0
    if isinstance(size, InputSpec):
        mode, fill, size = size.resize_mode, size.fill_color, size.size
    if isinstance(images, torch.Tensor) and images.dim() == 4 and tuple(images.shape[-2:]) == tuple(size):
        return images
    out = []
    for img in images:
        if img.dim() == 2:
            img = img.unsqueeze(0)
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        if tuple(img.shape[-2:]) != tuple(size) and mode == "squash":
            img = F.interpolate(img[None].float(), size=tuple(size), mode="bicubic", align_corners=False,
                                antialias=True)[0]
        elif tuple(img.shape[-2:]) != tuple(size) and mode == "longest":
            from open_clip.transform import center_crop_or_pad

            h, w = img.shape[-2:]
            scale = min(size[0] / h, size[1] / w)
            img = F.interpolate(img[None].float(), size=(round(h * scale), round(w * scale)), mode="bicubic",
                                align_corners=False, antialias=True)[0]
            img = center_crop_or_pad(img, list(size), fill=fill)
        elif tuple(img.shape[-2:]) != tuple(size):
            h, w = img.shape[-2:]
            scale = max(size[0] / h, size[1] / w)
            nh, nw = max(size[0], round(h * scale)), max(size[1], round(w * scale))
            img = F.interpolate(img[None].float(), size=(nh, nw), mode="bicubic", align_corners=False,
                                antialias=True)[0]
            top, left = (nh - size[0]) // 2, (nw - size[1]) // 2
            img = img[:, top:top + size[0], left:left + size[1]]
        out.append(img.float())
    return torch.stack(out)


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
