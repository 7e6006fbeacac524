"""Few-shot prompt learning and bias tuning; base/novel evaluation with route ablations.

``fit`` (in :mod:`mmlens.train.trainer`, which imports torch) loads on first use; the evaluation
helpers are imported here because the module :mod:`mmlens.train.evaluate` shares its name with the
function :func:`evaluate`, and binding the function now keeps ``from mmlens.train import evaluate``
the function whatever is imported later (that module imports torch/xarray only when called).

>>> from mmlens.train import fit, evaluate, to_markdown
>>> callable(evaluate)
True
"""

from __future__ import annotations

from mmlens._lazy import lazy_exports
from mmlens.train import evaluate as _evaluate_module

evaluate = _evaluate_module.evaluate
ablation_variants = _evaluate_module.ablation_variants
parse_variant = _evaluate_module.parse_variant
Variant = _evaluate_module.Variant

_LAZY = {
    "batches": "mmlens.train._data",  # batches and model inputs as fit and evaluate feed them (the pipeline's too)
    "model_inputs": "mmlens.train._data",
    "fit": "mmlens.train.trainer",
    "FitResult": "mmlens.train.trainer",
    "latest_checkpoint": "mmlens.train.trainer",
    "WarmupCosine": "mmlens.train.schedule",
    # tables are defined in mmlens.stats.tables (torch-free); the evaluate module re-exports them by their old names
    "summary": "mmlens.train.evaluate",
    "combine": "mmlens.train.evaluate",
    "to_markdown": "mmlens.train.evaluate",
    "to_csv": "mmlens.train.evaluate",
}

__all__ = sorted([*_LAZY, "evaluate", "ablation_variants", "parse_variant", "Variant"])


__getattr__, __dir__ = lazy_exports("mmlens.train", _LAZY, globals())
