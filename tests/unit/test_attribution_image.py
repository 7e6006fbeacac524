"""Image-side attributions: identical to captum called directly, IG completeness, targets, batching, coords."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import FeatureAblation, IntegratedGradients, LayerIntegratedGradients, Occlusion

from mmlens import PromptedCLIP
from mmlens.attribution import (
    PatchEmbeddingIntegratedGradients,
    PatchOcclusion,
    PixelIntegratedGradients,
    patch_feature_mask,
    pixels_to_patches,
)
from mmlens.attribution._inputs import PatchGrid

CLASSES = ["cat", "dog", "bird"]
PATCH = 8  # tiny config: 32x32 images, 8x8 patches -> 4x4 grid


@pytest.fixture(scope="module")
def model(tiny_clip):
    return PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 32, 32, generator=g)


LABELS = torch.tensor([0, 2, 1])


def _patch_sum(pixel_attr: torch.Tensor, signed: bool) -> torch.Tensor:
    """Independent per-patch sum: avg-pool over channels and the patch, times the element count."""
    a = pixel_attr if signed else pixel_attr.abs()
    return F.avg_pool2d(a.sum(dim=1, keepdim=True), PATCH)[:, 0] * PATCH * PATCH


@pytest.mark.parametrize("aggregate", ["abs", "signed"])
def test_pixel_ig_equals_captum_direct(model, images, aggregate):
    ours = PixelIntegratedGradients(model, progress=False).attribute(images, labels=LABELS, n_steps=8,
                                                                     aggregate=aggregate)
    direct, delta = IntegratedGradients(lambda x: model(x)).attribute(
        images, target=LABELS, n_steps=8, return_convergence_delta=True)
    # captum's numbers, unchanged: identical after the same aggregation ...
    grid = PatchGrid(4, 4, PATCH, PATCH)
    np.testing.assert_array_equal(ours.values, pixels_to_patches(direct, grid, aggregate).numpy())
    np.testing.assert_array_equal(ours.convergence_delta.values, delta.numpy())
    # ... and the aggregation is the per-patch sum (independent arithmetic, so float tolerance)
    np.testing.assert_allclose(ours.values, _patch_sum(direct, aggregate == "signed").numpy(), rtol=1e-5, atol=1e-6)
    assert ours.dims == ("image", "patch_row", "patch_col")


def test_pixel_ig_completeness(model, images):
    ours = PixelIntegratedGradients(model, progress=False).attribute(images, labels=LABELS, n_steps=24,
                                                                     aggregate="signed")
    with torch.no_grad():
        logits = model(images).gather(1, LABELS[:, None])[:, 0]
        base = model(torch.zeros_like(images)).gather(1, LABELS[:, None])[:, 0]
    np.testing.assert_allclose(ours.logit.values, logits.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours.baseline_logit.values, base.numpy(), rtol=1e-6)
    total = ours.sum(("patch_row", "patch_col")).values
    diff = (logits - base).numpy()
    # completeness: sum of attributions = logit difference up to captum's reported delta
    np.testing.assert_allclose(total - diff, ours.convergence_delta.values, atol=1e-5)
    assert np.all(np.abs(ours.convergence_delta.values) < 0.02 * np.abs(diff).max())


def test_patch_embedding_ig_equals_captum_direct_and_is_complete(model, images):
    ours = PatchEmbeddingIntegratedGradients(model, progress=False).attribute(images, labels=LABELS, n_steps=16,
                                                                              aggregate="signed")
    lig = LayerIntegratedGradients(lambda x: model(x), model.clip.visual.conv1)
    direct, delta = lig.attribute(images, target=LABELS, n_steps=16, return_convergence_delta=True)
    assert direct.shape[-2:] == (4, 4)
    np.testing.assert_array_equal(ours.values, direct.sum(dim=1).numpy())
    np.testing.assert_array_equal(ours.convergence_delta.values, delta.numpy())
    total = ours.sum(("patch_row", "patch_col")).values
    diff = ours.logit.values - ours.baseline_logit.values
    np.testing.assert_allclose(total - diff, ours.convergence_delta.values, atol=1e-5)
    assert np.all(np.abs(ours.convergence_delta.values) < 0.02 * np.abs(diff).max())
    absolute = PatchEmbeddingIntegratedGradients(model, progress=False).attribute(
        images, labels=LABELS, n_steps=16, aggregate="abs")
    np.testing.assert_array_equal(absolute.values, direct.abs().sum(dim=1).numpy())


def test_occlusion_equals_captum_occlusion_and_feature_ablation(model, images):
    ours = PatchOcclusion(model, progress=False).attribute(images, labels=LABELS)
    f = lambda x: model(x)  # noqa: E731
    occ = Occlusion(f).attribute(images, sliding_window_shapes=(3, PATCH, PATCH), strides=(3, PATCH, PATCH),
                                 baselines=0.0, target=LABELS)
    np.testing.assert_allclose(ours.values, occ[:, 0, ::PATCH, ::PATCH].numpy(), rtol=1e-6, atol=1e-7)
    mask = patch_feature_mask(PatchGrid(4, 4, PATCH, PATCH))
    fa = FeatureAblation(f).attribute(images, target=LABELS, feature_mask=mask)
    np.testing.assert_array_equal(ours.values, fa[:, 0, ::PATCH, ::PATCH].numpy())
    # by hand: hide patch (row 1, col 2) of image 0
    hidden = images[:1].clone()
    hidden[:, :, PATCH:2 * PATCH, 2 * PATCH:3 * PATCH] = 0
    with torch.no_grad():
        drop = model(images[:1])[0, 0] - model(hidden)[0, 0]
    assert ours.sel(image=0, patch_row=1, patch_col=2).item() == pytest.approx(drop.item(), abs=1e-6)


def test_internal_batch_size_is_honoured(model, images):
    rows_seen: list[int] = []
    handle = model.clip.visual.conv1.register_forward_hook(lambda m, i, o: rows_seen.append(o.shape[0]))
    try:
        small = PixelIntegratedGradients(model, progress=False).attribute(
            images, labels=LABELS, n_steps=8, internal_batch_size=6, batch_size=None)
        ig_rows, rows_seen[:] = max(rows_seen), []
        occ = PatchOcclusion(model, progress=False).attribute(images, labels=LABELS, internal_batch_size=6,
                                                              batch_size=None)
        occ_rows, rows_seen[:] = max(rows_seen), []
        big = PixelIntegratedGradients(model, progress=False).attribute(images, labels=LABELS, n_steps=8,
                                                                        batch_size=None)
        big_rows = max(rows_seen)
    finally:
        handle.remove()
    assert ig_rows <= 6 and occ_rows <= 6 and big_rows == 3 * 8
    np.testing.assert_allclose(small.values, big.values, rtol=1e-5, atol=1e-6)
    ref = PatchOcclusion(model, progress=False).attribute(images, labels=LABELS)
    np.testing.assert_allclose(occ.values, ref.values, rtol=1e-5, atol=1e-6)


def test_targets_and_coords(model, images):
    occ = PatchOcclusion(model, progress=False)
    batch = {"image": images, "label": LABELS, "path": ["a.png", "b.png", "c.png"], "classname": ["cat", "bird", "dog"],
             "index": torch.tensor([10, 11, 12])}
    by_label = occ.attribute(batch)
    assert list(by_label.image.values) == [0, 1, 2]  # numbered by position, as mmlens.trace does
    assert list(by_label.dataset_index.values) == [10, 11, 12]
    assert list(by_label.path.values) == ["a.png", "b.png", "c.png"]
    assert list(by_label.classname.values) == ["cat", "bird", "dog"]
    assert list(by_label.target.values) == [0, 2, 1] and by_label.variant.item() == "full"
    as_int = occ.attribute(images, target=2)
    as_name = occ.attribute(images, target="bird")
    np.testing.assert_array_equal(as_int.values, as_name.values)
    assert list(as_int.target_classname.values) == ["bird"] * 3
    with torch.no_grad():
        predicted = model(images).argmax(-1)
    assert list(occ.attribute(images, target="predicted").target.values) == predicted.tolist()
    np.testing.assert_array_equal(occ.attribute(images, target=[0, 2, 1]).values, by_label.values)
    with pytest.raises(ValueError, match="needs the true classes"):
        occ.attribute(images)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        occ.attribute(images, target=5)
    with pytest.raises(ValueError, match="not one of the model's classes"):
        occ.attribute(images, target="zebra")


def test_prompts_off_is_the_zeroshot_variant(model, images):
    occ = PatchOcclusion(model, progress=False)
    full = occ.attribute(images, labels=LABELS)
    model.prompts_enabled = False
    try:
        off = occ.attribute(images, labels=LABELS)
        with torch.no_grad():
            logits = model(images).gather(1, LABELS[:, None])[:, 0]
    finally:
        model.prompts_enabled = True
    assert off.variant.item() == "zeroshot"
    np.testing.assert_allclose(off.logit.values, logits.numpy(), rtol=1e-6)
    assert not np.allclose(off.values, full.values)


def test_bad_inputs_say_what_was_expected(model):
    with pytest.raises(ValueError, match="multiple of the patch size"):
        PatchOcclusion(model, progress=False).attribute(torch.zeros(1, 3, 30, 30), target=0)
    with pytest.raises(ValueError, match=r"tensor \[batch, channels, height, width\]"):
        PatchOcclusion(model, progress=False).attribute(torch.zeros(3, 32, 32), target=0)
    with pytest.raises(TypeError, match="PromptedCLIP"):
        PixelIntegratedGradients(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="aggregate must be one of"):
        PixelIntegratedGradients(model, progress=False).attribute(torch.zeros(1, 3, 32, 32), target=0,
                                                                  aggregate="mean", n_steps=2)
