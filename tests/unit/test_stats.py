"""Statistics on hand-built Datasets with known answers, against brute-force references, lazily with dask."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import xarray as xr

from mmlens import stats
from mmlens.store.synthetic import example_study, example_tree

PROV = {"method": "maple", "dataset": "pets", "weights_sha256": "ab" * 32}


def _vision(**variables):
    """A vision-group Dataset from ``name=(dims, values)``, with the usual coords for the dims used."""
    ds = xr.Dataset(variables, attrs=dict(PROV))
    coords = {}
    if "layer" in ds.dims:
        n = ds.sizes["layer"]
        coords["layer"] = np.arange(n)
        coords["layer_kind"] = ("layer", ["injected"] * (n - n // 2) + ["carried"] * (n // 2))
    if "variant" in ds.dims:
        coords["variant"] = ["full", "zeroshot"][: ds.sizes["variant"]]
    if "image" in ds.dims:
        coords["image"] = np.arange(ds.sizes["image"])
    return ds.assign_coords(coords)


# ------------------------------------------------------------------------------------------------
# prompt mass, bias norm ratio, text reliance
# ------------------------------------------------------------------------------------------------


def test_prompt_mass_stacks_readout_and_other_queries_and_keeps_provenance():
    alpha = np.array([[0.1, 0.2], [0.3, 0.4]])
    ds = _vision(prompt_mass=(("image", "head"), alpha), prompt_mass_other_queries=(("image", "head"), alpha / 2))
    out = stats.prompt_mass(ds)
    assert out.dims == ("image", "head", "measure") and out.name == "prompt_mass"
    np.testing.assert_allclose(out.sel(measure="readout"), alpha)
    np.testing.assert_allclose(out.sel(measure="other_queries"), alpha / 2)
    assert out.attrs["method"] == "maple" and out.attrs["statistic"] == "prompt_mass"
    assert "definition" in out.attrs


def test_prompt_mass_of_all_query_output_is_taken_at_cls():
    ds = _vision(prompt_mass=(("image", "query"), [[0.5, 0.1, 0.9], [0.6, 0.2, 0.8]])).assign_coords(
        query=[0, 1, 2], token_role=("query", ["patch", "cls", "prompt"])
    )
    np.testing.assert_allclose(stats.prompt_mass(ds).sel(measure="readout"), [0.1, 0.2])


def test_bias_norm_ratio_known_values():
    ds = _vision(
        bias_norm=(("image",), [2.0, 0.0]),
        original_total_norm=(("image",), [4.0, 5.0]),
        residual_norm=(("image",), [8.0, 10.0]),
    )
    out = stats.bias_norm_ratio(ds)
    np.testing.assert_allclose(out.sel(measure="bias_over_original"), [0.5, 0.0])
    np.testing.assert_allclose(out.sel(measure="bias_over_residual"), [0.25, 0.0])


def test_text_reliance_known_values_and_missing_prompt_role():
    roles = ["sot", "prompt", "word", "classname", "eot", "pad"]
    # (variant, key_role): full, zeroshot
    a = np.array([[0.4, 0.3, 0.05, 0.15, 0.1, 0.0], [0.5, 0.0, 0.1, 0.3, 0.1, 0.0]])
    ds = xr.Dataset(
        {"attention_by_role": (("variant", "class", "key_role"), a[:, None, :])},
        coords={"variant": ["full", "zeroshot"], "class": [0], "key_role": roles},
        attrs=dict(PROV),
    )
    out = stats.text_reliance(ds).isel({"class": 0})
    assert list(out["measure"].values) == ["prompt", "classname", "word", "other"]
    np.testing.assert_allclose(out.sel(variant="full"), [0.3, 0.15, 0.05, 0.5])
    np.testing.assert_allclose(out.sel(variant="zeroshot"), [0.0, 0.3, 0.1, 0.6])
    no_prompt_role = ds.sel(variant=["zeroshot"], key_role=["sot", "word", "classname", "eot", "pad"])
    np.testing.assert_allclose(stats.text_reliance(no_prompt_role).isel({"class": 0}), [[0.0, 0.3, 0.1, 0.6]])


def test_missing_inputs_say_what_is_needed():
    ds = _vision(bias_norm=(("image",), [1.0]))
    with pytest.raises(ValueError, match=r"foreground_attention needs variables \['cls_attention', 'foreground'\]"):
        stats.foreground_attention(ds)
    with pytest.raises(ValueError, match="store_bias_vectors=True"):
        stats.bias_consistency(ds)


# ------------------------------------------------------------------------------------------------
# foreground attention and prompt/background similarity
# ------------------------------------------------------------------------------------------------


def _grid(values):
    return np.asarray(values, dtype=float)


def test_mask_covering_exactly_the_attended_patches_gives_one():
    attn = _grid([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # [cls] attends to two patches only
    mask = (attn > 0).astype(float)
    ds = _vision(
        cls_attention=(("image", "patch_row", "patch_col"), attn[None]),
        foreground=(("image", "patch_row", "patch_col"), mask[None]),
    )
    out = stats.foreground_attention(ds).isel(image=0)
    assert float(out.sel(measure="attention")) == pytest.approx(1.0)
    assert float(out.sel(measure="share")) == pytest.approx(1.0)
    assert float(out.sel(measure="area")) == pytest.approx(2 / 9)
    disjoint = ds.assign(foreground=1.0 - ds.foreground)
    assert float(stats.foreground_attention(disjoint).isel(image=0).sel(measure="attention")) == pytest.approx(0.0)


def test_foreground_attention_soft_mask_and_self_attention():
    attn = _grid([[0.2, 0.2], [0.4, 0.0]])  # 0.2 of a^ stays on [cls] itself
    fg = _grid([[1.0, 0.5], [0.25, 0.0]])
    ds = _vision(
        cls_attention=(("variant", "image", "patch_row", "patch_col"), np.stack([attn, attn / 2])[:, None]),
        foreground=(("image", "patch_row", "patch_col"), fg[None]),
    )
    out = stats.foreground_attention(ds).isel(image=0)
    expected = 0.2 * 1.0 + 0.2 * 0.5 + 0.4 * 0.25  # = 0.4
    assert float(out.sel(variant="full", measure="attention")) == pytest.approx(expected)
    assert float(out.sel(variant="full", measure="share")) == pytest.approx(expected / 0.8)
    assert float(out.sel(variant="zeroshot", measure="attention")) == pytest.approx(expected / 2)
    assert float(out.sel(variant="zeroshot", measure="share")) == pytest.approx(expected / 0.8)
    diff = stats.foreground_attention(ds).mml.with_vs_without()
    assert float(diff.isel(image=0).sel(measure="attention")) == pytest.approx(expected / 2)


def test_prompt_background_similarity_known_values():
    fg = _grid([[1.0, 1.0], [0.0, 0.0]])
    key_cos = np.where(fg > 0, 0.2, 0.8)  # prompt keys resemble background keys
    value_cos = np.where(fg > 0, -0.5, 0.5)
    dims = ("image", "patch_row", "patch_col")
    ds = _vision(
        prompt_key_cosine=(dims, key_cos[None]),
        prompt_value_cosine=(dims, value_cos[None]),
        foreground=(dims, fg[None]),
    )
    out = stats.prompt_background_similarity(ds).isel(image=0)
    np.testing.assert_allclose(out.values, [0.2, 0.8, -0.5, 0.5])
    assert out.measure.values.tolist() == ["key_foreground", "key_background", "value_foreground", "value_background"]
    # soft mask: weighted means
    soft = ds.assign(foreground=(dims, _grid([[0.5, 1.0], [0.0, 0.25]])[None]))
    w = np.array([0.5, 1.0, 0.0, 0.25])
    c = key_cos.ravel()
    expected_fg = (w * c).sum() / w.sum()
    expected_bg = ((1 - w) * c).sum() / (1 - w).sum()
    out = stats.prompt_background_similarity(soft).isel(image=0)
    assert float(out.sel(measure="key_foreground")) == pytest.approx(expected_fg)
    assert float(out.sel(measure="key_background")) == pytest.approx(expected_bg)


# ------------------------------------------------------------------------------------------------
# bias consistency
# ------------------------------------------------------------------------------------------------


def _bias_ds(beta, labels, **extra):
    beta = np.asarray(beta, dtype=float)
    dims = ("dataset", "image", "channel") if beta.ndim == 3 else ("image", "channel")
    ds = _vision(bias=(dims, beta), **extra)
    label_dims = dims[:-1]
    return ds.assign_coords(label=(label_dims, np.asarray(labels)))


def test_identical_beta_gives_consistency_one():
    v = np.array([1.0, -2.0, 0.5])
    scales = np.array([1.0, 3.0, 0.5, 2.0, 1.5, 0.1])[:, None]  # magnitudes do not matter for cosines
    out = stats.bias_consistency(_bias_ds(v * scales, [0, 0, 1, 1, 2, 2])).isel(dataset=0)
    np.testing.assert_allclose(out.sel(measure=["within_class", "across_classes"]), 1.0)
    assert np.isnan(float(out.sel(measure="across_datasets")))  # one dataset only
    assert out.dataset.item() == "pets"  # named after the provenance attr
    same = stats.bias_consistency(_bias_ds(np.tile(v, (6, 1)), [0, 0, 1, 1, 2, 2])).isel(dataset=0)
    assert float(same.sel(measure="dataset_mean_share")) == pytest.approx(1.0)


def test_orthogonal_classes_and_mean_share():
    e1, e2 = np.eye(2)
    out = stats.bias_consistency(_bias_ds([e1, e1, e2, e2], [0, 0, 1, 1])).isel(dataset=0)
    assert float(out.sel(measure="within_class")) == pytest.approx(1.0)
    assert float(out.sel(measure="across_classes")) == pytest.approx(0.0)
    # mean = (e1 + e2) / 2, |mean|^2 = 1/2, mean |beta|^2 = 1
    assert float(out.sel(measure="dataset_mean_share")) == pytest.approx(0.5)
    opposite = stats.bias_consistency(_bias_ds([e1, -e1], [0, 0])).isel(dataset=0)
    assert float(opposite.sel(measure="within_class")) == pytest.approx(-1.0)
    assert float(opposite.sel(measure="dataset_mean_share")) == pytest.approx(0.0)


def test_across_datasets():
    e1, e2 = np.eye(2)
    beta = np.stack([[e1, e1], [e2, e2], [-e1, -e1]])  # datasets A, B, C
    ds = _bias_ds(beta, [[0, 1], [0, 1], [0, 1]]).assign_coords(dataset=["A", "B", "C"])
    out = stats.bias_consistency(ds).sel(measure="across_datasets")
    # A vs (B, C): pairs with B give 0, with C give -1 -> -0.5; B vs (A, C): 0
    np.testing.assert_allclose(out.values, [-0.5, 0.0, -0.5])


def test_zero_bias_is_left_out():
    beta = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])  # the middle image has no bias
    out = stats.bias_consistency(_bias_ds(beta, [0, 0, 0])).isel(dataset=0)
    assert float(out.sel(measure="within_class")) == pytest.approx(1.0)
    zs = stats.bias_consistency(_bias_ds(np.zeros((3, 2)), [0, 0, 0])).isel(dataset=0)
    assert np.isnan(zs.values).all()


def test_bias_consistency_matches_brute_force_pairs():
    rng = np.random.default_rng(7)
    n_d, n, c = 3, 9, 5
    labels = rng.integers(0, 3, (n_d, n))
    beta = rng.normal(size=(n_d, n, c)) + np.array([1.0, 0.5, 0, 0, 0])
    ds = _bias_ds(beta, labels).assign_coords(dataset=["a", "b", "c"])
    out = stats.bias_consistency(ds)
    u = beta / np.linalg.norm(beta, axis=-1, keepdims=True)
    for d in range(n_d):
        same, diff, other = [], [], []
        for i, j in itertools.permutations(range(n), 2):
            (same if labels[d, i] == labels[d, j] else diff).append(u[d, i] @ u[d, j])
        for e in range(n_d):
            if e != d:
                other += [u[d, i] @ u[e, j] for i in range(n) for j in range(n)]
        mu = beta[d].mean(0)
        share = (mu @ mu) / (beta[d] ** 2).sum(-1).mean()
        got = out.isel(dataset=d).values
        np.testing.assert_allclose(got, [np.mean(same), np.mean(diff), np.mean(other), share], rtol=1e-10)


def test_text_tower_items_are_classes():
    tree = example_tree(n_classes=5)
    out = tree.mml.bias_consistency(tower="text").sel(variant="full")
    assert out.attrs["item"] == "class"
    assert np.isnan(out.sel(measure="within_class")).all()  # one prompt per class: no pairs
    assert np.isfinite(out.sel(measure="across_classes")).all()


# ------------------------------------------------------------------------------------------------
# bootstrap and summaries
# ------------------------------------------------------------------------------------------------


def test_bootstrap_matches_a_plain_loop_with_the_same_draws():
    x = np.random.default_rng(1).gamma(2.0, size=50)
    da = xr.DataArray(x, dims="image", attrs=dict(PROV))
    out = stats.bootstrap_ci(da, n_boot=300, ci=0.9, seed=3)
    rng = np.random.default_rng(3)
    counts = rng.multinomial(50, np.full(50, 1 / 50), size=(300,))
    reps = np.array([(c * x).sum() / c.sum() for c in counts])
    np.testing.assert_allclose(out.values, [x.mean(), *np.quantile(reps, [0.05, 0.95])])
    assert out.attrs["method"] == "maple"
    assert json.loads(out.attrs["summary"])["n_boot"] == 300


def test_bootstrap_is_seeded_and_sensible():
    rng = np.random.default_rng(0)
    da = xr.DataArray(rng.normal(2.0, 1.0, (3, 400)), dims=("layer", "image"))
    a, b = stats.bootstrap_ci(da, seed=5), stats.bootstrap_ci(da, seed=5)
    xr.testing.assert_identical(a, b)
    assert not stats.bootstrap_ci(da, seed=6).equals(a)
    width = (a.sel(estimate="high") - a.sel(estimate="low")).values
    np.testing.assert_allclose(width, 2 * 1.96 / np.sqrt(400), rtol=0.2)  # normal theory
    constant = xr.DataArray(np.full((4, 10), 3.0), dims=("seed", "image"))
    np.testing.assert_allclose(stats.bootstrap_ci(constant, n_boot=50).values, [3.0, 3.0, 3.0])


def test_bootstrap_skips_nan_and_resamples_seeds():
    da = xr.DataArray([[1.0, np.nan, 3.0], [5.0, 5.0, np.nan]], dims=("seed", "image"))
    out = stats.bootstrap_ci(da, n_boot=200)
    assert float(out.sel(estimate="mean")) == pytest.approx(np.nanmean(da.values))
    assert np.isfinite(out.values).all()
    # all variation between seeds: resampling images alone sees none, seeds-then-images does
    between = xr.DataArray(np.repeat([[0.0], [1.0], [2.0]], 20, axis=1), dims=("seed", "image"))
    per_seed = stats.bootstrap_ci(between, dims=("image",), n_boot=100)
    assert np.allclose(per_seed.sel(estimate="low"), per_seed.sel(estimate="high"))
    nested = stats.bootstrap_ci(between, n_boot=400)
    assert float(nested.sel(estimate="high") - nested.sel(estimate="low")) > 0.5


def test_summarize_groups_layers_by_kind():
    # injected layers: value 1, carried layers: value 3 (+ head offset averaged away)
    values = np.array([1.0, 1.0, 3.0, 3.0])[None, :, None] + np.array([-0.5, 0.5])[None, None, :]
    da = xr.DataArray(
        np.broadcast_to(values, (10, 4, 2)),
        dims=("image", "layer", "head"),
        coords={"layer": np.arange(4), "layer_kind": ("layer", ["injected", "injected", "carried", "carried"])},
        attrs=dict(PROV),
    )
    out = stats.summarize(da, average=("head",), n_boot=100)
    assert out.dims == ("layer_kind", "estimate")
    np.testing.assert_allclose(out.sel(layer_kind="injected").values, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(out.sel(layer_kind="carried").values, [3.0, 3.0, 3.0])
    assert out.attrs["method"] == "maple"
    per_layer = stats.summarize(da, by_layer_kind=False, n_boot=50)
    assert per_layer.dims == ("layer", "head", "estimate")
    with pytest.raises(ValueError, match="cannot average over"):
        stats.summarize(da, average=("heads",))


# ------------------------------------------------------------------------------------------------
# laziness and studies
# ------------------------------------------------------------------------------------------------


def test_statistics_are_lazy_on_dask_and_equal_to_eager():
    kw = dict(n_datasets=2, n_images=6, n_seeds=2, n_layers=2, grid=3, width=4)
    eager, lazy = example_study(**kw), example_study(**kw, chunks=6)
    for name in ("prompt_mass", "bias_norm_ratio", "bias_consistency", "foreground_attention"):
        fn = getattr(stats, name)
        got = fn(lazy)
        assert got.chunks is not None, f"{name} computed eagerly"
        xr.testing.assert_allclose(got.compute(), fn(eager))
    for name in ("prompt_background_similarity", "text_reliance"):
        fn = getattr(stats, name)
        xr.testing.assert_allclose(fn(lazy).compute(), fn(eager))
    s_lazy = stats.summarize(stats.prompt_mass(lazy).sel(measure="readout"), average=("head",), n_boot=100)
    s_eager = stats.summarize(stats.prompt_mass(eager).sel(measure="readout"), average=("head",), n_boot=100)
    xr.testing.assert_allclose(s_lazy.compute(), s_eager)
    assert s_eager.dims == ("dataset", "variant", "layer_kind", "estimate")


def test_study_statistics_find_the_planted_structure():
    """The synthetic study plants a dataset bias in injected layers; the statistics must see it."""
    study = example_study(n_datasets=3, n_images=24, n_layers=4, prompt_depth=2)
    c = stats.bias_consistency(study).sel(variant="full")
    inj, car = c.mml.injected_layers(), c.mml.carried_layers()
    assert float(inj.sel(measure="within_class").min()) > float(car.sel(measure="within_class").max())
    assert float(abs(c.sel(measure="across_datasets")).max()) < 0.3
    alpha = stats.summarize(stats.prompt_mass(study).sel(measure="readout"), average=("head",), n_boot=100)
    full = alpha.sel(variant="full", estimate="mean")
    assert (full.sel(layer_kind="injected") > full.sel(layer_kind="carried")).all()
