"""The statistics of docs/math.md as pure functions of stored Datasets. No torch.

Every function takes a store group (``xarray.Dataset``) or a whole store (``xarray.DataTree``),
works on numpy or dask arrays alike, and returns a labelled ``xarray.DataArray`` whose ``attrs``
carry the store's provenance plus ``statistic`` and ``definition``. Statistics with several
parts stack them along a ``measure`` dim. See docs/statistics.md.
"""

from __future__ import annotations

from mmlens.stats.attention import foreground_attention, prompt_background_similarity, prompt_mass, text_reliance
from mmlens.stats.bias import bias_alignment, bias_consistency, bias_norm_ratio
from mmlens.stats.summary import bootstrap_ci, summarize

__all__ = [
    "bias_alignment",
    "bias_consistency",
    "bias_norm_ratio",
    "bootstrap_ci",
    "foreground_attention",
    "prompt_background_similarity",
    "prompt_mass",
    "summarize",
    "text_reliance",
]
