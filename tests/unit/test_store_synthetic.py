"""The synthetic trees and studies are internally consistent (other tests and benchmarks build on them)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from mmlens.store.synthetic import example_study, example_tree


def test_tree_shapes_and_coords():
    tree = example_tree(n_images=5, n_layers=3, n_heads=2, grid=3, n_classes=4, width=8, prompt_depth=2)
    vision = tree["vision"].to_dataset()
    assert dict(vision.sizes) == {
        "variant": 2,
        "image": 5,
        "layer": 3,
        "head": 2,
        "key_role": 3,
        "patch_row": 3,
        "patch_col": 3,
        "channel": 8,
    }
    assert list(vision.layer_kind.values) == ["injected", "injected", "carried"]
    assert set(tree["text"].to_dataset().key_role.values) == {"sot", "prompt", "word", "classname", "eot", "pad"}
    assert tree["logits"]["logits"].dims == ("variant", "image", "class")
    # labels index the class names
    assert all(cn == f"class_{lab}" for cn, lab in zip(vision.classname.values, vision.label.values))


def test_tree_is_consistent_with_math():
    v = example_tree(n_images=6, seed=3)["vision"].to_dataset()
    alpha = v.prompt_mass
    # prompt-free variant: no prompt mass, no bias, NaN prompt cosines
    zs = v.sel(variant="zeroshot")
    assert float(abs(zs.prompt_mass).max()) == 0.0
    assert float(abs(zs.bias).max()) == 0.0
    assert bool(zs.prompt_key_cosine.isnull().all())
    full = v.sel(variant="full")
    assert float(full.prompt_mass.min()) > 0.0
    # attention at [cls] per role: sums to 1, the prompt part is alpha, the patch part is (1-alpha) sum(a^)
    by_role = v.attention_by_role
    np.testing.assert_allclose(by_role.sum("key_role"), 1.0, rtol=1e-5)
    np.testing.assert_allclose(by_role.sel(key_role="prompt"), alpha, rtol=1e-6)
    patch_sum = v.cls_attention.sum(["patch_row", "patch_col"])
    np.testing.assert_allclose(by_role.sel(key_role="patch"), (1 - alpha) * patch_sum, rtol=1e-5)
    # norms are the norms of the stored vectors
    np.testing.assert_allclose(
        v.bias_norm, np.linalg.norm(v.bias.transpose(..., "channel"), axis=-1), rtol=1e-5
    )
    np.testing.assert_allclose(
        v.original_total_norm, np.linalg.norm(v.original.transpose(..., "channel"), axis=-1), rtol=1e-5
    )
    # foreground fractions are fractions
    assert 0.0 <= float(v.foreground.min()) and float(v.foreground.max()) <= 1.0
    assert float(v.foreground.max()) == 1.0


def test_tree_is_reproducible_and_seed_dependent():
    a, b, c = example_tree(seed=1), example_tree(seed=1), example_tree(seed=2)
    xr.testing.assert_equal(a["vision"].to_dataset(), b["vision"].to_dataset())
    assert not a["vision"].to_dataset().equals(c["vision"].to_dataset())


def test_failures_are_recorded():
    v = example_tree(n_failures=2)["vision"].to_dataset()
    assert v.failures.dims == ("failure",) and v.failure_path.dims == ("failure",)


def test_study_lazy_equals_eager():
    kw = dict(n_datasets=2, n_images=5, n_seeds=2, n_layers=2, grid=3, width=4)
    eager = example_study(**kw)
    lazy = example_study(**kw, chunks=5)  # one block per dataset: same random streams
    assert lazy["vision"]["cls_attention"].chunks is not None
    xr.testing.assert_identical(eager["vision"].to_dataset(), lazy["vision"].to_dataset().compute())
    assert eager["vision"]["label"].dims == ("dataset", "image")
    assert eager["text"]["classname"].dims == ("dataset", "class")


def test_study_chunked_blocks_and_variable_selection():
    study = example_study(
        n_datasets=2, n_images=7, chunks=3, variables=["prompt_mass"], with_foreground=False
    )
    v = study["vision"].to_dataset()
    assert set(v.data_vars) == {"prompt_mass"}
    assert v.prompt_mass.chunks[3] == (3, 3, 1)
    assert np.isfinite(v.prompt_mass.values).all()


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match="unknown variant"):
        example_tree(variants=("full", "nope"))
    with pytest.raises(ValueError, match="prompt_depth"):
        example_tree(n_layers=2, prompt_depth=5)


def test_asking_for_fewer_variables_gives_the_same_values():
    kw = dict(n_datasets=2, n_images=5, n_layers=2, grid=3, width=4)
    full = example_study(**kw)["vision"].to_dataset()
    few = example_study(**kw, variables=["bias", "cls_attention"])["vision"].to_dataset()
    assert set(few.data_vars) == {"bias", "cls_attention"}
    xr.testing.assert_identical(few.bias, full.bias)
    xr.testing.assert_identical(few.cls_attention, full.cls_attention)
