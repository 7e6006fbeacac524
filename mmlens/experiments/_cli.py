"""Sub-commands of this sub-package (see mmlens/cli.py)."""

from __future__ import annotations


def register(subparsers) -> None:
    """Add this package's sub-commands to ``subparsers``."""
