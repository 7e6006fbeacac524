"""The scalar-output CLIP forward attribution methods differentiate: the logit of a chosen class."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ClassLogits"]


class ClassLogits(nn.Module):
    """CLIP as a classifier for captum: ``images -> logits [batch, classes]`` or the target logit ``[batch]``.

    Parameters
    ----------
    model : PromptedCLIP
        The prompted (or zero-shot) CLIP.
    text_features : Tensor, optional
        Fixed normalised class features ``[classes, embed_dim]``. When ``None`` (the default) the text
        tower runs inside every forward, so gradients reach the learned prompts through both towers
        (MaPLe's vision prompts are projections of its text prompts). Image-side attributions pass
        the features computed once: the text tower does not depend on the pixels, and the numbers
        are identical.

    Examples
    --------
    >>> f = ClassLogits(model)
    >>> f(images).shape[0], f(images, target=labels).shape   # [image, class], [image]
    (4, torch.Size([4]))
    """

    def __init__(self, model: Any, text_features: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.text_features = text_features

    def forward(self, images: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[batch, classes]``; with ``target`` (one class index per image) the scalar ``[batch]``."""
        logits = self.model(images, self.text_features)
        if target is None:
            return logits
        target = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1, 1)
        return logits.gather(1, target.expand(logits.shape[0], 1)).squeeze(1)
