"""The instrumented forward: the exact per-block, per-head split of docs/math.md, and interventions.

The package is named ``tracing`` so that ``mmlens.trace`` is nothing but the function
:func:`mmlens.tracing.tracer.trace` (``mmlens.trace?`` in Jupyter shows its signature). The modules:
:mod:`~mmlens.tracing.tracer` (trace, trace_to_store), :mod:`~mmlens.tracing.decompose` (the split and
its completeness check), :mod:`~mmlens.tracing.interventions` (route ablations) and
:mod:`~mmlens.tracing.direct` (direct logit effects). Each imports torch, so the names below load on
first use.

>>> from mmlens.tracing import trace, intervene
>>> trace.__module__, intervene.__module__
('mmlens.tracing.tracer', 'mmlens.tracing.interventions')
"""

from __future__ import annotations

from mmlens._lazy import lazy_exports

_LAZY = {
    "trace": "mmlens.tracing.tracer",
    "trace_to_store": "mmlens.tracing.tracer",
    "iter_trace_batches": "mmlens.tracing.tracer",
    "parse_attribution": "mmlens.tracing.tracer",
    "intervene": "mmlens.tracing.interventions",
    "measure_mean_bias": "mmlens.tracing.interventions",
    "SplitHook": "mmlens.tracing.interventions",
    "RoleMeanBias": "mmlens.tracing.interventions",
    "CompletenessError": "mmlens.tracing.decompose",
    "split_attention": "mmlens.tracing.decompose",
    "DirectRecorder": "mmlens.tracing.direct",
    "linear_readout": "mmlens.tracing.direct",
    "lens": "mmlens.tracing.lens",
    "load_vocabulary": "mmlens.tracing.lens",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports("mmlens.tracing", _LAZY, globals())
