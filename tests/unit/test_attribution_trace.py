"""Attribution next to the trace: variants, the ``attribution`` group in a valid tree, agreement with â."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import mmlens
from mmlens import PromptedCLIP
from mmlens.attribution import (
    AttentionGradCAM,
    PatchOcclusion,
    agreement,
    attribute_variants,
    patch_foreground,
    to_dataset,
)
from mmlens.store.schema import validate

CLASSES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def setup(tiny_clip):
    model = PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0)
    g = torch.Generator().manual_seed(5)
    masks = torch.zeros(3, 32, 32)
    masks[0, :16, :16] = 1
    masks[1, 8:24, 8:24] = 1
    masks[2, 20:, :] = 1
    batch = {"image": torch.randn(3, 3, 32, 32, generator=g), "label": torch.tensor([0, 1, 2]),
             "classname": CLASSES, "path": ["a", "b", "c"], "mask": masks}
    tree = mmlens.trace(model, [batch], with_reference=True, progress=False)
    return model, batch, tree


def test_variants_and_group_in_the_tree(setup):
    model, batch, tree = setup
    occ = attribute_variants(PatchOcclusion(model, progress=False), batch, internal_batch_size=64)
    assert model.prompts_enabled  # restored
    assert occ.dims == ("variant", "image", "patch_row", "patch_col")
    assert list(occ.variant.values) == ["full", "zeroshot"]
    np.testing.assert_allclose(occ.logit.sel(variant="zeroshot").values,
                               tree["logits"]["logits"].sel(variant="zeroshot").values[[0, 1, 2], [0, 1, 2]],
                               rtol=1e-5)
    cam = AttentionGradCAM(model, progress=False).attribute(batch)
    ds = to_dataset({"occlusion": occ, "attention_gradcam": cam})
    tree["attribution"] = xr.DataTree(ds)
    validate(tree)
    # the image coordinates line up with the trace's
    np.testing.assert_array_equal(ds.image.values, tree["vision"].image.values)
    assert "logit" not in ds.coords and ds.attention_gradcam_logit.dims == ("variant", "image")
    assert list(ds.label.values) == list(tree["vision"].label.values)


def test_agreement_with_cls_attention_and_foreground(setup):
    model, batch, tree = setup
    vision = tree["vision"].to_dataset()
    fg = patch_foreground(batch["mask"].numpy(), 8)
    np.testing.assert_allclose(fg.values, vision.foreground.values)  # same as the trace's own
    occ = attribute_variants(PatchOcclusion(model, progress=False), batch, internal_batch_size=64)
    cam = AttentionGradCAM(model, progress=False).attribute(batch)
    out = agreement({"occlusion": occ, "attention_gradcam": cam}, cls_attention=vision.cls_attention,
                    foreground=vision.foreground)
    rho = out.rank_correlation
    assert set(rho.dims) == {"attribution", "variant", "image", "layer", "head"}
    # the GradCAM map with prompts is compared with the prompted â, layer by layer
    from scipy.stats import spearmanr

    a = cam.sel(image=1, layer=1).values.ravel()
    b = vision.cls_attention.sel(variant="full", image=1, layer=1, head=0).values.ravel()
    assert float(rho.sel(attribution="attention_gradcam", variant="full", image=1, layer=1, head=0)) == \
        pytest.approx(spearmanr(a, b).statistic)
    assert np.isnan(rho.sel(attribution="attention_gradcam", variant="zeroshot")).all()  # not computed there
    assert out.foreground_mass.sel(attribution="occlusion").notnull().all()
    np.testing.assert_allclose(out.foreground_chance.values, vision.foreground.mean(("patch_row", "patch_col")))
