"""MaPLe's learning-rate schedule (Dassl): constant warm-up epochs, then cosine over the epochs.

>>> s = WarmupCosine(lr=0.0035, epochs=5, warmup_epochs=1, warmup_lr=1e-5)
>>> [round(s.lr_at(e), 6) for e in range(5)]
[1e-05, 0.0035, 0.003166, 0.002291, 0.001209]
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["WarmupCosine"]


class WarmupCosine:
    """Per-epoch learning rates as Dassl's ``ConstantWarmupScheduler`` around ``CosineAnnealingLR``.

    Epochs ``0 .. warmup_epochs-1`` run at ``warmup_lr``; epoch ``e >= warmup_epochs`` runs at
    ``lr * (1 + cos(pi * (e - warmup_epochs) / epochs)) / 2`` — the cosine spans ``epochs`` (not
    ``epochs - warmup_epochs``) and starts stepping only after the warm-up, exactly as MaPLe's
    trainer steps it once per epoch. (So with 5 epochs the last one runs at ``lr * 0.345``.)

    The state is the index of the next epoch; :meth:`state_dict` / :meth:`load_state_dict` make it
    part of a training checkpoint.

    Parameters
    ----------
    lr : float
        Base learning rate (MaPLe: 0.0035).
    epochs : int
        Length of the cosine (MaPLe: 5).
    warmup_epochs : int
        Constant warm-up epochs (MaPLe: 1).
    warmup_lr : float
        Learning rate during the warm-up (MaPLe: 1e-5).
    """

    def __init__(self, lr: float, epochs: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}.")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}.")
        self.lr = float(lr)
        self.epochs = int(epochs)
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_lr = float(warmup_lr)
        self.epoch = 0

    def lr_at(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (0-based)."""
        if epoch < self.warmup_epochs:
            return self.warmup_lr
        t = epoch - self.warmup_epochs
        return self.lr * (1 + math.cos(math.pi * t / self.epochs)) / 2

    def apply(self, optimizer: Any) -> float:
        """Set the learning rate of the current epoch on every parameter group; return it."""
        lr = self.lr_at(self.epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self) -> None:
        """Advance to the next epoch."""
        self.epoch += 1

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "epochs": self.epochs, "warmup_epochs": self.warmup_epochs,
                "warmup_lr": self.warmup_lr, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        for key in ("lr", "epochs", "warmup_epochs", "warmup_lr"):
            if mine[key] != state[key]:
                raise ValueError(f"Schedule mismatch: checkpoint has {key}={state[key]}, this run {mine[key]}.")
        self.epoch = int(state["epoch"])
