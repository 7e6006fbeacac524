"""mmlens: look inside CLIP models that carry learned multi-modal prompts.

The public API is small; heavy modules (torch, open_clip, holoviews) load on first use so that
``import mmlens`` stays fast and a laptop without torch can still open stores.

>>> import mmlens
>>> mmlens.__version__
'0.1.0'
"""

from __future__ import annotations

from mmlens._lazy import lazy_exports
from mmlens._version import __version__

# sub-packages, reachable after a bare ``import mmlens`` (``mmlens.stats.summarize(...)``); each is
# imported on first attribute access, so ``import mmlens`` itself imports neither torch nor xarray
_SUBPACKAGES = ("attribution", "data", "experiments", "models", "stats", "store", "tracing", "train", "viz")

# public name -> module that defines it (imported lazily, PEP 562)
_LAZY = {
    **{name: f"mmlens.{name}" for name in _SUBPACKAGES},
    "load_clip": "mmlens.models.loading",
    "LoadedCLIP": "mmlens.models.loading",
    "PromptedCLIP": "mmlens.models.prompted",
    "save_prompts": "mmlens.models.checkpoints",
    "load_prompts": "mmlens.models.checkpoints",
    "import_prompts": "mmlens.models.checkpoints",
    "trace": "mmlens.tracing.tracer",
    "trace_to_store": "mmlens.tracing.tracer",
    "intervene": "mmlens.tracing.interventions",
    "lens": "mmlens.tracing.lens",
    "open": "mmlens.store.io",
    "evaluate": "mmlens.train.evaluation",
    "explore": "mmlens.viz.explorer",
}

__all__ = ["__version__", *sorted(_LAZY)]


_resolve, __dir__ = lazy_exports("mmlens", _LAZY, globals())

#: Names that give or take trace stores: resolving one also registers the ``.mml`` accessor, which lives
#: above the statistics (mmlens.stats.accessor) so that mmlens.store never imports mmlens.stats.
_STORE_NAMES = frozenset({"trace", "trace_to_store", "intervene", "open", "evaluate", "explore", "stats", "viz"})


def __getattr__(name: str):  # noqa: ANN202  (PEP 562)
    value = _resolve(name)
    if name in _STORE_NAMES:
        import mmlens.stats.accessor  # noqa: F401

    return value
