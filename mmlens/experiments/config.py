"""Settings of the study's pipeline that are not a prompt-learning recipe: the quick run and the ablation sets.

The recipes themselves (shots, epochs, learning rate, depth) are in :mod:`mmlens.train.recipes`; the
variant and route names in :mod:`mmlens.store.schema`. This module imports nothing, so that the
command line can offer its choices without loading the pipeline.

>>> QUICK["shots"], ABLATIONS[0]
(2, 'routes')
"""

from __future__ import annotations

from typing import Any

__all__ = ["ABLATIONS", "QUICK"]

#: ``mmlens reproduce --quick``: first dataset, first seed, and these settings (a run of minutes).
QUICK: dict[str, Any] = {"shots": 2, "epochs": 2, "batch_size": 8, "max_images": 16, "ablations": "routes",
                         "n_boot": 200}
#: Evaluated variants: ``routes`` (both branches), ``branches`` (+ vision / text alone), ``grid`` (+ the
#: injected / carried blocks alone; the grid of docs/results/toyworld_base_to_novel.md).
ABLATIONS: tuple[str, ...] = ("routes", "branches", "grid")
