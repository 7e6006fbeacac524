"""The interactive explorer: a ``param`` view state linked to HoloViews/Panel views of a trace store."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import param

from mmlens.store import schema
from mmlens.viz.slices import HEAD_MEASURES, LAYER_MEASURES, ImageSlice, MissingData, StudyView, available

__all__ = ["Explorer", "ExplorerState", "explore", "load_extensions"]

_TOWERS = ("vision", "text")


def _choice(**kwargs: Any) -> param.Selector:
    """A selector whose choices are filled in from the store (empty until then)."""
    return param.Selector(default=None, objects=[], check_on_set=True, allow_None=True, **kwargs)


class ExplorerState(param.Parameterized):
    """What the explorer shows: one selection per dimension, choices read from the store's coords.

    Testable without a browser: set attributes (``state.layer = 3``) and read the views' data
    from :class:`Explorer`. Choices follow the selected method's store (``method``) and the
    class names follow the selected dataset.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> from mmlens.viz.slices import StudyView
    >>> state = ExplorerState({"maple": StudyView(example_tree(n_layers=3))})
    >>> state.param["layer"].objects, state.layer
    ([0, 1, 2], 0)
    >>> state.select_cell(layer=1.8, head=0.2); (state.layer, state.head)
    (2, 0)
    """

    method = _choice(doc="prompt method (one store per method)")
    dataset = _choice(doc="dataset of a study")
    seed = _choice(doc="prompt-training seed")
    variant = _choice(doc="variant shown by heatmaps (full, zeroshot, ablations)")
    layer = _choice(doc="block, 0-based")
    head = _choice(doc="attention head")
    class_ = _choice(label="class", doc="class (text tower)")
    image = param.Integer(default=0, bounds=(0, 0), doc="image index (vision tower)")
    curve_measure = param.Selector(default="prompt_mass", objects=list(LAYER_MEASURES), check_on_set=True,
                                   doc="per-layer curves")
    minus_reference = param.Boolean(default=False, label="subtract zeroshot", doc="heatmaps show full − zeroshot")

    def __init__(self, views: Mapping[str, StudyView], **values: Any) -> None:
        super().__init__()
        if not views:
            raise ValueError("expected at least one store, found none")
        self._views = dict(views)
        self.param["method"].objects = list(self._views)
        with param.parameterized.discard_events(self):
            self.method = values.pop("method", next(iter(self._views)))
        self._sync_choices()
        unknown = [k for k in values if k not in self.param]
        if unknown:
            raise TypeError(f"unknown selection(s) {unknown}; expected some of {list(self.param)[1:]}")
        for key, value in values.items():
            setattr(self, key, value)

    @property
    def view(self) -> StudyView:
        """The store of the selected method."""
        return self._views[self.method]

    @param.depends("method", watch=True)
    def _sync_choices(self) -> None:
        view = self.view
        layers = sorted(set(view.layers("vision")) | set(view.layers("text")))
        heads = sorted(set(view.heads("vision")) | set(view.heads("text")))
        variants = view.variants
        choices = {
            "dataset": view.datasets,
            "seed": view.seeds,
            "variant": variants,
            "layer": layers,
            "head": heads,
        }
        updates: dict[str, Any] = {}
        for name, objects in choices.items():
            self.param[name].objects = objects
            current = getattr(self, name)
            if current not in objects:
                updates[name] = _default_choice(name, objects)
        images = view.images
        self.param["image"].bounds = (min(images), max(images)) if images else (0, 0)
        if self.image not in images:
            updates["image"] = images[0] if images else 0
        measures = [m for m in LAYER_MEASURES if m in available(view, "vision", LAYER_MEASURES)
                    or m in available(view, "text", LAYER_MEASURES)] or list(LAYER_MEASURES)
        self.param["curve_measure"].objects = measures
        if self.curve_measure not in measures:
            updates["curve_measure"] = measures[0]
        if updates:
            self.param.update(**updates)
        self._sync_classes()

    @param.depends("dataset", watch=True)
    def _sync_classes(self) -> None:
        classes = self.view.classes(self.dataset) if self.dataset is not None else {}
        self.param["class_"].objects = classes
        if self.class_ not in classes.values():
            self.class_ = next(iter(classes.values()), None)

    def select_cell(self, layer: float, head: float) -> None:
        """Select the heatmap cell nearest to ``(layer, head)`` (as a Tap stream reports it)."""
        if layer is None or head is None or not np.isfinite(layer) or not np.isfinite(head):
            return
        layers, heads = self.param["layer"].objects, self.param["head"].objects
        if not layers or not heads:
            return
        new_layer = min(layers, key=lambda v: abs(v - layer))
        new_head = min(heads, key=lambda v: abs(v - head))
        self.param.update(layer=new_layer, head=new_head)


def _default_choice(name: str, objects: Sequence[Any]) -> Any:
    if not objects:
        return None
    if name == "variant" and schema.PROMPTED_VARIANT in objects:
        return schema.PROMPTED_VARIANT
    return objects[0]


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
    - accuracy and route-ablation table from the stored logits.

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
        **selection: Any,
    ) -> None:
        self.views = _views(stores, fg_max_images=fg_max_images)
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
        title = f"{tower}: {label}"
        try:
            values = self.heatmap_data(tower, measure)
        except MissingData as err:
            import xarray as xr

            layers, heads = self.view.layers(tower) or [0], self.view.heads(tower) or [0]
            blank = xr.DataArray(np.full((len(layers), len(heads)), np.nan), dims=("layer", "head"),
                                 coords={"layer": layers, "head": heads})
            return plots.head_heatmap(blank, title=f"{tower}: {_short(str(err), 45)}")
        return plots.head_heatmap(values, title=title, kinds=self.view.layer_kinds(tower),
                                  diverging=self.state.minus_reference)

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

    def status(self) -> dict[str, Any]:
        """Whether the selected store is complete (:func:`mmlens.viz.status.store_status`)."""
        from mmlens.viz.status import store_status

        return store_status(self.view)

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
            self._layout = _build_layout(self)
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
        ``data_root``, ``pictures``, ``fg_max_images`` and the initial selection (``dataset``, ``seed``,
        ``method``, ``variant``, ``layer``, ``head``, ``class_``, ``image``, ``curve_measure``,
        ``minus_reference``); see :class:`Explorer`.

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


def _build_layout(app: Explorer):
    """Sidebar of run selectors and the board's layer / head / image sliders; the linked views beside it."""
    import panel as pn

    from mmlens.viz._static import inline_panel_stylesheets

    state = app.state
    p = state.param
    w = {"width": 220}
    selectors = pn.Column(
        pn.widgets.Select.from_param(p.method, label="method", **w),
        pn.widgets.Select.from_param(p.dataset, label="dataset", **w),
        pn.widgets.Select.from_param(p.seed, label="seed", **w),
        pn.widgets.Select.from_param(p.variant, label="variant (heatmaps)", **w),
        pn.widgets.Select.from_param(p.class_, label="class (text tower)", **w),
        pn.widgets.Select.from_param(p.curve_measure, label="curves", **w),
        pn.widgets.Checkbox.from_param(p.minus_reference, label="subtract zeroshot", **w),
        width=235,
    )
    sliders = pn.Column(width=235)
    refresh = pn.widgets.Button(label="refresh (store still being written)", width=220,
                                visible=False)
    main = pn.Column(sizing_mode="stretch_width", min_width=600)

    def rebuild(*_: Any) -> None:
        board = app.new_board()
        sliders.objects = [pn.pane.Bokeh(m) for m in (board.layer, board.head, board.image_slider) if m is not None]
        main.objects = _main_panes(app, board)
        refresh.visible = app.status().get("complete") is False

    def follow(event: Any) -> None:
        if app._board is not None:
            app._board.follow(event.name, event.new)

    state.param.watch(rebuild, ["method", "dataset", "seed", "variant", "minus_reference", "curve_measure"])
    state.param.watch(follow, ["layer", "head", "image", "class_"])
    refresh.on_click(lambda _event: (app.refresh(), rebuild()))
    rebuild()
    layout = pn.Row(pn.Column(selectors, sliders, refresh, width=240), main, name="mmlens-explorer",
                    sizing_mode="stretch_width")
    layout._hooks = [*layout._hooks, inline_panel_stylesheets]  # works offline: no stylesheet from Panel's CDN
    return layout


def _caption(text: str) -> Any:
    import panel as pn

    return pn.pane.HTML(f'<div class="mmlens-caption" style="color:#555;font-size:12px;max-width:1100px">{text}</div>',
                        sizing_mode="stretch_width", margin=(0, 10, 12, 10))


def _main_panes(app: Explorer, board: Any, *, report: bool = False) -> list[Any]:
    """The linked views of ``board`` with section titles and one-line captions (data text escaped)."""
    import panel as pn

    from mmlens.viz._text import md
    from mmlens.viz.board import CAPTIONS

    view, state = app.view, app.state
    a = view.attrs
    panes: list[Any] = []
    status = app.status()
    head = (f"### mmlens {'report' if report else 'explorer'}: {md(state.method)}\n"
            f"model **{md(a.get('model_name', '?'))}** ({md(a.get('pretrained', '?'))}), dataset "
            f"**{md(state.dataset)}**, seed {md(state.seed)}, created {md(a.get('created', '?'))}.")
    if status.get("complete") is False:
        head += f"\n\n**{md(status['message'])}**"
    panes.append(pn.pane.Markdown(head, sizing_mode="stretch_width"))

    def flex(figures: list[Any]) -> Any:
        return pn.FlexBox(*[pn.pane.Bokeh(f) for f in figures], sizing_mode="stretch_width")

    items = "classes (text) and images (vision)"
    panes.append(pn.pane.Markdown(f"#### Layer × head: variant *{md(state.variant)}*"
                                  + (" minus zeroshot" if state.minus_reference else "")))
    figures = [f for tower in ("vision", "text") for f in board.heat_panes.get(tower, [])]
    if figures:
        panes.append(flex(figures))
    for note in board.heat_notes.values():
        panes.append(pn.pane.Markdown(f"*{md(note)}*"))
    panes.append(_caption(CAPTIONS["heatmaps"].format(items=items)))
    if board.curve_figures:
        panes.append(pn.pane.Markdown("#### Per layer: mean and 95 % band"))
        panes.append(flex(board.curve_figures))
        panes.append(_caption(CAPTIONS["curves"]))
    else:
        panes.append(pn.pane.Markdown(f"*no curves of {md(state.curve_measure)} in this store*"))
    if board.image_figures:
        panes.append(pn.pane.Markdown("#### The selected image: [cls] attention â with and without prompts"))
        panes.append(pn.pane.Bokeh(board.info))
        if board.image_select is not None:
            panes.append(pn.pane.Bokeh(board.image_select))
        panes.append(flex(board.image_figures))
        panes.append(_caption(CAPTIONS["images"]))
        if "mask" not in board.slots:
            panes.append(pn.pane.Markdown("*no foreground mask in this store: no mask panel, outline or FG values "
                                          "(datasets with masks: OxfordPets trimaps, toyworld)*"))
        if not any(s.startswith("attribution:") for s in board.slots):
            panes.append(pn.pane.Markdown("*no attribution group: trace with `--attribution` to compare "
                                          "captum maps with â*"))
    else:
        panes.append(pn.pane.Markdown("*this store has no cls_attention, mask or attribution maps: no image panel*"))
    if board.text_figures:
        panes.append(pn.pane.Markdown("#### Text tower: EOT attention over token roles"))
        panes.append(flex(board.text_figures))
        panes.append(_caption(CAPTIONS["text"]))
    else:
        panes.append(pn.pane.Markdown("*no text/attention_by_role in this store: no text-role panel*"))
    if view.reference_variant is None:
        panes.append(pn.pane.Markdown("*no zeroshot variant (traced without `--with-reference`): no "
                                      "without-prompts maps, curves or differences*"))
    panes.append(pn.pane.Markdown("#### Accuracy and route ablations (from the stored logits)"))
    try:
        table = app.accuracy_data()
        full = view.accuracy()
        summary = full.groupby("variant", sort=False)[["base", "novel", "HM", "all"]].mean().round(2)
        n_sets = full["dataset"].nunique()
        panes.append(pn.Row(
            pn.Column(pn.pane.Markdown(f"**top-1 (%) on {md(state.dataset)}, seed {md(state.seed)}**; "
                                       "NaN: no image of that split was traced"),
                      pn.pane.DataFrame(table.drop(columns=["dataset", "seed"]).round(2), index=False,
                                        escape=True)),
            pn.Column(pn.pane.Markdown(f"**mean over {n_sets} dataset{'s' if n_sets != 1 else ''} and their "
                                       "seeds**"), pn.pane.DataFrame(summary, escape=True)),
        ))
    except MissingData as err:
        panes.append(pn.pane.Markdown(f"*accuracy: {md(err)}*"))
    text = app.evaluation_markdown()
    if text is not None:
        panes.append(pn.pane.Markdown("**evaluation (mmlens.train.evaluate), every route ablation:**\n\n" + text))
    return panes
