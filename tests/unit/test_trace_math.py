"""The split of docs/math.md against hand computations, torch's own attention, and completeness."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock

from mmlens import PromptedCLIP, load_clip
from mmlens.models import METHODS
from mmlens.models.prompted import ROLE_CODES, BlockCall
from mmlens.tracing.decompose import (
    CompletenessError,
    attention_output,
    check_completeness,
    check_query_split,
    merged_output,
    split_attention,
)
from mmlens.tracing.interventions import ROUTE_RULES, RoleMeanBias, SplitHook, intervene, measure_mean_bias

CLASSES = ["cat", "dog", "airplane"]


def hand_block() -> ResidualAttentionBlock:
    """1 block, 1 head, width 2: W_Q = W_K = W_V = W_O = I, no biases, ln_1 = identity, MLP = 0."""
    block = ResidualAttentionBlock(2, 1)
    with torch.no_grad():
        block.attn.in_proj_weight.copy_(torch.cat([torch.eye(2)] * 3))
        block.attn.in_proj_bias.zero_()
        block.attn.out_proj.weight.copy_(torch.eye(2))
        block.attn.out_proj.bias.zero_()
        for p in block.mlp.parameters():
            p.zero_()
    block.ln_1 = torch.nn.Identity()
    return block.eval()


def test_hand_computed_one_block_one_head():
    # two originals o0=(1,0), o1=(0,1) and one prompt p=(1,1); query = o0
    z = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    prompt = torch.tensor([False, False, True])
    s = [1 / math.sqrt(2), 0.0, 1 / math.sqrt(2)]  # o0·(o0, o1, p) / sqrt(2)
    e = [math.exp(v) for v in s]
    alpha = e[2] / sum(e)
    a_hat = [e[0] / (e[0] + e[1]), e[1] / (e[0] + e[1])]
    original = [(1 - alpha) * a_hat[0], (1 - alpha) * a_hat[1]]  # (1-α) Σ â v, v = z
    beta = [alpha * 1.0, alpha * 1.0]  # α · v_p (one prompt: ã = 1)

    split = split_attention(hand_block(), z, None, prompt)
    assert split.prompt_mass[0, 0, 0].item() == pytest.approx(alpha, abs=1e-7)
    assert split.attn_original[0, 0, 0, :2].tolist() == pytest.approx(a_hat, abs=1e-7)
    got_original = merged_output(split, split.original_mass[..., None] * split.context_original)[0, 0]
    got_beta = merged_output(split, split.prompt_mass[..., None] * split.context_prompt)[0, 0]
    assert got_original.tolist() == pytest.approx(original, abs=1e-7)
    assert got_beta.tolist() == pytest.approx(beta, abs=1e-7)

    # the route ablations on the same block, against the same hand numbers
    x = z.clone()
    roles = torch.tensor([ROLE_CODES["cls"], ROLE_CODES["patch"], ROLE_CODES["prompt"]])
    call = BlockCall("vision", 0, hand_block(), x, None, roles, None)
    expected = {
        "full": [original[0] + beta[0], original[1] + beta[1]],
        "bias_only": [a_hat[0] + beta[0], a_hat[1] + beta[1]],  # (1-α) scaling dropped, β kept
        "redistribution_only": original,  # β dropped
        "drop_prompts": a_hat,
    }
    for variant, want in expected.items():
        out = SplitHook({("vision", 0): ROUTE_RULES[variant]})(call)
        assert (out[0, 0] - x[0, 0]).tolist() == pytest.approx(want, abs=1e-6), variant
    mean = {("vision", 0): RoleMeanBias(per_token={}, pooled={c: torch.full((2,), 0.25) for c in roles.tolist()})}
    out = SplitHook({("vision", 0): ROUTE_RULES["constant_bias"]}, mean)(call)
    assert (out[0, 0] - x[0, 0]).tolist() == pytest.approx([a_hat[0] + 0.25, a_hat[1] + 0.25], abs=1e-6)


def _perturb(model, scale=0.5):
    with torch.no_grad():
        for p in model.prompt_learner.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


def _check_every_block(model, images, rtol=1e-5):
    errors = {}

    def recorder(call, split, z, rebuilt):
        ref = call.block.attention(z, attn_mask=call.attn_mask)
        errors[(call.branch, call.layer)] = check_completeness(split, ref, branch=call.branch, layer=call.layer,
                                                               rtol=rtol)

    with torch.no_grad(), intervene(model, "full", recorder=recorder):
        model(images)
    return errors


@pytest.mark.parametrize("method", METHODS)
def test_completeness_every_method_tiny(tiny_clip, method):
    torch.manual_seed(0)
    model = _perturb(PromptedCLIP(tiny_clip, CLASSES, method=method, depth=2, init_seed=0))
    errors = _check_every_block(model, torch.randn(2, 3, 32, 32))
    assert len(errors) == 2 * 3  # every block of both towers was checked
    assert max(errors.values()) < 1e-5


@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    return load_clip("ViT-B-16")


@pytest.mark.slow  # real-size ViT-B/16 (random weights)
@pytest.mark.parametrize("method", ["zeroshot", "maple"])
def test_completeness_vit_b16_random(vit_b16, method):
    clip = vit_b16
    model = _perturb(PromptedCLIP(clip, CLASSES, method=method, init_seed=0), 0.05)
    errors = _check_every_block(model, torch.randn(1, 3, 224, 224))
    assert len(errors) == 24 and max(errors.values()) < 1e-5


def test_completeness_error_names_branch_layer_and_head(tiny_clip):
    model = PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0)

    def broken(call, split, z, rebuilt):
        split.context_prompt[:, 1] += 1.0  # corrupt head 1
        check_completeness(split, call.block.attention(z, attn_mask=call.attn_mask), branch=call.branch,
                           layer=call.layer, rtol=1e-5)

    with pytest.raises(CompletenessError, match=r"text tower, layer 0, head 1"):
        with intervene(model, "full", recorder=broken):
            model.text_features()


def test_petrov_identity_renormalised_attention_is_prompt_free_attention(tiny_clip):
    """â with prompts equals torch's own attention over the original tokens alone, same input."""
    torch.manual_seed(0)
    model = _perturb(PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0))
    seen = []

    def recorder(call, split, z, rebuilt):
        if call.branch != "vision":
            return
        originals = call.roles != ROLE_CODES["prompt"]
        mha = call.block.attn
        zo = z[:, originals]
        _, probs = F.multi_head_attention_forward(
            zo.transpose(0, 1), zo.transpose(0, 1), zo.transpose(0, 1), mha.embed_dim, mha.num_heads,
            mha.in_proj_weight, mha.in_proj_bias, None, None, False, 0.0, mha.out_proj.weight, mha.out_proj.bias,
            training=False, need_weights=True, average_attn_weights=False)
        ours = split.attn_original[:, :, originals][:, :, :, originals]
        torch.testing.assert_close(ours, probs, atol=1e-6, rtol=1e-5)
        assert split.prompt_mass[:, :, originals].min() > 0  # the prompts did take attention
        seen.append(call.layer)

    with torch.no_grad(), intervene(model, "full", recorder=recorder):
        model.encode_image(torch.randn(2, 3, 32, 32))
    assert seen == [0, 1, 2]


def test_drop_prompts_equals_zeroshot(tiny_clip):
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    zeroshot = PromptedCLIP(tiny_clip, CLASSES, method="zeroshot")
    # vision prompts only: dropping them in every layer is zero-shot CLIP, logits included
    model = _perturb(PromptedCLIP(tiny_clip, CLASSES, method="deep_vision", depth=2, init_seed=0))
    with torch.no_grad():
        with intervene(model, "drop_prompts"):
            dropped = model(images)
        torch.testing.assert_close(dropped, zeroshot(images), atol=1e-5, rtol=1e-5)
        assert (model(images) - zeroshot(images)).abs().max() > 1e-3  # and the prompts did matter
    # MaPLe: the vision tower with prompts dropped is the zero-shot vision tower
    maple = _perturb(PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0))
    with torch.no_grad():
        with intervene(maple, "drop_prompts", branch="vision"):
            vision = maple.encode_image(images)
        torch.testing.assert_close(vision, zeroshot.encode_image(images), atol=1e-5, rtol=1e-5)


def test_drop_prompts_text_is_prompt_slots_out_of_every_softmax(tiny_clip):
    """MaPLe's text context replaces template words, so dropping it leaves the other words: the
    reference is open_clip's text tower with the prompt-slot keys masked out of every softmax."""
    torch.manual_seed(0)
    model = _perturb(PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0))
    with torch.no_grad(), intervene(model, "drop_prompts", branch="text"):
        ours = model.encode_text()
    m = tiny_clip.model
    tokens = model.prompt_tokens
    mask = m.attn_mask.clone()
    mask[:, 1:1 + model.n_ctx] = float("-inf")  # keys of the two prompt slots
    mask[1:1 + model.n_ctx, 1:1 + model.n_ctx] = float("-inf")
    mask[1:1 + model.n_ctx, 0] = 0.0  # slot queries still see SOT (their outputs never reach the others)
    with torch.no_grad():
        x = m.token_embedding(tokens) + m.positional_embedding
        for blk in m.transformer.resblocks:
            x = blk(x, attn_mask=mask)
        x = m.ln_final(x)[torch.arange(len(tokens)), tokens.argmax(-1)] @ m.text_projection
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-5)


def test_interventions_by_layer_group_and_constant_bias(tiny_clip):
    torch.manual_seed(0)
    model = _perturb(PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0))
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        full = model(images)
        with intervene(model, "bias_only", layers="carried") as m:
            assert set(m.block_hook.routes) == {("vision", 2), ("text", 2)}
            carried = model(images)
        with intervene(model, "bias_only", layers="injected"):
            injected = model(images)
        assert not torch.allclose(carried, full) and not torch.allclose(injected, carried)
        mean_bias = measure_mean_bias(model, [images])
        assert set(mean_bias) == {(b, i) for b in ("vision", "text") for i in range(3)}
        with intervene(model, "constant_bias", mean_bias=mean_bias):
            constant = model(images)
        assert torch.isfinite(constant).all()
        # one image: its own β is the mean, so constant β changes only the prompt-softmax scaling route
        one = images[:1]
        mb1 = measure_mean_bias(model, [one], branch="vision")
        with intervene(model, "constant_bias", branch="vision", mean_bias=mb1):
            c1 = model.encode_image(one)
        with intervene(model, "bias_only", branch="vision"):
            b1 = model.encode_image(one)
        assert not torch.allclose(c1, b1)  # differs: later layers see a different stream
    with pytest.raises(ValueError, match="measure_mean_bias"), intervene(model, "constant_bias"):
        pass
    with pytest.raises(ValueError, match="out of range"), intervene(model, "drop_prompts", layers=[7]):
        pass
    assert model.block_hook is None and model.prompts_enabled


def test_nan_in_stream_names_branch_and_layer(tiny_clip):
    model = PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0)
    with torch.no_grad():
        model.prompt_learner.compound_prompts_text[0].fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="text tower, layer 1"), intervene(model, "full",
                                                                                    recorder=lambda *a: None):
        model.text_features()


def test_readout_split_equals_the_all_query_split(tiny_clip):
    """split.at(readout) (what the trace stores) against the all-query split read at the same query."""
    torch.manual_seed(0)
    model = _perturb(PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0))
    seen = []

    def recorder(call, split, z, rebuilt):
        roles = call.roles if call.roles.dim() == 2 else call.roles.expand(len(call.x), -1)
        readout = (roles == ROLE_CODES["cls" if call.branch == "vision" else "eot"]).int().argmax(-1)
        rows = torch.arange(len(readout))
        at = split.at(readout)
        close = dict(atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(at.prompt_mass, split.prompt_mass[rows, :, readout], **close)
        torch.testing.assert_close(at.original_mass, split.original_mass[rows, :, readout], **close)
        torch.testing.assert_close(at.attn_original, split.attn_original[rows, :, readout], **close)
        # (1-α) Σ â v and α Σ ã v from the all-query split = each path summed over its own keys
        torch.testing.assert_close(at.original_context, (split.original_mass[..., None]
                                                         * split.context_original)[rows, :, readout], **close)
        torch.testing.assert_close(at.prompt_context, (split.prompt_mass[..., None]
                                                       * split.context_prompt)[rows, :, readout], **close)
        # the stream's output is a·v projected: (a)+(b)+(c) rebuilt from the separate paths
        torch.testing.assert_close(rebuilt, attention_output(split), **close)
        seen.append((call.branch, call.layer))

    with torch.no_grad(), intervene(model, "full", recorder=recorder):
        model(torch.randn(2, 3, 32, 32))
    assert sorted(seen) == [(b, i) for b in ("text", "vision") for i in range(3)]


def test_readout_check_names_the_corrupted_head(tiny_clip):
    model = PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0)

    def broken(call, split, z, rebuilt):
        at = split.at(torch.zeros(len(call.x), dtype=torch.long))
        at.prompt_context[:, 1] += 1.0  # corrupt head 1 of β
        check_query_split(split, at, branch=call.branch, layer=call.layer, rtol=1e-5)

    with pytest.raises(CompletenessError, match=r"vision tower, layer 0, head 1"):
        with torch.no_grad(), intervene(model, "full", recorder=broken):
            model.encode_image(torch.randn(1, 3, 32, 32))


def test_trace_checks_the_module_on_the_first_batch(tiny_clip):
    """A block whose own module computes something else than its parameters say is caught by the trace."""
    import mmlens

    model = PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0)
    block = tiny_clip.model.visual.transformer.resblocks[1]
    handle = block.attn.register_forward_hook(lambda mod, args, out: (out[0] * 1.01, *out[1:]))
    try:
        with pytest.raises(CompletenessError, match=r"vision tower, layer 1 \(all heads\)"):
            mmlens.trace(model, torch.randn(2, 3, 32, 32), progress=False)
        # without the check the run goes through (the check is what caught it)
        mmlens.trace(model, torch.randn(2, 3, 32, 32), progress=False, check_completeness=False)
    finally:
        handle.remove()
    assert model.block_hook is None


@pytest.mark.slow  # real-size ViT-B/16 (random weights)
def test_trace_logits_equal_open_clip_forward_vit_b16(vit_b16):
    """Zero-shot trace on ViT-B-16: the logits equal open_clip's own encode_image/encode_text."""
    import mmlens

    model = PromptedCLIP(vit_b16, CLASSES, method="zeroshot")
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    tree = mmlens.trace(model, images, progress=False)
    m = vit_b16.model
    with torch.no_grad():
        f = F.normalize(m.encode_image(images), dim=-1)
        g = F.normalize(m.encode_text(vit_b16.tokenizer([f"a photo of a {c}." for c in CLASSES])), dim=-1)
        ref = (m.logit_scale.exp() * f @ g.T).numpy()
    got = tree["logits"]["logits"].sel(variant="full").values
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(ref), atol=1e-4, rtol=1e-5)


def test_stored_readout_statistics_against_torch_attention(tiny_clip):
    """The trace's vision variables, recomputed from each block input with torch's own MHA (need_weights)."""
    import mmlens

    torch.manual_seed(0)
    model = _perturb(PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0))
    images = torch.randn(2, 3, 32, 32)
    inputs = {}

    def recorder(call, split, z, rebuilt):
        if call.branch == "vision":
            inputs[call.layer] = (call.block, z.clone(), call.roles)

    with torch.no_grad(), intervene(model, "full", recorder=recorder):
        model(images)
    vision = mmlens.trace(model, images, store_bias_vectors=True, progress=False)["vision"].to_dataset()
    vision = vision.sel(variant="full")
    for layer, (block, z, roles) in inputs.items():
        mha = block.attn
        zt = z.transpose(0, 1)
        _, probs = F.multi_head_attention_forward(
            zt, zt, zt, mha.embed_dim, mha.num_heads, mha.in_proj_weight, mha.in_proj_bias, None, None, False, 0.0,
            mha.out_proj.weight, mha.out_proj.bias, training=False, need_weights=True, average_attn_weights=False)
        cls = probs[:, :, 0]  # [image, head, keys] at the [cls] query (position of role cls)
        assert int(roles[0]) == ROLE_CODES["cls"]
        prompt, patch = roles == ROLE_CODES["prompt"], roles == ROLE_CODES["patch"]
        alpha = cls[..., prompt].sum(-1)
        at = vision.sel(layer=layer)
        close = dict(atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(torch.from_numpy(at.prompt_mass.values), alpha, **close)
        by_role = torch.stack([cls[..., roles == ROLE_CODES[r]].sum(-1) for r in ("cls", "patch", "prompt")], -1)
        torch.testing.assert_close(torch.from_numpy(at.attention_by_role.values), by_role, **close)
        a_hat = (cls[..., patch] / (1 - alpha)[..., None]).reshape(2, -1, 4, 4)
        torch.testing.assert_close(torch.from_numpy(at.cls_attention.values), a_hat, **close)
        # stored (a) + β + b_O at [cls] is the block's own attention output there (completeness on stored data)
        with torch.no_grad():
            own = block.attention(z)[:, 0]
        stored = torch.from_numpy(at.original.values + at.bias.values) + mha.out_proj.bias
        torch.testing.assert_close(stored, own, **close)
        torch.testing.assert_close(torch.from_numpy(at.bias_norm.values), torch.from_numpy(at.bias.values).norm(dim=-1))
        width, heads = mha.embed_dim, mha.num_heads
        v = (z @ mha.in_proj_weight[2 * width:].T + mha.in_proj_bias[2 * width:]).reshape(2, -1, heads, width // heads)
        beta = torch.einsum("ihm,imhd->ihd", cls[..., prompt], v[:, prompt])  # α Σ ã v = Σ_m a_m v_m per head
        beta = beta.reshape(2, width) @ mha.out_proj.weight.T  # Σ_h (...) W_O^h
        torch.testing.assert_close(torch.from_numpy(at.bias.values), beta, **close)
        for name, part in (("prompt_key_cosine", 1), ("prompt_value_cosine", 2)):
            w = mha.in_proj_weight[part * width:(part + 1) * width]
            b = mha.in_proj_bias[part * width:(part + 1) * width]
            t = (z @ w.T + b).reshape(2, -1, heads, width // heads).transpose(1, 2)  # [image, head, token, d]
            want = F.cosine_similarity(t[:, :, patch], t[:, :, prompt].mean(2, keepdim=True), dim=-1)
            torch.testing.assert_close(torch.from_numpy(at[name].values), want.reshape(2, heads, 4, 4), **close)
    assert sorted(inputs) == [0, 1, 2]
