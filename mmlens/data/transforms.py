"""The model's evaluation geometry, for images and their foreground masks alike.

An image and its mask must cover the same scene, so both transforms live here, read from one
:class:`InputSpec` (size, normalisation and open_clip's resize geometry) that :func:`input_spec` takes
from the model's own preprocess config. Training's random augmentation is in
:mod:`mmlens.train.transforms`. torch, torchvision and open_clip are imported when a transform is built.

>>> spec = InputSpec((32, 32), resize_mode="squash")
>>> from PIL import Image
>>> image, mask = Image.new("RGB", (50, 40)), Image.new("L", (50, 40))
>>> pil_to_tensor_transform(spec)(image).shape, eval_mask_transform(spec)(mask).shape
(torch.Size([3, 32, 32]), torch.Size([32, 32]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "RESIZE_MODES",
    "InputSpec",
    "eval_mask_transform",
    "input_spec",
    "pil_to_tensor_transform",
    "resize_batch",
]

#: open_clip's resize modes (``PreprocessCfg.resize_mode``)
RESIZE_MODES = ("shortest", "squash", "longest")

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
        import torch

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
    >>> import torch
    >>> resize_batch([torch.rand(3, 20, 30), torch.rand(3, 16, 16)], (16, 16)).shape
    torch.Size([2, 3, 16, 16])
    >>> resize_batch([torch.rand(3, 20, 30)], InputSpec((16, 16), resize_mode="squash")).shape
    torch.Size([1, 3, 16, 16])
    """
    import torch
    import torch.nn.functional as F

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
        :func:`input_spec`'s result) gives both.
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
