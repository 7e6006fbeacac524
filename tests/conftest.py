"""Test tiers: the folder sets the marker (tests/unit -> unit, ...); `slow` is set by hand.

Quick tier: ``pytest -m unit`` (< 5 min): the tests in tests/unit that are not marked ``slow`` (a slow
test there, e.g. twenty pairs of racing writer processes, runs with everything else). Everything:
``pytest``.
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
            if folder in parts and not (marker == "unit" and item.get_closest_marker("slow")):
                item.add_marker(getattr(pytest.mark, marker))
        if "notebooks" in parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # Tests run tiny models, for which OpenMP's thread barriers cost more than they save (and collapse
    # when the 2-core machine is shared). One intra-op thread keeps them fast and steady.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # store/stats tests run without torch
        pass


def tiny_config(*, layers: int = 3, v_width: int = 32, t_width: int = 32, heads: int = 2,
                image_size: int = 32, patch: int = 8, context: int = 20, quick_gelu: bool = False) -> dict:
    """A tiny open_clip CLIP config (random weights, builds in milliseconds)."""
    return {
        "embed_dim": 16,
        "quick_gelu": quick_gelu,
        "vision_cfg": {"image_size": image_size, "layers": layers, "width": v_width, "patch_size": patch,
                       "head_width": v_width // heads},
        "text_cfg": {"context_length": context, "vocab_size": 49408, "width": t_width, "heads": heads,
                     "layers": layers},
    }


@pytest.fixture(scope="session")
def tiny_clip():
    """A LoadedCLIP with a 3-block tiny config and fixed random weights."""
    import torch

    from mmlens.models.loading import load_clip, register_config

    register_config("test-tiny", tiny_config())
    torch.manual_seed(0)
    return load_clip("test-tiny")


@pytest.fixture(scope="session")
def tiny_clip12():
    """A 12-block tiny CLIP (for depths up to 12)."""
    import torch

    from mmlens.models.loading import load_clip, register_config

    register_config("test-tiny12", tiny_config(layers=12, v_width=24, t_width=24, heads=2))
    torch.manual_seed(1)
    return load_clip("test-tiny12")
