"""The interactive explorer: a selection (:mod:`mmlens.viz.state`) over trace stores, its data, plots and pictures.

The linked views are :mod:`mmlens.viz.board`; their Panel layout is :mod:`mmlens.viz.layout`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmlens.store import schema
from mmlens.viz.layout import build_layout, status_of
from mmlens.viz.slices import HEAD_MEASURES, LAYER_MEASURES, ImageSlice, MissingData, StudyView
from mmlens.viz.state import ExplorerState

__all__ = ["Explorer", "ExplorerState", "explore", "load_extensions"]

_TOWERS = ("vision", "text")


# ----------------------------------------------------------------------------------------------
# the app
# ----------------------------------------------------------------------------------------------


class Explorer:
    """Linked views of one or more trace stores; display it in Jupyter or serve it with Panel.

    The views (all read the store through :class:`~mmlens.viz.slices.StudyView`):

    - layer x head heatmaps of prompt mass, ‖β_h‖/‖(a)_h‖ and foreground attention for both
      towers; clicking a cell selects that layer and head everywhere;
    - per-layer curves with 95% bands across datasets (injected layers shaded orange, carried
      blue), the selected layer marked;
    - the selected image: ``[cls]`` attention â with and without prompts, the foreground mask,
      captum maps when an ``attribution`` group exists (one colour scale; agreement numbers);
    - text: EOT attention over token roles for the selected class and for every class;
    - accuracy and route-ablation table from the stored logits;
    - what the prompts learn: β's direct effect on the correct-class margin per layer and head
      (both towers; needs the ``direct`` group of ``mmlens trace --direct-effects``) and the text
      lens table (``lens=``), see :mod:`mmlens.viz.direct`.

    A store that lacks a group or variable shows a short message in the affected panel.

    Parameters
    ----------
    stores
        A store path / DataTree, or ``{method: store}`` / a list of stores to compare methods.
    data_root
        Where relative image ``path`` coordinates live (to draw the picture under the maps).
    pictures
        Where the pictures come from when they are not files (e.g. toyworld generated in memory):
        the traced dataset itself (``pictures[image]`` is a sample dict with ``"image"``, a
        ``[3, H, W]`` tensor or an ``H x W x 3`` array; a sample whose ``"path"`` differs from the
        store's is not shown), ``{dataset: such a sequence}`` for a study, or a callable
        ``(dataset, image, path) -> array or None``.
    evaluation
        Accuracy of every route ablation from :func:`mmlens.train.evaluate` (its ``xarray.Dataset``
        or the path of its netCDF file), shown next to the table computed from the stored logits.
    fg_max_images
        Images averaged by foreground-attention heatmaps/curves (see :class:`StudyView`).
    lens
        The text lens on the bias (``mmlens.lens(...)``'s Dataset or the ``lens.nc`` that
        ``mmlens lens --out`` writes; a list or ``{name: ...}`` of them for a study): shown as a table
        of the top phrases per layer for the selected dataset.
    **selection
        Initial selection, e.g. ``layer=3, dataset="dtd"``.
    """

    def __init__(
        self,
        stores: Any,
        *,
        data_root: str | os.PathLike | None = None,
        pictures: Any = None,
        evaluation: Any = None,
        fg_max_images: int | None = 256,
        lens: Any = None,
        **selection: Any,
    ) -> None:
        from mmlens.viz.direct import read_lenses

        self.views = _views(stores, fg_max_images=fg_max_images)
        #: text-lens results (``mmlens.lens``), one per dataset (and method) at most
        self.lenses = read_lenses(lens)
        self.state = ExplorerState(self.views, **selection)
        self.data_root = Path(data_root) if data_root is not None else None
        self.pictures = pictures
        self.evaluation = evaluation
        self._layout: Any = None
        self._board: Any = None
        self._pictures: dict[tuple[str | None, str], np.ndarray | None] = {}
        # the live streams of the built layout, by (tower, measure): for tests and notebooks
        self._taps: dict[tuple[str, str], Any] = {}
        self._markers: dict[tuple[str, str], Any] = {}

    @property
    def view(self) -> StudyView:
        """The selected method's store."""
        return self.state.view

    # ------------------------------------------------------------------------------------------
    # data of the current selection (no plotting; what the tests check)
    # ------------------------------------------------------------------------------------------

    def heatmap_data(self, tower: str, measure: str):
        """The (layer, head) map shown by a heatmap for the current selection."""
        s = self.state
        return self.view.head_map(tower, measure, s.dataset, s.seed, s.variant, minus_reference=s.minus_reference)

    def image_data(self) -> ImageSlice:
        """The selected image's maps at the selected layer and head."""
        s = self.state
        return self.view.image_slice(s.dataset, s.seed, s.image, s.layer, s.head)

    def roles_data(self):
        """EOT attention per key role, dims ``(variant, class, key_role)``, at the selected layer/head."""
        s = self.state
        return self.view.text_roles(s.dataset, s.seed, s.layer, s.head)

    def direct_scope_images(self) -> list[int] | None:
        """The images the direct-effects maps average (``state.direct_images``); ``None`` for all."""
        s = self.state
        if s.direct_images == "selected class":
            return self.view.direct_images(s.dataset, s.class_)
        if s.direct_images == "selected image":
            return [int(s.image)]
        return None

    def direct_data(self, tower: str):
        """β's direct effect on the margin, ``(layer, head)``, for the selected run, variant and images.

        The mean over the selected images of :func:`mmlens.stats.direct_effects` (``kind="bias"``,
        ``target="margin"``); raises :class:`~mmlens.viz.slices.MissingData` without a ``direct`` group.
        """
        s = self.state
        return self.view.direct_map(tower, s.dataset, s.seed, s.variant, self.direct_scope_images())

    def direct_interval(self, tower: str):
        """:func:`mmlens.stats.bias_margin_effect` of the selected run: ``(layer, head, estimate)``."""
        s = self.state
        return self.view.direct_interval(tower, s.dataset, s.seed)

    def lens_data(self, kind: str = "layer_bias"):
        """The lens table of the selected dataset (:func:`mmlens.viz.direct.lens_table`), ``None`` without one."""
        from mmlens.viz.direct import lens_for, lens_table

        lens = lens_for(self.lenses, self.state.dataset, self.view.method)
        return None if lens is None else lens_table(lens, kind=kind)

    def lens_html(self, kind: str = "layer_bias") -> tuple[str | None, str | None]:
        """The lens table as escaped HTML for the selected dataset and variant, and a note (or ``None``)."""
        from mmlens.viz.direct import LENS_MISSING, lens_for, lens_table_html

        if not self.lenses:
            return None, LENS_MISSING
        s = self.state
        lens = lens_for(self.lenses, s.dataset, self.view.method)
        if lens is None:
            found = sorted({str(ds.attrs.get("dataset", "?")) for ds in self.lenses})
            return None, f"no text lens for dataset {s.dataset} (lenses given for: {', '.join(found)})"
        variant = str(lens.attrs.get("variant", schema.PROMPTED_VARIANT))
        note = None if variant == s.variant else (f"the lens describes the β of variant {variant}, not of the "
                                                  f"selected variant {s.variant}")
        kinds = {t: self.view.layer_kinds(t) for t in _TOWERS}
        return lens_table_html(self.lens_data(kind), kinds=kinds), note

    def plot_direct(self, tower: str):
        """HoloViews heatmap of :meth:`direct_data` (diverging around 0), for the report's frames."""
        from mmlens.viz import plots

        try:
            values = self.direct_data(tower)
            title = f"{tower}: β → margin"
        except MissingData as err:
            import xarray as xr

            layers, heads = self.view.layers(tower) or [0], self.view.heads(tower) or [0]
            values = xr.DataArray(np.full((len(layers), len(heads)), np.nan), dims=("layer", "head"),
                                  coords={"layer": layers, "head": heads})
            title = f"{tower}: {_short(str(err), 45)}"
        return plots.head_heatmap(values, title=title, kinds=self.view.layer_kinds(tower), diverging=True,
                                  label="direct effect of β on the margin")

    def evaluation_markdown(self) -> str | None:
        """The ``evaluation`` table (``mmlens.stats.tables.to_markdown``), or ``None`` without one."""
        if self.evaluation is None:
            return None
        import xarray as xr

        from mmlens.stats.tables import to_markdown

        ds = self.evaluation
        if not isinstance(ds, xr.Dataset):
            ds = xr.load_dataset(ds)
        return to_markdown(ds)

    def accuracy_data(self):
        """Accuracy table (pandas) of the selected dataset and seed: one row per variant."""
        table = self.view.accuracy()
        s = self.state
        return table[(table["dataset"] == s.dataset) & (table["seed"] == s.seed)].reset_index(drop=True)

    # ------------------------------------------------------------------------------------------
    # plots of the current selection (each keeps one element type, so DynamicMaps can update it)
    # ------------------------------------------------------------------------------------------

    def plot_heatmap(self, tower: str, measure: str):
        """HoloViews heatmap for the current selection (a blank image with a message when missing)."""

        from mmlens.viz import plots

        label = HEAD_MEASURES[measure][0]
        try:
            values = self.heatmap_data(tower, measure)
        except MissingData as err:
            import xarray as xr

            layers, heads = self.view.layers(tower) or [0], self.view.heads(tower) or [0]
            blank = xr.DataArray(np.full((len(layers), len(heads)), np.nan), dims=("layer", "head"),
                                 coords={"layer": layers, "head": heads})
            return plots.head_heatmap(blank, title=f"{tower}: {_short(str(err), 45)}")
        from mmlens.viz.board import SYMBOL

        return plots.head_heatmap(values, title=f"{tower}: {SYMBOL.get(measure, label)}",
                                  kinds=self.view.layer_kinds(tower), diverging=self.state.minus_reference,
                                  label=SYMBOL.get(measure, label))

    def plot_curves(self, tower: str, *, mark_layer: bool = True):
        """Per-layer curves with bands for one tower (all variants of the store; NaN when missing)."""
        from mmlens.viz import plots

        kinds = self.view.layer_kinds(tower)
        try:
            curves = self.curve_data(tower)
            title = f"{tower}: {curves.attrs['label']}"
        except MissingData as err:
            curves = self._blank_curves(tower)
            title = f"{tower}: {_short(str(err), 50)}"
        return plots.layer_curves(curves, title=title, kinds=kinds, layer=self.state.layer if mark_layer else None)

    def curve_variants(self) -> list[str]:
        """Variants drawn by the curves: every variant of the store, prompted and reference first."""
        return self.view.variants

    def curve_data(self, tower: str):
        """Per-layer curves (mean and band per variant) of the selected curve measure."""
        return self.view.layer_curve(tower, self.state.curve_measure, self.curve_variants())

    def _blank_curves(self, tower: str):
        import xarray as xr

        layers = self.view.layers(tower) or [0]
        nan = np.full((len(self.curve_variants()), len(layers)), np.nan)
        dims = ("variant", "layer")
        coords = {"variant": self.curve_variants(), "layer": layers}
        return xr.Dataset({k: (dims, nan) for k in ("mean", "lower", "upper")}, coords=coords,
                          attrs={"label": LAYER_MEASURES[self.state.curve_measure][0]})

    def image_slots(self) -> list[str]:
        """What the image row shows, fixed per store: variants (with/without prompts), mask, attributions."""
        view = self.view
        slots: list[str] = []
        if view.has("vision", "cls_attention"):
            present = [str(v) for v in view.groups["vision"]["variant"].values]
            slots += [v for v in (schema.PROMPTED_VARIANT, schema.REFERENCE_VARIANT) if v in present] or present[:1]
        if view.has("vision", "foreground"):
            slots.append("mask")
        if "attribution" in view.groups:
            for name, da in view.groups["attribution"].data_vars.items():
                if {"patch_row", "patch_col", "image"} <= set(da.dims):
                    slots.append(f"attribution:{name}")
        return slots

    def plot_image_slot(self, slot: str):
        """One patch-grid map of the selected image (``full``, ``zeroshot``, ``mask`` or ``attribution:NAME``).

        Attention maps and attribution shares share one colour scale (0 to the largest value among
        them), so "where the model looks" compares across panels.
        """
        from mmlens.viz import plots

        sl = self.image_data()
        shape = self._grid_shape()
        maps = self._slot_maps(sl)
        top = max((float(np.nanmax(m)) for m in maps.values() if np.isfinite(m).any()), default=1.0)
        clim = (0.0, top if top > 0 else 1.0)
        if slot == "mask":
            grid = sl.foreground if sl.foreground is not None else np.full(shape, np.nan)
            alpha = 0.6 if self._picture(sl) is not None else 1.0
            return plots.grid_image(grid, title="foreground mask", clim=(0.0, 1.0), cmap="gray", alpha=alpha)
        grid = maps.get(slot)
        names = {schema.PROMPTED_VARIANT: "with prompts", schema.REFERENCE_VARIANT: "without prompts"}
        if slot.startswith("attribution:"):
            name = slot.split(":", 1)[1]
            rho = sl.agreement.get(name, {}).get("spearman")
            title = f"{name} (share)" + (f" · ρ {rho:.2f}" if rho is not None and np.isfinite(rho) else "")
        else:
            fg = sl.foreground_attention.get(slot)
            title = names.get(slot, slot) + (f" · FG {fg:.2f}" if fg is not None else "")
        if grid is None:
            grid = np.full(shape, np.nan)
            title += " (missing)"
        alpha = 0.7 if self._picture(sl) is not None else 1.0
        return plots.grid_image(grid, title=title, clim=clim, alpha=alpha)

    def _slot_maps(self, sl: ImageSlice) -> dict[str, np.ndarray]:
        maps: dict[str, np.ndarray] = dict(sl.attention)
        for name, amap in sl.attribution.items():  # |m| / Σ|m|: comparable with â, which sums to ≤ 1
            mass = np.abs(np.nan_to_num(amap))
            maps[f"attribution:{name}"] = mass / mass.sum() if mass.sum() > 0 else mass
        return maps

    def _grid_shape(self) -> tuple[int, int]:
        vision = self.view.groups.get("vision")
        if vision is not None and "patch_row" in vision.sizes:
            return int(vision.sizes["patch_row"]), int(vision.sizes["patch_col"])
        return (1, 1)

    def plot_picture(self):
        """The selected image's picture (read from its ``path``), transparent when it cannot be read."""
        from mmlens.viz import plots

        return plots.picture_rgb(self._picture(self.image_data()), self._grid_shape())

    def plot_mask_contour(self):
        """The selected image's foreground outline (empty without a mask)."""
        from mmlens.viz import plots

        return plots.mask_contour(self.image_data().foreground, self._grid_shape())

    def plot_image(self):
        """All maps of the selected image side by side (a static Layout, e.g. for notebooks and reports)."""
        import holoviews as hv

        slots = self.image_slots()
        if not slots:
            from mmlens.viz import plots

            return hv.Layout([plots.empty("this store has no cls_attention, mask or attribution maps")])
        panels = [self.plot_picture() * self.plot_image_slot(s) * self.plot_mask_contour() for s in slots]
        return hv.Layout(panels).cols(len(panels))

    def plot_roles(self):
        """Bars of EOT attention per token role for the selected class, with vs without prompts."""
        from mmlens.viz import plots

        klass = self.state.class_
        name = next((k for k, v in self.state.param["class_"].names.items() if v == klass), str(klass))
        title = f"EOT attention: {_short(name, 24)}, L{self.state.layer} H{self.state.head}"
        try:
            roles = self.roles_data().sel(**{"class": klass})
        except (MissingData, KeyError) as err:
            roles, title = self._blank_roles(), f"text: {_short(str(err), 50)}"
        keep = [v for v in (self.view.prompted_variant, self.view.reference_variant) if v]
        keep = [v for v in keep if v in roles["variant"].values] or list(roles["variant"].values)
        return plots.role_bars(roles.sel(variant=keep), title=title)

    def _blank_roles(self):
        import xarray as xr

        variants = [v for v in (self.view.prompted_variant, self.view.reference_variant) if v] or ["full"]
        return xr.DataArray(np.zeros((len(variants), len(schema.TEXT_ROLES))), dims=("variant", "key_role"),
                            coords={"variant": variants, "key_role": list(schema.TEXT_ROLES)})

    def plot_roles_all(self):
        """Class x role heatmap of EOT attention for the selected variant."""
        from mmlens.viz import plots

        names = list(self.state.param["class_"].names) or ["?"]
        try:
            roles = self.roles_data()
            if self.state.variant not in roles["variant"].values:
                raise MissingData(f"text has no variant {self.state.variant!r}")
            roles, title = roles.sel(variant=self.state.variant), f"every class ({self.state.variant})"
        except MissingData as err:
            roles = self._blank_roles().isel(variant=0, drop=True).expand_dims({"class": len(names)})
            title = f"text: {_short(str(err), 50)}"
        return plots.role_heatmap(roles, names, title=title)

    def _picture(self, sl: ImageSlice) -> np.ndarray | None:
        return self.picture_of(sl.dataset, sl.image, sl.path)

    def picture_of(self, dataset: str, image: int, path: str | None) -> np.ndarray | None:
        """The picture the model saw (its resize and crop, ``preprocess`` provenance), or ``None``.

        Files under ``data_root`` are cut with :func:`mmlens.viz.pictures.model_view`, so their
        pixels line up with the patch grid; ``pictures`` samples are already the model's input.
        """
        from mmlens.viz.pictures import picture_from, preprocess_of, read_picture

        key = (dataset, image, path)
        if key not in self._pictures:
            if self.pictures is not None:
                picture = picture_from(self.pictures, dataset, image, path)
            else:
                picture = read_picture(path, self.data_root, preprocess_of(self.view.attrs))
            self._pictures[key] = picture
            if len(self._pictures) > 32:
                self._pictures.pop(next(iter(self._pictures)))
        return self._pictures[key]

    def status(self):
        """How far the selected store's writer got (:func:`mmlens.store.store_status`), ``None`` in memory.

        Returns
        -------
        mmlens.store.StoreStatus or None
            ``None`` for a store opened from memory (a DataTree), which cannot grow.
        """
        return status_of(self.view)

    def refresh(self) -> None:
        """Re-open stores that were given as paths (a store still being written has grown)."""
        fresh = {}
        for name, view in self.views.items():
            source = getattr(view, "source", None)
            fresh[name] = StudyView(source, fg_max_images=view.fg_max_images) if source is not None else view
        self.views = fresh
        self.state._views = fresh
        self.state._sync_choices()
        self._pictures.clear()

    def new_board(self):
        """Build the linked Bokeh views of the current selection (:class:`mmlens.viz.board.Board`)."""
        from mmlens.viz.board import Board

        self._board = Board(self, live=True)
        return self._board

    # ------------------------------------------------------------------------------------------
    # Panel layout
    # ------------------------------------------------------------------------------------------

    def panel(self):
        """The Panel layout (built once; displaying the explorer shows it)."""
        if self._layout is None:
            self._layout = build_layout(self)
        return self._layout

    def __panel__(self):
        return self.panel()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        load_extensions()
        return self.panel()._repr_mimebundle_(include, exclude)

    def widget(self):
        """The explorer as an ipywidget (``pn.ipywidget``, through ``jupyter_bokeh``), for ipywidgets layouts.

        Usable wherever ipywidgets render (JupyterLab, VS Code, Colab), e.g.
        ``ipywidgets.VBox([other_tool, app.widget()])``.
        """
        import panel as pn

        load_extensions()
        return pn.ipywidget(self.panel())

    def servable(self, title: str = "mmlens explorer"):
        """Mark the app servable (``panel serve notebook.ipynb``)."""
        return self.panel().servable(title=title)


def explore(stores: Any, **kwargs: Any) -> Explorer:
    """Open the interactive explorer on a trace store (or several, one per method).

    Parameters
    ----------
    stores
        A store path, an ``xarray.DataTree`` (e.g. from ``mmlens.trace``), or ``{method: store}``
        / a list of stores to compare prompt methods.
    **kwargs
        ``data_root``, ``pictures``, ``fg_max_images``, ``lens`` and the initial selection (``dataset``,
        ``seed``, ``method``, ``variant``, ``layer``, ``head``, ``class_``, ``image``, ``curve_measure``,
        ``direct_images``, ``minus_reference``); see :class:`Explorer`.

    Returns
    -------
    Explorer
        Displays itself in Jupyter; ``explorer.state`` is the selection.

    Examples
    --------
    >>> import mmlens
    >>> from mmlens.store.synthetic import example_study
    >>> app = mmlens.explore(example_study(n_datasets=2, n_images=4), layer=1)
    >>> app.state.dataset, app.state.layer
    ('dataset_00', 1)
    >>> app.heatmap_data("vision", "prompt_mass").dims
    ('layer', 'head')
    """
    return Explorer(stores, **kwargs)


_EXTENSIONS_LOADED = False


def load_extensions() -> None:
    """Load HoloViews (bokeh) and Panel with resources inlined, so outputs render offline.

    Also makes Panel inline the few stylesheets it would still fetch from its CDN.
    """
    global _EXTENSIONS_LOADED
    if _EXTENSIONS_LOADED:
        return
    import holoviews as hv
    import panel as pn
    from panel.viewable import Viewable

    from mmlens.viz._static import inline_panel_stylesheets

    hv.extension("bokeh", inline=True, logo=False)
    pn.extension(inline=True)
    # every Panel object of the session, also wrappers Panel puts around ours in a notebook: the
    # stylesheets Panel still links from its CDN (holoviz/panel#6759) are inlined as well
    if inline_panel_stylesheets not in Viewable._preprocessing_hooks:
        Viewable._preprocessing_hooks.append(inline_panel_stylesheets)
    _EXTENSIONS_LOADED = True


def _views(stores: Any, *, fg_max_images: int | None) -> dict[str, StudyView]:
    import xarray as xr

    if isinstance(stores, Mapping) and not isinstance(stores, (xr.DataTree, xr.Dataset)):
        items = list(stores.items())
    elif isinstance(stores, (list, tuple)):
        items = [(None, s) for s in stores]
    else:
        items = [(None, stores)]
    views: dict[str, StudyView] = {}
    for name, store in items:
        view = store if isinstance(store, StudyView) else StudyView(store, fg_max_images=fg_max_images)
        key = str(name) if name is not None else view.method
        if key in views:
            raise ValueError(
                f"two stores share the method name {key!r}; pass a mapping {{name: store}} to name them apart"
            )
        views[key] = view
    return views


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"

