"""captum adapters returning DataArrays on the trace's coordinates, and agreement metrics.

Image side: :class:`PixelIntegratedGradients`, :class:`PatchEmbeddingIntegratedGradients`,
:class:`PatchOcclusion`, :class:`AttentionGradCAM`, :class:`GradientRollout`. Prompt side:
:class:`PromptIntegratedGradients`. Each is built around a :class:`~mmlens.PromptedCLIP` and called
as ``.attribute(images, target=...)``. :func:`agreement` compares maps with the trace's ``[cls]``
attention and foreground masks; :func:`to_dataset` builds the trace's ``attribution`` group.

>>> from mmlens.attribution import PatchOcclusion, agreement
>>> occ = PatchOcclusion(model, progress=False).attribute(images, target="label", labels=labels)
>>> occ.dims
('image', 'patch_row', 'patch_col')
"""

from __future__ import annotations

from mmlens.attribution.agreement import (
    agreement,
    foreground_chance,
    foreground_mass,
    patch_foreground,
    rank_correlation,
)
from mmlens.attribution.attention import AttentionCapture, AttentionGradCAM, GradientRollout, attention_probabilities
from mmlens.attribution.dataset import attribute_variants, to_dataset
from mmlens.attribution.forward import ClassLogits
from mmlens.attribution.image import (
    PatchEmbeddingIntegratedGradients,
    PatchOcclusion,
    PixelIntegratedGradients,
    patch_feature_mask,
    pixels_to_patches,
)
from mmlens.attribution.prompts import PromptIntegratedGradients, handcrafted_prompts, prompt_parameters

#: Image-side methods by the variable name they take in the ``attribution`` group (each class's ``name``,
#: one of mmlens.store.schema.ATTRIBUTION_METHODS).
IMAGE_METHODS = {
    cls.name: cls
    for cls in (PixelIntegratedGradients, PatchEmbeddingIntegratedGradients, PatchOcclusion, AttentionGradCAM,
                GradientRollout)
}

__all__ = [
    "IMAGE_METHODS",
    "AttentionCapture",
    "AttentionGradCAM",
    "ClassLogits",
    "GradientRollout",
    "PatchEmbeddingIntegratedGradients",
    "PatchOcclusion",
    "PixelIntegratedGradients",
    "PromptIntegratedGradients",
    "agreement",
    "attention_probabilities",
    "attribute_variants",
    "foreground_chance",
    "foreground_mass",
    "handcrafted_prompts",
    "patch_feature_mask",
    "patch_foreground",
    "pixels_to_patches",
    "prompt_parameters",
    "rank_correlation",
    "to_dataset",
]
