"""The explorer's and the report's linked Bokeh views: layer, head and image moves redraw in the browser.

Everything that follows the layer and head selectors (the selected image's maps for every layer and
head, EOT attention per role for every layer and head, the heatmap outlines, the curves' layer line)
is sent to the page once per image, as float32 buffers; one ``CustomJS`` swaps the slices into the
figures. Python is only asked for new data when the image, the class or the run changes. The same
board serves the live explorer (a Python callback pushes the next image) and the standalone report
(several images embedded, switched in the page).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mmlens.store import schema
from mmlens.store.select import layer_kind_runs
from mmlens.viz._text import esc
from mmlens.viz.direct import lens_words
from mmlens.viz.slices import DIRECT_MISSING, HEAD_MEASURES, LAYER_MEASURES, MissingData, available

if TYPE_CHECKING:
    from mmlens.viz.explorer import Explorer

__all__ = ["Board", "direct_cells", "robust_limits", "mask_edges", "spearman_maps", "VARIANT_NAMES", "CAPTIONS"]

VARIANT_NAMES = {schema.PROMPTED_VARIANT: "with prompts", schema.REFERENCE_VARIANT: "without prompts"}
_VARIANT_COLOUR = {schema.PROMPTED_VARIANT: "#1f77b4", schema.REFERENCE_VARIANT: "#7f7f7f"}
_PALETTE = ["#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
_KIND_SHORT = {"injected": "inj", "carried": "car"}
_KIND_FILL = {"injected": "#fdae6b", "carried": "#9ecae1"}
#: Symbols of the measures as the colour bars and axes name them.
SYMBOL = {
    "prompt_mass": "prompt mass α",
    "bias_ratio": "‖β_h‖ / ‖(a)_h‖",
    "foreground_attention": "foreground attention FG",
    "bias_norm_ratio": "‖β‖ / ‖(a)‖",
    "bias_residual_ratio": "‖β‖ / ‖x‖",
}
_TITLE = {"foreground_attention": "foreground FG"}
_RATIOS = ("bias_ratio",)
# sizes chosen so that a 1000 px JupyterLab window shows one view per row without overflow and a
# 1400 px window three heatmaps per row (five in the report): tests/browser checks both widths
HEAT_W, HEAT_H = 240, 235
MAP_W = 200
CURVE_W, CURVE_H = 380, 260

#: One line under each panel: what it shows and how to read it.
CAPTIONS = {
    "heatmaps": ("Each cell: one layer (rows, 0 = first block) and head (columns), mean over the {items}; "
                 "FG = Σ_j f_j â_j (f_j: foreground fraction of patch j). "
                 "inj = fresh prompts injected at that layer, car = prompts carried from the layer before. "
                 "Click a cell to select its layer and head (red outline). Grey: undefined (reason in the hover); "
                 "▲: above the colour bar's top: a ratio map whose largest value exceeds 1.5 × its 98th percentile "
                 "is clipped at that percentile (exact value in the hover); other maps span their range."),
    "curves": ("Mean per layer with a 95 % percentile-bootstrap band (across what: under each title). "
               "Shaded orange: layers where prompts "
               "are injected; blue: carried. The dashed red line is the selected layer."),
    "images": ("â: where the [cls] token looks among the image patches (renormalised without prompts), "
               "with and without prompts, on one colour scale. At the first prompted block both are identical "
               "by construction (docs/math.md, consequence 1): differences come from earlier blocks. "
               "Cyan: outline of the foreground mask; FG = Σ_j f_j â_j."),
    "text": ("EOT attention over token roles (sot, prompt, word, classname, eot, pad) at the selected layer "
             "and head: left for the selected class with and without prompts, right for every class."),
}


def robust_limits(values: np.ndarray, *, ratio: bool, diverging: bool = False,
                  q: float = 98.0) -> tuple[float, float, np.ndarray]:
    """Colour limits that one outlier cannot flatten, and which cells they clip.

    Ratios (heavy upper tails: a tiny denominator makes one cell huge) are clipped at the
    ``q``-th percentile when the maximum exceeds 1.5 times it; other measures use their range.
    The heatmap caption (``CAPTIONS["heatmaps"]``) states this rule.

    Returns
    -------
    (low, high, clipped)
        ``clipped`` is a boolean mask of cells outside ``[low, high]``.

    Examples
    --------
    >>> v = np.array([1.0, 1.2, 0.9, 1.1, 500.0])
    >>> low, high, clipped = robust_limits(v, ratio=True, q=75)
    >>> float(high), clipped.tolist()
    (1.2, [False, False, False, False, True])
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0, np.zeros(values.shape, bool)
    if diverging:
        top = float(np.percentile(np.abs(finite), q)) if ratio else float(np.abs(finite).max())
        top = top or float(np.abs(finite).max()) or 1.0
        low, high = -top, top
    else:
        low, high = float(finite.min()), float(finite.max())
        if ratio:
            cap = float(np.percentile(finite, q))
            if high > 1.5 * cap and cap > low:  # a long tail: clip it, mark the clipped cells
                high = cap
        if high <= low:
            high = low + (abs(low) * 1e-6 or 1e-9)
    with np.errstate(invalid="ignore"):
        clipped = np.isfinite(values) & ((values > high) | (values < low))
    return low, high, clipped


def mask_edges(foreground: np.ndarray | None, level: float = 0.5) -> tuple[list[list[float]], list[list[float]]]:
    """Segments (Bokeh ``multi_line`` xs, ys) outlining the patches with foreground ≥ ``level``.

    Coordinates: x = column, y = rows counted from the bottom (the maps are drawn image-up).

    Examples
    --------
    >>> xs, ys = mask_edges(np.array([[1.0]]))
    >>> len(xs)   # the four sides of the single patch
    4
    """
    if foreground is None:
        return [], []
    inside = np.asarray(foreground, dtype=np.float64) >= level
    rows, cols = inside.shape
    padded = np.pad(inside, 1)
    xs: list[list[float]] = []
    ys: list[list[float]] = []
    for r in range(rows):
        for c in range(cols):
            if not inside[r, c]:
                continue
            y0, y1 = rows - r - 1, rows - r  # row 0 is the top of the picture
            if not padded[r, c + 1]:  # above
                xs.append([c, c + 1]), ys.append([y1, y1])
            if not padded[r + 2, c + 1]:  # below
                xs.append([c, c + 1]), ys.append([y0, y0])
            if not padded[r + 1, c]:  # left
                xs.append([c, c]), ys.append([y0, y1])
            if not padded[r + 1, c + 2]:  # right
                xs.append([c + 1, c + 1]), ys.append([y0, y1])
    return xs, ys


@dataclass
class ImagePayload:
    """One image's data for the page: every slot's map at every layer and head (float32, image-up)."""

    maps: np.ndarray  # (slot, layer, head, row, col)
    clim: np.ndarray  # (layer, head): top of the shared attention colour scale
    titles: list[str]  # slot-major: titles[(s * L + l) * H + h]
    picture: np.ndarray  # (H, W) uint32 RGBA, image-up (transparent when there is none)
    edges: tuple[list[list[float]], list[list[float]]]
    info: str  # HTML, data escaped


# Runs in the page. `ctx` holds the models. `images` holds a few images' payloads, one row each, keyed by
# `id` (the image index): the report embeds its images, the live explorer keeps the selected image and its
# neighbours there, so that an image move is drawn at once, in the page, like a layer or head move.
_REDRAW_JS = r"""
const nL = ctx.layers.length, nH = ctx.heads.length;
const li = Math.max(0, ctx.layers.indexOf(layer.value)), hi = Math.max(0, ctx.heads.indexOf(head.value));
// outlines of the selected cell on every heatmap
if (marker.data.x[0] !== head.value || marker.data.y[0] !== layer.value) {
  marker.data.x[0] = head.value; marker.data.y[0] = layer.value; marker.change.emit();
}
for (const span of spans) { if (span.location !== layer.value) { span.location = layer.value; } }
// the image maps
const cube = images.data;
const ids = cube.id || [];
let want = ids.length > 0 ? ids[0] : null;
if (image_select !== null) { want = Number(image_select.value); }
else if (image_slider !== null) { want = image_slider.value; }
const k = ids.indexOf(want);  // -1: not in the page yet (Python streams it, then this runs again)
if (k >= 0) {
  const maps = cube.maps[k], R = ctx.rows, C = ctx.cols, S = slot_sources.length, n = R * C;
  const key = want + ':' + li + ':' + hi;
  if (ctx.drawn !== key) {
    for (let s = 0; s < S; s++) {
      const target = slot_sources[s].data.image[0];
      const off = ((s * nL + li) * nH + hi) * n;
      for (let j = 0; j < n; j++) { target[j] = maps[off + j]; }
      slot_sources[s].change.emit();
      const note = cube.titles[k][(s * nL + li) * nH + hi];
      if (slot_titles[s].text !== note) { slot_titles[s].text = note; }
    }
    ctx.drawn = key;
  }
  // one colour scale per image (set with the image): a moving colour bar would re-lay out the page
  if (ctx.shown_image !== want) {
    const top = cube.clim[k][0];
    const high = (top > 0 && isFinite(top)) ? top : 1.0;
    if (shared_mapper.high !== high) { shared_mapper.high = high; }
    for (const ps of picture_sources) { ps.data = {image: [cube.picture[k]]}; }
    for (const es of edge_sources) { es.data = {xs: cube.edge_xs[k], ys: cube.edge_ys[k]}; }
    ctx.shown_image = want;
    // the info line depends on the image only: rewriting it would re-lay out the whole page
    if (info.text !== cube.info[k]) { info.text = cube.info[k]; }
  }
}
// EOT attention over roles: the selected class (bars) and every class (map)
if (roles !== null && roles.data.bars.length > 0) {
  const V = ctx.role_variants, K = ctx.n_roles, bars = roles.data.bars[0], grid = roles.data.grid[0];
  const Lt = ctx.text_layers, Ht = ctx.text_heads;
  const lt = Lt.indexOf(layer.value), ht = Ht.indexOf(head.value);
  // only when the layer, head or class data changed: an image move leaves these plots alone
  if (lt >= 0 && ht >= 0 && (ctx.roles_key !== lt + ':' + ht || ctx.roles_bars !== bars)) {
    ctx.roles_key = lt + ':' + ht; ctx.roles_bars = bars;
    for (let v = 0; v < V; v++) {
      const top = bar_sources[v].data.top;
      for (let r = 0; r < K; r++) { top[r] = bars[((lt * Ht.length + ht) * V + v) * K + r]; }
      bar_sources[v].change.emit();
    }
    const target = grid_source.data.image[0], n = ctx.n_classes * K;
    const off = (lt * Ht.length + ht) * n;
    for (let j = 0; j < n; j++) { target[j] = grid[off + j]; }
    grid_source.change.emit();
    roles_title.text = 'layer ' + layer.value + ', head ' + head.value;
  }
}
"""

_TAP_JS = r"""
const x = cb_obj.x, y = cb_obj.y;
const h = Math.round(x), l = Math.round(y);
if (ctx.heads.includes(h) && ctx.layers.includes(l)) {
  if (head.value !== h) { head.value = h; }
  if (layer.value !== l) { layer.value = l; }
}
"""


class Board:
    """The Bokeh models of the linked views of one explorer selection (one method's store).

    Parameters
    ----------
    app
        The explorer whose state and store are shown.
    live
        ``True`` in the explorer: the image slider asks Python for the next image. ``False`` in a
        report: ``images`` are embedded and switched in the page.
    images
        Images embedded in a report (default: the selected one).
    """

    def __init__(self, app: Explorer, *, live: bool = True, images: Sequence[int] | None = None) -> None:
        from bokeh.models import CustomJS, Div, Select, Slider

        self.app = app
        self.live = live
        view, state = app.view, app.state
        self.layers = sorted(set(view.layers("vision")) | set(view.layers("text"))) or [0]
        self.heads = sorted(set(view.heads("vision")) | set(view.heads("text"))) or [0]
        self.kinds = view.layer_kinds("vision") or view.layer_kinds("text")
        self.slots = app.image_slots()
        self.rows, self.cols = app._grid_shape()
        self._syncing = False
        self._payloads: dict[int, ImagePayload] = {}
        self._sent: list[int] | None = None  # image ids in the page, in the order the page holds them
        width = 185  # the explorer's sidebar is 205 px wide
        self.layer = Slider(title="layer", start=self.layers[0], end=max(self.layers[-1], self.layers[0] + 1),
                            step=1, value=state.layer if state.layer is not None else self.layers[0], width=width,
                            css_classes=["mmlens-layer"], disabled=len(self.layers) < 2)
        self.head = Slider(title="head", start=self.heads[0], end=max(self.heads[-1], self.heads[0] + 1), step=1,
                           value=state.head if state.head is not None else self.heads[0], width=width,
                           css_classes=["mmlens-head"], disabled=len(self.heads) < 2)
        self.image_slider = None
        self.image_select = None
        embedded = list(images) if images is not None else [state.image]
        self.embedded = embedded
        if live and view.images:
            lo, hi = min(view.images), max(view.images)
            self.image_slider = Slider(title="image", start=lo, end=max(hi, lo + 1), step=1, value=state.image,
                                       width=width, css_classes=["mmlens-image"], disabled=hi == lo)
        elif not live and len(embedded) > 1:
            self.image_select = Select(title="image", options=[str(i) for i in embedded], value=str(embedded[0]),
                                       width=120, css_classes=["mmlens-image"])
        # a fixed box: the line wraps inside it and never widens the page (it fits a 1000 px window)
        # the box never grows (a long path is cut off; the hover-free text is still in the page), so a
        # new image's line neither re-flows the page nor overlaps the controls below it
        self.info = Div(text="", css_classes=["mmlens-info"], width=320 if live else 640, height=64,
                        styles={"overflow": "hidden"})
        self.ctx: dict[str, Any] = {
            "layers": self.layers, "heads": self.heads, "rows": self.rows, "cols": self.cols, "shown_image": -1,
            "kinds": [_KIND_SHORT.get(self.kinds.get(ell, ""), "") and
                      ("prompts " + self.kinds[ell]) for ell in self.layers],
        }
        self._build_heatmaps()
        self._build_curves()
        self._build_images()
        self._build_text()
        self._build_direct()  # what the prompts learn: β's direct effect on the margin (mmlens.viz.direct)
        args = {
            "ctx": self.ctx, "layer": self.layer, "head": self.head, "image_select": self.image_select,
            "image_slider": self.image_slider, "marker": self.marker, "spans": self.spans, "images": self.image_source,
            "slot_sources": self.slot_sources, "slot_titles": self.slot_titles, "shared_mapper": self.shared_mapper,
            "picture_sources": self.picture_sources, "edge_sources": self.edge_sources, "info": self.info,
            "roles": self.roles_source, "bar_sources": self.bar_sources, "grid_source": self.grid_source,
            "roles_title": self.roles_title,
        }
        self.redraw = CustomJS(args=args, code=_REDRAW_JS)
        self.layer.js_on_change("value", self.redraw)
        self.head.js_on_change("value", self.redraw)
        self.image_source.js_on_change("data", self.redraw)
        self.image_source.js_on_change("streaming", self.redraw)
        if self.image_slider is not None:  # drawn in the page when the image is there already
            self.image_slider.js_on_change("value", self.redraw)
        if self.roles_source is not None:
            self.roles_source.js_on_change("data", self.redraw)
        if self.image_select is not None:
            self.image_select.js_on_change("value", self.redraw)
        tap = CustomJS(args={"ctx": self.ctx, "layer": self.layer, "head": self.head}, code=_TAP_JS)
        for fig in self.heat_figures:
            fig.js_on_event("tap", tap)
        self.push_image()
        self.push_roles()
        if live:
            self.layer.on_change("value", self._from_page("layer"))
            self.head.on_change("value", self._from_page("head"))
            if self.image_slider is not None:
                self.image_slider.on_change("value", self._from_page("image"))

    # ------------------------------------------------------------------------------------------
    # Python <-> page
    # ------------------------------------------------------------------------------------------

    def _from_page(self, name: str):
        def callback(_attr: str, _old: Any, new: Any) -> None:
            if self._syncing:
                return
            self._syncing = True
            try:
                setattr(self.app.state, name, int(new))
            finally:
                self._syncing = False
        return callback

    def follow(self, name: str, value: Any) -> None:
        """The state changed in Python (``state.layer = 3``): move the page's widget, or push new data."""
        if name in ("layer", "head"):
            widget = self.layer if name == "layer" else self.head
            if not self._syncing and widget.value != value:
                self._syncing = True
                try:
                    widget.value = value
                finally:
                    self._syncing = False
        elif name == "image":
            if self.image_slider is not None and self.image_slider.value != value and not self._syncing:
                self._syncing = True
                try:
                    self.image_slider.value = value
                finally:
                    self._syncing = False
            self.push_image()
            if self.app.state.direct_images == "selected image":
                self.push_direct()
        elif name == "class_":
            self.push_roles()
            if self.app.state.direct_images == "selected class":
                self.push_direct()
        elif name == "direct_images":
            self.push_direct()

    #: Images kept in the page by the live explorer: the selected one and its neighbours.
    NEIGHBOURS = 2
    KEEP = 8

    def _window(self, image: int) -> list[int]:
        """The selected image first, then its neighbours in the store's order (nearest first)."""
        images = list(self.app.view.images) or [image]
        i = images.index(image) if image in images else 0
        order = [i] + [j for d in range(1, self.NEIGHBOURS + 1) for j in (i + d, i - d)]
        return [images[j] for j in order if 0 <= j < len(images)]

    def _columns(self, images: Sequence[int]) -> dict[str, list[Any]]:
        payloads = [self._payload(image) for image in images]
        return {
            "id": [int(i) for i in images],
            "maps": [p.maps.ravel() for p in payloads],
            "clim": [p.clim.ravel() for p in payloads],
            "titles": [p.titles for p in payloads],
            "picture": [p.picture for p in payloads],
            "edge_xs": [p.edges[0] for p in payloads],
            "edge_ys": [p.edges[1] for p in payloads],
            "info": [p.info for p in payloads],
        }

    def _payload(self, image: int) -> ImagePayload:
        cache = self._payloads
        if image not in cache:
            cache[image] = self.image_payload(image)
            if len(cache) > 2 * self.KEEP:
                cache.pop(next(iter(cache)))
        return cache[image]

    def push_image(self) -> None:
        """Make sure the page holds the selected image (and, live, its neighbours), one binary row per image.

        The report embeds its images once. The live explorer keeps the selected image and its
        ``NEIGHBOURS`` on each side in the page (streamed, the oldest rolled out beyond ``KEEP``):
        an image slider move is then drawn by the page at once, and Python sends the next
        neighbour afterwards.
        """
        if not self.slots:
            return
        state = self.app.state
        if not self.live:
            self.image_source.data = self._columns(self.embedded)
            self._sent = list(self.embedded)
            self._first_paint(self.embedded[0])
            return
        sent = self._sent
        if sent is None:  # the first push: the selected image painted from Python (a saved page shows it)
            window = self._window(state.image)
            self.image_source.data = self._columns(window)
            self._sent = window
            self._first_paint(state.image)
            return
        missing = [i for i in self._window(state.image) if i not in sent]
        if missing:
            self.image_source.stream(self._columns(missing), rollover=self.KEEP)
            self._sent = (sent + missing)[-self.KEEP:]

    def _first_paint(self, image: int) -> None:
        """Fill the figures from Python, so that a saved page (no JavaScript event yet) shows ``image``."""
        first = self._payload(image)
        li, hi = self._indices()
        n_layers, n_heads = len(self.layers), len(self.heads)
        for s, src in enumerate(self.slot_sources):
            src.data = {"image": [first.maps[s, li, hi].copy()]}
            self.slot_titles[s].text = first.titles[(s * n_layers + li) * n_heads + hi]
        top = float(first.clim.ravel()[0])
        self.shared_mapper.high = top if top > 0 and math.isfinite(top) else 1.0
        for ps in self.picture_sources:
            ps.data = {"image": [first.picture]}
        for es in self.edge_sources:
            es.data = {"xs": first.edges[0], "ys": first.edges[1]}
        self.info.text = first.info
        self.ctx["shown_image"] = int(image)

    def _indices(self) -> tuple[int, int]:
        layer, head = self.layer.value, self.head.value
        return (self.layers.index(layer) if layer in self.layers else 0,
                self.heads.index(head) if head in self.heads else 0)

    # ------------------------------------------------------------------------------------------
    # heatmaps
    # ------------------------------------------------------------------------------------------

    def _build_heatmaps(self) -> None:
        from bokeh.models import ColumnDataSource

        self.marker = ColumnDataSource({"x": [self.head.value], "y": [self.layer.value]})
        self.heat_figures: list[Any] = []
        self.heat_panes: dict[str, list[Any]] = {}
        self.heat_notes: dict[str, str] = {}
        view = self.app.view
        for tower in ("vision", "text"):
            if tower not in view.groups:
                self.heat_notes[tower] = f"this store has no '{tower}' group"
                continue
            measures = available(view, tower, HEAD_MEASURES)
            missing = [f"{HEAD_MEASURES[m][0]} (needs {', '.join(HEAD_MEASURES[m][1])})" for m in HEAD_MEASURES
                       if m not in measures and not (m == "foreground_attention" and tower != "vision")]
            self.heat_panes[tower] = [self._heatmap(tower, m) for m in measures]
            if missing:
                self.heat_notes[tower] = f"{tower}: not in this store: {'; '.join(missing)}"

    def heatmap_cells(self, tower: str, measure: str) -> dict[str, Any]:
        """The cells one heatmap draws: values, shown colours, clipping and the reason for NaN."""
        app, state = self.app, self.app.state
        layers, heads = app.view.layers(tower), app.view.heads(tower)
        notes = np.full((len(layers), len(heads)), "", dtype=object)
        try:
            values = np.asarray(app.heatmap_data(tower, measure).transpose("layer", "head").values, float)
        except MissingData as err:
            values = np.full((len(layers), len(heads)), np.nan)
            notes[:] = str(err)
        if measure == "bias_ratio" and np.isfinite(values).any():
            den = app.view.head_denominator(tower, state.dataset, state.seed, state.variant)
            tiny = den < 1e-3 * np.nanmedian(den[den > 0]) if (den > 0).any() else np.ones_like(den, bool)
            values = np.where(tiny, np.nan, values)
            for i, j in zip(*np.where(tiny)):
                notes[i, j] = f"‖(a)_h‖ ≈ 0 for this head (mean {den[i, j]:.2g}): the ratio is undefined"
        low, high, clipped = robust_limits(values, ratio=measure in _RATIOS, diverging=state.minus_reference)
        for (i, j) in zip(*np.where(~np.isfinite(values) & (notes == ""))):
            notes[i, j] = "no value (NaN): no image/class with a defined value here"
        kinds = app.view.layer_kinds(tower)
        L, H = np.meshgrid(layers, heads, indexing="ij")
        return {
            "layer": L.ravel().tolist(), "head": H.ravel().tolist(),
            "value": values.ravel(), "shown": np.clip(values, low, high).ravel(),
            "hatch": np.where(clipped, "x", " ").ravel().tolist(), "note": notes.ravel().tolist(),
            "kind": [kinds.get(int(ell), "") for ell in L.ravel()],
            "_clim": (low, high), "_clipped": int(clipped.sum()),
        }

    def _heatmap(self, tower: str, measure: str):
        from bokeh.models import ColorBar, ColumnDataSource, HoverTool, LinearColorMapper
        from bokeh.plotting import figure

        state = self.app.state
        cells = self.heatmap_cells(tower, measure)
        low, high = cells.pop("_clim")
        n_clipped = cells.pop("_clipped")
        source = ColumnDataSource(cells)
        diverging = state.minus_reference
        palette = _palette("RdBu11" if diverging else "Viridis256", reverse=diverging)
        mapper = LinearColorMapper(palette=palette, low=low, high=high, nan_color="#d9d9d9")
        layers, heads = self.app.view.layers(tower), self.app.view.heads(tower)
        symbol = SYMBOL[measure]
        # titles fit the figure's width; the colour bar and the hover give the full symbol
        title = f"{tower}: {_TITLE.get(measure, symbol)}" + (" (with − without)" if diverging else "")
        fig = figure(width=HEAT_W, height=HEAT_H, title=title, toolbar_location=None, tools="tap",
                     css_classes=["mmlens-heat"],
                     x_range=(min(heads) - 0.5, max(heads) + 0.5), y_range=(min(layers) - 0.5, max(layers) + 0.5),
                     x_axis_label="head", y_axis_label="layer")
        cells_r = fig.rect("head", "layer", 1, 1, source=source, line_color=None,
                           fill_color={"field": "shown", "transform": mapper})
        clipped = {k: [v for v, h in zip(cells[k], cells["hatch"]) if h == "x"] for k in ("head", "layer")}
        if clipped["head"]:  # cells above the colour bar's top: a white triangle (exact value in the hover)
            fig.scatter(clipped["head"], clipped["layer"], marker="triangle", size=7, color="white",
                        line_color="black")
        fig.rect("x", "y", 1, 1, source=self.marker, fill_alpha=0, line_color="red", line_width=3)
        fig.add_tools(HoverTool(renderers=[cells_r], tooltips=[
            ("layer", "@layer (@kind)"), ("head", "@head"), (symbol, "@value{0.0000}"), ("", "@note")]))
        fig.xaxis.ticker = heads
        self._layer_head_axes(fig, tower, layers)
        bar_title = symbol + (" ▲ clipped" if n_clipped else "")
        fig.add_layout(ColorBar(color_mapper=mapper, title=bar_title, title_text_font_size="9pt",
                                width=10, padding=3, title_standoff=4, label_standoff=4), "right")
        self.heat_figures.append(fig)
        return fig

    # ------------------------------------------------------------------------------------------
    # curves
    # ------------------------------------------------------------------------------------------

    def _layer_head_axes(self, fig: Any, tower: str, layers: Sequence[int]) -> None:
        """Layers on the y axis labelled with their kind (injected / carried), as every layer x head map has them."""
        fig.yaxis.ticker = layers
        kinds = self.app.view.layer_kinds(tower)
        fig.yaxis.major_label_overrides = {int(ell): f"{ell} {_KIND_SHORT.get(kinds.get(ell, ''), '')}".strip()
                                           for ell in layers}
        fig.grid.visible = False
        fig.title.text_font_size = "11pt"

    def _build_curves(self) -> None:
        self.spans: list[Any] = []
        self.curve_figures: list[Any] = []
        self.curve_units: str = ""
        view = self.app.view
        for tower in ("vision", "text"):
            if tower not in view.groups or self.app.state.curve_measure not in available(view, tower,
                                                                                         LAYER_MEASURES):
                continue
            self.curve_figures.append(self._curves(tower))

    def _curves(self, tower: str):
        from bokeh.models import BoxAnnotation, ColumnDataSource, HoverTool, Legend, LegendItem, Span, Title
        from bokeh.plotting import figure

        app = self.app
        measure = app.state.curve_measure
        try:
            curves = app.curve_data(tower)
            note = ""
        except MissingData as err:
            curves, note = app._blank_curves(tower), str(err)
        layers = [int(v) for v in curves["layer"].values]
        units, n = str(curves.attrs.get("units", "")), curves.attrs.get("n_units", "")
        across = _across(units, n)
        self.curve_units = across
        fig = figure(width=CURVE_W, height=CURVE_H, toolbar_location=None, tools="",
                     title=f"{tower}: {SYMBOL.get(measure, measure)}",
                     x_axis_label="layer", y_axis_label=SYMBOL.get(measure, measure))
        if across:
            fig.add_layout(Title(text=f"mean and 95 % band across {across}", text_font_size="9pt",
                                 text_font_style="normal", text_color="#555"), "above")
        for lo, hi, kind in layer_kind_runs(app.view.layer_kinds(tower)):
            if kind in _KIND_FILL:
                fig.add_layout(BoxAnnotation(left=lo - 0.5, right=hi + 0.5, fill_color=_KIND_FILL[kind],
                                             fill_alpha=0.3, level="underlay"))
        items = []
        extra = iter(_PALETTE)
        hover_lines = []
        for variant in (str(v) for v in curves["variant"].values):
            sel = curves.sel(variant=variant)
            colour = _VARIANT_COLOUR.get(variant) or next(extra, "#333333")
            src = ColumnDataSource({"layer": layers, "mean": np.asarray(sel["mean"].values, float),
                                    "lower": np.asarray(sel["lower"].values, float),
                                    "upper": np.asarray(sel["upper"].values, float),
                                    "variant": [VARIANT_NAMES.get(variant, variant)] * len(layers)})
            band = fig.varea("layer", "lower", "upper", source=src, fill_color=colour, fill_alpha=0.2)
            line = fig.line("layer", "mean", source=src, line_color=colour, line_width=2)
            dots = fig.scatter("layer", "mean", source=src, color=colour, size=4)
            hover_lines.append(dots)
            items.append(LegendItem(label=VARIANT_NAMES.get(variant, variant), renderers=[line, band, dots]))
        fig.add_tools(HoverTool(renderers=hover_lines, tooltips=[
            ("", "@variant"), ("layer", "@layer"), ("mean", "@mean{0.0000}"),
            ("95 % band", "@lower{0.0000} – @upper{0.0000}")]))
        # the legend sits below the plot: it can never cover the end of a curve
        fig.add_layout(Legend(items=items, orientation="horizontal", location="center", click_policy="hide",
                              label_text_font_size="9pt", spacing=12), "below")
        span = Span(location=self.layer.value, dimension="height", line_color="red", line_dash="dashed", line_width=2)
        fig.add_layout(span)
        self.spans.append(span)
        fig.xaxis.ticker = layers
        kinds = app.view.layer_kinds(tower)
        fig.xaxis.major_label_overrides = {ell: f"{ell}" + ("·" + _KIND_SHORT[kinds[ell]] if kinds.get(ell) in
                                                            _KIND_SHORT and len(layers) <= 8 else "")
                                           for ell in layers}
        fig.title.text_font_size = "11pt"
        if note:
            fig.title.text = f"{tower}: {note[:60]}"
        return fig

    # ------------------------------------------------------------------------------------------
    # the selected image
    # ------------------------------------------------------------------------------------------

    def _build_images(self) -> None:
        from bokeh.models import ColorBar, ColumnDataSource, HoverTool, Label, LinearColorMapper
        from bokeh.plotting import figure

        self.image_source = ColumnDataSource({k: [] for k in ("id", "maps", "clim", "titles", "picture",
                                                              "edge_xs", "edge_ys", "info")})
        self.shared_mapper = LinearColorMapper(palette=_palette("Inferno256"), low=0.0, high=1.0,
                                               nan_color=(0, 0, 0, 0))
        mask_mapper = LinearColorMapper(palette=_palette("Greys256"), low=0.0, high=1.0)
        self.slot_sources: list[Any] = []
        self.slot_titles: list[Any] = []
        self.picture_sources: list[Any] = []
        self.edge_sources: list[Any] = []
        self.image_figures: list[Any] = []
        R, C = self.rows, self.cols
        blank = np.zeros((R, C), np.float32)
        has_picture = self.app.pictures is not None or self.app.data_root is not None or self._paths_are_files()
        for s, slot in enumerate(self.slots):
            is_mask = slot == "mask"
            fig = figure(width=MAP_W + (70 if s == len(self.slots) - 1 or is_mask else 0), height=MAP_W + 20,
                         toolbar_location=None, tools="", x_range=(0, C), y_range=(0, R), match_aspect=True,
                         title=slot, css_classes=["mmlens-map", "mmlens-map-" + slot.replace(":", "-")])
            fig.axis.visible = False
            fig.grid.visible = False
            picture = ColumnDataSource({"image": [np.zeros((1, 1), np.uint32)]})
            fig.image_rgba("image", x=0, y=0, dw=C, dh=R, source=picture)
            self.picture_sources.append(picture)
            src = ColumnDataSource({"image": [blank.copy()]})
            mapper = mask_mapper if is_mask else self.shared_mapper
            glyph = fig.image("image", x=0, y=0, dw=C, dh=R, source=src, color_mapper=mapper,
                              global_alpha=0.55 if has_picture else 1.0)
            quantity = "foreground fraction f_j" if is_mask else (
                "attribution share |m_j| / Σ|m|" if slot.startswith("attribution:") else "â_j")
            fig.add_tools(HoverTool(renderers=[glyph], tooltips=[("patch (col, row)", "$x{0}, $y{0}"),
                                                                 (quantity, "@image{0.0000}")]))
            edges = ColumnDataSource({"xs": [], "ys": []})
            fig.multi_line("xs", "ys", source=edges, line_color="cyan", line_width=2)
            self.edge_sources.append(edges)
            if is_mask:
                fig.add_layout(ColorBar(color_mapper=mask_mapper, title="f_j", width=10, padding=3), "right")
            elif s == max(i for i, sl in enumerate(self.slots) if sl != "mask"):
                # one colour bar for every attention / attribution map: they share the scale
                fig.add_layout(ColorBar(color_mapper=self.shared_mapper, title="â_j, shared (top: 99.5 %ile)", width=10,
                                        padding=3), "right")
            fig.title.text_font_size = "10pt"
            fig.title.text = _slot_title(slot)
            # numbers that follow layer/head go in a label: a title change would re-lay out the page
            note = Label(x=4, y=4, x_units="screen", y_units="screen", text="", text_font_size="9pt",
                         background_fill_color="white", background_fill_alpha=0.8, text_color="#222")
            fig.add_layout(note)
            self.slot_sources.append(src)
            self.slot_titles.append(note)
            self.image_figures.append(fig)

    def _paths_are_files(self) -> bool:
        return False

    def image_payload(self, image: int) -> ImagePayload:
        """Every slot's map of ``image`` at every layer and head, their titles, the picture and the info line."""
        app, state, view = self.app, self.app.state, self.app.view
        block = view.image_block(state.dataset, state.seed, image)
        R, C = self.rows, self.cols
        nl, nh = len(self.layers), len(self.heads)
        maps = np.full((len(self.slots), nl, nh, R, C), np.nan, np.float32)
        titles: list[str] = []
        att = block.get("attention")
        fg = block.get("foreground")
        prompted = None
        fg_values: dict[str, np.ndarray] = {}
        for s, slot in enumerate(self.slots):
            if slot == "mask":
                if fg is not None:
                    maps[s] = fg[None, None, ::-1]
            elif slot.startswith("attribution:"):
                amap = block.get("attribution", {}).get(slot.split(":", 1)[1])
                if isinstance(amap, dict):
                    for ell, m in amap.items():
                        if ell in self.layers:
                            maps[s, self.layers.index(ell)] = _share(m)[None, ::-1]
                elif amap is not None:
                    maps[s] = _share(amap)[None, None, ::-1]
            elif att is not None and slot in att["variants"]:
                values = att["values"][att["variants"].index(slot)]  # (layer, head, R, C)
                for a, ell in enumerate(att["layers"]):
                    for b, h in enumerate(att["heads"]):
                        if ell in self.layers and h in self.heads:
                            maps[s, self.layers.index(ell), self.heads.index(h)] = values[a, b, ::-1]
                if slot == (view.prompted_variant or slot) and prompted is None:
                    prompted = s
                if fg is not None:
                    fg_values[slot] = np.nansum(maps[s] * fg[::-1], axis=(-2, -1))
        attention_slots = [s for s, sl in enumerate(self.slots) if sl != "mask"]
        # one scale for every layer and head of this image: its 99.5th percentile (a few peak patches
        # saturate, the hover gives their exact value), so that maps compare across layers too
        values = maps[attention_slots]
        finite = values[np.isfinite(values)]
        top = float(np.percentile(finite, 99.5)) if finite.size else 1.0
        clim = np.full((nl, nh), top if top > 0 else 1.0, np.float32)
        variants = [sl for sl in self.slots if sl in VARIANT_NAMES or (att is not None and sl in att["variants"])]
        same = None
        if len(variants) >= 2:
            a, b = maps[self.slots.index(variants[0])], maps[self.slots.index(variants[1])]
            same = np.all(np.isclose(a, b, atol=1e-6) | (np.isnan(a) & np.isnan(b)), axis=(-2, -1))
        for s, slot in enumerate(self.slots):
            cells = np.full((nl, nh), "", dtype=object)
            if slot == "mask":
                cells[:] = "" if fg is not None else "no mask for this image"
            elif slot.startswith("attribution:"):
                if prompted is not None:
                    rho = spearman_maps(maps[s], maps[prompted])
                    ok = np.isfinite(rho)
                    cells[ok] = [f"Spearman ρ with â: {r:.2f}" for r in rho[ok]]
            else:
                parts = np.full((nl, nh), "", dtype=object)
                if slot in fg_values:
                    parts = np.array([f"FG {v:.3f}" for v in fg_values[slot].ravel()], dtype=object).reshape(nl, nh)
                if same is not None and slot in variants[:2]:
                    label = np.where(np.arange(nl)[:, None] == 0, "identical by construction", "identical")
                    joined = np.where(parts == "", label, parts + " · " + label)
                    parts = np.where(same, joined, parts)
                cells = parts
            titles.extend(str(t) for t in cells.ravel())
        picture = app.picture_of(state.dataset, image, block.get("path"))
        info = view.image_info(state.dataset, image)
        words = f"<b>image {image}</b> of {esc(state.dataset)}"
        if info["label"] is not None:
            words += f": class {info['label']} <i>{esc(info['classname'])}</i>"
        if info["split"]:
            words += f" ({esc(info['split'])})"
        if info["path"]:
            words += f" · <code>{esc(info['path'])}</code>"
        if block.get("messages"):
            words += " · <i>" + esc("; ".join(block["messages"])) + "</i>"
        return ImagePayload(maps=maps, clim=clim, titles=titles, picture=_rgba(picture, (R, C)),
                            edges=mask_edges(fg), info=words)

    # ------------------------------------------------------------------------------------------
    # text tower: EOT attention over roles
    # ------------------------------------------------------------------------------------------

    def _build_text(self) -> None:
        from bokeh.models import (
            ColorBar,
            ColumnDataSource,
            FactorRange,
            HoverTool,
            Label,
            Legend,
            LegendItem,
            LinearColorMapper,
        )
        from bokeh.plotting import figure
        from bokeh.transform import dodge

        self.roles_source = None
        self.bar_sources: list[Any] = []
        self.grid_source = None
        self.roles_title = None
        self.text_figures: list[Any] = []
        view = self.app.view
        if not view.has("text", "attention_by_role"):
            return
        ds = view.groups["text"]
        roles = [str(r) for r in ds["key_role"].values]
        variants = [v for v in (view.prompted_variant, view.reference_variant) if v and v in
                    [str(x) for x in ds["variant"].values]] or [str(ds["variant"].values[0])]
        self.role_names, self.role_variants = roles, variants
        self.ctx.update({"role_variants": len(variants), "n_roles": len(roles),
                         "text_layers": view.layers("text"), "text_heads": view.heads("text")})
        self.roles_source = ColumnDataSource({"bars": [], "grid": []})
        fig = figure(width=CURVE_W, height=CURVE_H + 20, x_range=FactorRange(*roles), y_range=(0, 1),
                     toolbar_location=None, tools="", title="EOT attention", y_axis_label="EOT attention a",
                     x_axis_label="key role")
        width = 0.8 / len(variants)
        items = []
        for v, variant in enumerate(variants):
            src = ColumnDataSource({"role": roles, "top": np.zeros(len(roles)),
                                    "variant": [VARIANT_NAMES.get(variant, variant)] * len(roles)})
            offset = (v - (len(variants) - 1) / 2) * width
            r = fig.vbar(x=dodge("role", offset, range=fig.x_range), top="top", width=width * 0.95, source=src,
                         color=_VARIANT_COLOUR.get(variant, _PALETTE[v % len(_PALETTE)]))
            items.append(LegendItem(label=VARIANT_NAMES.get(variant, variant), renderers=[r]))
            self.bar_sources.append(src)
        fig.add_tools(HoverTool(tooltips=[("", "@variant"), ("role", "@role"), ("attention", "@top{0.0000}")]))
        fig.add_layout(Legend(items=items, orientation="horizontal", location="center",
                              label_text_font_size="9pt"), "below")
        fig.xgrid.visible = False
        fig.title.text_font_size = "11pt"
        self.roles_title = Label(x=-4, y=-4, x_units="screen", y_units="screen", text="", text_font_size="9pt",
                                 text_color="#444", text_align="right", text_baseline="top")
        self.roles_title.x, self.roles_title.y = CURVE_W - 60, CURVE_H - 60
        fig.add_layout(self.roles_title)
        self.roles_figure = fig
        self.text_figures.append(fig)
        # every class: a class x role map
        names = list(self.app.state.param["class_"].names) or ["?"]
        n_classes = int(ds.sizes["class"])
        self.ctx["n_classes"] = n_classes
        self.grid_source = ColumnDataSource({"image": [np.zeros((n_classes, len(roles)), np.float32)]})
        mapper = LinearColorMapper(palette=_palette("Viridis256"), low=0.0, high=1.0)
        height = int(min(640, 110 + 14 * min(n_classes, 40)))
        grid = figure(width=CURVE_W, height=height, toolbar_location=None, tools="",
                      x_range=(-0.5, len(roles) - 0.5), y_range=(-0.5, n_classes - 0.5),
                      title=f"every class ({VARIANT_NAMES.get(self.app.state.variant, self.app.state.variant)})",
                      x_axis_label="key role")
        g = grid.image("image", x=-0.5, y=-0.5, dw=len(roles), dh=n_classes, source=self.grid_source,
                       color_mapper=mapper)
        grid.add_tools(HoverTool(renderers=[g], tooltips=[("role, class row", "$x{0}, $y{0}"),
                                                          ("EOT attention", "@image{0.0000}")]))
        grid.xaxis.ticker = list(range(len(roles)))
        grid.xaxis.major_label_overrides = dict(enumerate(roles))
        grid.xaxis.major_label_orientation = 0.6
        step = max(1, math.ceil(n_classes / 40))
        ticks = list(range(0, n_classes, step))
        grid.yaxis.ticker = [n_classes - 1 - k for k in ticks]
        grid.yaxis.major_label_overrides = {n_classes - 1 - k: _short(names[k].split(": ", 1)[-1], 22)
                                            if k < len(names) else str(k) for k in ticks}
        grid.yaxis.major_label_text_font_size = "8pt"
        grid.add_layout(ColorBar(color_mapper=mapper, title="a", width=10, padding=3), "right")
        grid.title.text_font_size = "11pt"
        self.text_figures.append(grid)

    def push_roles(self) -> None:
        """Send EOT attention per role for every layer and head (selected class and every class)."""
        if self.roles_source is None:
            return
        state, view = self.app.state, self.app.view
        try:
            cube = view.text_roles_cube(state.dataset, state.seed)  # (variant, class, layer, head, role)
        except MissingData:
            return
        cube = cube.sel(key_role=self.role_names)
        klass = state.class_ if state.class_ is not None else int(cube["class"].values[0])
        bars = cube.sel(variant=self.role_variants).sel({"class": klass})  # (variant, layer, head, role)
        bars = np.asarray(bars.transpose("layer", "head", "variant", "key_role").values, np.float32)
        variant = state.variant if state.variant in cube["variant"].values else self.role_variants[0]
        grid = cube.sel(variant=variant).transpose("layer", "head", "class", "key_role").values
        grid = np.asarray(grid[:, :, ::-1, :], np.float32)  # first class at the top
        name = next((k for k, v in state.param["class_"].names.items() if v == klass), str(klass))
        self.ctx["class_label"] = _short(name.split(": ", 1)[-1], 28)
        self.roles_source.data = {"bars": [bars.ravel()], "grid": [grid.ravel()]}
        lt = view.layers("text").index(self.layer.value) if self.layer.value in view.layers("text") else 0
        ht = view.heads("text").index(self.head.value) if self.head.value in view.heads("text") else 0
        for v, src in enumerate(self.bar_sources):
            src.data = {**src.data, "top": bars[lt, ht, v].astype(float)}
        self.grid_source.data = {"image": [grid[lt, ht].copy()]}
        self.roles_title.text = f"layer {self.layer.value}, head {self.head.value}"
        self.roles_figure.title.text = f"EOT attention of {self.ctx['class_label']}"


    # ------------------------------------------------------------------------------------------
    # what the prompts learn: β's direct effect on the margin (the section is mmlens.viz.direct's)
    # ------------------------------------------------------------------------------------------

    def _build_direct(self) -> None:
        """β's direct effect on the margin, both towers (``direct_figures``), or ``direct_note`` saying why not."""
        self.direct_figures = []
        self.direct_sources = {}
        self.direct_mappers = {}
        self.direct_labels = {}
        self.direct_note = None
        app = self.app
        if "direct" not in app.view.groups:
            self.direct_note = DIRECT_MISSING
            return
        notes = []
        for tower in ("vision", "text"):
            try:
                fig = self._direct_figure(tower)
            except MissingData as err:
                notes.append(str(err))
                continue
            self.direct_figures.append(fig)
            self.heat_figures.append(fig)  # a click on a cell selects its layer and head, as on the other maps
        if notes:
            self.direct_note = "; ".join(notes)

    def _direct_figure(self, tower: str) -> Any:
        from bokeh.models import ColorBar, ColumnDataSource, HoverTool, LinearColorMapper, Title
        from bokeh.plotting import figure

        cells = direct_cells(self.app, tower)
        low, high = cells.pop("_clim")
        n, per_head = cells.pop("_n"), cells.pop("_per_head")
        layers, heads = sorted(set(cells["layer"])), sorted(set(cells["head"]))
        source = ColumnDataSource(cells)
        # blue below 0, red above: red cells push the margin towards the image's class
        mapper = LinearColorMapper(palette=_palette("RdBu11"), low=low, high=high, nan_color="#d9d9d9")
        fig = figure(width=HEAT_W if per_head else 150 + 40, height=HEAT_H, title=f"{tower}: β → margin",
                     toolbar_location=None, tools="tap", css_classes=["mmlens-direct", f"mmlens-direct-{tower}"],
                     x_range=(min(heads) - 0.5, max(heads) + 0.5), y_range=(min(layers) - 0.5, max(layers) + 0.5),
                     x_axis_label="head" if per_head else "learned b", y_axis_label="layer")
        rects = fig.rect("head", "layer", 1, 1, source=source, line_color=None,
                         fill_color={"field": "shown", "transform": mapper})
        if per_head:
            fig.rect("x", "y", 1, 1, source=self.marker, fill_alpha=0, line_color="black", line_width=3)
        fig.add_tools(HoverTool(renderers=[rects], tooltips=[
            ("layer", "@layer (@kind)"), ("head", "@head"), ("direct effect on the margin", "@value{0.0000}"),
            ("95 % interval", "@ci"), ("text lens", "@lens"), ("", "@note")]))
        fig.xaxis.ticker = heads
        fig.xaxis.major_label_overrides = {} if per_head else {-1: "b"}
        self._layer_head_axes(fig, tower, layers)
        fig.add_layout(ColorBar(color_mapper=mapper, title="Δ margin (logit)", title_text_font_size="9pt", width=10,
                                padding=3, title_standoff=4, label_standoff=4), "right")
        # how many images the map averages, under the plot (it changes with the class or image, never with the
        # layer or head: those moves stay free of page re-layouts)
        label = Title(text=_count(n), text_font_size="9pt", text_font_style="normal", text_color="#555")
        fig.add_layout(label, "below")
        self.direct_sources[tower] = source
        self.direct_mappers[tower] = mapper
        self.direct_labels[tower] = label
        return fig

    def push_direct(self) -> None:
        """Redraw the direct-effects heatmaps for the current selection (class, image or scope changed)."""
        for tower, source in self.direct_sources.items():
            try:
                cells = direct_cells(self.app, tower)
            except MissingData:
                continue
            low, high = cells.pop("_clim")
            n = cells.pop("_n")
            cells.pop("_per_head")
            source.data = cells
            mapper = self.direct_mappers[tower]
            if (mapper.low, mapper.high) != (low, high):
                mapper.update(low=low, high=high)
            self.direct_labels[tower].text = _count(n)


def direct_cells(app: Explorer, tower: str) -> dict[str, Any]:
    """The cells one direct-effects heatmap draws: values, the 95 % interval, colour limits, hover notes."""
    state = app.state
    values = app.direct_data(tower)
    layers = [int(v) for v in values["layer"].values]
    heads = [int(v) for v in values["head"].values]
    data = np.asarray(values.values, float)
    low = np.full(data.shape, np.nan)
    high = np.full(data.shape, np.nan)
    interval = state.variant == "full" and state.direct_images == "all images"
    if interval:
        ci = app.direct_interval(tower).sel(layer=layers, head=heads)
        low, high = (np.asarray(ci.sel(estimate=e).values, float) for e in ("low", "high"))
    notes = np.full(data.shape, "", dtype=object)
    notes[~np.isfinite(data)] = "no value: no labelled image in the selection"
    lo, hi, _ = robust_limits(data, ratio=False, diverging=True)
    kinds = app.view.layer_kinds(tower)
    L, H = np.meshgrid(layers, heads, indexing="ij")
    words = lens_words(app, tower)
    ci_text = [f"{a:.3f} – {b:.3f}" if np.isfinite(a) else "(variant full, all images only)"
               for a, b in zip(low.ravel(), high.ravel())]
    return {
        "layer": L.ravel().tolist(), "head": H.ravel().tolist(), "value": data.ravel(),
        "shown": np.clip(data, lo, hi).ravel(), "ci": ci_text, "note": notes.ravel().tolist(),
        "kind": [kinds.get(int(ell), "") for ell in L.ravel()],
        "lens": [words.get((int(ell), int(h)), "") for ell, h in zip(L.ravel(), H.ravel())],
        "_clim": (lo, hi), "_n": int(values.attrs.get("n_items", 0)), "_per_head": bool(values.attrs["per_head"]),
    }


def _count(n: int) -> str:
    return f"mean over {n} image{'s' if n != 1 else ''}"


def spearman_maps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman ρ of two stacks of maps over their last two axes (patches), vectorised.

    The same definition as :func:`mmlens.viz.slices.map_agreement` (average ranks for ties;
    NaN where a map is constant or not finite), for every layer and head at once.

    Examples
    --------
    >>> a = np.arange(8.0).reshape(2, 2, 2)
    >>> spearman_maps(a, -a).tolist()
    [-1.0, -1.0]
    """
    from scipy.stats import rankdata

    lead = a.shape[:-2]
    x = np.asarray(a, np.float64).reshape(-1, a.shape[-2] * a.shape[-1])
    y = np.asarray(b, np.float64).reshape(-1, b.shape[-2] * b.shape[-1])
    ok = np.isfinite(x).all(1) & np.isfinite(y).all(1)
    out = np.full(x.shape[0], np.nan)
    if ok.any():
        rx = rankdata(x[ok], axis=1)
        ry = rankdata(y[ok], axis=1)
        rx -= rx.mean(1, keepdims=True)
        ry -= ry.mean(1, keepdims=True)
        den = np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[ok] = np.where(den > 0, (rx * ry).sum(1) / np.where(den > 0, den, 1.0), np.nan)
    return out.reshape(lead)


def _slot_title(slot: str) -> str:
    if slot == "mask":
        return "foreground mask"
    if slot.startswith("attribution:"):
        return f"{slot.split(':', 1)[1]} (share of |m|)"
    return "â " + VARIANT_NAMES.get(slot, slot)


def _across(units: str, n: Any) -> str:
    """``11 datasets`` / ``3 seeds`` / ``6 images (one run)``: what a band is across, honestly."""
    if not units:
        return ""
    if units.endswith(" of one run"):
        return f"{n} {units.replace(' of one run', '')} (one run)"
    return f"{n} {units}"


def _share(amap: np.ndarray) -> np.ndarray:
    mass = np.abs(np.nan_to_num(np.asarray(amap, np.float32)))
    total = mass.sum()
    return mass / total if total > 0 else mass


def _rgba(picture: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """An (H, W) uint32 RGBA image for ``image_rgba``, bottom row first; transparent when missing."""
    if picture is None:
        return np.zeros((1, 1), np.uint32)
    rgb = np.asarray(picture, np.uint8)[..., :3]
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    return np.ascontiguousarray(rgba[::-1]).view(np.uint32)[..., 0]


def _palette(name: str, reverse: bool = False) -> list[str]:
    from bokeh import palettes

    values = list(getattr(palettes, name))
    return values[::-1] if reverse else values


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
