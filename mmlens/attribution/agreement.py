"""Agreement between attribution maps and the trace (re-exported: defined in :mod:`mmlens.stats.agreement`)."""

from __future__ import annotations

from mmlens.stats.agreement import (
    GRID,
    agreement,
    foreground_chance,
    foreground_mass,
    map_agreement,
    patch_foreground,
    rank_correlation,
)

__all__ = ["GRID", "agreement", "foreground_chance", "foreground_mass", "map_agreement", "patch_foreground",
           "rank_correlation"]
