"""HoloViews plots of trace-store slices: head heatmaps, layer curves, attention overlays, role bars, tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the bokeh options used below; no output)
import numpy as np
import xarray as xr

from mmlens.store.select import layer_kind_runs

__all__ = [
    "attention_maps",
    "empty",
    "grid_image",
    "mask_contour",
    "picture_rgb",
    "head_heatmap",
    "layer_curves",
    "layer_ticks",
    "role_bars",
    "role_heatmap",
    "selection_marker",
]

_KIND_SHORT = {"injected": "inj", "carried": "car", "none": "—"}
_KIND_COLOUR = {"injected": "#fdae6b", "carried": "#c6dbef"}
HEATMAP_SIZE = {"width": 330, "height": 260}
MAP_SIZE = {"width": 210, "height": 210}


def layer_ticks(layers: Sequence[int], kinds: Mapping[int, str]) -> list[tuple[int, str]]:
    """Axis ticks ``(layer, "3 inj")`` naming each layer's kind (injected / carried prompts).

    Examples
    --------
    >>> layer_ticks([0, 1], {0: "injected", 1: "carried"})
    [(0, '0 inj'), (1, '1 car')]
    """
    return [(ell, f"{ell} {_KIND_SHORT.get(kinds.get(ell, ''), '')}".strip()) for ell in layers]


def empty(message: str, **opts: Any) -> hv.Element:
    """A blank plot carrying a short message (used when a store lacks what a view needs)."""
    size = {**HEATMAP_SIZE, **opts}
    text = hv.Text(0.5, 0.5, _wrap(message, 40), fontsize=9)
    return text.opts(xaxis=None, yaxis=None, toolbar=None, xlim=(0, 1), ylim=(0, 1), backend="bokeh", **size)


def head_heatmap(values: xr.DataArray, *, title: str = "", kinds: Mapping[int, str] | None = None,
                 diverging: bool = False, label: str | None = None) -> hv.Image:
    """A layer x head heatmap (layer on y, head on x) with hover values and layer-kind ticks.

    Parameters
    ----------
    values
        DataArray with dims ``(layer, head)``.
    title
        Plot title.
    kinds
        ``{layer: layer_kind}``; injected/carried layers are named on the y axis.
    diverging
        Symmetric blue-red colour scale around 0 (for differences with vs without prompts).
    label
        The quantity and its symbol (colour bar and hover), default ``values.attrs["label"]``.

    Returns
    -------
    holoviews.Image
        On numeric axes, so a ``Tap`` stream reports (head, layer) as floats to round.

    Examples
    --------
    >>> import xarray as xr, numpy as np
    >>> img = head_heatmap(xr.DataArray(np.zeros((3, 2)), dims=("layer", "head"),
    ...                                 coords={"layer": [0, 1, 2], "head": [0, 1]}))
    >>> img.kdims
    [Dimension('head'), Dimension('layer')]
    """
    values = values.transpose("layer", "head")
    layers = [int(v) for v in values["layer"].values]
    heads = [int(v) for v in values["head"].values]
    data = np.asarray(values.values, dtype=np.float64)
    # an array with explicit bounds (row 0 drawn at the top, so flip: layer 0 at the bottom) also
    # works for a single layer or head, where coordinates alone cannot give the cell size
    bounds = (min(heads) - 0.5, min(layers) - 0.5, max(heads) + 0.5, max(layers) + 0.5)
    quantity = hv.Dimension("value", label=label or str(values.attrs.get("label", "value")))
    img = hv.Image(data[::-1], bounds=bounds, kdims=["head", "layer"], vdims=[quantity])
    finite = data[np.isfinite(data)]
    if diverging:
        lim = float(np.abs(finite).max()) if finite.size else 1.0
        clim, cmap = (-lim or -1.0, lim or 1.0), "RdBu_r"
    else:
        clim = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if clim[0] == clim[1]:
            clim = (clim[0], clim[0] + 1e-9)
        cmap = "viridis"
    return img.opts(
        cmap=cmap,
        clim=clim,
        colorbar=True,
        colorbar_opts={"title": label or str(values.attrs.get("label", ""))},
        tools=["hover", "tap"],
        title=title,
        yticks=layer_ticks(layers, kinds or {}),
        xticks=[(h, str(h)) for h in heads],
        toolbar=None,
        backend="bokeh",
        **HEATMAP_SIZE,
    )


def selection_marker(layer: int, head: int) -> hv.Bounds:
    """The outline of the selected (layer, head) cell on a :func:`head_heatmap`."""
    return hv.Bounds((head - 0.5, layer - 0.5, head + 0.5, layer + 0.5)).opts(
        color="red", line_width=3, backend="bokeh"
    )


def layer_curves(curves: xr.Dataset, *, title: str = "", layer: int | None = None,
                 kinds: Mapping[int, str] | None = None) -> hv.Overlay:
    """Per-layer means with 95% bands (one colour per variant), injected layers shaded.

    Parameters
    ----------
    curves
        ``mean``, ``lower``, ``upper`` with dims ``(variant, layer)`` (as from
        :meth:`mmlens.viz.slices.StudyView.layer_curve`).
    title
        Plot title.
    layer
        Selected layer, drawn as a vertical line.
    kinds
        ``{layer: layer_kind}``; runs of injected layers are shaded orange, carried blue.
    """
    layers = [int(v) for v in curves["layer"].values]
    elements: list[hv.Element] = []
    for lo, hi, kind in layer_kind_runs(kinds or {}):
        if kind in _KIND_COLOUR:
            elements.append(hv.VSpan(lo - 0.5, hi + 0.5).opts(color=_KIND_COLOUR[kind], alpha=0.35, backend="bokeh"))
    palette = ["#1f77b4", "#7f7f7f", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    label = str(curves.attrs.get("label", "value"))
    for k, variant in enumerate(str(v) for v in curves["variant"].values):
        sel = curves.sel(variant=variant)
        colour = palette[k % len(palette)]
        lo, hi = np.asarray(sel["lower"].values, float), np.asarray(sel["upper"].values, float)
        elements.append(
            hv.Area((layers, lo, hi), kdims=["layer"], vdims=["lower", "upper"], label=variant).opts(
                color=colour, alpha=0.25, line_alpha=0, backend="bokeh"
            )
        )
        elements.append(
            hv.Curve((layers, np.asarray(sel["mean"].values, float)), kdims=["layer"], vdims=[label],
                     label=variant).opts(color=colour, line_width=2, tools=["hover"], backend="bokeh")
        )
    if layer is not None:
        elements.append(hv.VLine(layer).opts(color="red", line_dash="dashed", backend="bokeh"))
    units = str(curves.attrs.get("units", "")).split(" (")[0].replace(" of one run", "")
    n = curves.attrs.get("n_units", "")
    subtitle = f" · 95% band, {n} {units}" if units else ""
    return hv.Overlay(elements).opts(
        title=title + subtitle, width=440, height=260, legend_position="top_right", show_grid=True,
        xticks=layer_ticks(layers, kinds or {}), xlabel="layer", ylabel=label.split(" (")[0], toolbar=None,
        backend="bokeh"
    )


def attention_maps(
    maps: Mapping[str, np.ndarray],
    *,
    foreground: np.ndarray | None = None,
    picture: np.ndarray | None = None,
    clim: tuple[float, float] | None = None,
    subtitles: Mapping[str, str] | None = None,
) -> hv.Layout:
    """Patch-grid maps side by side on one colour scale, optionally over the picture and with the mask.

    Parameters
    ----------
    maps
        Title -> (patch_row, patch_col) array (e.g. ``{"with prompts": a_full, "without": a_zs}``).
    foreground
        (patch_row, patch_col) foreground fractions; drawn as its own panel and as a contour.
    picture
        (H, W, 3) uint8 image; maps are drawn over it, semi-transparent.
    clim
        Shared colour limits (default: 0 to the largest value of all maps).
    subtitles
        Title -> extra text (numbers) appended to the panel title.

    Returns
    -------
    holoviews.Layout
    """
    finite = [m[np.isfinite(m)] for m in maps.values() if np.isfinite(m).any()]
    if clim is None:
        top = max((float(v.max()) for v in finite), default=1.0)
        clim = (0.0, top if top > 0 else 1.0)
    panels: list[hv.Element] = []
    for title, grid in maps.items():
        panels.append(_grid_panel(grid, title + (subtitles or {}).get(title, ""), clim, picture, foreground,
                                  cmap="inferno"))
    if foreground is not None:
        panels.append(_grid_panel(foreground, "foreground mask", (0.0, 1.0), picture, None, cmap="gray"))
    return hv.Layout(panels).cols(len(panels)).opts(shared_axes=True, backend="bokeh")


def _grid_panel(grid: np.ndarray, title: str, clim: tuple[float, float], picture: np.ndarray | None,
                foreground: np.ndarray | None, cmap: str) -> hv.Overlay:
    shape = np.shape(grid)
    layers: list[hv.Element] = []
    if picture is not None:
        layers.append(picture_rgb(picture, shape))
    layers.append(grid_image(grid, title=title, clim=clim, cmap=cmap, alpha=0.65 if picture is not None else 1.0))
    if foreground is not None:
        layers.append(mask_contour(foreground))
    return hv.Overlay(layers).opts(title=title, backend="bokeh")


def grid_image(grid: np.ndarray, *, title: str = "", clim: tuple[float, float] | None = None,
               cmap: str = "inferno", alpha: float = 1.0) -> hv.Image:
    """A (patch_row, patch_col) map drawn as the image is seen: row 0 at the top (HoloViews' array convention).

    Examples
    --------
    >>> import numpy as np
    >>> grid_image(np.eye(3)).bounds.lbrt()
    (0, 0, 3, 3)
    """
    grid = np.asarray(grid, dtype=np.float64)
    rows, cols = grid.shape
    finite = grid[np.isfinite(grid)]
    if clim is None:
        clim = (0.0, float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
    return hv.Image(grid, bounds=(0, 0, cols, rows), kdims=["x", "y"], vdims=["value"]).opts(
        cmap=cmap, clim=clim, alpha=alpha, tools=["hover"], title=title, xaxis=None, yaxis=None, toolbar=None,
        backend="bokeh", **MAP_SIZE
    )


def picture_rgb(picture: np.ndarray | None, shape: tuple[int, int]) -> hv.RGB:
    """The picture under a patch-grid map (fully transparent when there is none), on the grid's bounds."""
    rows, cols = shape
    if picture is None:
        picture = np.zeros((2, 2, 4), dtype=np.uint8)
    picture = np.asarray(picture)
    vdims = ["R", "G", "B", "A"] if picture.shape[-1] == 4 else ["R", "G", "B"]
    return hv.RGB(picture, bounds=(0, 0, cols, rows), vdims=vdims).opts(backend="bokeh")


def mask_contour(foreground: np.ndarray | None, shape: tuple[int, int] | None = None) -> hv.Contours:
    """The 0.5 iso-line of the foreground fractions (an empty path when there is no mask)."""
    if foreground is None:
        rows, cols = shape or (1, 1)
        grid = np.zeros((rows, cols))
    else:
        grid = np.asarray(foreground, dtype=np.float64)
        rows, cols = grid.shape
    img = hv.Image(grid, bounds=(0, 0, cols, rows))
    out = hv.operation.contours(img, levels=[0.5], overlaid=False)
    return out.opts(color="cyan", line_width=2, show_legend=False, backend="bokeh")


def role_bars(roles: xr.DataArray, *, title: str = "") -> hv.Bars:
    """Grouped bars of attention per key role, one bar per variant (dims ``(variant, key_role)``)."""
    # variant-major rows: HoloViews (1.23) sorts grouped bars this way but computes the colour
    # column in input order, so any other order would colour bars with the wrong variant
    rows = [
        (str(role), str(variant), float(roles.sel(variant=variant, key_role=role)))
        for variant in roles["variant"].values
        for role in roles["key_role"].values
    ]
    return hv.Bars(rows, kdims=["key_role", "variant"], vdims=[hv.Dimension("attention", range=(0, 1))]).opts(
        title=title, width=440, height=260, tools=["hover"], toolbar=None, multi_level=False,
        color=hv.dim("variant").categorize({"full": "#1f77b4", "zeroshot": "#7f7f7f"}, default="#2ca02c"),
        legend_position="top_right", show_legend=True, backend="bokeh"
    )


def role_heatmap(roles: xr.DataArray, classnames: Sequence[str], *, title: str = "") -> hv.Image:
    """A class x key-role heatmap of EOT attention (dims ``(class, key_role)``), one row per class.

    Drawn as an ``hv.Image`` on integer axes labelled with the role and class names (at most
    30 class labels are written), so that it updates in place in the explorer and in reports.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> r = xr.DataArray(np.full((2, 3), 1 / 3), dims=("class", "key_role"),
    ...                  coords={"key_role": ["sot", "word", "eot"]})
    >>> role_heatmap(r, ["cat", "dog"]).dimension_values("attention", flat=False).shape
    (2, 3)
    """
    roles = roles.transpose("class", "key_role")
    names = [str(r) for r in roles["key_role"].values]
    n_classes = roles.sizes["class"]
    values = np.asarray(roles.values, dtype=np.float64)
    # row 0 (the first class) is drawn at the top
    img = hv.Image(values, bounds=(-0.5, -0.5, len(names) - 0.5, n_classes - 0.5), kdims=["key_role", "class"],
                   vdims=[hv.Dimension("attention")])
    step = max(1, int(np.ceil(n_classes / 30)))
    yticks = [(n_classes - 1 - k, _short(str(classnames[k]) if k < len(classnames) else str(k), 18))
              for k in range(0, n_classes, step)]
    height = int(min(600, 90 + 16 * min(n_classes, 30)))
    return img.opts(
        title=title, cmap="viridis", clim=(0, 1), colorbar=True, tools=["hover"], width=440, height=height,
        xticks=list(enumerate(names)), yticks=yticks, toolbar=None, backend="bokeh"
    )


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or " "
