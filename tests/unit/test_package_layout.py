"""The package's front door: ``import mmlens`` is light, its sub-packages are reachable, names mean one thing."""

from __future__ import annotations

import inspect
import subprocess
import sys
import types

import pytest

import mmlens

SUBPACKAGES = ("attribution", "data", "experiments", "models", "stats", "store", "tracing", "train", "viz")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_bare_import_is_light():
    # a fresh interpreter: this test process has long imported torch
    proc = _run("import sys, mmlens; heavy = sorted({m.split('.')[0] for m in sys.modules} & "
                "{'torch', 'open_clip', 'xarray', 'numpy', 'holoviews'}); print(heavy)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_torch_free_packages_reachable_after_bare_import():
    proc = _run("import sys, mmlens; mmlens.stats.summarize; mmlens.store.validate; mmlens.data; mmlens.viz; "
                "print('torch' in sys.modules)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackage_reachable_as_attribute(name):
    proc = _run(f"import mmlens; print(mmlens.{name}.__name__)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"mmlens.{name}"
    assert name in dir(mmlens)


def test_trace_is_the_function_whatever_was_imported_first():
    import mmlens.tracing.interventions  # noqa: F401  (binds the package mmlens.tracing, not mmlens.trace)
    from mmlens.tracing.tracer import trace

    assert mmlens.trace is trace and isinstance(mmlens.trace, types.FunctionType)
    assert "images_or_loader" in inspect.signature(mmlens.trace).parameters  # what `mmlens.trace?` shows
    assert mmlens.trace_to_store.__module__ == "mmlens.tracing.tracer"
    assert mmlens.intervene.__module__ == "mmlens.tracing.interventions"
    assert isinstance(mmlens.tracing, types.ModuleType)


def test_trace_first_in_a_fresh_interpreter():
    proc = _run("import types, mmlens; f = mmlens.trace; import mmlens.tracing.decompose; "
                "print(isinstance(mmlens.trace, types.FunctionType) and mmlens.trace is f)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"
