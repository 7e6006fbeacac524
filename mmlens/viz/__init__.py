"""HoloViews plots and the Panel explorer of trace stores; standalone HTML reports.

>>> from mmlens.viz import explore, write_report, load_extensions   # doctest: +SKIP
>>> load_extensions()            # in a notebook: HoloViews + Panel, resources inlined   # doctest: +SKIP
>>> explore("run.zarr")          # the linked views                                      # doctest: +SKIP

Heavy modules (holoviews, panel, bokeh) load on first use.
"""

from __future__ import annotations

from mmlens._lazy import lazy_exports

_LAZY = {
    "explore": "mmlens.viz.explorer",
    "Explorer": "mmlens.viz.explorer",
    "ExplorerState": "mmlens.viz.explorer",
    "load_extensions": "mmlens.viz.explorer",
    "write_report": "mmlens.viz.report",
    "build_report": "mmlens.viz.report",
    "StoreSlices": "mmlens.viz.slices",
    "StudyView": "mmlens.viz.slices",
    "MissingData": "mmlens.viz.slices",
    "trace_image": "mmlens.viz.ondemand",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports("mmlens.viz", _LAZY, globals())
