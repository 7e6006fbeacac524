"""The explorer's selection: one ``param`` parameter per dimension, choices read from the stores' coordinates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import param

from mmlens.store import schema
from mmlens.viz.slices import LAYER_MEASURES, StudyView, available

__all__ = ["ExplorerState", "DIRECT_SCOPES"]

#: Which images the direct-effects heatmaps average: every image, the images of the selected class
#: (``class_``), or the selected image (``image``).
DIRECT_SCOPES: tuple[str, ...] = ("all images", "selected class", "selected image")


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
    direct_images = param.Selector(default=DIRECT_SCOPES[0], objects=list(DIRECT_SCOPES), check_on_set=True,
                                   label="direct effects over", doc="images averaged by the direct-effects maps")
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
