"""Prompt-learning recipes, defined once: MaPLe's published one and its toyworld adaptation.

Every entry point (``mmlens demo``, ``mmlens reproduce``, ``mmlens train``, the quickstart notebook,
the result scripts) takes its defaults from here, so that a number on one page and a number on
another were made the same way.
"""

from __future__ import annotations

from typing import Any

# the depth rule is the model's (tracing builds prompted models with it too, and must not import train)
from mmlens.models.prompted import MAPLE_DEPTH, prompt_depth

__all__ = ["MAPLE_RECIPE", "TOY_RECIPE", "recipe_for", "prompt_depth"]

#: MaPLe's published recipe (configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml): SGD lr 0.0035,
#: batch 4, 5 epochs, 16 shots per base class, prompts in blocks 0-8 of ViT-B/16's 12, ImageNet crops.
MAPLE_RECIPE: dict[str, Any] = {"shots": 16, "epochs": 5, "batch_size": 4, "lr": 0.0035, "depth": MAPLE_DEPTH,
                                "crop_scale": (0.08, 1.0)}
#: The same recipe on toyworld. Only the random crops differ: they keep at least half of the image,
#: because toyworld objects can cover under a tenth of the frame (satellite, clutter) and ImageNet's 8 %
#: crops would often cut the object out and train on background. The depth is MaPLe's 9, clipped to the
#: model's blocks by :func:`prompt_depth` (5 of the toy's 6).
TOY_RECIPE: dict[str, Any] = {**MAPLE_RECIPE, "crop_scale": (0.5, 1.0)}


def recipe_for(model_name: str) -> dict[str, Any]:
    """The recipe for a model: :data:`TOY_RECIPE` for ``mmlens-toy``, else :data:`MAPLE_RECIPE` (a copy).

    Examples
    --------
    >>> recipe_for("mmlens-toy")["crop_scale"], recipe_for("ViT-B-16")["crop_scale"]
    ((0.5, 1.0), (0.08, 1.0))
    """
    return dict(TOY_RECIPE if model_name == "mmlens-toy" else MAPLE_RECIPE)
