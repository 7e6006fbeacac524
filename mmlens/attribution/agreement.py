"""Agreement between attribution maps and the trace (re-exported: defined in :mod:`mmlens.stats.attribution`)."""

from __future__ import annotations

from mmlens.stats import attribution as _home
from mmlens.stats.attribution import *  # noqa: F403

__all__ = list(_home.__all__)
