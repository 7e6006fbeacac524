"""Few-shot prompt learning and bias tuning; base/novel evaluation with route ablations.

``fit`` (in :mod:`mmlens.train.trainer`, which imports torch) loads on first use; the evaluation
(:func:`evaluate` and its variants, in :mod:`mmlens.train.evaluation`, which imports torch/xarray only
when called) is bound here.

>>> from mmlens.train import fit, evaluate, to_markdown
>>> callable(evaluate)
True
"""

from __future__ import annotations

from mmlens._lazy import lazy_exports
from mmlens.train import evaluation as _evaluation

evaluate = _evaluation.evaluate
ablation_variants = _evaluation.ablation_variants
parse_variant = _evaluation.parse_variant
Variant = _evaluation.Variant

_LAZY = {
    "batches": "mmlens.train._data",  # batches and model inputs as fit and evaluate feed them (the pipeline's too)
    "model_inputs": "mmlens.train._data",
    "fit": "mmlens.train.trainer",
    "FitResult": "mmlens.train.trainer",
    "latest_checkpoint": "mmlens.train.trainer",
    "WarmupCosine": "mmlens.train.schedule",
    # tables are defined in mmlens.stats.tables (torch-free); the evaluation module re-exports them by their old names
    "summary": "mmlens.train.evaluation",
    "combine": "mmlens.train.evaluation",
    "to_markdown": "mmlens.train.evaluation",
    "to_csv": "mmlens.train.evaluation",
}

__all__ = sorted([*_LAZY, "evaluate", "ablation_variants", "parse_variant", "Variant"])


__getattr__, __dir__ = lazy_exports("mmlens.train", _LAZY, globals())
