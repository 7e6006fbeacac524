"""Kernel-free interactivity for static HTML: precomputed image frames switched by Bokeh widgets in the page."""

from __future__ import annotations

import base64
import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["frame_switcher", "frame_key", "inline_panel_stylesheets", "panel_dist_data_uri"]

_MIME = {"css": "text/css", "png": "image/png", "ico": "image/x-icon", "svg": "image/svg+xml", "woff": "font/woff",
         "woff2": "font/woff2"}

# Runs in the browser: picks the frame of the widgets' current values and swaps it into each plot.
_SWITCH_JS = """
const key = widgets.map((w) => String(w.value)).join('|');
const frame = frames[key];
if (frame === undefined) { return; }
for (let i = 0; i < targets.length; i++) {
  const [values, title, low, high] = frame[i];
  const image = targets[i].source.data.image[0];  // a BokehJS ndarray: overwrite its values in place
  for (let k = 0; k < values.length; k++) { image[k] = (values[k] === null ? NaN : values[k]); }
  targets[i].source.change.emit();
  if (targets[i].mapper !== null && low !== null && high !== null) {
    targets[i].mapper.low = low;
    targets[i].mapper.high = high;
  }
  if (targets[i].title !== null && title !== null) { targets[i].title.text = title; }
}
"""


@functools.lru_cache(maxsize=128)
def panel_dist_data_uri(relative: str) -> str | None:
    """A ``data:`` URI of a file shipped in ``panel/dist`` (``"css/markdown.css"``), or ``None``."""
    import panel

    path = Path(panel.__file__).parent / "dist" / relative.split("?")[0]
    kind = _MIME.get(path.suffix.lstrip("."))
    if kind is None or not path.is_file():
        return None
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def inline_panel_stylesheets(viewable: Any, root: Any, *_: Any) -> None:
    """A Panel preprocessing hook: point stylesheets that Panel links from its CDN at inlined copies.

    In a notebook, ``pn.extension(inline=True)`` inlines the JavaScript and most stylesheets, but
    some (theme, markdown, loading spinner) stay ``ImportedStyleSheet`` links to ``cdn.holoviz.org``
    (holoviz/panel#6759), which fail offline. The hook runs on the first render and on every
    update, so panes created later are covered too.
    """
    from bokeh.models import ImportedStyleSheet
    from panel.io.resources import CDN_DIST

    for sheet in root.select({"type": ImportedStyleSheet}):
        url = sheet.url or ""
        if url.startswith(CDN_DIST):
            inlined = panel_dist_data_uri(url[len(CDN_DIST):])
            if inlined is not None:
                sheet.url = inlined


def frame_key(values: Sequence[Any]) -> str:
    """The key of a frame as the page computes it from the widgets' values.

    Examples
    --------
    >>> frame_key(["dtd", 3])
    'dtd|3'
    """
    return "|".join(str(v) for v in values)


def frame_switcher(
    frames: Mapping[tuple[Any, ...], Sequence[Any]],
    dims: Sequence[str],
    *,
    digits: int = 4,
    ncols: int | None = None,
):
    """Bokeh figures whose image data follow selectors, with every frame embedded in the page.

    Each frame is a tuple of HoloViews elements, one per figure, each an ``hv.Image`` or an
    overlay holding exactly one ``hv.Image`` (the part that changes; pictures and outlines of
    the first frame stay). The first frame is rendered by HoloViews; the others contribute only
    their image arrays, titles and colour limits, which a small ``CustomJS`` swaps in when a
    widget moves. No kernel, server or network is needed, and the page grows by the number of
    frames times the image sizes.

    Parameters
    ----------
    frames
        ``{(value of dim 0, value of dim 1, ...): (element, element, ...)}``, all frames with
        the same number of elements of the same shapes.
    dims
        Names of the key dimensions (widget titles).
    digits
        Significant digits kept per value (bounds the page size).
    ncols
        Figures per row (default: all in one row).

    Returns
    -------
    bokeh.models.LayoutDOM
        Widgets above the figures.
    """
    import holoviews as hv
    from bokeh.layouts import column, gridplot, row
    from bokeh.models import CustomJS, Select, Slider

    if not frames:
        raise ValueError("expected at least one frame, found none")
    keys = list(frames)
    first = frames[keys[0]]
    n = len(first)
    figures, targets = [], []
    for element in first:
        fig = hv.render(element, backend="bokeh")
        renderer = _image_renderer(fig)
        figures.append(fig)
        targets.append({
            "source": renderer.data_source,
            "mapper": getattr(renderer.glyph, "color_mapper", None),
            "title": fig.title if getattr(fig, "title", None) is not None else None,
        })
    payload: dict[str, list[list[Any]]] = {}
    for key, elements in frames.items():
        if len(elements) != n:
            raise ValueError(f"frame {key} has {len(elements)} elements, the first frame has {n}; keep them equal")
        payload[frame_key(key)] = [_frame_entry(el, digits) for el in elements]

    widgets = []
    for d, name in enumerate(dims):
        values = list(dict.fromkeys(k[d] for k in keys))
        if all(isinstance(v, (int, np.integer)) for v in values) and values == list(range(values[0], values[-1] + 1)) \
                and len(values) > 1:
            widgets.append(Slider(title=name, start=values[0], end=values[-1], step=1, value=values[0], width=250))
        else:
            widgets.append(Select(title=name, options=[str(v) for v in values], value=str(values[0]), width=200))
    callback = CustomJS(args={"widgets": widgets, "targets": targets, "frames": payload}, code=_SWITCH_JS)
    for w in widgets:
        w.js_on_change("value", callback)
    grid = gridplot(figures, ncols=ncols or n, toolbar_location=None) if n > 1 else figures[0]
    return column(row(*widgets), grid)


def _image_renderer(fig: Any) -> Any:
    from bokeh.models import GlyphRenderer
    from bokeh.models.glyphs import Image

    found = [r for r in fig.select({"type": GlyphRenderer}) if isinstance(r.glyph, Image)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one hv.Image per frame element, found {len(found)} image glyphs")
    return found[0]


def _frame_entry(element: Any, digits: int) -> list[Any]:
    import holoviews as hv

    image = element
    if isinstance(element, hv.Overlay):
        images = [el for el in element if isinstance(el, hv.Image) and not isinstance(el, hv.RGB)]
        if len(images) != 1:
            raise ValueError(f"expected one hv.Image in the overlay, found {len(images)}")
        image = images[0]
    values = np.asarray(image.dimension_values(2, flat=False), dtype=np.float64)
    opts = image.opts.get().kwargs
    title = element.opts.get().kwargs.get("title") or opts.get("title")
    clim = opts.get("clim")
    low, high = (None, None) if clim is None else (_finite(clim[0]), _finite(clim[1]))
    return [_rounded(values, digits), title, low, high]


def _rounded(values: np.ndarray, digits: int) -> list[float | None]:
    """Row-major flat values (the layout of a BokehJS ndarray), NaN as ``None``."""
    return [None if not math.isfinite(v) else float(f"{v:.{digits}g}") for v in np.ravel(values)]


def _finite(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None
