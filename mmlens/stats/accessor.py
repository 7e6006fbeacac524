"""The ``.mml`` accessor on xarray Datasets, DataArrays and DataTrees: the selections of :mod:`mmlens.store.select`
and the statistics of :mod:`mmlens.stats` as methods.

It sits above both (store <- stats <- accessor), so neither imports the other's users. Importing
:mod:`mmlens.stats` registers it; so does resolving ``mmlens.open``, ``mmlens.trace`` and the other
store-producing names after ``import mmlens``.
"""

from __future__ import annotations

from typing import Any

import xarray as xr

from mmlens.stats.attention import foreground_attention, prompt_background_similarity, prompt_mass, text_reliance
from mmlens.stats.bias import bias_consistency, bias_norm_ratio
from mmlens.stats.direct import bias_gain_share, bias_margin_effect, direct_effects
from mmlens.stats.summary import bootstrap_ci, summarize
from mmlens.store import schema
from mmlens.store.select import (
    check_names,
    group_dataset,
    layers_of_kind,
    prompts,
    readout,
    with_vs_without,
)

__all__ = ["MmlDataArrayAccessor", "MmlDatasetAccessor", "MmlTreeAccessor"]


# ----------------------------------------------------------------------------------------------
# Dataset accessor
# ----------------------------------------------------------------------------------------------


@xr.register_dataset_accessor("mml")
class MmlDatasetAccessor:
    """``ds.mml``: selections by label and the statistics of docs/math.md on one group of a trace store.

    Dims and token roles are checked when the accessor is first used, so a Dataset with foreign
    names fails early with a message saying what was expected.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> ds = example_tree()["vision"].to_dataset()
    >>> ds.mml.injected_layers().sizes["layer"], ds.mml.prompts()["attention_by_role"].dims
    (2, ('variant', 'image', 'layer', 'head'))
    """

    def __init__(self, ds: xr.Dataset) -> None:
        check_names(ds)
        self._ds = ds

    @property
    def group(self) -> str:
        """Which store group this Dataset is (``vision``, ``text``, ``logits``)."""
        return schema.infer_group(self._ds)

    def readout(self) -> xr.Dataset:
        """Variables at the readout query (``[cls]`` / EOT): all-query outputs lose their ``query`` dim."""
        return readout(self._ds, self.group)

    def prompts(self) -> xr.Dataset:
        """Only what concerns prompt tokens: ``key_role="prompt"`` and queries with ``token_role="prompt"``."""
        return prompts(self._ds)

    def injected_layers(self) -> xr.Dataset:
        """Layers where fresh learned prompts enter (``layer_kind="injected"``)."""
        return layers_of_kind(self._ds, "injected")

    def carried_layers(self) -> xr.Dataset:
        """Layers whose prompt slots carry earlier outputs (``layer_kind="carried"``)."""
        return layers_of_kind(self._ds, "carried")

    def with_vs_without(self, prompted: str = schema.PROMPTED_VARIANT, reference: str = schema.REFERENCE_VARIANT):
        """``full - zeroshot`` for every variable with a ``variant`` dim (the others are dropped)."""
        return with_vs_without(self._ds, prompted, reference)

    # statistics (mmlens.stats) -------------------------------------------------------------------

    def prompt_mass(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.prompt_mass`."""
        return prompt_mass(self._ds, **kwargs)

    def bias_norm_ratio(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.bias_norm_ratio`."""
        return bias_norm_ratio(self._ds, **kwargs)

    def bias_consistency(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.bias_consistency`."""
        return bias_consistency(self._ds, **kwargs)

    def foreground_attention(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.foreground_attention`."""
        return foreground_attention(self._ds, **kwargs)

    def prompt_background_similarity(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.prompt_background_similarity`."""
        return prompt_background_similarity(self._ds, **kwargs)

    def text_reliance(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.text_reliance`."""
        return text_reliance(self._ds, **kwargs)

    # direct effects: on the ``direct`` group (without the store, layer groups need its layer_kind)

    def direct_effects(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.direct_effects` (on the ``direct`` group)."""
        return direct_effects(self._ds, **kwargs)

    def bias_margin_effect(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.bias_margin_effect` (on the ``direct`` group)."""
        return bias_margin_effect(self._ds, **kwargs)

    def bias_gain_share(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.bias_gain_share` (on the ``direct`` group)."""
        return bias_gain_share(self._ds, **kwargs)


# ----------------------------------------------------------------------------------------------
# DataArray accessor (statistics results, single variables)
# ----------------------------------------------------------------------------------------------


@xr.register_dataarray_accessor("mml")
class MmlDataArrayAccessor:
    """``da.mml``: the same selections on one variable or statistic, plus summaries.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> alpha = example_tree()["vision"]["prompt_mass"]
    >>> alpha.mml.summarize(average=("head",), n_boot=200).dims
    ('variant', 'layer_kind', 'estimate')
    """

    def __init__(self, da: xr.DataArray) -> None:
        check_names(da)
        self._da = da

    def readout(self, group: str = "vision") -> xr.DataArray:
        """The readout query of an all-query variable (``group`` says which tower it came from)."""
        return readout(self._da, group)

    def prompts(self) -> xr.DataArray:
        """Select ``key_role="prompt"`` and/or prompt queries."""
        return prompts(self._da)

    def injected_layers(self) -> xr.DataArray:
        """Layers with fresh learned prompts."""
        return layers_of_kind(self._da, "injected")

    def carried_layers(self) -> xr.DataArray:
        """Layers whose prompt slots carry earlier outputs."""
        return layers_of_kind(self._da, "carried")

    def with_vs_without(self, prompted: str = schema.PROMPTED_VARIANT, reference: str = schema.REFERENCE_VARIANT):
        """``full - zeroshot``."""
        return with_vs_without(self._da, prompted, reference)

    def summarize(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.summarize`."""
        return summarize(self._da, **kwargs)

    def bootstrap_ci(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`mmlens.stats.bootstrap_ci`."""
        return bootstrap_ci(self._da, **kwargs)


# ----------------------------------------------------------------------------------------------
# DataTree accessor (a whole store)
# ----------------------------------------------------------------------------------------------


@xr.register_datatree_accessor("mml")
class MmlTreeAccessor:
    """``tree.mml``: a store's groups as self-describing Datasets, and statistics by tower.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> tree = example_tree()
    >>> tree.mml.vision.attrs["mmlens_group"]
    'vision'
    """

    def __init__(self, tree: xr.DataTree) -> None:
        self._tree = tree

    @property
    def vision(self) -> xr.Dataset:
        """The ``vision`` group with provenance attrs."""
        return group_dataset(self._tree, "vision")

    @property
    def text(self) -> xr.Dataset:
        """The ``text`` group with provenance attrs."""
        return group_dataset(self._tree, "text")

    @property
    def logits(self) -> xr.Dataset:
        """The ``logits`` group with provenance attrs."""
        return group_dataset(self._tree, "logits")

    def validate(self) -> xr.DataTree:
        """Check the tree against the schema (see :func:`mmlens.store.schema.validate`)."""
        return schema.validate(self._tree)

    def prompt_mass(self, tower: str = "vision", **kwargs: Any) -> xr.DataArray:
        """:func:`mmlens.stats.prompt_mass` on one tower."""
        return group_dataset(self._tree, tower).mml.prompt_mass(**kwargs)

    def bias_norm_ratio(self, tower: str = "vision", **kwargs: Any) -> xr.DataArray:
        """:func:`mmlens.stats.bias_norm_ratio` on one tower."""
        return group_dataset(self._tree, tower).mml.bias_norm_ratio(**kwargs)

    def bias_consistency(self, tower: str = "vision", **kwargs: Any) -> xr.DataArray:
        """:func:`mmlens.stats.bias_consistency` on one tower."""
        return group_dataset(self._tree, tower).mml.bias_consistency(**kwargs)

    def foreground_attention(self, **kwargs: Any) -> xr.DataArray:
        """:func:`mmlens.stats.foreground_attention` (vision)."""
        return self.vision.mml.foreground_attention(**kwargs)

    def prompt_background_similarity(self, **kwargs: Any) -> xr.DataArray:
        """:func:`mmlens.stats.prompt_background_similarity` (vision)."""
        return self.vision.mml.prompt_background_similarity(**kwargs)

    def text_reliance(self, **kwargs: Any) -> xr.DataArray:
        """:func:`mmlens.stats.text_reliance` (text)."""
        return self.text.mml.text_reliance(**kwargs)

    # direct effects take the whole store: the layer kinds come from the tower's group

    def direct_effects(self, **kwargs: Any) -> xr.DataArray:
        """:func:`mmlens.stats.direct_effects` (``layer_kind`` joined from the tower's group)."""
        return direct_effects(self._tree, **kwargs)

    def bias_margin_effect(self, **kwargs: Any) -> xr.DataArray:
        """:func:`mmlens.stats.bias_margin_effect` on a store."""
        return bias_margin_effect(self._tree, **kwargs)

    def bias_gain_share(self, **kwargs: Any) -> xr.DataArray:
        """:func:`mmlens.stats.bias_gain_share` on a store (all layer groups available)."""
        return bias_gain_share(self._tree, **kwargs)
