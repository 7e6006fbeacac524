"""Doctests: every ``>>>`` example in ``mmlens/`` runs (``--doctest-modules``), on the shipped toy model.

(Here rather than at the repository root, as in xarray: a root ``conftest.py`` would shadow
``tests/conftest.py`` for ``from conftest import ...`` in the tests.)

The examples of the model, trace, train and attribution modules use a few names that the namespace
below provides, so that they read like a notebook cell and need no ``+SKIP``:

``torch``, ``np``, ``xr``, ``mmlens``
    The usual imports.
``clip``
    ``mmlens.load_clip("mmlens-toy", pretrained="toyworld")``: the shipped toyworld CLIP (loaded once).
``model``
    ``mmlens.PromptedCLIP(clip, classnames, method="maple", depth=3, init_seed=0)``.
``images``, ``labels``, ``classnames``
    Four preprocessed photo-domain test images of toyworld, their labels and the domain's class names.

Every doctest carries the ``doctest`` marker (``pytest -m doctest`` runs them alone, ``-m "not doctest"``
skips them); the few that train or generate a lot also carry ``slow``.
"""

from __future__ import annotations

import pytest

# Examples that take more than a few seconds (item names, e.g. "mmlens.train.pretrain_toy.pretrain") get the
# `slow` marker, deselected with -m "not slow". None does today: pretrain's example skips the 60-step text
# warm-up (20-45 s on a shared 2-core machine) and runs in about a second.
_SLOW_DOCTESTS: set[str] = set()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if isinstance(item, pytest.DoctestItem):
            item.add_marker(pytest.mark.doctest)
            if item.name in _SLOW_DOCTESTS:
                item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def _toy_namespace() -> dict:
    import numpy as np
    import torch
    import xarray as xr

    import mmlens
    from mmlens.data import collate
    from mmlens.data.toyworld import ToyworldDataset

    torch.set_num_threads(1)
    clip = mmlens.load_clip("mmlens-toy", pretrained="toyworld")
    data = ToyworldDataset("photo", "test", transform=clip.preprocess)
    batch = collate([data[i] for i in range(4)])
    model = mmlens.PromptedCLIP(clip, data.classnames, method="maple", depth=3, init_seed=0)
    return {
        "torch": torch, "np": np, "xr": xr, "mmlens": mmlens,
        "clip": clip, "model": model.eval(), "images": batch["image"], "labels": batch["label"],
        "classnames": list(data.classnames),
    }


@pytest.fixture(autouse=True)
def _doctest_names(request, doctest_namespace):
    # Only doctests pay for the toy model; ordinary tests never touch this namespace.
    if isinstance(request.node, pytest.DoctestItem):
        doctest_namespace.update(request.getfixturevalue("_toy_namespace"))
