"""The instrumented forward: the exact per-block, per-head split of docs/math.md, and interventions.

``mmlens.trace`` is both this package and the function :func:`mmlens.trace.tracer.trace`: calling
the package runs the trace, so ``mmlens.trace(model, images)`` works whichever of the two Python
bound first (importing a sub-module such as ``mmlens.trace.interventions`` binds the package).
"""

from __future__ import annotations

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from mmlens.trace.tracer import trace

        return trace(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
