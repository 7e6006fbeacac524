"""The explorer's data side: cached, lazy slices of a trace store for each view (no plotting, no torch)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from mmlens.stats.attribution import map_agreement
from mmlens.store import schema
from mmlens.store.select import per_dataset, select_run

__all__ = [
    "DIRECT_MISSING",
    "HEAD_MEASURES",
    "LAYER_MEASURES",
    "ImageSlice",
    "MissingData",
    "StoreSlices",
    "StudyView",
    "as_tree",
    "map_agreement",
]

#: Layer x head measures: name -> (label, {tower: variables needed}).
HEAD_MEASURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "prompt_mass": ("prompt mass α", ("prompt_mass",)),
    "bias_ratio": ("‖β_h‖ / ‖(a)_h‖", ("bias_head_norm", "original_norm")),
    "foreground_attention": ("foreground attention", ("cls_attention", "foreground")),
}
#: Per-layer measures (curves): name -> (label, variables needed).
LAYER_MEASURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "prompt_mass": ("prompt mass α", ("prompt_mass",)),
    "bias_norm_ratio": ("‖β‖ / ‖(a)‖", ("bias_norm", "original_total_norm", "residual_norm")),
    "bias_residual_ratio": ("‖β‖ / ‖x‖", ("bias_norm", "original_total_norm", "residual_norm")),
    "foreground_attention": ("foreground attention", ("cls_attention", "foreground")),
}
_TOWERS = ("vision", "text")
#: What a view says when the store has no ``direct`` group (docs/explorer.md, "What the prompts learn").
DIRECT_MISSING = ("this store was traced without direct effects: no 'direct' group; re-trace with "
                  "`mmlens trace --direct-effects` (direct_effects=True) to see β's direct effect on the margin")
_ITEM = {"vision": "image", "text": "class"}
_GRID = ("patch_row", "patch_col")


class MissingData(LookupError):
    """A view needs a group or variable that this store does not hold; the message says which and why."""


def as_tree(store: Any) -> xr.DataTree:
    """A trace tree from a path (opened lazily with ``mmlens.open``), a DataTree or a Dataset.

    Parameters
    ----------
    store
        Path to a zarr/netCDF store, an ``xarray.DataTree`` following docs/store_schema.md, or a
        single group ``xarray.Dataset`` (its group is guessed, e.g. ``vision``).

    Returns
    -------
    xarray.DataTree

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> sorted(as_tree(example_tree()).children)
    ['logits', 'text', 'vision']
    """
    import os

    if isinstance(store, xr.DataTree):
        return store
    if isinstance(store, xr.Dataset):
        return xr.DataTree.from_dict({"/": xr.Dataset(attrs=dict(store.attrs)), schema.infer_group(store): store})
    if isinstance(store, (str, os.PathLike)):
        from mmlens.store.io import open as open_store

        return open_store(store)
    raise TypeError(
        f"expected a store path, an xarray.DataTree or an xarray.Dataset, found {type(store).__name__}; "
        "pass the path of a store written by mmlens.trace_to_store or the tree returned by mmlens.trace"
    )


@dataclass
class ImageSlice:
    """Everything the image panel shows for one image at one layer and head (small numpy arrays)."""

    dataset: str
    image: int
    layer: int
    head: int
    label: int | None
    classname: str | None
    split: str | None
    path: str | None
    #: variant -> (patch_row, patch_col) renormalised [cls] attention â.
    attention: dict[str, np.ndarray] = field(default_factory=dict)
    foreground: np.ndarray | None = None
    #: attribution method -> (patch_row, patch_col) map.
    attribution: dict[str, np.ndarray] = field(default_factory=dict)
    #: variant -> Σ_j f_j â_j (foreground attention of this image), when a mask exists.
    foreground_attention: dict[str, float] = field(default_factory=dict)
    #: attribution method -> {agreement measure: value} against â of the prompted variant.
    agreement: dict[str, dict[str, float]] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


class _LRU:
    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, make: Any) -> Any:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = make()
        self.items[key] = value
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


class StoreSlices:
    """Read-only, cached slices of one trace store (one run or a study), shaped for the explorer's views.

    Only view data shaping lives here (which variables, which run, averaging for a map or a curve);
    every derived number comes from :mod:`mmlens.stats`.

    Works the same on a single run (no ``dataset``/``seed`` dims: the root attrs name them) and
    on a study (``dataset``/``seed`` dims). Every method returns small in-memory arrays; the
    store itself is only sliced, so a lazily opened zarr store is read chunk by chunk. Results
    that do not depend on the selected layer/head (heatmaps, curves, one image's maps) are
    cached, so moving the layer or head selectors touches no storage at all.

    Parameters
    ----------
    store
        A path, ``xarray.DataTree`` or group ``Dataset`` (see :func:`as_tree`).
    fg_max_images
        Foreground-attention heatmaps and curves need the full ``cls_attention`` grids; they
        are averaged over at most this many images per dataset (the first ones, which share a
        chunk), so that a 2000-image store stays interactive. ``None`` uses all images.
    n_boot
        Bootstrap replicates of the curves' bands.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> view = StoreSlices(example_tree(n_images=4, n_layers=3, n_heads=2))
    >>> view.datasets, view.layers("vision"), view.variants
    (['synthetic'], [0, 1, 2], ['full', 'zeroshot'])
    >>> view.head_map("vision", "prompt_mass", "synthetic", 0, "full").dims
    ('layer', 'head')
    """

    def __init__(self, store: Any, *, fg_max_images: int | None = 256, n_boot: int = 1000) -> None:
        import os

        self.tree = as_tree(store)
        #: the path the store was opened from (``None`` for an in-memory tree); lets a view re-open it
        self.source = store if isinstance(store, (str, os.PathLike)) else None
        self.attrs: dict[str, Any] = dict(self.tree.attrs)
        self.groups: dict[str, xr.Dataset] = {
            name: node.to_dataset() for name, node in self.tree.children.items() if name in schema.GROUPS
        }
        if not any(g in self.groups for g in ("vision", "text", "logits")):
            raise MissingData(
                f"expected a trace store with a vision, text or logits group, found groups "
                f"{sorted(self.tree.children) or 'none'}; open the root of a store written by mmlens.trace"
            )
        self.fg_max_images = fg_max_images
        self.n_boot = n_boot
        self._cache = _LRU(256)
        self._images = _LRU(16)

    # ------------------------------------------------------------------------------------------
    # choices (read from the coordinates)
    # ------------------------------------------------------------------------------------------

    @property
    def method(self) -> str:
        """The prompt method (root attr ``method``)."""
        return str(self.attrs.get("method", "unknown"))

    @property
    def datasets(self) -> list[str]:
        """Dataset names: the ``dataset`` coordinate of a study, else the root attr ``dataset``."""
        for ds in self.groups.values():
            if "dataset" in ds.dims:
                return [str(v) for v in ds["dataset"].values]
        return [str(self.attrs.get("dataset", "unknown"))]

    @property
    def seeds(self) -> list[int]:
        """Seeds: the ``seed`` coordinate of a study, else the root attr ``seed``."""
        for ds in self.groups.values():
            if "seed" in ds.dims:
                return [int(v) for v in ds["seed"].values]
        seed = self.attrs.get("seed", 0)
        try:
            return [int(seed)]
        except (TypeError, ValueError):
            return [0]

    @property
    def variants(self) -> list[str]:
        """Variants present in any group, in schema order (``full``, ``zeroshot``, ablations)."""
        found: set[str] = set()
        for ds in self.groups.values():
            if "variant" in ds.coords:
                found.update(str(v) for v in ds["variant"].values)
        ordered = [v for v in schema.VARIANTS if v in found]
        return ordered + sorted(found - set(ordered))

    @property
    def prompted_variant(self) -> str | None:
        """``full`` when present (the prompted model)."""
        return schema.PROMPTED_VARIANT if schema.PROMPTED_VARIANT in self.variants else None

    @property
    def reference_variant(self) -> str | None:
        """``zeroshot`` when present (the same images without prompts)."""
        return schema.REFERENCE_VARIANT if schema.REFERENCE_VARIANT in self.variants else None

    def has(self, group: str, *variables: str) -> bool:
        """Whether ``group`` exists and holds all ``variables``."""
        ds = self.groups.get(group)
        return ds is not None and all(v in ds.variables for v in variables)

    def require(self, group: str, *variables: str, why: str = "") -> xr.Dataset:
        """The group Dataset, or :class:`MissingData` naming what is missing."""
        ds = self.groups.get(group)
        purpose = f" ({why})" if why else ""
        if ds is None:
            raise MissingData(f"this store has no '{group}' group{purpose}; groups found: {sorted(self.groups)}")
        missing = [v for v in variables if v not in ds.variables]
        if missing:
            raise MissingData(
                f"'{group}' holds no {', '.join(missing)}{purpose}; trace with the outputs that produce "
                f"{'them' if len(missing) > 1 else 'it'} (see docs/store_schema.md)"
            )
        return ds

    def layers(self, tower: str = "vision") -> list[int]:
        """Layer indices (0-based) of a tower; empty when the tower is missing."""
        ds = self.groups.get(tower)
        return [] if ds is None or "layer" not in ds.coords else [int(v) for v in ds["layer"].values]

    def heads(self, tower: str = "vision") -> list[int]:
        """Head indices of a tower; empty when the tower is missing."""
        ds = self.groups.get(tower)
        return [] if ds is None or "head" not in ds.coords else [int(v) for v in ds["head"].values]

    def layer_kinds(self, tower: str = "vision") -> dict[int, str]:
        """``{layer: layer_kind}`` (``injected``/``carried``/``none``) from the ``layer_kind`` coord."""
        ds = self.groups.get(tower)
        if ds is None or "layer_kind" not in ds.coords:
            return {}
        return {int(k): str(v) for k, v in zip(ds["layer"].values, ds["layer_kind"].values)}

    @property
    def images(self) -> list[int]:
        """Image indices (``image`` coordinate of the vision or logits group)."""
        for name in ("vision", "logits"):
            ds = self.groups.get(name)
            if ds is not None and "image" in ds.coords:
                return [int(v) for v in ds["image"].values]
        return []

    def classes(self, dataset: str) -> dict[str, int]:
        """``{classname: class index}`` of one dataset (text group, else logits group)."""
        for name in ("text", "logits"):
            ds = self.groups.get(name)
            if ds is None or "class" not in ds.coords:
                continue
            idx = [int(v) for v in ds["class"].values]
            if "classname" not in ds.coords:
                return {f"class {k}": k for k in idx}
            names = per_dataset(ds["classname"], dataset).values
            # a study pads datasets with fewer classes with empty names (mmlens.store.study.combine_runs)
            return {f"{k}: {n}": k for k, n in zip(idx, names) if str(n)}
        return {}

    def image_info(self, dataset: str, image: int) -> dict[str, Any]:
        """Ground truth of one image: ``label``, ``classname``, ``split``, ``path`` (``None`` when absent)."""
        return dict(self._cache.get(("image_info", dataset, image), lambda: self._image_info(dataset, image)))

    def _image_info(self, dataset: str, image: int) -> dict[str, Any]:
        ds = self.groups.get("vision", self.groups.get("logits"))
        out: dict[str, Any] = {"label": None, "classname": None, "split": None, "path": None}
        if ds is None:
            return out
        for key in out:
            if key in ds.coords and "image" in ds.coords[key].dims:
                value = per_dataset(ds.coords[key], dataset).sel(image=image).values.item()
                out[key] = int(value) if key == "label" else str(value)
        return out

    # ------------------------------------------------------------------------------------------
    # layer x head maps
    # ------------------------------------------------------------------------------------------

    def head_map(
        self,
        tower: str,
        measure: str,
        dataset: str,
        seed: int,
        variant: str,
        *,
        minus_reference: bool = False,
    ) -> xr.DataArray:
        """A (layer, head) map of ``measure`` averaged over the images (vision) or classes (text).

        Parameters
        ----------
        tower
            ``vision`` or ``text``.
        measure
            One of :data:`HEAD_MEASURES`: ``prompt_mass`` (α at the readout query),
            ``bias_ratio`` (‖β_h‖ / ‖(a)_h‖ per head), ``foreground_attention`` (Σ_j f_j â_cls,j
            with f the foreground fraction of patch j; vision only).
        dataset, seed, variant
            The run to show.
        minus_reference
            Subtract the same map of the ``zeroshot`` variant (the effect of the prompts).

        Returns
        -------
        xarray.DataArray
            Dims ``(layer, head)`` with ``layer_kind``; attrs ``label`` and ``n_items`` (how
            many images/classes were averaged).

        Raises
        ------
        MissingData
            When the store lacks the variables the measure needs.
        """
        key = ("head_map", tower, measure, dataset, seed, variant, minus_reference)
        return self._cache.get(key, lambda: self._head_map(tower, measure, dataset, seed, variant, minus_reference))

    def _head_map(
        self, tower: str, measure: str, dataset: str, seed: int, variant: str, minus_reference: bool
    ) -> xr.DataArray:
        if measure not in HEAD_MEASURES:
            raise ValueError(f"measure must be one of {list(HEAD_MEASURES)}, found {measure!r}")
        if minus_reference:
            ref = self.reference_variant
            if ref is None:
                raise MissingData(f"no '{schema.REFERENCE_VARIANT}' variant to subtract; variants: {self.variants}")
            out = self.head_map(tower, measure, dataset, seed, variant) - self.head_map(
                tower, measure, dataset, seed, ref
            )
            out.attrs = {**self.head_map(tower, measure, dataset, seed, variant).attrs}
            out.attrs["label"] = f"Δ {out.attrs['label']} ({variant} − {ref})"
            return out
        label = HEAD_MEASURES[measure][0]
        cube = self._cache.get(("head_cube", tower, measure), lambda: self._head_cube(tower, measure))
        if variant not in cube["variant"].values:
            found = [str(v) for v in cube["variant"].values]
            raise MissingData(f"'{tower}' has no variant {variant!r}; it has {found}")
        run = select_run(cube, dataset=dataset, seed=seed).sel(variant=variant)
        out = run["mean"].transpose("layer", "head").copy()
        out.attrs = {"label": label, "n_items": int(run["n_items"]), "item": _ITEM[tower], "measure": measure,
                     "tower": tower}
        return out

    def _head_cube(self, tower: str, measure: str) -> xr.Dataset:
        """Means over images/classes of a head measure for every run and variant, read in one pass.

        One dask computation over the whole variable costs about as much as one dataset's (the
        per-chunk overhead dominates), so every later dataset or variant change is free.
        """
        label, needed = HEAD_MEASURES[measure]
        if measure == "foreground_attention" and tower != "vision":
            raise MissingData("foreground attention is a vision-tower measure (patches have masks, words do not)")
        ds = self.require(tower, *needed, why=label)
        item = _ITEM[tower]
        if measure == "foreground_attention":
            ds = self._fg_subset(ds)
        values = _per_item_head_measure(ds, measure)
        real = values.notnull().any(["layer", "head"])  # padded images/classes of a study are all NaN
        return xr.Dataset({"mean": values.mean(item, skipna=True), "n_items": real.sum(item)}).compute()

    def _fg_subset(self, ds: xr.Dataset) -> xr.Dataset:
        n = ds.sizes["image"]
        if self.fg_max_images is not None and n > self.fg_max_images:
            return ds.isel(image=slice(0, self.fg_max_images))
        return ds

    # ------------------------------------------------------------------------------------------
    # per-layer curves with bands
    # ------------------------------------------------------------------------------------------

    def layer_curve(self, tower: str, measure: str, variants: list[str] | None = None) -> xr.Dataset:
        """Per-layer ``measure`` with a 95% band across datasets (and seeds) for some variants.

        The unit of replication is a run (dataset x seed): each run's value is the mean over
        its images (vision) or classes (text) (and heads); the curve is the mean over runs and
        the band a 95% interval of it (:func:`mmlens.stats.bootstrap_ci`: seeds crossed with
        datasets; a variance-components t interval with few runs, the attr ``interval`` says
        which). A store with a single run resamples its images/classes instead.

        Parameters
        ----------
        tower
            ``vision`` or ``text``.
        measure
            One of :data:`LAYER_MEASURES`.
        variants
            Variants to include (default: the prompted and reference variants present).

        Returns
        -------
        xarray.Dataset
            ``mean``, ``lower``, ``upper`` with dims ``(variant, layer)`` and ``layer_kind``;
            attrs ``label``, ``units`` (what the band is across), ``n_units`` and ``interval`` (its method).
        """
        variants = tuple(variants or [v for v in (self.prompted_variant, self.reference_variant) if v] or self.variants)
        key = ("layer_curve", tower, measure, variants)
        return self._cache.get(key, lambda: self._layer_curve(tower, measure, variants))

    def _layer_curve(self, tower: str, measure: str, variants: tuple[str, ...]) -> xr.Dataset:
        if measure not in LAYER_MEASURES:
            raise ValueError(f"measure must be one of {list(LAYER_MEASURES)}, found {measure!r}")
        label, needed = LAYER_MEASURES[measure]
        if measure == "foreground_attention" and tower != "vision":
            raise MissingData("foreground attention is a vision-tower measure (patches have masks, words do not)")
        ds = self.require(tower, *needed, why=label)
        present = [v for v in variants if v in ds["variant"].values]
        if not present:
            raise MissingData(f"'{tower}' holds none of the variants {list(variants)}; found {self.variants}")
        ds = ds.sel(variant=present)
        item = _ITEM[tower]
        if measure == "foreground_attention":
            ds = self._fg_subset(ds)
        per_item = _per_item_layer_measure(ds, measure)  # (..., item, layer)
        run_dims = [d for d in ("seed", "dataset") if d in per_item.dims]
        n_runs = math.prod(per_item.sizes[d] for d in run_dims)
        if n_runs > 1:
            units = per_item.mean(item, skipna=True).load()
            unit_dims, n_units = run_dims, n_runs
            n_seeds, n_sets = per_item.sizes.get("seed", 1), per_item.sizes.get("dataset", 1)
            what = "datasets" if n_seeds == 1 else "seeds" if n_sets == 1 else "runs (dataset × seed)"
        else:
            units = per_item.squeeze(run_dims, drop=True).load()
            plural = {"image": "images", "class": "classes"}[item]
            unit_dims, n_units, what = [item], int(units.sizes[item]), f"{plural} of one run"
        from mmlens.stats import bootstrap_ci

        band = bootstrap_ci(units, dims=unit_dims, n_boot=self.n_boot, seed=0, nested={})
        out = xr.Dataset({
            "mean": band.sel(estimate="mean", drop=True),
            "lower": band.sel(estimate="low", drop=True),
            "upper": band.sel(estimate="high", drop=True),
        })
        if "layer_kind" in ds.coords:
            out = out.assign_coords(layer_kind=ds["layer_kind"])
        out.attrs = {"label": label, "units": what, "n_units": n_units, "measure": measure,
                     "interval": band.attrs["interval_method"]}
        return out.transpose("variant", "layer")

    # ------------------------------------------------------------------------------------------
    # one image
    # ------------------------------------------------------------------------------------------

    def image_slice(self, dataset: str, seed: int, image: int, layer: int, head: int) -> ImageSlice:
        """The selected image's attention maps (all variants), mask and attributions at one layer/head.

        The image's full block (every layer, head and variant) is read once and cached, so that
        changing layer or head afterwards reads nothing from storage.
        """
        block = self._images.get((dataset, seed, image), lambda: self._image_block(dataset, seed, image))
        info = self.image_info(dataset, image)
        out = ImageSlice(dataset=dataset, image=image, layer=layer, head=head, **info)
        out.messages = list(block["messages"])
        if info["label"] is not None and info["label"] < 0:
            out.messages.append(f"{dataset} has no image {image} (padding of a study whose datasets differ in size)")
        att = block.get("attention")
        if att is not None:
            if layer not in att["layers"] or head not in att["heads"]:
                out.messages.append(f"layer {layer} / head {head} not in this store's vision group")
            else:
                li, hi = att["layers"].index(layer), att["heads"].index(head)
                out.attention = {v: att["values"][k, li, hi] for k, v in enumerate(att["variants"])}
        out.foreground = block.get("foreground")
        if out.foreground is not None:
            out.foreground_attention = {v: float(np.nansum(a * out.foreground)) for v, a in out.attention.items()}
        for name, amap in block.get("attribution", {}).items():
            if isinstance(amap, dict):
                if layer in amap:
                    out.attribution[name] = amap[layer]
            else:
                out.attribution[name] = amap
        if "attribution" in self.groups and not out.attribution:
            out.messages.append("no attribution maps for this image")
        prompted = out.attention.get(self.prompted_variant or "", None)
        if prompted is None and out.attention:
            prompted = next(iter(out.attention.values()))
        if prompted is not None:
            for name, amap in out.attribution.items():
                out.agreement[name] = map_agreement(amap, prompted, out.foreground)
        return out

    def image_block(self, dataset: str, seed: int, image: int) -> dict[str, Any]:
        """One image's maps at every layer, head and variant, read once and cached.

        Returns
        -------
        dict
            ``attention``: ``{"variants", "layers", "heads", "values"}`` with values
            ``(variant, layer, head, patch_row, patch_col)``; ``foreground`` ``(patch_row, patch_col)``;
            ``attribution`` ``{name: map or {layer: map}}``; ``path``; ``messages`` (what is missing).
            Keys are absent when the store lacks the data.
        """
        block = self._images.get((dataset, seed, image), lambda: self._image_block(dataset, seed, image))
        return {**block, "path": self.image_info(dataset, image)["path"]}

    def head_denominator(self, tower: str, dataset: str, seed: int, variant: str) -> np.ndarray:
        """Mean ‖(a)_h‖ per (layer, head) over the images/classes: the denominator of ‖β_h‖/‖(a)_h‖."""
        def load() -> np.ndarray:
            ds = self.require(tower, "original_norm", why="‖(a)_h‖")
            da = select_run(ds["original_norm"], dataset=dataset, seed=seed)
            if "variant" in da.dims:
                da = da.sel(variant=variant) if variant in da["variant"].values else da.isel(variant=0)
            da = da.mean(_ITEM[tower], skipna=True).transpose("layer", "head")
            return np.asarray(da.values, dtype=np.float64)

        return self._cache.get(("head_denominator", tower, dataset, seed, variant), load)

    def text_roles_cube(self, dataset: str, seed: int) -> xr.DataArray:
        """EOT attention per key role, dims ``(variant, class, layer, head, key_role)``, loaded once."""
        self.text_roles(dataset, seed, *self._first_text_cell())
        return self._cache.get(("text_roles_all", dataset, seed), lambda: None)

    def _first_text_cell(self) -> tuple[int, int]:
        layers, heads = self.layers("text"), self.heads("text")
        if not layers or not heads:
            raise MissingData("this store has no 'text' group with layers and heads (EOT attention over roles)")
        return layers[0], heads[0]

    def _image_block(self, dataset: str, seed: int, image: int) -> dict[str, Any]:
        block: dict[str, Any] = {"messages": []}
        vision = self.groups.get("vision")
        if vision is None:
            block["messages"].append("no 'vision' group: no attention maps")
            return block
        if "cls_attention" in vision.variables:
            da = select_run(vision["cls_attention"], dataset=dataset, seed=seed).sel(image=image)
            da = da.transpose("variant", "layer", "head", *_GRID)
            block["attention"] = {
                "variants": [str(v) for v in da["variant"].values],
                "layers": [int(v) for v in da["layer"].values],
                "heads": [int(v) for v in da["head"].values],
                "values": np.asarray(da.values, dtype=np.float32),
            }
        else:
            block["messages"].append("'vision' holds no cls_attention: no attention overlay")
        if "foreground" in vision.variables:
            fg = select_run(vision["foreground"], dataset=dataset).sel(image=image).transpose(*_GRID)
            block["foreground"] = np.asarray(fg.values, dtype=np.float32)
        else:
            block["messages"].append("no foreground mask for this store")
        attribution = self.groups.get("attribution")
        if attribution is not None:
            block["attribution"] = self._attribution_maps(attribution, dataset, seed, image)
        return block

    def _attribution_maps(self, ds: xr.Dataset, dataset: str, seed: int, image: int) -> dict[str, Any]:
        """``{name: (patch_row, patch_col) array or {layer: array}}`` of the prompted variant for one image."""
        out: dict[str, Any] = {}
        prompted = self.prompted_variant
        for name, da in ds.data_vars.items():
            if not set(_GRID) <= set(da.dims) or "image" not in da.dims:
                continue
            da = select_run(da, dataset=dataset, seed=seed)
            if image not in da["image"].values:
                continue
            da = da.sel(image=image)
            if "variant" in da.dims:
                da = da.sel(variant=prompted) if prompted in da["variant"].values else da.isel(variant=0)
            extra = [d for d in da.dims if d not in (*_GRID, "layer")]
            if extra:  # e.g. a target-class dim: take the first entry
                da = da.isel({d: 0 for d in extra})
            if "layer" in da.dims:  # maps per layer (attention GradCAM): pick the selected layer later
                da = da.transpose("layer", *_GRID)
                out[str(name)] = {int(ell): np.asarray(v, dtype=np.float32) for ell, v in
                                  zip(da["layer"].values, da.values)}
            else:
                out[str(name)] = np.asarray(da.transpose(*_GRID).values, dtype=np.float32)
        return out

    # ------------------------------------------------------------------------------------------
    # direct effects (the `direct` group, docs/store_schema.md): β's direct effect on the margin
    # ------------------------------------------------------------------------------------------

    def direct_cube(self, tower: str, dataset: str, seed: int) -> xr.DataArray:
        """β's direct effect on the correct-class margin of every image, one run, loaded once.

        The numbers are :func:`mmlens.stats.direct_effects` (``kind="bias"``, ``target="margin"``)
        of the selected run; only the run is selected here.

        Returns
        -------
        xarray.DataArray
            Dims ``(variant, image, layer, head)``; ``head`` has the single value -1 when the store's
            bias is one vector per layer (bias tuning, ``bias_source == "learned"``).

        Raises
        ------
        MissingData
            When the store has no ``direct`` group (traced without ``--direct-effects``).
        """
        key = ("direct_cube", tower, dataset, seed)
        return self._cache.get(key, lambda: self._direct_cube(tower, dataset, seed))

    def _direct_run(self, dataset: str, seed: int) -> xr.Dataset:
        ds = self.groups.get("direct")
        if ds is None:
            raise MissingData(DIRECT_MISSING)
        run = select_run(ds, dataset=dataset, seed=seed)  # also slices a study's (dataset, image) coords
        return run.assign_attrs({**self.attrs, **run.attrs, "dataset": dataset, "seed": seed})

    def _direct_cube(self, tower: str, dataset: str, seed: int) -> xr.DataArray:
        from mmlens import stats

        run = self._direct_run(dataset, seed)
        if tower not in set(str(t) for t in run["tower"].values):
            raise MissingData(f"the 'direct' group holds no {tower} components")
        da = stats.direct_effects(run, tower=tower, kind="bias", target="margin")
        if "head" not in da.dims:  # one learned b per layer (bias tuning): one column, head -1
            da = da.expand_dims(head=[-1], axis=-1)
        return da.transpose("variant", "image", "layer", "head").load()

    def direct_map(self, tower: str, dataset: str, seed: int, variant: str,
                   images: list[int] | None = None) -> xr.DataArray:
        """β's direct effect on the margin per (layer, head): the mean over ``images`` (all by default).

        Parameters
        ----------
        tower
            ``vision`` or ``text``.
        dataset, seed, variant
            The run and variant shown.
        images
            Image indices averaged (the explorer's class or image selection); ``None`` for all.
            Images without a label (NaN) are left out.

        Returns
        -------
        xarray.DataArray
            Dims ``(layer, head)``; attrs ``label``, ``n_items`` (images averaged), ``per_head``.
        """
        cube = self.direct_cube(tower, dataset, seed)
        if variant not in cube["variant"].values:
            raise MissingData(f"'direct' has no variant {variant!r}; it has {[str(v) for v in cube['variant'].values]}")
        da = cube.sel(variant=variant)
        if images is not None:
            da = da.sel(image=[i for i in images if i in da["image"].values])
        real = da.notnull().any(["layer", "head"])
        out = da.mean("image", skipna=True).transpose("layer", "head")
        per_head = not (out["head"].values == -1).all()
        out.attrs = {"label": "direct effect of β on the margin", "n_items": int(real.sum()), "tower": tower,
                     "per_head": per_head, "variant": variant}
        return out

    def direct_interval(self, tower: str, dataset: str, seed: int) -> xr.DataArray:
        """:func:`mmlens.stats.bias_margin_effect` of one run: mean and 95 % interval, variant ``full``.

        Returns
        -------
        xarray.DataArray
            Dims ``(layer, head, estimate)`` (``head`` -1 for a learned per-layer bias).
        """
        def load() -> xr.DataArray:
            from mmlens import stats

            out = stats.bias_margin_effect(self._direct_run(dataset, seed), tower=tower, per_head=True)
            if "head" not in out.dims:
                out = out.expand_dims(head=[-1])
            return out.transpose("layer", "head", "estimate").load()

        return self._cache.get(("direct_interval", tower, dataset, seed), load)

    def direct_images(self, dataset: str, label: int | None) -> list[int]:
        """Images of one dataset whose label is ``label`` (the explorer's selected class)."""
        ds = self.groups.get("direct", self.groups.get("vision", self.groups.get("logits")))
        if ds is None or "label" not in ds.coords or label is None:
            return []
        labels = per_dataset(ds.coords["label"], dataset)
        return [int(i) for i, v in zip(labels["image"].values, labels.values) if int(v) == int(label)]

    # ------------------------------------------------------------------------------------------
    # text: attention over token roles
    # ------------------------------------------------------------------------------------------

    def text_roles(self, dataset: str, seed: int, layer: int, head: int) -> xr.DataArray:
        """EOT attention per key role for every class and variant at one layer/head.

        Returns
        -------
        xarray.DataArray
            Dims ``(variant, class, key_role)``; rows sum to 1 over the roles (raw attention).
        """
        key = ("text_roles_all", dataset, seed)

        def load() -> xr.DataArray:
            ds = self.require("text", "attention_by_role", why="EOT attention over token roles")
            da = select_run(ds["attention_by_role"], dataset=dataset, seed=seed)
            return da.transpose("variant", "class", "layer", "head", "key_role").load()

        full = self._cache.get(key, load)
        if layer not in full["layer"].values or head not in full["head"].values:
            raise MissingData(f"layer {layer} / head {head} not in this store's text group")
        return full.sel(layer=layer, head=head)

    # ------------------------------------------------------------------------------------------
    # accuracy and route-ablation table
    # ------------------------------------------------------------------------------------------

    def accuracy(self) -> Any:
        """Top-1 accuracy (%) per dataset, seed and variant on base and novel images, with HM.

        Computed from the stored logits (no model): an image of the ``base`` split is classified
        among the base classes, a ``novel`` one among the novel classes (the base-to-novel
        protocol), ``all`` among every traced class. Route ablations are simply more variants.

        Returns
        -------
        pandas.DataFrame
            Columns ``dataset, seed, variant, base, novel, HM, all`` (NaN where a split is empty).
        """
        return self._cache.get(("accuracy",), self._accuracy)

    def _accuracy(self) -> Any:
        from mmlens.stats import accuracy_table

        ds = self.require("logits", "logits", why="accuracy table")
        if "label" not in ds.coords:
            raise MissingData("'logits' holds no 'label' coordinate: cannot score predictions")
        return accuracy_table(self.groups, self.datasets, self.seeds)


# ----------------------------------------------------------------------------------------------
# measures
# ----------------------------------------------------------------------------------------------


def _per_item_head_measure(ds: xr.Dataset, measure: str) -> xr.DataArray:
    """(..., item, layer, head) values of a head measure, lazily (mmlens.stats where it defines them)."""
    from mmlens import stats

    if measure == "prompt_mass":
        return stats.prompt_mass(ds).sel(measure="readout", drop=True)
    if measure == "bias_ratio":
        return stats.bias_head_ratio(ds)
    if measure == "foreground_attention":
        return stats.foreground_attention(ds).sel(measure="attention", drop=True)
    raise ValueError(f"unknown head measure {measure!r}")


def _per_item_layer_measure(ds: xr.Dataset, measure: str) -> xr.DataArray:
    """(..., item, layer) values of a layer measure, lazily (mmlens.stats)."""
    from mmlens import stats

    if measure == "prompt_mass":
        return stats.prompt_mass(ds).sel(measure="readout", drop=True).mean("head")
    if measure == "bias_norm_ratio":
        return stats.bias_norm_ratio(ds).sel(measure="bias_over_original", drop=True)
    if measure == "bias_residual_ratio":
        return stats.bias_norm_ratio(ds).sel(measure="bias_over_residual", drop=True)
    if measure == "foreground_attention":
        return stats.foreground_attention(ds).sel(measure="attention", drop=True).mean("head")
    raise ValueError(f"unknown layer measure {measure!r}")


def available(view: StoreSlices, tower: str, names: Mapping[str, tuple[str, tuple[str, ...]]]) -> list[str]:
    """Measures of ``names`` whose variables ``tower`` holds (others would show a message)."""
    out = []
    for name, (_, needed) in names.items():
        if name == "foreground_attention" and tower != "vision":
            continue
        if view.has(tower, *needed):
            out.append(name)
    return out


#: The former name of :class:`StoreSlices` (it serves single runs as well as studies).
StudyView = StoreSlices
