"""Direct-effect statistics (mmlens.stats.direct) against hand computations, and the gain share's coverage.

The stores are built here by hand exactly as docs/store_schema.md lay out the ``direct``
group (one flat ``component`` dim over both towers, labelled by ``tower``/``kind``/``layer``/``head``;
each tower's components sum to ``direct_total``), so these tests do not depend on the trace.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from scipy import stats as sps

import mmlens.stats  # noqa: F401  (registers .mml)
from mmlens.stats import (
    bias_gain_share,
    bias_margin_effect,
    bootstrap_ci,
    compare_bias_sources,
    direct_effects,
    require_direct,
)
from mmlens.store import schema

TARGETS = ("label", "margin")


def _components(n_layers: int, n_heads: int, learned: bool) -> list[tuple[str, str, int, int]]:
    """(tower, kind, layer, head) of every component, in the trace's order (docs/store_schema.md)."""
    out = []
    for tower in ("vision", "text"):
        out.append((tower, "embedding", -1, -1))
        for ell in range(n_layers):
            out += [(tower, "original", ell, h) for h in range(n_heads)]
            out += [(tower, "bias", ell, -1)] if learned else [(tower, "bias", ell, h) for h in range(n_heads)]
            out += [(tower, "output_bias", ell, -1), (tower, "mlp", ell, -1)]
        out.append((tower, "ln_bias", -1, -1))
    return out


def _store(
    *,
    n_images: int = 12,
    n_layers: int = 3,
    n_heads: int = 2,
    vision_kinds: tuple[str, ...] = ("injected", "injected", "carried"),
    text_kinds: tuple[str, ...] = ("injected", "carried", "carried"),
    variants: tuple[str, ...] = ("full", "zeroshot"),
    learned: bool = False,
    lead: dict[str, list] | None = None,
    unlabelled: tuple[int, ...] = (),
    beta: dict[str, np.ndarray] | None = None,
    total: np.ndarray | None = None,
    seed: int = 0,
    tree: bool = True,
) -> xr.DataTree | xr.Dataset:
    """A store with a ``direct`` group per docs/store_schema.md (and vision/text groups carrying ``layer_kind``).

    ``beta[tower]``: planted bias effects, shape ``(*lead, variant, image, layer, heads, target)``
    (heads = 1 for ``learned``); ``total``: planted ``direct_total`` ``(*lead, variant, image, target)``.
    Other components are random; each tower's ``ln_bias`` takes what makes its components sum to the total.
    """
    rng = np.random.default_rng(seed)
    lead = dict(lead or {})
    lead_shape = tuple(len(v) for v in lead.values())
    comps = _components(n_layers, n_heads, learned)
    tower_of = np.array([c[0] for c in comps])
    kind_of = np.array([c[1] for c in comps])
    layer_of = np.array([c[2] for c in comps])
    head_of = np.array([c[3] for c in comps])
    shape = (*lead_shape, len(variants), n_images)
    effect = rng.normal(0.0, 0.3, (*shape, len(comps), len(TARGETS)))
    if total is None:  # prompts raise the margin on average (every variant after the first: a reference)
        total = rng.normal(1.0, 0.5, (*shape, len(TARGETS)))
        total[..., 1:, :, :] = total[..., :1, :, :] - rng.normal(0.8, 0.5, total[..., 1:, :, :].shape)
    total = np.array(total, dtype=np.float64)
    for tower in ("vision", "text"):
        if beta is not None and tower in beta:
            for j in np.flatnonzero((tower_of == tower) & (kind_of == "bias")):
                effect[..., j, :] = beta[tower][..., layer_of[j], max(head_of[j], 0), :]
        last = np.flatnonzero((tower_of == tower) & (kind_of == "ln_bias"))[0]
        rest = (tower_of == tower) & (np.arange(len(comps)) != last)
        effect[..., last, :] = total - effect[..., rest, :].sum(-2)
    labels = rng.integers(0, 5, n_images)
    labels[list(unlabelled)] = -1
    effect[..., list(unlabelled), :, :] = np.nan
    total[..., list(unlabelled), :] = np.nan
    bias_source = "learned" if learned else "prompt"
    image_dims = ("dataset", "image") if "dataset" in lead else ("image",)

    def per_image(values):
        values = np.asarray(values)
        return (image_dims, np.broadcast_to(values, (len(lead["dataset"]), n_images)) if "dataset" in lead else values)

    dims = (*lead, "variant", "image")
    direct = xr.Dataset(
        {
            "direct_effect": ((*dims, "component", "target"), effect.astype(np.float32)),
            "direct_total": ((*dims, "target"), total.astype(np.float32)),
        },
        coords={
            **lead,
            "variant": list(variants),
            "image": np.arange(n_images),
            "component": np.arange(len(comps)),
            "target": list(TARGETS),
            "tower": ("component", tower_of),
            "kind": ("component", kind_of),
            "layer": ("component", layer_of),
            "head": ("component", head_of),
            "label": per_image(labels),
            "classname": per_image([f"class_{c}" for c in labels]),
            "split": per_image(["base"] * n_images),
            "path": per_image([f"img_{i}.png" for i in range(n_images)]),
            "bias_source": bias_source,
        },
    )
    if not tree:
        return direct
    attrs = schema.provenance_attrs(dataset="hand", method="bias" if learned else "maple", seed=0)
    groups = {
        tower: xr.Dataset(coords={"layer": np.arange(n_layers), "layer_kind": ("layer", list(kinds)),
                                  "bias_source": bias_source})
        for tower, kinds in (("vision", vision_kinds), ("text", text_kinds))
    }
    return xr.DataTree.from_dict({"/": xr.Dataset(attrs=attrs), **groups, "direct": direct})


def _flat(tree, tower, kind, target="margin"):
    """Hand lookup: {(layer, head): array (..., variant, image)} straight from the flat component dim."""
    d = tree["direct"].to_dataset()
    t = list(d["target"].values).index(target)
    arr = d["direct_effect"].values[..., t]
    out = {}
    for j in range(d.sizes["component"]):
        if d["tower"].values[j] == tower and d["kind"].values[j] == kind:
            out[int(d["layer"].values[j]), int(d["head"].values[j])] = arr[..., j]
    return out


# ------------------------------------------------------------------------------------------------
# direct_effects
# ------------------------------------------------------------------------------------------------


def test_direct_effects_lays_out_the_flat_components_by_layer_and_head():
    tree = _store()
    for tower, kinds in (("vision", ["injected", "injected", "carried"]), ("text", ["injected", "carried", "carried"])):
        for kind in ("bias", "original"):
            e = direct_effects(tree, tower=tower, kind=kind)
            assert e.dims == ("variant", "image", "layer", "head")
            assert e["layer"].values.tolist() == [0, 1, 2] and e["head"].values.tolist() == [0, 1]
            assert e["layer_kind"].values.tolist() == kinds  # joined from the tower's own group
            for (ell, h), want in _flat(tree, tower, kind).items():
                np.testing.assert_array_equal(e.sel(layer=ell, head=h).values, want)
        mlp = direct_effects(tree, tower=tower, kind="mlp", target="label")
        assert mlp.dims == ("variant", "image", "layer")
        for (ell, _), want in _flat(tree, tower, "mlp", "label").items():
            np.testing.assert_array_equal(mlp.sel(layer=ell).values, want)
        emb = direct_effects(tree, tower=tower, kind="embedding")
        assert emb["layer"].values.tolist() == [-1] and emb["layer_kind"].values.tolist() == ["none"]
    assert e.attrs["statistic"] == "direct_effect" and e.attrs["method"] == "maple"


def test_components_of_each_tower_sum_to_the_total():
    # the builder's layout is what the statistics assume: every kind of a tower together gives direct_total
    tree = _store(seed=3)
    total = tree["direct"]["direct_total"].sel(target="margin")
    for tower in ("vision", "text"):
        parts = [direct_effects(tree, tower=tower, kind=k) for k in
                 ("embedding", "original", "bias", "output_bias", "mlp", "ln_bias")]
        summed = sum(p.sum([d for d in p.dims if d in ("layer", "head")]) for p in parts)
        np.testing.assert_allclose(summed.values, total.values, rtol=1e-5, atol=1e-5)


def test_direct_effects_of_a_study_and_lazily():
    lead = {"dataset": ["a", "b"], "seed": [1, 2, 3]}
    tree = _store(lead=lead)
    e = direct_effects(tree, tower="vision", kind="bias")
    assert e.dims == ("dataset", "seed", "variant", "image", "layer", "head")
    for (ell, h), want in _flat(tree, "vision", "bias").items():
        np.testing.assert_array_equal(e.sel(layer=ell, head=h).values, want)
    lazy = direct_effects(tree["direct"].to_dataset().chunk({"image": 5}), tower="vision", kind="bias")
    assert lazy.chunks is not None  # nothing computed yet
    np.testing.assert_array_equal(lazy.values, e.values)
    assert "layer_kind" not in lazy.coords  # the direct group alone does not know the layer kinds


# ------------------------------------------------------------------------------------------------
# bias_margin_effect
# ------------------------------------------------------------------------------------------------


def test_bias_margin_effect_single_run_by_hand():
    tree = _store(n_images=30, unlabelled=(4, 17))
    flat = _flat(tree, "vision", "bias")
    out = bias_margin_effect(tree, tower="vision", n_boot=300)
    assert out.dims == ("layer", "head", "estimate") and out.attrs["interval_method"] == "percentile_bootstrap"
    for (ell, h), x in flat.items():
        full = x[0]  # variant full
        got = out.sel(layer=ell, head=h)
        assert float(got.sel(estimate="mean")) == pytest.approx(np.nanmean(full), rel=1e-5)
        assert float(got.sel(estimate="low")) < np.nanmean(full) < float(got.sel(estimate="high"))
    assert out["layer_kind"].values.tolist() == ["injected", "injected", "carried"]
    assert out.attrs["statistic"] == "bias_margin_effect" and out.attrs["dataset"] == "hand"

    # per layer with the t interval: the variance-components interval of a single factor, by hand
    layer = bias_margin_effect(tree, tower="vision", per_head=False, method="variance_components")
    assert layer.dims == ("layer", "estimate")
    for ell in range(3):
        x = flat[ell, 0][0] + flat[ell, 1][0]
        x = x[np.isfinite(x)]
        half = sps.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
        got = layer.sel(layer=ell)
        assert float(got.sel(estimate="mean")) == pytest.approx(x.mean(), rel=1e-5)
        assert float(got.sel(estimate="high") - got.sel(estimate="low")) == pytest.approx(2 * half, rel=1e-4)


def test_bias_margin_effect_of_a_study_follows_the_design():
    lead = {"dataset": ["a", "b"], "seed": [1, 2, 3]}
    tree = _store(lead=lead, n_images=25)
    out = bias_margin_effect(tree, tower="text", per_head=False)
    assert out.dims == ("dataset", "layer", "estimate")  # datasets stay rows
    assert out.attrs["interval_method"] == "variance_components"  # 3 seeds
    flat = _flat(tree, "text", "bias")
    x = sum(flat[ell, h] for ell in range(3) for h in range(2) if ell == 1)[:, :, 0]  # (dataset, seed, image)
    np.testing.assert_allclose(out.sel(layer=1, estimate="mean").values, x.mean((1, 2)), rtol=1e-5)
    # the same numbers from bootstrap_ci on the hand-extracted table: seeds crossed with images
    want = bootstrap_ci(xr.DataArray(x, dims=("dataset", "seed", "image")))
    np.testing.assert_allclose(out.sel(layer=1).values, want.values, rtol=1e-5)
    pooled = bias_margin_effect(tree, tower="text", per_head=False, over=("image", "seed", "dataset"))
    assert pooled.dims == ("layer", "estimate")
    assert '"image": ["dataset"]' in pooled.attrs["summary"]  # images nested in datasets


def test_bias_tuning_has_one_bias_per_layer():
    tree = _store(learned=True, vision_kinds=("injected", "injected", "none"), n_images=20)
    out = bias_margin_effect(tree, tower="vision")  # per_head=True, but there is nothing per head
    assert out.dims == ("layer", "estimate")
    for (ell, h), x in _flat(tree, "vision", "bias").items():
        assert h == -1
        assert float(out.sel(layer=ell, estimate="mean")) == pytest.approx(x[0].mean(), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# bias_gain_share
# ------------------------------------------------------------------------------------------------


def test_gain_share_by_hand_for_every_layer_group():
    tree = _store(n_images=40, unlabelled=(0,), seed=5)
    flat = _flat(tree, "vision", "bias")
    total = tree["direct"]["direct_total"].sel(target="margin").values
    gain = total[0] - total[1]  # full - zeroshot
    kinds = ["injected", "injected", "carried"]
    for group, layers in (("all", [0, 1, 2]), ("injected", [0, 1]), ("carried", [2])):
        carried = sum(flat[ell, h][0] for ell in layers for h in range(2))
        ok = np.isfinite(carried) & np.isfinite(gain)
        b, g = carried[ok], gain[ok]
        share = b.mean() / g.mean()
        out = bias_gain_share(tree, tower="vision", layer_group=group, method="variance_components")
        assert out.dims == ("measure", "estimate") and str(out["layer_group"].values) == group
        assert float(out.sel(measure="share", estimate="mean")) == pytest.approx(share, rel=1e-4)
        assert float(out.sel(measure="bias_direct", estimate="mean")) == pytest.approx(b.mean(), rel=1e-4)
        assert float(out.sel(measure="gain", estimate="mean")) == pytest.approx(g.mean(), rel=1e-4)
        # delta method by hand: S ± t sd(z)/sqrt(n), z = (B - S G) / mean G
        z = (b - share * g) / g.mean()
        half = sps.t.ppf(0.975, len(z) - 1) * z.std(ddof=1) / np.sqrt(len(z))
        assert float(out.sel(measure="gain", estimate="low")) > 0  # a bounded ratio
        assert float(out.sel(measure="share", estimate="low")) == pytest.approx(share - half, rel=1e-3)
        assert float(out.sel(measure="share", estimate="high")) == pytest.approx(share + half, rel=1e-3)
    assert kinds == tree["vision"]["layer_kind"].values.tolist()


def test_gain_share_for_text_and_studies():
    lead = {"dataset": ["a", "b", "c"], "seed": [1, 2]}
    total = np.zeros((3, 2, 2, 10, 2))  # (dataset, seed, variant, image, target)
    total[:, :, 0], total[:, :, 1] = [1.0, 2.0], [0.2, 0.5]  # full, zeroshot: a margin gain of 1.5 everywhere
    tree = _store(lead=lead, n_images=10, total=total)
    out = tree.mml.bias_gain_share(tower="text", layer_group="carried", n_boot=200)
    assert out.dims == ("dataset", "measure", "estimate")
    flat = _flat(tree, "text", "bias")
    carried = sum(flat[ell, h][:, :, 0] for ell in (1, 2) for h in range(2))  # text: layers 1, 2 carried
    np.testing.assert_allclose(out.sel(measure="share", estimate="mean").values, carried.mean((1, 2)) / 1.5,
                               rtol=1e-4)
    np.testing.assert_allclose(out.sel(measure="gain").values, 1.5, rtol=1e-6)  # a constant gain: zero width


def test_gain_share_of_bias_tuning_and_side_by_side():
    maple = _store(n_images=30, seed=1)
    tuning = _store(n_images=30, seed=2, learned=True, vision_kinds=("injected", "injected", "none"))
    learned = bias_gain_share(tuning, tower="vision", layer_group="injected", n_boot=200)
    flat = _flat(tuning, "vision", "bias")
    total = tuning["direct"]["direct_total"].sel(target="margin").values
    want = (flat[0, -1][0] + flat[1, -1][0]).mean() / (total[0] - total[1]).mean()
    assert float(learned.sel(measure="share", estimate="mean")) == pytest.approx(want, rel=1e-4)
    assert str(learned["bias_source"].values) == "learned"
    # bias tuning has no carried layer: no share rather than a share of 0
    assert np.isnan(bias_gain_share(tuning, tower="vision", layer_group="carried", n_boot=50)
                    .sel(measure="share")).all()
    both = compare_bias_sources(maple, tuning, layer_groups=("all", "injected"), n_boot=200)
    assert both.dims == ("bias_source", "layer_group", "measure", "estimate")
    np.testing.assert_allclose(both.sel(bias_source="learned", layer_group="injected").values, learned.values)
    np.testing.assert_allclose(both.sel(bias_source="prompt", layer_group="all").values,
                               bias_gain_share(maple, tower="vision", n_boot=200).values)
    with pytest.raises(ValueError, match="bias_source='prompt'"):
        compare_bias_sources(tuning, maple)


def test_no_gain_gives_no_share_and_no_warning():
    n = 30
    total = np.zeros((2, n, 2))  # (variant, image, target)
    total[0] = -0.5  # the prompts lower the margin: no gain to share
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's too: no all-NaN slices reach the intervals
        out = bias_gain_share(_store(n_images=n, total=total), tower="vision", n_boot=100)
        assert np.isnan(out.sel(measure="share")).all()
        assert float(out.sel(measure="gain", estimate="mean")) == pytest.approx(-0.5)
        total[0] = 0.05 + np.resize([1.0, -1.0], n)[:, None]  # mean gain 0.05, SD 1: its interval contains 0
        out = bias_gain_share(_store(n_images=n, total=total), tower="vision", n_boot=300)
        tuning = _store(n_images=n, learned=True, vision_kinds=("injected", "injected", "none"))
        assert np.isnan(bias_gain_share(tuning, tower="vision", layer_group="carried", n_boot=50)
                        .sel(measure=["share", "bias_direct"])).all()
    assert float(out.sel(measure="gain", estimate="low")) < 0
    share = out.sel(measure="share")
    assert np.isfinite(float(share.sel(estimate="mean")))  # the ratio of means exists ...
    assert share.sel(estimate="low") == -np.inf and share.sel(estimate="high") == np.inf  # ... but is not bounded


def test_statistics_stay_lazy_on_dask_and_equal_the_eager_ones():
    lead = {"dataset": ["a", "b"], "seed": [1, 2, 3]}
    tree = _store(lead=lead, n_images=24, unlabelled=(3,))
    lazy_tree = tree.copy()
    lazy_tree["direct"] = xr.DataTree(tree["direct"].to_dataset().chunk({"image": 8}))
    for call in (lambda t: bias_gain_share(t, tower="vision", layer_group="injected"),
                 lambda t: bias_gain_share(t, tower="text", over=("image",), method="percentile_bootstrap", n_boot=200),
                 lambda t: bias_margin_effect(t, tower="vision", per_head=False)):
        lazy, eager = call(lazy_tree), call(tree)
        assert lazy.chunks is not None  # nothing computed yet
        np.testing.assert_allclose(lazy.values, eager.values, rtol=1e-5)  # float32 sums in another order


def test_on_the_synthetic_stores_of_the_trace_side():
    # the trace side's example_tree(direct_effects=True) (issue IV) lays the group out as the trace does
    import inspect

    from mmlens.store.synthetic import example_tree

    if "direct_effects" not in inspect.signature(example_tree).parameters:
        pytest.skip("example_tree(direct_effects=True) comes with the trace side of issue IV")
    tree = example_tree(n_images=30, direct_effects=True)
    d = tree["direct"].to_dataset()
    kinds = dict(zip(tree["vision"]["layer"].values.tolist(), tree["vision"]["layer_kind"].values.tolist()))
    pick = ((d["tower"] == "vision") & (d["kind"] == "bias")).values
    injected = pick & np.isin(d["layer"].values, [ell for ell, k in kinds.items() if k == "injected"])
    eff = d["direct_effect"].sel(variant="full", target="margin").values  # (image, component)
    total = d["direct_total"].sel(target="margin").values
    gain = total[list(d["variant"].values).index("full")] - total[list(d["variant"].values).index("zeroshot")]
    ok = np.isfinite(gain)
    out = bias_gain_share(tree, tower="vision", layer_group="injected")
    want = eff[ok][:, injected].sum(1).mean() / gain[ok].mean()
    assert float(out.sel(measure="share", estimate="mean")) == pytest.approx(want, rel=1e-4)
    effect = bias_margin_effect(tree, tower="vision", per_head=False).sel(estimate="mean")
    for ell in kinds:
        at = pick & (d["layer"].values == ell)
        assert float(effect.sel(layer=ell)) == pytest.approx(np.nanmean(eff[:, at].sum(1)), rel=1e-4)


# ------------------------------------------------------------------------------------------------
# accessor and bad input
# ------------------------------------------------------------------------------------------------


def test_accessors_give_the_functions_results():
    tree = _store(n_images=24)
    ds = tree["direct"].to_dataset()
    xr.testing.assert_identical(ds.mml.direct_effects(tower="vision", kind="mlp"),
                                direct_effects(ds, tower="vision", kind="mlp"))
    xr.testing.assert_identical(ds.mml.bias_margin_effect(tower="text", n_boot=100),
                                bias_margin_effect(ds, tower="text", n_boot=100))
    xr.testing.assert_identical(ds.mml.bias_gain_share(tower="vision", n_boot=100),
                                bias_gain_share(ds, tower="vision", n_boot=100))
    xr.testing.assert_identical(tree.mml.bias_gain_share(tower="vision", layer_group="injected", n_boot=100),
                                bias_gain_share(tree, tower="vision", layer_group="injected", n_boot=100))
    xr.testing.assert_identical(tree.mml.direct_effects(tower="text", kind="bias"),
                                direct_effects(tree, tower="text", kind="bias"))


def test_a_store_without_direct_effects_names_the_flag():
    from mmlens.store.synthetic import example_tree

    plain = example_tree()
    for data in (plain, plain["vision"].to_dataset()):
        for call in (lambda d: require_direct(d), lambda d: direct_effects(d, tower="vision", kind="bias"),
                     lambda d: bias_margin_effect(d, tower="vision"), lambda d: bias_gain_share(d, tower="vision")):
            with pytest.raises(ValueError, match=r"without direct effects.*`mmlens trace --direct-effects` "
                                                 r"\(direct_effects=True\)"):
                call(data)
    with pytest.raises(TypeError, match="found ndarray"):
        require_direct(np.zeros(3))


def test_a_store_without_the_reference_names_with_reference():
    tree = _store(variants=("full",))
    bias_margin_effect(tree, tower="vision", n_boot=50)  # needs only the full variant
    with pytest.raises(ValueError, match=r"found \['full'\].*--with-reference.*with_reference=True"):
        bias_gain_share(tree, tower="vision")
    with pytest.raises(ValueError, match=r"variants \['full'\], found \['zeroshot'\]"):
        bias_margin_effect(_store(variants=("zeroshot",)), tower="vision")


def test_other_bad_input_says_what_was_expected():
    tree = _store()
    direct = tree["direct"].to_dataset()
    with pytest.raises(ValueError, match="layer kinds.*mmlens.open"):
        bias_gain_share(direct, tower="vision", layer_group="injected")
    with pytest.raises(ValueError, match=r"layer_group among \['all', 'injected', 'carried'\], found 'none'"):
        bias_gain_share(tree, tower="vision", layer_group="none")
    with pytest.raises(ValueError, match=r"tower among \['text', 'vision'\], found 'image'"):
        direct_effects(tree, tower="image", kind="bias")
    with pytest.raises(ValueError, match=r"kind among .*'bias'.*found 'beta'"):
        direct_effects(tree, tower="vision", kind="beta")
    with pytest.raises(ValueError, match=r"target among \['label', 'margin'\], found 'logit'"):
        direct_effects(tree, tower="vision", kind="bias", target="logit")
    twice = direct.assign_coords(head=("component", np.where(direct["kind"] == "mlp", 0, direct["head"].values)))
    with pytest.raises(ValueError, match="mix per-head and whole-layer"):
        direct_effects(twice.assign_coords(head=("component", np.where(
            (direct["kind"] == "mlp") & (direct["layer"] == 0), 0, direct["head"].values))), tower="vision", kind="mlp")
    dup = direct.assign_coords(layer=("component", np.where(direct["kind"] == "mlp", 0, direct["layer"].values)))
    with pytest.raises(ValueError, match="share layer 0; expected one each"):
        direct_effects(dup, tower="vision", kind="mlp")


# ------------------------------------------------------------------------------------------------
# coverage of a planted share (simulation)
# ------------------------------------------------------------------------------------------------

SHARE = 0.4


def _simulated_studies(n_sims, n_seeds, n_images, rng, *, seed_sd):
    """``n_sims`` independent studies as the rows of a ``dataset`` dim (a "by" dim of the interval).

    Gain ``G = 1 + u_s + a_i + e``, bias effect ``B = S + v_s + b_i + f`` (injected layer 0 only, split
    over two heads): the population share is exactly ``S``. ``B`` does not follow ``G``, so the
    gain's own spread matters to the ratio's interval.
    """
    shape = (n_sims, n_seeds, n_images)
    u, v = (rng.normal(0, seed_sd, (n_sims, n_seeds, 1)) for _ in range(2))
    a, b = rng.normal(0, 1.0, (n_sims, 1, n_images)), rng.normal(0, 0.2, (n_sims, 1, n_images))
    gain = 1.0 + u + a + rng.normal(0, 0.2, shape)
    carried = SHARE + v + b + rng.normal(0, 0.1, shape)
    total = np.stack([gain, np.zeros(shape)], axis=-2)[..., None].repeat(2, -1)  # (sim, seed, variant, image, t)
    beta = np.zeros((n_sims, n_seeds, 2, n_images, 2, 2, 2))  # (sim, seed, variant, image, layer, head, target)
    beta[:, :, 0, :, 0] = (carried / 2)[..., None, None]
    beta[:, :, 0, :, 1] = rng.normal(0, 0.3, (*shape, 2, 2))  # the carried layer: outside the group
    lead = {"dataset": [f"sim{k}" for k in range(n_sims)], "seed": list(range(1, n_seeds + 1))}
    tree = _store(n_images=n_images, n_layers=2, n_heads=2, vision_kinds=("injected", "carried"),
                  text_kinds=("injected", "carried"), lead=lead, beta={"vision": beta}, total=total,
                  seed=int(rng.integers(1 << 30)))
    return tree, gain


def _covers(share):
    return float(((share.sel(estimate="low") <= SHARE) & (SHARE <= share.sel(estimate="high"))).mean())


def _as_independent_images(tree):
    """The same study with its seed x image cells relabelled as independent images (the wrong design)."""
    cells = tree["direct"].to_dataset().stack(cell=("seed", "image"))
    n = cells.sizes["cell"]
    cells = cells.drop_vars(["cell", "seed", "image"]).rename(cell="image").assign_coords(image=np.arange(n))
    return xr.DataTree.from_dict({"/": xr.Dataset(attrs=tree.attrs), "vision": tree["vision"].to_dataset(),
                                  "direct": cells})


def coverage_run(n_sims, n_seeds, n_images, seed_sd, rng):
    """Coverage of the planted share by bias_gain_share, and by two wrong intervals, over simulated studies."""
    tree, gain = _simulated_studies(n_sims, n_seeds, n_images, rng, seed_sd=seed_sd)
    out = bias_gain_share(tree, tower="vision", layer_group="injected", n_boot=1000)
    share = out.sel(measure="share")
    b_ci = out.sel(measure="bias_direct")
    gbar = xr.DataArray(gain.mean((1, 2)), dims="dataset", coords={"dataset": b_ci["dataset"]})
    res = {
        "method": out.attrs["interval_method"],
        "coverage": _covers(share),
        "miss_low": float((share.sel(estimate="high") < SHARE).mean()),  # interval entirely below the truth
        "width": float((share.sel(estimate="high") - share.sel(estimate="low")).median()),
        "mean_share": float(share.sel(estimate="mean").mean()),
        "denominator_known": _covers(b_ci / gbar),  # wrong: the gain's spread ignored
        "cells_as_images": np.nan,
    }
    if n_seeds > 1:  # wrong: seeds not crossed with images but every cell an image of its own
        iid = bias_gain_share(_as_independent_images(tree), tower="vision", layer_group="injected", n_boot=1000)
        np.testing.assert_allclose(iid.sel(measure="share", estimate="mean"), share.sel(estimate="mean"), rtol=1e-5)
        res["cells_as_images"] = _covers(iid.sel(measure="share"))
    return res


def test_planted_share_is_covered_and_wrong_intervals_are_not():
    rng = np.random.default_rng(20)
    # 300 simulated studies per design: the Monte-Carlo SE of a 0.95 coverage is 0.013.
    # Images only (60 per study): the percentile bootstrap; the denominator's spread matters.
    run = coverage_run(300, 1, 60, 0.0, rng)
    assert run["method"] == "percentile_bootstrap"
    assert run["mean_share"] == pytest.approx(SHARE, abs=0.02)
    assert 0.92 <= run["coverage"] <= 0.98, run
    assert run["denominator_known"] < 0.85, run
    # 3 seeds x 40 images with a seed spread: the variance-components interval; seeds crossed with images matter
    run = coverage_run(300, 3, 40, 0.25, rng)
    assert run["method"] == "variance_components"
    assert run["mean_share"] == pytest.approx(SHARE, abs=0.02)
    assert 0.92 <= run["coverage"] <= 0.98, run
    assert run["cells_as_images"] < 0.85, run


if __name__ == "__main__":  # the coverage table of docs/statistics.md ("Direct effects")
    import time

    generator = np.random.default_rng(2026)
    for n_seeds, n_images, seed_sd in ((1, 30, 0.0), (1, 60, 0.0), (1, 200, 0.0), (3, 40, 0.25), (3, 200, 0.25),
                                       (10, 40, 0.25)):
        start = time.perf_counter()
        r = coverage_run(1000, n_seeds, n_images, seed_sd, generator)
        print(f"{n_seeds} seeds x {n_images} images, seed SD {seed_sd}: {r['method']:20s} coverage "
              f"{r['coverage']:.3f} (interval below the truth {r['miss_low']:.3f}) median width {r['width']:.3f} "
              f"mean share {r['mean_share']:.3f} | denominator known {r['denominator_known']:.3f} | cells as images "
              f"{r['cells_as_images']:.3f} ({time.perf_counter() - start:.1f} s)")
