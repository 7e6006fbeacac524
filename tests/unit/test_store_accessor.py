"""The .mml accessor: entry checks, selections by label, with-vs-without, tree groups."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import mmlens
from mmlens import stats
from mmlens.store import io
from mmlens.store.schema import SchemaError
from mmlens.store.synthetic import example_tree


@pytest.fixture(scope="module")
def tree():
    return example_tree(n_images=4, n_layers=3, prompt_depth=2, grid=3, width=4)


def test_entry_check_fails_early_with_names(tree):
    ds = tree["vision"].to_dataset()
    with pytest.raises(SchemaError, match=r"found unknown \['layers'\]"):
        _ = ds.rename_dims(layer="layers").mml
    with pytest.raises(SchemaError, match="'key_role' values among"):
        _ = ds.assign_coords(key_role=["cls", "patch", "prmpt"]).mml
    with pytest.raises(SchemaError, match="'token_role' coordinate on the 'query' dim"):
        _ = xr.Dataset({"x": (("query",), [1.0, 2.0])}).mml


def test_layer_kind_selections(tree):
    ds = tree["vision"].to_dataset()
    assert ds.mml.injected_layers().layer.values.tolist() == [0, 1]
    assert ds.mml.carried_layers().layer.values.tolist() == [2]
    assert ds["bias_norm"].mml.carried_layers().layer.values.tolist() == [2]
    with pytest.raises(ValueError, match="needs the 'layer_kind' coordinate"):
        ds.drop_vars("layer_kind").mml.injected_layers()


def test_with_vs_without_is_full_minus_zeroshot(tree):
    ds = tree["vision"].to_dataset()
    diff = ds.mml.with_vs_without()
    expected = ds.cls_attention.sel(variant="full", drop=True) - ds.cls_attention.sel(variant="zeroshot", drop=True)
    xr.testing.assert_allclose(diff.cls_attention, expected)
    assert "foreground" not in diff and "variant" not in diff.dims  # no variant: dropped
    assert diff.attrs["difference"] == "full - zeroshot"
    xr.testing.assert_allclose(ds.prompt_mass.mml.with_vs_without(), ds.prompt_mass.sel(variant="full", drop=True))
    only_full = ds.sel(variant=["full"])
    with pytest.raises(ValueError, match="with_reference=True"):
        only_full.mml.with_vs_without()


def test_prompts_selects_by_role(tree):
    ds = tree["vision"].to_dataset()
    p = ds.mml.prompts()
    assert set(p.data_vars) == {"attention_by_role"}
    xr.testing.assert_equal(p.attention_by_role, ds.attention_by_role.sel(key_role="prompt"))
    with pytest.raises(ValueError, match="no variable has either dim"):
        ds[["bias_norm"]].mml.prompts()


def _all_query_vision():
    """Hand-built all-query output: 5 tokens [cls, patch, patch, prompt, prompt] at shuffled positions."""
    roles = ["patch", "cls", "prompt", "patch", "prompt"]
    alpha = np.arange(2 * 5, dtype=float).reshape(2, 5) / 10  # (image, query)
    return xr.Dataset(
        {"prompt_mass": (("image", "query"), alpha), "bias_norm": (("image",), [1.0, 2.0])},
        coords={"image": [0, 1], "query": np.arange(5), "token_role": ("query", roles)},
    )


def test_readout_selects_the_cls_query_by_role():
    ds = _all_query_vision()
    r = ds.mml.readout()
    assert "query" not in r.dims
    np.testing.assert_allclose(r.prompt_mass.values, [0.1, 0.6])  # position 1 holds [cls]
    np.testing.assert_allclose(r.bias_norm.values, [1.0, 2.0])
    prompts = ds.mml.prompts()
    assert prompts["query"].values.tolist() == [2, 4]
    np.testing.assert_allclose(ds.prompt_mass.mml.readout().values, [0.1, 0.6])


def test_readout_text_with_class_dependent_eot():
    # 2 classes; EOT at position 3 for class 0 and 4 for class 1 (token_role is 2-D)
    roles = [["sot", "prompt", "word", "eot", "pad"], ["sot", "prompt", "word", "word", "eot"]]
    a = np.arange(10, dtype=float).reshape(2, 5)
    ds = xr.Dataset(
        {"prompt_mass": (("class", "query"), a)},
        coords={"class": [0, 1], "query": np.arange(5), "token_role": (("class", "query"), roles)},
    )
    r = ds.mml.readout()
    np.testing.assert_allclose(r.prompt_mass.values, [3.0, 9.0])
    bad = ds.assign_coords(token_role=(("class", "query"), [roles[0], ["sot", "prompt", "word", "word", "pad"]]))
    with pytest.raises(ValueError, match="exactly one 'eot' query per class"):
        bad.mml.readout()


def test_tree_accessor_and_opened_stores(tree, tmp_path):
    vision = tree.mml.vision
    assert vision.attrs["mmlens_group"] == "vision" and vision.attrs["method"] == tree.attrs["method"]
    with pytest.raises(KeyError, match="no 'attribution' group"):
        mmlens.store.select.group_dataset(tree, "attribution")
    opened = mmlens.open(io.to_zarr(tree, tmp_path / "t.zarr"))
    alpha = opened.mml.prompt_mass()
    assert alpha.attrs["weights_sha256"] == tree.attrs["weights_sha256"]
    xr.testing.assert_allclose(alpha.load(), stats.prompt_mass(tree))
    xr.testing.assert_allclose(opened.mml.text_reliance().load(), tree.mml.text.mml.text_reliance())
