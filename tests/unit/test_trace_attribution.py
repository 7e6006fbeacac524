"""Attributions computed by the trace (``attribution=``, ``mmlens trace --attribution``) in the attribution group."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmlens
from mmlens import PromptedCLIP
from mmlens.attribution import IMAGE_METHODS, AttentionGradCAM, PatchOcclusion, PromptIntegratedGradients
from mmlens.store import schema
from mmlens.store.schema import validate
from mmlens.tracing.tracer import parse_attribution

CLASSES = ["cat", "dog", "owl"]
METHODS = {"occlusion": {}, "attention_gradcam": {}, "prompt_ig": {"n_steps": 4}}


def _model(tiny_clip) -> PromptedCLIP:
    model = PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.prompt_learner.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _batches():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(5, 3, 32, 32, generator=g)
    labels = torch.tensor([0, 1, 2, 1, 0])
    return images, labels, [{"image": images[lo:lo + 3], "label": labels[lo:lo + 3],
                             "path": [f"img{i}.png" for i in range(lo, min(lo + 3, 5))]} for lo in (0, 3)]


def test_trace_attribution_group_matches_the_methods_called_directly(tiny_clip):
    model = _model(tiny_clip)
    images, labels, batches = _batches()
    tree = mmlens.trace(model, batches, with_reference=True, attribution=METHODS, progress=False)
    validate(tree)  # the attribution group is checked too
    att, vision = tree["attribution"].to_dataset(), tree["vision"].to_dataset()
    assert model.block_hook is None and model.prompts_enabled
    # on the trace's own image coordinates (numbered across batches), labels and paths
    for coord in ("image", "label", "classname", "split", "path"):
        np.testing.assert_array_equal(att[coord].values, vision[coord].values)
    assert list(att.variant.values) == ["full", "zeroshot"]
    # the explained logit is the trace's logit at the true class, with and without prompts
    logits = tree["logits"]["logits"]
    for variant in ("full", "zeroshot"):
        want = logits.sel(variant=variant).values[np.arange(5), labels.numpy()]
        np.testing.assert_allclose(att.occlusion_logit.sel(variant=variant).values, want, rtol=1e-5, atol=1e-5)
    # the maps are those of the attribution methods called directly on the same images (all at once; the
    # batches differ, so float rounding of the logit differences differs: atol 1e-5 for logits ~1)
    occ = PatchOcclusion(model, progress=False).attribute(images, "label", labels=labels)
    np.testing.assert_allclose(att.occlusion.sel(variant="full").values, occ.values, rtol=1e-5, atol=1e-5)
    cam = AttentionGradCAM(model, progress=False).attribute(images, "label", labels=labels)
    np.testing.assert_allclose(att.attention_gradcam.sel(variant="full").values, cam.values, rtol=1e-5, atol=1e-5)
    model.prompts_enabled = False
    try:
        occ0 = PatchOcclusion(model, progress=False).attribute(images, "label", labels=labels)
    finally:
        model.prompts_enabled = True
    np.testing.assert_allclose(att.occlusion.sel(variant="zeroshot").values, occ0.values, rtol=1e-5, atol=1e-5)
    pig = PromptIntegratedGradients(model, progress=False).attribute(images, "label", labels=labels, n_steps=4)
    # on the group's shared layer axis (GradCAM's 3 blocks); NaN where no prompt vector is learned
    stored = att.prompt_ig.sel(variant="full")
    np.testing.assert_allclose(stored.sel(layer=pig.layer).values, pig.values, rtol=1e-5, atol=1e-5)
    assert np.isnan(stored.sel(layer=2).values).all()
    assert np.isnan(att.prompt_ig.sel(variant="zeroshot").values).all()  # no prompts to attribute there
    assert att.prompt_ig.dims == ("variant", "image", "branch", "layer", "prompt_token")


def test_trace_to_store_streams_the_attribution_group(tmp_path, tiny_clip):
    model = _model(tiny_clip)
    _, _, batches = _batches()
    methods = {"occlusion": {}, "prompt_ig": {"n_steps": 4}}
    tree = mmlens.trace(model, batches, attribution=methods, progress=False)
    path = mmlens.trace_to_store(model, batches, tmp_path / "s.zarr", attribution=methods, batch_size=3,
                                 progress=False)
    stored = mmlens.open(path).load()  # validates
    assert stored["attribution"].sizes["image"] == 5
    a, b = tree["attribution"].to_dataset(), stored["attribution"].to_dataset()
    assert a.identical(b)
    # resuming the finished store with the same options keeps it as it is
    mmlens.trace_to_store(model, batches, path, attribution=methods, batch_size=3, progress=False)
    assert mmlens.open(path)["attribution"].sizes["image"] == 5


def test_without_labels_the_prediction_is_explained(tiny_clip):
    model = _model(tiny_clip)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    tree = mmlens.trace(model, images, attribution="occlusion", progress=False)
    att = tree["attribution"].to_dataset()
    predicted = tree["logits"]["logits"].sel(variant="full").values.argmax(-1)
    np.testing.assert_array_equal(att.target.values, predicted)
    assert att.attrs["attribution_target"] == "predicted"


def test_bad_attribution_requests_fail_before_tracing(tiny_clip):
    with pytest.raises(ValueError, match=r"Unknown attribution method\(s\) \['gradcam'\]"):
        parse_attribution("occlusion,gradcam")
    assert parse_attribution(["occlusion"]) == {"occlusion": {}}
    zeroshot = PromptedCLIP(tiny_clip, CLASSES, method="zeroshot")
    with pytest.raises(ValueError, match="no learned prompt vectors"):
        mmlens.trace(zeroshot, torch.randn(1, 3, 32, 32), attribution="prompt_ig", progress=False)
    model = _model(tiny_clip)
    with pytest.raises(ValueError, match="variants"):
        mmlens.trace(model, torch.randn(1, 3, 32, 32), variants=["drop_prompts"], attribution="occlusion",
                     progress=False)


def test_method_names_agree_across_schema_attribution_and_cli():
    from mmlens.attribution.dataset import PER_RESULT_COORDS

    assert set(schema.ATTRIBUTION_METHODS) == {*IMAGE_METHODS, PromptIntegratedGradients.name}
    assert {cls.name for cls in IMAGE_METHODS.values()} == set(IMAGE_METHODS)
    assert set(schema.ATTRIBUTION_PER_IMAGE) == set(PER_RESULT_COORDS)
