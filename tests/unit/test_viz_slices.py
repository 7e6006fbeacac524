"""The explorer's data side (StoreSlices) against numpy computed directly on the synthetic stores."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import xarray as xr

from mmlens.store.synthetic import example_study, example_tree
from mmlens.viz.slices import MissingData, StoreSlices


@pytest.fixture(scope="module")
def tree():
    return example_tree(n_images=6, n_layers=3, n_heads=2, grid=3, n_classes=4, width=8, seed=1)


@pytest.fixture(scope="module")
def study():
    return example_study(n_datasets=3, n_images=5, n_layers=3, n_heads=2, grid=3, n_classes=4, width=8, seed=2)


def _vision(t):
    return t["vision"].to_dataset()


def test_choices_single_run(tree):
    view = StoreSlices(tree)
    assert view.datasets == ["synthetic"]
    assert view.seeds == [1]
    assert view.variants == ["full", "zeroshot"]
    assert view.layers("vision") == [0, 1, 2] and view.heads("text") == [0, 1]
    assert view.layer_kinds("vision") == {0: "injected", 1: "carried", 2: "carried"}
    assert view.images == list(range(6))
    assert list(view.classes("synthetic").values()) == [0, 1, 2, 3]
    assert all(name.endswith(f"class_{k}") for name, k in view.classes("synthetic").items())
    assert view.method == "maple"


def test_choices_study_follow_dataset(study):
    view = StoreSlices(study)
    assert view.datasets == ["dataset_00", "dataset_01", "dataset_02"]
    assert view.seeds == [1]
    assert "dataset_01_class_2" in " ".join(view.classes("dataset_01"))
    info = view.image_info("dataset_02", 3)
    vision = _vision(study)
    assert info["label"] == int(vision.label.sel(dataset="dataset_02", image=3))
    assert info["path"] == str(vision.path.sel(dataset="dataset_02", image=3).values)


def test_head_maps_match_numpy(study):
    view = StoreSlices(study)
    v = _vision(study).sel(dataset="dataset_01", seed=1, variant="full")
    alpha = view.head_map("vision", "prompt_mass", "dataset_01", 1, "full")
    assert alpha.dims == ("layer", "head") and alpha.attrs["n_items"] == 5
    np.testing.assert_allclose(alpha.values, v.prompt_mass.values.mean(axis=0), rtol=1e-6)
    ratio = view.head_map("vision", "bias_ratio", "dataset_01", 1, "full")
    np.testing.assert_allclose(ratio.values, (v.bias_head_norm.values / v.original_norm.values).mean(axis=0), rtol=1e-5)
    fg = view.head_map("vision", "foreground_attention", "dataset_01", 1, "full")
    a_hat = v.cls_attention.transpose("image", "layer", "head", "patch_row", "patch_col").values
    mask = v.foreground.transpose("image", "patch_row", "patch_col").values
    expected = np.einsum("ilhrc,irc->lh", a_hat, mask) / a_hat.shape[0]
    np.testing.assert_allclose(fg.values, expected, rtol=1e-5)
    # the text tower has no patches: a message, not a crash
    with pytest.raises(MissingData, match="vision-tower"):
        view.head_map("text", "foreground_attention", "dataset_01", 1, "full")


def test_minus_reference_is_full_minus_zeroshot(tree):
    view = StoreSlices(tree)
    diff = view.head_map("vision", "foreground_attention", "synthetic", 1, "full", minus_reference=True)
    full = view.head_map("vision", "foreground_attention", "synthetic", 1, "full")
    zs = view.head_map("vision", "foreground_attention", "synthetic", 1, "zeroshot")
    np.testing.assert_allclose(diff.values, full.values - zs.values, rtol=1e-6)
    assert "zeroshot" in diff.attrs["label"]
    # prompt-free variant has no prompt mass: the difference is the prompted map itself
    d_alpha = view.head_map("text", "prompt_mass", "synthetic", 1, "full", minus_reference=True)
    np.testing.assert_allclose(d_alpha.values, view.head_map("text", "prompt_mass", "synthetic", 1, "full").values)


def test_foreground_maps_use_at_most_fg_max_images(tree):
    view = StoreSlices(tree, fg_max_images=2)
    fg = view.head_map("vision", "foreground_attention", "synthetic", 1, "full")
    v = _vision(tree).sel(variant="full").isel(image=slice(0, 2))
    expected = (v.cls_attention * v.foreground).sum(["patch_row", "patch_col"]).mean("image")
    assert fg.attrs["n_items"] == 2
    np.testing.assert_allclose(fg.values, expected.transpose("layer", "head").values, rtol=1e-5)


def test_layer_curves_band_across_datasets(study):
    view = StoreSlices(study, n_boot=400)
    curve = view.layer_curve("vision", "prompt_mass")
    assert curve.attrs["units"] == "datasets" and curve.attrs["n_units"] == 3
    per_dataset = _vision(study).prompt_mass.sel(seed=1, variant="full").mean(["image", "head"])
    np.testing.assert_allclose(curve["mean"].sel(variant="full").values, per_dataset.mean("dataset").values, rtol=1e-5)
    # 3 datasets (one seed): the t interval of the 3 dataset means (docs/statistics.md, "Intervals"), which a
    # percentile bootstrap would squeeze inside their range
    lo, hi = curve["lower"].sel(variant="full").values, curve["upper"].sel(variant="full").values
    m = per_dataset.values.astype(np.float64)
    t_lo, t_hi = scipy.stats.t.interval(0.95, 2, loc=m.mean(0), scale=scipy.stats.sem(m, axis=0))
    np.testing.assert_allclose(lo, t_lo, rtol=1e-4)
    np.testing.assert_allclose(hi, t_hi, rtol=1e-4)
    assert curve.attrs["interval"] == "variance_components"
    assert list(curve["layer_kind"].values) == ["injected", "carried", "carried"]
    # the per-layer bias ratio is docs/math.md's ‖β‖/‖(a)‖ (stored layer norms, not per-head ones)
    ratio = view.layer_curve("text", "bias_norm_ratio")
    t = study["text"].to_dataset().sel(seed=1, variant="full")
    expected = (t.bias_norm / t.original_total_norm).mean("class").mean("dataset")
    np.testing.assert_allclose(ratio["mean"].sel(variant="full").values, expected.values, rtol=1e-5)


def test_single_run_curves_use_images_as_units(tree):
    curve = StoreSlices(tree, n_boot=200).layer_curve("vision", "foreground_attention")
    assert curve.attrs["units"] == "images of one run" and curve.attrs["n_units"] == 6


def test_image_slice_reads_one_block_then_only_slices(tree, monkeypatch):
    view = StoreSlices(tree)
    calls = []
    original = view._image_block
    monkeypatch.setattr(view, "_image_block", lambda *a: calls.append(a) or original(*a))
    sl = view.image_slice("synthetic", 1, 4, 2, 1)
    v = _vision(tree)
    np.testing.assert_array_equal(sl.attention["zeroshot"], v.cls_attention.sel(variant="zeroshot", image=4,
                                                                                 layer=2, head=1).values)
    expected_fg = float((v.cls_attention.sel(variant="full", image=4, layer=2, head=1) * v.foreground.sel(image=4))
                        .sum())
    assert sl.foreground_attention["full"] == pytest.approx(expected_fg, rel=1e-5)
    assert sl.label == int(v.label.sel(image=4)) and sl.classname == str(v.classname.sel(image=4).values)
    for layer in (0, 1):
        for head in (0, 1):
            view.image_slice("synthetic", 1, 4, layer, head)
    assert len(calls) == 1  # moving layer/head does not touch the store again
    view.image_slice("synthetic", 1, 5, 0, 0)
    assert len(calls) == 2


def test_text_roles_are_the_stored_attention(study):
    view = StoreSlices(study)
    roles = view.text_roles("dataset_02", 1, 1, 0)
    assert roles.dims == ("variant", "class", "key_role")
    stored = study["text"]["attention_by_role"].sel(dataset="dataset_02", seed=1, layer=1, head=0)
    np.testing.assert_array_equal(roles.transpose(*stored.dims).values, stored.values)
    np.testing.assert_allclose(roles.sum("key_role").values, 1.0, rtol=1e-5)


def _logits_tree(logits, labels, image_split, class_split):
    tree = example_tree(n_images=len(labels), n_classes=logits.shape[-1], n_layers=2)
    lg = xr.Dataset(
        {"logits": (("variant", "image", "class"), np.asarray(logits, dtype=np.float32))},
        coords={"variant": ["full", "zeroshot"], "image": np.arange(len(labels)),
                "class": np.arange(logits.shape[-1]), "label": ("image", np.asarray(labels)),
                "classname": ("class", [f"c{k}" for k in range(logits.shape[-1])]),
                "split": ("image", np.asarray(image_split))},
    )
    text = tree["text"].to_dataset().assign_coords(split=("class", np.asarray(class_split)))
    return xr.DataTree.from_dict({"/": xr.Dataset(attrs=dict(tree.attrs)), "text": text, "logits": lg})


def test_accuracy_base_to_novel_protocol():
    # classes 0,1 base; 2,3 novel. Image 0 (base, label 1): global argmax is novel class 3, among base it is 1.
    full = np.array([[0.0, 5.0, 1.0, 9.0],   # base img, label 1 -> correct among base, wrong among all
                     [8.0, 0.0, 1.0, 0.0],   # base img, label 0 -> correct
                     [9.0, 0.0, 2.0, 3.0],   # novel img, label 3 -> correct among novel (3 > 2)
                     [0.0, 0.0, 4.0, 1.0]])  # novel img, label 3 -> wrong
    zeroshot = np.zeros_like(full)  # ties: argmax picks the first allowed class
    logits = np.stack([full, zeroshot])
    view = StoreSlices(_logits_tree(logits, [1, 0, 3, 3], ["base", "base", "novel", "novel"],
                                  ["base", "base", "novel", "novel"]))
    table = view.accuracy().set_index("variant")
    assert table.loc["full", "base"] == pytest.approx(100.0)
    assert table.loc["full", "novel"] == pytest.approx(50.0)
    assert table.loc["full", "HM"] == pytest.approx(2 * 100 * 50 / 150)
    assert table.loc["full", "all"] == pytest.approx(25.0)  # among all classes only image 1 is right
    assert table.loc["zeroshot", "base"] == pytest.approx(50.0)  # predicts class 0 (base), class 2 (novel)
    assert table.loc["zeroshot", "novel"] == pytest.approx(0.0)


def test_padded_study_images_and_classes_are_skipped():
    from mmlens.store.study import combine_runs

    runs = [example_tree(n_images=n, n_classes=c, dataset=d, seed=1, n_layers=2) for d, n, c in (("a", 3, 4),
                                                                                               ("b", 5, 6))]
    view = StoreSlices(combine_runs(runs))
    assert len(view.classes("a")) == 4 and len(view.classes("b")) == 6
    table = view.accuracy().set_index(["dataset", "variant"])
    logits = runs[0]["logits"]["logits"].sel(variant="full").values
    labels = runs[0]["logits"]["label"].values
    assert table.loc[("a", "full"), "all"] == pytest.approx(100.0 * np.mean(logits.argmax(1) == labels))
    assert "padding" in " ".join(view.image_slice("a", 1, 4, 0, 0).messages)


def test_missing_groups_and_variables_raise_missing_data(tree):
    vision = tree["vision"].to_dataset().drop_vars(["cls_attention", "bias_head_norm"])
    partial = xr.DataTree.from_dict({"/": xr.Dataset(attrs=dict(tree.attrs)), "vision": vision})
    view = StoreSlices(partial)
    with pytest.raises(MissingData, match="cls_attention"):
        view.head_map("vision", "foreground_attention", "synthetic", 1, "full")
    with pytest.raises(MissingData, match="bias_head_norm"):
        view.head_map("vision", "bias_ratio", "synthetic", 1, "full")
    with pytest.raises(MissingData, match="no 'text' group"):
        view.text_roles("synthetic", 1, 0, 0)
    with pytest.raises(MissingData, match="no 'logits' group"):
        view.accuracy()
    sl = view.image_slice("synthetic", 1, 0, 0, 0)
    assert sl.attention == {} and "cls_attention" in " ".join(sl.messages)
    with pytest.raises(MissingData, match="expected a trace store"):
        StoreSlices(xr.DataTree.from_dict({"/": xr.Dataset(attrs=dict(tree.attrs))}))


def _with_attribution(tree, per_layer=False):
    v = tree["vision"].to_dataset()
    rng = np.random.default_rng(0)
    dims = ("variant", "image", "patch_row", "patch_col")
    shape = tuple(v.sizes[d] for d in dims)
    data = {"occlusion": (dims, rng.normal(size=shape))}
    if per_layer:
        dims_l = ("variant", "image", "layer", "patch_row", "patch_col")
        data["attention_gradcam"] = (dims_l, rng.random(tuple(v.sizes[d] for d in dims_l)))
    attribution = xr.Dataset(data, coords={k: v.coords[k] for k in ("variant", "image", "layer", "patch_row",
                                                                     "patch_col")})
    return xr.DataTree.from_dict({"/": xr.Dataset(attrs=dict(tree.attrs)), **{k: tree[k].to_dataset() for k in
                                                                            tree.children}, "attribution": attribution})


def test_image_slice_shows_the_prompted_variants_attribution_maps(tree):
    # the agreement numbers themselves are defined once, in mmlens.stats.attribution (tested there)
    t = _with_attribution(tree, per_layer=True)
    view = StoreSlices(t)
    sl = view.image_slice("synthetic", 1, 2, 1, 0)
    occ = t["attribution"]["occlusion"].sel(variant="full", image=2)
    np.testing.assert_allclose(sl.attribution["occlusion"], occ.values, rtol=1e-6)
    np.testing.assert_allclose(sl.attribution["attention_gradcam"],
                               t["attribution"]["attention_gradcam"].sel(variant="full", image=2, layer=1).values,
                               rtol=1e-6)
    assert set(sl.agreement["occlusion"]) == {"spearman", "foreground_mass", "foreground_chance"}


def test_lazy_zarr_store_gives_the_same_numbers(tree, tmp_path):
    import mmlens
    from mmlens.store.io import to_zarr

    path = to_zarr(tree, tmp_path / "run.zarr")
    lazy = StoreSlices(mmlens.open(path))
    eager = StoreSlices(tree)
    assert lazy.groups["vision"]["cls_attention"].chunks is not None  # dask-backed, read on demand
    for measure in ("prompt_mass", "bias_ratio", "foreground_attention"):
        np.testing.assert_allclose(lazy.head_map("vision", measure, "synthetic", 1, "full").values,
                                   eager.head_map("vision", measure, "synthetic", 1, "full").values, rtol=1e-6)
    np.testing.assert_array_equal(lazy.image_slice("synthetic", 1, 3, 1, 1).attention["full"],
                                  eager.image_slice("synthetic", 1, 3, 1, 1).attention["full"])
