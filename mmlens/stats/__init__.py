"""The statistics of docs/math.md as pure functions of stored Datasets. No torch.

Every function takes a store group (``xarray.Dataset``) or a whole store (``xarray.DataTree``),
works on numpy or dask arrays alike, and returns a labelled ``xarray.DataArray`` whose ``attrs``
carry the store's provenance plus ``statistic`` and ``definition``. Statistics with several
parts stack them along a ``measure`` dim. See docs/statistics.md.
"""

from __future__ import annotations

from mmlens.stats import accessor as _accessor  # noqa: F401  (registers .mml on Dataset/DataArray/DataTree)
from mmlens.stats.accuracy import accuracy_table, image_accuracy, split_accuracy
from mmlens.stats.attention import foreground_attention, prompt_background_similarity, prompt_mass, text_reliance
from mmlens.stats.attribution import (
    agreement,
    foreground_chance,
    foreground_mass,
    map_agreement,
    patch_foreground,
    rank_correlation,
)
from mmlens.stats.bias import bias_alignment, bias_consistency, bias_head_ratio, bias_norm_ratio
from mmlens.stats.direct import (
    bias_gain_share,
    bias_margin_effect,
    compare_bias_sources,
    direct_effects,
    require_direct,
)
from mmlens.stats.elementary import harmonic_mean, safe_ratio
from mmlens.stats.summary import bootstrap_ci, summarize

__all__ = [
    "accuracy_table",
    "agreement",
    "foreground_chance",
    "foreground_mass",
    "harmonic_mean",
    "image_accuracy",
    "map_agreement",
    "patch_foreground",
    "rank_correlation",
    "safe_ratio",
    "split_accuracy",
    "bias_alignment",
    "bias_consistency",
    "bias_gain_share",
    "bias_head_ratio",
    "bias_margin_effect",
    "bias_norm_ratio",
    "bootstrap_ci",
    "compare_bias_sources",
    "direct_effects",
    "foreground_attention",
    "prompt_background_similarity",
    "prompt_mass",
    "require_direct",
    "summarize",
    "text_reliance",
]
