"""Test tiers: the folder sets the marker (tests/unit -> unit, ...); `slow` is set by hand.

Quick tier: ``pytest -m unit`` (< 5 min). Everything: ``pytest``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_TIER_BY_FOLDER = {"unit": "unit", "integration": "integration", "browser": "browser"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        for folder, marker in _TIER_BY_FOLDER.items():
            if folder in parts:
                item.add_marker(getattr(pytest.mark, marker))
        if "notebooks" in parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # 2-core machines: keep torch from oversubscribing when pytest runs alongside other work.
    try:
        import torch

        torch.set_num_threads(min(2, os.cpu_count() or 1))
    except ImportError:  # store/stats tests run without torch
        pass
