"""Prompt-bias statistics: how large β is, and how constant it is (a dataset bias)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from mmlens.stats._common import group_of, require, stack_measures, with_provenance
from mmlens.stats.elementary import safe_ratio

__all__ = ["bias_alignment", "bias_consistency", "bias_head_ratio", "bias_norm_ratio"]


def bias_norm_ratio(data: xr.Dataset | xr.DataTree, *, tower: str = "vision") -> xr.DataArray:
    """Size of the block's bias term relative to the original path and to the residual stream.

    The bias term is a prompt method's β, or bias tuning's learned b^ℓ for stores with
    ``bias_source="learned"`` (docs/math.md, "Bias tuning"): the same ratio compares both.

    ``measure="bias_over_original"``: ``‖β‖ / ‖(a)‖``, with ``(a) = Σ_h (a)_h`` the original path
    (``bias_norm / original_total_norm``); ``"bias_over_residual"``: ``‖β‖ / ‖x‖`` with ``x`` the
    block input at the readout query (``bias_norm / residual_norm``).

    Returns
    -------
    xarray.DataArray
        (variant, image/class, layer, measure); 0 for prompt-free variants.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> r = bias_norm_ratio(example_tree())
    >>> r.measure.values.tolist(), float(r.sel(variant="zeroshot").max())
    (['bias_over_original', 'bias_over_residual'], 0.0)
    """
    ds = group_of(data, tower)
    require(ds, ["bias_norm", "original_total_norm", "residual_norm"], "bias_norm_ratio")
    out = stack_measures(
        {
            "bias_over_original": ds["bias_norm"] / ds["original_total_norm"],
            "bias_over_residual": ds["bias_norm"] / ds["residual_norm"],
        }
    )
    return with_provenance(out, ds, "bias_norm_ratio", "|beta| / |(a)| and |beta| / |x| at the readout query")


def bias_head_ratio(data: xr.Dataset | xr.DataTree, *, tower: str = "vision") -> xr.DataArray:
    """Per-head size of the bias term relative to that head's original path: ``‖β_h‖ / ‖(a)_h‖``.

    ``bias_head_norm / original_norm``; NaN where a head's original path is 0 (nothing to compare with).

    Returns
    -------
    xarray.DataArray
        (variant, image/class, layer, head).

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> r = bias_head_ratio(example_tree())
    >>> r.dims, float(r.sel(variant="zeroshot").max())
    (('variant', 'image', 'layer', 'head'), 0.0)
    """
    ds = group_of(data, tower)
    require(ds, ["bias_head_norm", "original_norm"], "bias_head_ratio")
    out = safe_ratio(ds["bias_head_norm"], ds["original_norm"])
    return with_provenance(out, ds, "bias_head_ratio", "|beta_h| / |(a)_h| per head at the readout query")


def bias_consistency(data: xr.Dataset | xr.DataTree, *, tower: str = "vision") -> xr.DataArray:
    """How constant the prompt bias β is: cosines within a class, across classes, across datasets.

    With ``u_i = β_i / ‖β_i‖`` the unit bias of image i (images with ``β = 0`` or NaN are left
    out), every cosine is a mean over pairs of distinct images, computed from sums in linear time
    (``Σ_{i≠j} u_i·u_j = ‖Σ u‖² - n``):

    - ``within_class``: mean ``u_i·u_j`` over pairs with the same label;
    - ``across_classes``: over pairs with different labels (same dataset);
    - ``across_datasets``: pairs of one image of this dataset and one of another dataset (same
      seed, variant, layer); NaN without a ``dataset`` dim of size ≥ 2;
    - ``dataset_mean_share``: share of β's mean square that its dataset mean explains,
      ``‖μ‖² / mean_i ‖β_i‖² = 1 - mean_i ‖β_i - μ‖² / mean_i ‖β_i‖²`` with ``μ = mean_i β_i``
      (1 when β is constant; what ``constant_bias`` keeps).

    For the text tower the items are the class prompts (no within-class pairs: NaN).

    Parameters
    ----------
    data
        A group with the β vectors (``bias``, traced with ``store_bias_vectors=True``) or a tree.
    tower
        Which tower when ``data`` is a tree.

    Returns
    -------
    xarray.DataArray
        (dataset, [seed], variant, layer, measure); a single run gets a ``dataset`` dim of size 1
        named after its ``dataset`` attribute.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> c = bias_consistency(example_tree(n_images=16)).sel(variant="full", dataset="synthetic")
    >>> c.sel(measure="within_class").mml.injected_layers().values.round(2).tolist()
    [0.91, 0.85]
    """
    ds = group_of(data, tower)
    require(ds, ["bias"], "bias_consistency", "trace with store_bias_vectors=True to keep the beta vectors")
    beta = ds["bias"]
    item = "image" if "image" in beta.dims else "class"
    if "dataset" not in beta.dims:
        beta = beta.expand_dims(dataset=[str(ds.attrs.get("dataset", "dataset"))])
    labels = _labels(ds, beta, item)

    norm = np.sqrt((beta**2).sum("channel", skipna=False))
    valid = (norm > 0) & np.isfinite(norm)
    unit = (beta / norm.where(valid)).where(valid, 0.0)
    w = valid.astype(np.float64)

    classes = np.unique(labels.values[labels.values >= 0]) if labels.size else np.array([], dtype=np.int64)
    onehot = (labels == xr.DataArray(classes, dims="label_class")).astype(np.float64)
    s_class = xr.dot(unit, onehot, dim=item)  # Σ u over each class: (..., channel, label_class)
    n_class = xr.dot(w, onehot, dim=item)
    s_all = unit.sum(item)
    n_all = w.sum(item)

    sq_class = (s_class**2).sum("channel")
    within = safe_ratio((sq_class - n_class).sum("label_class"), (n_class * (n_class - 1)).sum("label_class"))
    sq_all = (s_all**2).sum("channel")
    across_classes = safe_ratio(sq_all - sq_class.sum("label_class"), n_all**2 - (n_class**2).sum("label_class"))

    if beta.sizes["dataset"] >= 2:
        s_rest = s_all.sum("dataset") - s_all
        n_rest = n_all.sum("dataset") - n_all
        across_datasets = safe_ratio((s_all * s_rest).sum("channel"), n_all * n_rest)
    else:
        across_datasets = xr.full_like(within, np.nan)

    b = beta.where(valid)
    mean_vec = b.mean(item)
    share = safe_ratio((mean_vec**2).sum("channel", skipna=False), (b**2).sum("channel", skipna=False).mean(item))

    out = stack_measures(
        {
            "within_class": within,
            "across_classes": across_classes,
            "across_datasets": across_datasets,
            "dataset_mean_share": share,
        }
    )
    return with_provenance(
        out,
        ds,
        "bias_consistency",
        "mean cosine of beta over pairs of distinct images; share = |mean beta|^2 / mean |beta|^2",
        item=item,
    )


def bias_alignment(prompted: xr.Dataset | xr.DataTree, learned: xr.Dataset | xr.DataTree, *,
                   tower: str = "vision", variant: str = "full") -> xr.DataArray:
    """Do a prompt method and bias tuning learn the same direction? Cosine of MaPLe's mean β with b.

    With ``μ_d`` the mean of the prompt method's β over the items (images / class prompts) of
    dataset d, and ``b_d`` bias tuning's learned bias of dataset d (its mean over items: it is one
    vector), per (dataset, [seed]) × layer:

    - ``same_dataset``: ``cos(μ_d, b_d)``;
    - ``other_datasets``: mean over d' ≠ d of ``cos(μ_d, b_d')`` (same seed and layer): the cosine
      a direction shared by every dataset would give; NaN with a single dataset;
    - ``chance``: ``1/√C`` with C the width (channels), the standard deviation of the cosine of two
      independent random directions. Two unrelated vectors give ``|cos|`` of this order.

    Seeds are paired by their ``seed`` coordinate (separate trainings of the two methods). NaN
    where either vector is 0 (blocks without prompts or bias).

    Parameters
    ----------
    prompted, learned
        Stores (trees) or groups with the ``bias`` vectors (``store_bias_vectors=True``) of a prompt
        method (``bias_source="prompt"``) and of bias tuning (``bias_source="learned"``).
    tower
        Which tower when trees are given.
    variant
        The traced variant compared (the models as trained: ``full``).

    Returns
    -------
    xarray.DataArray
        (dataset, [seed], layer, measure) with ``layer_kind`` from ``prompted``.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> tree = example_tree(n_images=8)
    >>> cos = bias_alignment(tree, tree)  # a store against itself: the mean β has cosine 1 with itself
    >>> float(cos.sel(measure="same_dataset").mml.injected_layers().min().round(6))
    1.0
    """
    means = []
    for data, want in ((prompted, "prompt"), (learned, "learned")):
        ds = group_of(data, tower)
        require(ds, ["bias"], "bias_alignment", "trace with store_bias_vectors=True to keep the bias vectors")
        found = str(ds.coords["bias_source"].item()) if "bias_source" in ds.coords else None
        if found is not None and found != want:
            raise ValueError(f"bias_alignment: expected a store with bias_source={want!r} in this argument, found "
                             f"{found!r}; pass the prompt method's store first and bias tuning's second")
        beta = ds["bias"].sel(variant=variant, drop=True)
        if "dataset" not in beta.dims:
            beta = beta.expand_dims(dataset=[str(ds.attrs.get("dataset", "dataset"))])
        item = "image" if "image" in beta.dims else "class"
        beta = beta.reset_coords(drop=True)
        means.append(beta.mean(item))  # NaN-padded items (studies) are skipped
    mu, b = xr.align(*means, join="inner")
    if mu.sizes["layer"] == 0 or mu.sizes["dataset"] == 0:
        raise ValueError("bias_alignment: the two stores share no dataset and layer; compare runs of the same data")

    def unit(v: xr.DataArray) -> xr.DataArray:
        norm = np.sqrt((v**2).sum("channel"))
        return v / norm.where(norm > 0)

    u_mu, u_b = unit(mu), unit(b)
    same = (u_mu * u_b).sum("channel", skipna=False)
    if mu.sizes["dataset"] >= 2:
        cross = xr.dot(u_mu, u_b.rename(dataset="other"), dim="channel")  # (dataset, other, ...)
        off = xr.DataArray(mu["dataset"].values[:, None] != mu["dataset"].values[None, :],
                           dims=("dataset", "other"))
        other = cross.where(off).mean("other")
    else:
        other = xr.full_like(same, np.nan)
    chance = xr.full_like(same, 1.0 / np.sqrt(mu.sizes["channel"]))
    out = stack_measures({"same_dataset": same, "other_datasets": other, "chance": chance})
    source = group_of(prompted, tower)
    if "layer_kind" in source.coords:
        out = out.assign_coords(layer_kind=source.coords["layer_kind"].reset_coords(drop=True).sel(layer=out["layer"]))
    return with_provenance(out, source, "bias_alignment",
                  "cos(mean_i beta_i of the prompt method, learned bias b of bias tuning), same dataset and layer")


def _labels(ds: xr.Dataset, beta: xr.DataArray, item: str) -> xr.DataArray:
    """Integer labels of the items, broadcast to (dataset?, item); -1 marks padding."""
    if item == "class":
        lab = xr.DataArray(np.arange(beta.sizes["class"]), dims="class")
    else:
        if "label" not in ds.coords:
            raise ValueError("bias_consistency needs the 'label' coordinate on 'image' to group images by class")
        lab = ds.coords["label"].load()
        lab = lab.fillna(-1).astype(np.int64) if lab.dtype.kind == "f" else lab
    lab = lab.reset_coords(drop=True)
    if "dataset" in beta.dims and "dataset" not in lab.dims:
        lab = lab.expand_dims(dataset=beta.coords["dataset"].values)
    return lab.drop_vars([c for c in lab.coords if c not in lab.dims])
