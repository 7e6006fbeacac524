"""Attention GradCAM and gradient rollout: recomputed attention is exact, captum's grad x A equals autograd by hand,
rollout by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerGradientXActivation

from mmlens import PromptedCLIP
from mmlens.attribution import AttentionCapture, AttentionGradCAM, GradientRollout, attention_probabilities
from mmlens.models.prompted import ROLE_CODES

CLASSES = ["cat", "dog", "bird"]
LABELS = torch.tensor([0, 2])


@pytest.fixture(scope="module", params=["maple", "zeroshot"])
def model(request, tiny_clip):
    return PromptedCLIP(tiny_clip, CLASSES, method=request.param, depth=2, init_seed=0)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def test_recomputed_attention_equals_the_module(tiny_clip):
    torch.manual_seed(0)
    for blocks, mask in ((tiny_clip.model.visual.transformer.resblocks, None),
                         (tiny_clip.model.transformer.resblocks, tiny_clip.model.attn_mask)):
        block = blocks[1]
        t = 20 if mask is not None else 19
        z = block.ln_1(torch.randn(2, t, block.attn.embed_dim))
        m = mask[:t, :t] if mask is not None else None
        probs, out = attention_probabilities(block, z, m)
        with torch.no_grad():
            expected = block.attention(z, attn_mask=m)
            _, weights = block.attn(z, z, z, attn_mask=m, need_weights=True, average_attn_weights=False)
        np.testing.assert_allclose(out.detach().numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(probs.detach().numpy(), weights.numpy(), rtol=1e-5, atol=1e-7)
        assert torch.allclose(probs.sum(-1), torch.ones(()))


def test_capture_keeps_the_logits_and_restores_the_hook(model, images):
    with torch.no_grad():
        plain = model(images)
        with AttentionCapture(model) as cap:
            captured = model(images)
    np.testing.assert_allclose(captured.numpy(), plain.numpy(), rtol=1e-5, atol=1e-5)
    assert model.block_hook is None
    n_prompts = model.n_ctx if model.method == "maple" else 0
    assert cap.records[0].shape == (2, 2, 1 + 16 + n_prompts, 1 + 16 + n_prompts)
    model.block_hook = lambda call: call.block(call.x, attn_mask=call.attn_mask)
    try:
        with pytest.raises(RuntimeError, match="already has a block_hook"):
            AttentionGradCAM(model, progress=False).attribute(images, labels=LABELS)
    finally:
        model.block_hook = None


def _captum_grad_x_attention(model, images):
    """grad * A per layer from captum's LayerGradientXActivation on the softmax modules."""
    with torch.no_grad():
        tf = model.text_features()
    with AttentionCapture(model) as cap:
        outs = LayerGradientXActivation(lambda x: model(x, tf), list(cap.probes)).attribute(images, target=LABELS)
    roles = model.vision_roles(16)
    return [o.detach() for o in outs], roles


def _hand_grad_x_attention(model, images):
    """grad * A per layer by hand: torch.autograd.grad of the summed target logits w.r.t. the captured probabilities."""
    with torch.no_grad():
        tf = model.text_features()
    with AttentionCapture(model) as cap, torch.enable_grad():
        x = images.detach().requires_grad_(True)  # keeps the graph differentiable without learned prompts
        out = model(x, tf).gather(1, LABELS.reshape(-1, 1)).sum()
        probs = [cap.records[layer] for layer in range(model.n_layers["vision"])]
        grads = torch.autograd.grad(out, probs)
    return [(g * p).detach() for p, g in zip(probs, grads)]


def test_captum_grad_x_attention_equals_autograd_by_hand(model, images):
    """The library goes through captum's LayerGradientXActivation; the numbers are those of autograd by hand."""
    cam = AttentionGradCAM(model, progress=False).attribute(images, labels=LABELS, per_head=True)
    hand = _hand_grad_x_attention(model, images)
    roles = model.vision_roles(16)
    cls = int(torch.nonzero(roles == ROLE_CODES["cls"])[0, 0])
    patches = torch.nonzero(roles == ROLE_CODES["patch"])[:, 0]
    ref = torch.stack([o.clamp(min=0)[:, :, cls][:, :, patches] for o in hand], dim=1)  # [B, L, H, P]
    assert np.abs(cam.values - ref.reshape(2, 3, 2, 4, 4).numpy()).max() <= 1e-6
    for captum_layer, hand_layer in zip(_captum_grad_x_attention(model, images)[0], hand):
        assert float((captum_layer - hand_layer).abs().max()) <= 1e-6


def test_gradcam_equals_captum_layer_grad_x_activation(model, images):
    cam = AttentionGradCAM(model, progress=False).attribute(images, labels=LABELS)
    heads = AttentionGradCAM(model, progress=False).attribute(images, labels=LABELS, per_head=True)
    outs, roles = _captum_grad_x_attention(model, images)
    cls = int(torch.nonzero(roles == ROLE_CODES["cls"])[0, 0])
    patches = torch.nonzero(roles == ROLE_CODES["patch"])[:, 0]
    ref = torch.stack([o.clamp(min=0)[:, :, cls][:, :, patches] for o in outs], dim=1)  # [B, L, H, P]
    np.testing.assert_array_equal(heads.values, ref.reshape(2, 3, 2, 4, 4).numpy())
    np.testing.assert_array_equal(cam.values, ref.mean(dim=2).reshape(2, 3, 4, 4).numpy())
    assert cam.dims == ("image", "layer", "patch_row", "patch_col")
    assert list(cam.layer_kind.values) == model.layer_kinds("vision")
    assert float(cam.max()) > 0  # not a trivially empty map


def test_gradient_matches_finite_difference(tiny_clip, images):
    """The attention gradient is a real derivative: scale one [cls]->patch score by a tiny step."""
    model = PromptedCLIP(tiny_clip, CLASSES, method="zeroshot")
    with torch.no_grad():
        tf = model.text_features()
    layer, head, key = 1, 0, 5
    with AttentionCapture(model) as cap, torch.enable_grad():
        x = images[:1].clone().requires_grad_(True)
        out = model(x, tf)[0, 0]
        grad = torch.autograd.grad(out, [cap.records[layer]])[0][0, head, 0, key]

    class Bumped(torch.nn.Module):
        def __init__(self, eps: float) -> None:
            super().__init__()
            self.eps = eps

        def forward(self, scores: torch.Tensor) -> torch.Tensor:
            probs = scores.softmax(dim=-1).clone()
            probs[:, head, 0, key] += self.eps  # query 0 is [cls]
            return probs

    def logit_with_bump(eps: float) -> float:
        with AttentionCapture(model) as c2, torch.no_grad():
            c2.probes[layer] = Bumped(eps)
            return float(model(images[:1], tf)[0, 0])

    eps = 1e-2
    numeric = (logit_with_bump(eps) - logit_with_bump(-eps)) / (2 * eps)
    assert abs(float(grad)) > 1e-3  # a derivative worth checking
    assert numeric == pytest.approx(float(grad), rel=1e-3, abs=1e-4)


def test_rollout_equals_the_recursion_by_hand(model, images):
    rel = GradientRollout(model, progress=False).attribute(images, labels=LABELS)
    outs = _hand_grad_x_attention(model, images)
    roles = model.vision_roles(16).numpy()
    kinds = model.layer_kinds("vision")
    t = len(roles)
    expected = []
    for b in range(2):
        r = np.eye(t)
        for layer, o in enumerate(outs):
            if layer > 0 and kinds[layer] == "injected":
                for m in np.nonzero(roles == ROLE_CODES["prompt"])[0]:
                    r[m] = np.eye(t)[m]
            a_bar = np.clip(o[b].double().numpy(), 0, None).mean(axis=0)
            r = r + a_bar @ r
        cls = np.nonzero(roles == ROLE_CODES["cls"])[0][0]
        expected.append((r[cls, roles == ROLE_CODES["patch"]].reshape(4, 4),
                         r[cls, roles == ROLE_CODES["prompt"]].sum()))
    np.testing.assert_allclose(rel.values, np.stack([e[0] for e in expected]), rtol=1e-5, atol=1e-7)
    assert np.abs(rel.values - np.stack([e[0] for e in expected])).max() <= 1e-6
    np.testing.assert_allclose(rel.prompt_relevance.values, [e[1] for e in expected], rtol=1e-5, atol=1e-7)
    if model.method == "zeroshot":
        assert np.all(rel.prompt_relevance.values == 0)
    else:
        assert np.all(rel.prompt_relevance.values > 0)
