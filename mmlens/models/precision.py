"""What a ``precision`` choice means on a device: the weights' dtype, the autocast the model runs under, scaling.

One place for the names taken by ``fit(precision=...)``, ``evaluate(precision=...)``, ``mmlens trace
--precision`` and ``mmlens reproduce --precision``. Whatever the choice, the split that ``trace``
records is computed in float32 (docs/math.md, Numerics); precision only decides how the model
itself runs.

========  =================  ==================  ============================================
name      weights            autocast            gradient scaling (``fit``)
========  =================  ==================  ============================================
``fp32``  float32            off                 no
``amp``   float32            float16             yes (``torch.amp.GradScaler``)
``bf16``  float32            bfloat16            no (bfloat16 has float32's exponent range)
``fp16``  float16 (frozen)   float16             yes (trace, evaluate; prompts stay float32)
``auto``  ``amp`` on CUDA (``fp16`` for ``mmlens trace``), ``fp32`` elsewhere
========  =================  ==================  ============================================

Every choice runs on CPU as well (CPU autocast supports float16 and bfloat16, and
``GradScaler("cpu")`` exists), which is how the GPU paths are tested without a GPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

__all__ = ["PRECISIONS", "Precision", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "amp", "bf16", "fp16")
_AUTOCAST = {"fp32": None, "amp": torch.float16, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved precision choice on one device type.

    Examples
    --------
    >>> p = resolve_precision("bf16", "cpu")
    >>> p.name, p.weights, p.autocast_dtype, p.grad_scaling
    ('bf16', 'fp32', torch.bfloat16, False)
    >>> with p.autocast():
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.bfloat16
    """

    name: str  # fp32, amp, bf16 or fp16 (never auto)
    device_type: str  # "cpu", "cuda", ...

    @property
    def weights(self) -> str:
        """The ``load_clip(precision=...)`` of the frozen CLIP: ``"fp16"`` or ``"fp32"``."""
        return "fp16" if self.name == "fp16" else "fp32"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype autocast runs matmuls in, or None (no autocast)."""
        return _AUTOCAST[self.name]

    @property
    def grad_scaling(self) -> bool:
        """Whether gradients need loss scaling (float16's narrow exponent range underflows small gradients)."""
        return self.autocast_dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` on this device type with this dtype (a no-op for ``fp32``)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A fresh ``torch.amp.GradScaler`` for this device when gradients need scaling, else None."""
        return torch.amp.GradScaler(self.device_type) if self.grad_scaling else None


def resolve_precision(precision: str, device: str | torch.device, *, allowed: tuple[str, ...] = PRECISIONS,
                      auto_cuda: str = "amp") -> Precision:
    """Resolve a precision name for a device (``auto``: ``auto_cuda`` on CUDA, ``fp32`` elsewhere).

    Parameters
    ----------
    precision : str
        One of ``allowed`` (by default ``auto, fp32, amp, bf16, fp16``).
    device : str or torch.device
    allowed : tuple of str
        The names the caller accepts (``fit`` takes no ``fp16``: the weights are the model's).
    auto_cuda : str
        What ``auto`` means on CUDA.

    Examples
    --------
    >>> resolve_precision("auto", "cpu").name, resolve_precision("auto", "cuda").name
    ('fp32', 'amp')
    >>> resolve_precision("amp", "cpu").grad_scaling
    True
    """
    if precision not in allowed:
        raise ValueError(f"precision={precision!r} is not one of {', '.join(allowed)} "
                         "(auto: mixed precision on CUDA, float32 elsewhere).")
    device_type = torch.device(device).type
    name = precision
    if name == "auto":
        name = auto_cuda if device_type == "cuda" else "fp32"
    return Precision(name, device_type)
