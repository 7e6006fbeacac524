"""PromptedCLIP against independent references: open_clip's own forward and a MaPLe forward
written here from PROMPT_METHODS.md (no PromptedCLIP internals are called)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmlens import PromptedCLIP, load_clip
from mmlens.models import METHODS

CLASSES = ["cat", "dog", "airplane", "red fox"]


def openclip_logits(clip, images, texts):
    m = clip.model
    with torch.no_grad():
        f = F.normalize(m.encode_image(images), dim=-1)
        g = F.normalize(m.encode_text(clip.tokenizer(texts)), dim=-1)
        return m.logit_scale.exp() * f @ g.T


def test_zeroshot_equals_open_clip_tiny(tiny_clip):
    model = PromptedCLIP(tiny_clip, CLASSES, method="zeroshot")
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours = model(images)
    ref = openclip_logits(tiny_clip, images, [f"a photo of a {c}." for c in CLASSES])
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


@pytest.mark.slow  # real-size ViT-B/16 (random weights)
def test_zeroshot_equals_open_clip_vit_b16_random():
    torch.manual_seed(0)
    clip = load_clip("ViT-B-16")
    model = PromptedCLIP(clip, CLASSES, method="zeroshot")
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = model(images)
    ref = openclip_logits(clip, images, [f"a photo of a {c}." for c in CLASSES])
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


@pytest.mark.slow  # real-size ViT-B/16 (random weights)
def test_maple_default_parameter_count_vit_b16():
    clip = load_clip("ViT-B-16")
    model = PromptedCLIP(clip, CLASSES, method="maple", n_ctx=2, depth=9)
    assert model.trainable_parameter_count() == 3_555_072
    assert all(not p.requires_grad for p in model.clip.parameters())
    assert all(p.requires_grad for p in model.prompt_learner.parameters())


def reference_maple_logits(clip, state, classnames, images, *, n_ctx, depth):
    """MaPLe forward written from PROMPT_METHODS.md with open_clip's modules only."""
    m, tok = clip.model, clip.tokenizer
    ctx = state["ctx"]
    deep_text = [state[f"compound_prompts_text.{k}"] for k in range(depth - 1)]

    def lin(prefix, x):
        return x @ state[prefix + ".weight"].T + state[prefix + ".bias"]

    vis_prompts = [lin("proj", ctx)] + [lin(f"compound_prompt_projections.{k}", deep_text[k]) for k in range(depth - 1)]
    # text: "a photo of a <c>." with tokens 1..n_ctx replaced by ctx
    tokens = tok([f"a photo of a {c}." for c in classnames])
    x = m.token_embedding(tokens).clone()
    x[:, 1:1 + n_ctx] = ctx
    x = x + m.positional_embedding
    for i, blk in enumerate(m.transformer.resblocks):
        if 1 <= i < depth:
            x = torch.cat([x[:, :1], deep_text[i - 1].expand(x.shape[0], -1, -1), x[:, 1 + n_ctx:]], dim=1)
        x = blk(x, attn_mask=m.attn_mask)
    x = m.ln_final(x)
    text = x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ m.text_projection
    # vision: patches, cls, +pos, append prompts (no pos), ln_pre, replace up to depth
    v = m.visual
    y = v.conv1(images).flatten(2).transpose(1, 2)
    y = torch.cat([v.class_embedding.expand(y.shape[0], 1, -1), y], 1) + v.positional_embedding
    y = torch.cat([y, vis_prompts[0].expand(y.shape[0], -1, -1)], 1)
    y = v.ln_pre(y)
    for i, blk in enumerate(v.transformer.resblocks):
        if 1 <= i < depth:
            y = torch.cat([y[:, :-n_ctx], vis_prompts[i].expand(y.shape[0], -1, -1)], 1)
        y = blk(y)
    image = v.ln_post(y[:, 0]) @ v.proj
    return m.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T


@pytest.mark.parametrize("depth", [1, 3, 9, 12])
def test_maple_equals_independent_reference(tiny_clip12, depth):
    torch.manual_seed(depth)
    model = PromptedCLIP(tiny_clip12, CLASSES, method="maple", n_ctx=2, depth=depth)
    with torch.no_grad():  # move prompts away from their init so that every slot matters
        for p in model.prompt_learner.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    images = torch.randn(2, 3, 32, 32)
    state = model.prompt_state_dict()
    with torch.no_grad():
        ours = model(images)
        ref = reference_maple_logits(tiny_clip12, state, CLASSES, images, n_ctx=2, depth=depth)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert model.layer_kinds("vision") == ["injected"] * depth + ["carried"] * (12 - depth)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_trains_only_prompts_and_switches_classes(tiny_clip, method):
    model = PromptedCLIP(tiny_clip, CLASSES, method=method, depth=2, init_seed=0)
    images = torch.randn(2, 3, 32, 32)
    logits = model(images)
    assert logits.shape == (2, len(CLASSES))
    if method != "zeroshot":
        logits.logsumexp(-1).sum().backward()
        grads = [p.grad for p in model.prompt_learner.parameters()]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.clip.parameters())
    model.set_classnames(["zebra", "yak"])
    assert model(images).shape == (2, 2)


def test_disabling_prompts_is_zeroshot(tiny_clip):
    images = torch.randn(2, 3, 32, 32)
    zs = PromptedCLIP(tiny_clip, CLASSES, method="zeroshot")
    model = PromptedCLIP(tiny_clip, CLASSES, method="ivlp", depth=3, init_seed=3)
    model.prompts_enabled = False
    with torch.no_grad():
        torch.testing.assert_close(model(images), zs(images), atol=0, rtol=0)


def test_init_seed_is_deterministic(tiny_clip):
    a = PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=3, init_seed=7).prompt_state_dict()
    b = PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=3, init_seed=7).prompt_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_method_suggests(tiny_clip):
    with pytest.raises(ValueError, match="Did you mean 'maple'"):
        PromptedCLIP(tiny_clip, CLASSES, method="mapel")


def test_bad_depth_message(tiny_clip):
    with pytest.raises(ValueError, match="depth=9 must be between 1 and the number of blocks"):
        PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=9)
