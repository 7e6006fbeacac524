"""The ``attribution`` group in the store schema: its dims, documented variables and validation messages.

Built with xarray alone, in the shapes ``mmlens.attribution.to_dataset`` gives (the trace's own output
is checked in tests/unit/test_trace_attribution.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from mmlens.store import schema
from mmlens.store.schema import SchemaError, validate
from mmlens.store.synthetic import example_tree

N_IMAGES = 3


def _image_coords() -> dict:
    return {"image": np.arange(N_IMAGES), "label": ("image", np.array([0, 1, 0])),
            "target": ("image", np.array([0, 1, 0]))}


def attribution_dataset() -> xr.Dataset:
    """occlusion + per-head GradCAM + prompt IG over two baselines, as to_dataset lays them out."""
    rng = np.random.default_rng(0)
    grid = {"patch_row": np.arange(2), "patch_col": np.arange(2)}
    variants = ["full", "zeroshot"]
    return xr.Dataset(
        {
            "occlusion": (("variant", "image", "patch_row", "patch_col"), rng.normal(size=(2, N_IMAGES, 2, 2))),
            "occlusion_logit": (("variant", "image"), rng.normal(size=(2, N_IMAGES))),
            "attention_gradcam": (("variant", "image", "layer", "head", "patch_row", "patch_col"),
                                  rng.random((2, N_IMAGES, 3, 2, 2, 2))),
            "prompt_ig": (("variant", "baseline", "image", "branch", "layer", "prompt_token"),
                          rng.normal(size=(2, 2, N_IMAGES, 1, 3, 2))),
            "prompt_ig_convergence_delta": (("variant", "baseline", "image"), rng.normal(size=(2, 2, N_IMAGES))),
        },
        coords={"variant": variants, **_image_coords(), **grid, "layer": np.arange(3),
                "layer_kind": ("layer", ["injected", "injected", "carried"]), "head": np.arange(2),
                "baseline": ["zero", "handcrafted"], "branch": ["text"], "prompt_token": np.arange(2),
                "token_role": ("prompt_token", ["prompt", "prompt"])},
        attrs={"mmlens_group": "attribution"},
    )


def test_attribution_dims_are_schema_dims():
    assert {"baseline", "branch", "prompt_token"} <= set(schema.DIMS)
    assert "attribution" in schema.RESULT_DIMS  # agreement() stacks methods along it; never stored
    assert "attribution" in schema.GROUPS and "attribution" in schema.VARIABLES
    for dims, _ in schema.ATTRIBUTION_VARIABLES.values():
        assert set(dims) <= set(schema.DIMS)


def test_a_valid_attribution_group_in_a_tree_and_alone():
    ds = attribution_dataset()
    validate(ds, require_provenance=False)
    assert schema.infer_group(ds) == "attribution"
    ds.attrs = {}
    assert schema.infer_group(ds) == "attribution"  # guessed from its variables
    tree = example_tree()
    tree["attribution"] = xr.DataTree(attribution_dataset())
    validate(tree)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda ds: ds.assign(occlusion=ds.occlusion.isel(patch_col=0, drop=True)),
         r"attribution/occlusion: expected dims \(variant, image, patch_row, patch_col\)"),
        (lambda ds: ds.assign(occlusion=ds.occlusion.expand_dims(baseline=ds.baseline.values)),
         r"attribution/occlusion: expected dims"),  # baseline is optional for prompt IG only
        (lambda ds: ds.assign(prompt_ig=ds.prompt_ig.isel(prompt_token=0, drop=True)),
         r"attribution/prompt_ig: expected dims \(variant, image, branch, layer, prompt_token\) "
         r"plus optionally baseline"),
        (lambda ds: ds.assign(occlusion_logit=ds.occlusion_logit.isel(variant=0, drop=True)),
         r"attribution/occlusion_logit: expected dims \(variant, image\)"),
        (lambda ds: ds.assign(my_map=ds.occlusion.isel(image=0, drop=True)),
         r"attribution/my_map: expected dims \(variant, image, \.\.\.\)"),
        (lambda ds: ds.assign(occlusion=ds.occlusion.astype(np.int64)),
         r"attribution/occlusion: expected a floating-point array"),
        (lambda ds: ds.assign(my_map=ds.occlusion > 0), r"attribution/my_map: expected a floating-point array"),
        (lambda ds: ds.assign_coords(variant=["full", "bias_only"]),
         r"expected 'variant' values among \['full', 'zeroshot'\], found \['bias_only'\]"),
        (lambda ds: ds.assign_coords(branch=["audio"]), r"expected 'branch' values among"),
        (lambda ds: ds.drop_vars("prompt_token"), r"expected an index coordinate for dim 'prompt_token'"),
        (lambda ds: ds.rename_dims(prompt_token="prompt"), r"found unknown \['prompt'\]"),
        (lambda ds: ds.assign_coords(layer_kind=("layer", ["fresh"] * 3)), r"'layer_kind' values among"),
        (lambda ds: ds.assign_coords(label=("image", np.array(["a", "b", "c"], dtype=object))),
         r"expected integer 'label' values"),
    ],
)
def test_attribution_problems_are_named(change, message):
    with pytest.raises(SchemaError, match=message):
        validate(change(attribution_dataset()), require_provenance=False)


def test_every_attribution_problem_is_listed_in_a_tree():
    tree = example_tree()
    bad = attribution_dataset().assign_coords(branch=["audio"])
    tree["attribution"] = xr.DataTree(bad.assign(occlusion=bad.occlusion.astype(np.int32)))
    with pytest.raises(SchemaError) as err:
        validate(tree)
    assert "'branch' values" in str(err.value) and "attribution/occlusion: expected a floating-point" in str(err.value)


def test_accessor_accepts_attribution_dims():
    import mmlens.stats  # noqa: F401  (the .mml accessor lives above the statistics)

    ds = attribution_dataset()
    assert ds.mml.injected_layers().sizes["layer"] == 2  # .mml validates dims on entry
