"""Issue II in the trace: role-aligned constant bias, bias tuning traced, SOT and b_K left out (hand computations)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlens import PromptedCLIP
from mmlens.models.prompted import ROLE_CODES
from mmlens.tracing.interventions import RoleMeanBias, SplitHook, intervene, measure_mean_bias
from mmlens.tracing.tracer import trace

# class names of 1, 2 and 6 tokens: the EOT sits at a different position in every prompt
BASE = ["cat", "golden retriever", "hot air balloon over the sea"]
NOVEL = ["dog", "very small red fire engine"]
EOT, WORD, CLASSNAME, PAD = (ROLE_CODES[r] for r in ("eot", "word", "classname", "pad"))


def _model(tiny_clip, classes):
    torch.manual_seed(0)
    model = PromptedCLIP(tiny_clip, classes, method="maple", depth=2, init_seed=0)
    with torch.no_grad():  # make the prompts matter (MaPLe's init is tiny)
        for p in model.prompt_learner.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model.eval()


def _captured(model):
    """β at every token of every class prompt and the role codes, per text block (read by hand)."""
    seen = {}

    def capture(call, beta):
        if call.branch == "text":
            seen[call.layer] = (beta.clone(), call.roles.clone())

    previous = model.block_hook
    model.block_hook = SplitHook(capture_bias=capture)
    try:
        with torch.no_grad():
            model.text_features()
    finally:
        model.block_hook = previous
    return seen


def test_text_mean_is_per_role_on_prompts_of_different_lengths(tiny_clip):
    model = _model(tiny_clip, BASE)
    seen = _captured(model)
    means = measure_mean_bias(model, [], branch="text")
    for layer, (beta, roles) in seen.items():
        eot_pos = [int((roles[r] == EOT).nonzero()) for r in range(len(BASE))]
        assert len(set(eot_pos)) == len(BASE)  # the EOT moves with the class-name length
        # hand: mean over the three prompts of the β at each prompt's own EOT
        eot_hand = sum(beta[r, eot_pos[r]] for r in range(len(BASE))) / len(BASE)
        got = means["text", layer]
        torch.testing.assert_close(got.per_token[EOT][0], eot_hand, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got.pooled[EOT], eot_hand, atol=1e-6, rtol=1e-5)
        # class-name tokens (1, 2, 6 per prompt): one mean over all 9, no per-token alignment
        name_tokens = [beta[r, p] for r in range(len(BASE)) for p in range(roles.shape[1]) if roles[r, p] == CLASSNAME]
        assert len(name_tokens) >= 9
        torch.testing.assert_close(got.pooled[CLASSNAME], sum(name_tokens) / len(name_tokens), atol=1e-6, rtol=1e-5)
        assert CLASSNAME not in got.per_token and PAD not in got.per_token
        # the prompt slots sit at the same positions in every prompt: one mean per slot
        slots = (roles[0] == ROLE_CODES["prompt"]).nonzero().flatten()
        torch.testing.assert_close(got.per_token[ROLE_CODES["prompt"]], beta[:, slots].mean(0), atol=1e-6, rtol=1e-5)

    # the trace's own EOT β (a separate route: the split at the readout query) has the same mean
    tree = trace(model, torch.zeros(1, 3, 32, 32), store_bias_vectors=True, progress=False)
    traced = torch.from_numpy(tree["text"]["bias"].sel(variant="full").mean("class").values)
    for layer in seen:
        torch.testing.assert_close(means["text", layer].per_token[EOT][0], traced[layer], atol=1e-5, rtol=1e-4)


def test_novel_prompts_get_the_base_eot_mean_at_their_own_eot(tiny_clip):
    model = _model(tiny_clip, BASE)
    means = measure_mean_bias(model, [], branch="text")
    model.set_classnames(NOVEL)
    roles = _captured(model)[0][1]
    applied = means["text", 1].for_roles(roles)
    for r in range(len(NOVEL)):
        for p in range(roles.shape[1]):
            want = {EOT: means["text", 1].per_token[EOT][0], CLASSNAME: means["text", 1].pooled[CLASSNAME],
                    PAD: means["text", 1].pooled[PAD]}.get(int(roles[r, p]))
            if want is not None:
                torch.testing.assert_close(applied[r, p], want)
    # and the ablation runs on the novel prompts with the base mean
    with torch.no_grad(), intervene(model, "constant_bias", branch="text", mean_bias=means):
        assert torch.isfinite(model.text_features()).all()


def test_vision_roles_keep_one_mean_per_token(tiny_clip):
    model = _model(tiny_clip, BASE)
    images = torch.randn(5, 3, 32, 32)
    seen = {}

    def capture(call, beta):
        if call.branch == "vision":
            seen[call.layer] = beta.clone()

    model.block_hook = SplitHook(capture_bias=capture)
    with torch.no_grad():
        model.encode_image(images)
    model.block_hook = None
    means = measure_mean_bias(model, [images[:2], images[2:]], branch="vision")  # two batches
    roles = model.vision_roles(16)
    for layer, beta in seen.items():
        # every image has the same role layout: the role-aligned mean is the mean at each position
        torch.testing.assert_close(means["vision", layer].for_roles(roles)[0], beta.mean(0), atol=1e-6, rtol=1e-5)


def test_missing_role_is_an_error_that_names_it():
    m = RoleMeanBias(per_token={}, pooled={EOT: torch.zeros(2)})
    with pytest.raises(ValueError, match="'word'.*measured on inputs with roles \\['eot'\\]"):
        m.for_roles(torch.tensor([WORD, EOT]))


def test_position_mean_misses_the_eot_mean(tiny_clip):
    """What the per-position mean (before issue II) applied at an EOT readout: not the mean EOT β."""
    model = _model(tiny_clip, BASE)
    seen = _captured(model)
    beta, roles = seen[1]
    position_mean = beta.mean(0)  # the old β̄: per absolute position
    eot_mean = measure_mean_bias(model, [], branch="text")["text", 1].per_token[EOT][0]
    for r in range(len(BASE)):
        pos = int((roles[r] == EOT).nonzero())
        # at each EOT position the old mean averages one EOT β with two other roles' β
        assert not torch.allclose(position_mean[pos], eot_mean, rtol=0.05, atol=0)


# ---------------------------------------------------------------------------------------------- bias tuning
@pytest.mark.parametrize("method", ["bias", "bias_coupled"])
def test_learned_bias_is_traced_as_the_blocks_bias_term(tiny_clip, method):
    torch.manual_seed(0)
    model = PromptedCLIP(tiny_clip, BASE, method=method, depth=2, init_seed=0).eval()
    with torch.no_grad():  # trained biases are not zero (they start at zero)
        for p in model.prompt_learner.parameters():
            p.normal_()
    images = torch.randn(6, 3, 32, 32)
    batch = {"image": images, "label": torch.tensor([0, 0, 1, 1, 2, 2])}
    tree = trace(model, [batch], with_reference=True, store_bias_vectors=True, progress=False)
    pl = model.prompt_learner
    for tower in ("vision", "text"):
        ds = tree[tower].to_dataset()
        assert ds.coords["bias_source"].item() == "learned"
        full = ds.sel(variant="full")
        for layer, kind in enumerate(model.layer_kinds(tower)):
            norms = full["bias_norm"].sel(layer=layer).values
            if kind != "injected":
                assert kind == "none" and (norms == 0).all()
                continue
            with torch.no_grad():  # the parameter itself (bias_coupled: vision b = W·t + c)
                if tower == "text":
                    b = pl.text_bias[layer].detach()
                elif method == "bias_coupled":
                    b = pl.bias_projections[layer](pl.text_bias[layer]).detach()
                else:
                    b = pl.visual_bias[layer].detach()
            assert norms == pytest.approx(float(b.norm()), rel=1e-5)
            vectors = full["bias"].sel(layer=layer).values
            assert abs(vectors - b.numpy()).max() < 1e-5 * float(b.abs().max())
            assert np.isnan(full["bias_head_norm"].sel(layer=layer).values).all()  # no per-head part
        assert (ds["bias_norm"].sel(variant="zeroshot").values == 0).all()
    from mmlens.stats import bias_consistency, bias_norm_ratio

    cons = bias_consistency(tree).sel(variant="full").mml.injected_layers()
    for measure in ("within_class", "across_classes", "dataset_mean_share"):
        assert np.allclose(cons.sel(measure=measure).values, 1.0, atol=1e-5), measure  # a constant
    ratio = bias_norm_ratio(tree).sel(variant="full", measure="bias_over_original").mml.injected_layers()
    assert (ratio > 0).all()


def test_prompt_methods_say_their_bias_is_the_prompts(tiny_clip):
    from mmlens.models.prompted import _SPECS
    from mmlens.store import schema

    tree = trace(_model(tiny_clip, BASE), torch.randn(2, 3, 32, 32), progress=False)
    assert tree["vision"].to_dataset().coords["bias_source"].item() == "prompt"
    # the store's torch-free list of learned-bias methods is the model's
    assert {m for m, spec in _SPECS.items() if spec.bias} == set(schema.LEARNED_BIAS_METHODS)
    bad = tree["text"].to_dataset().assign_coords(bias_source="other")
    with pytest.raises(schema.SchemaError, match="bias_source"):
        schema.validate(bad, group="text", require_provenance=False)


# ---------------------------------------------------------------------------------------------- SOT and b_K
def test_text_other_queries_leave_out_sot(tiny_clip):
    model = _model(tiny_clip, BASE)
    inputs = {}

    def recorder(call, split, z, rebuilt):
        if call.branch == "text":
            inputs[call.layer] = (call.x.clone(), call.roles.clone(), call.block, call.attn_mask)

    with torch.no_grad(), intervene(model, "full", recorder=recorder):
        model.text_features()
    tree = trace(model, torch.zeros(1, 3, 32, 32), progress=False)
    stored = tree["text"]["prompt_mass_other_queries"].sel(variant="full").values  # (class, layer, head)
    for layer, (x, roles, block, mask) in inputs.items():
        # hand: the block's attention from its weights, causal mask added, softmax, mass on prompt keys
        with torch.no_grad():
            z = block.ln_1(x)
            width = z.shape[-1]
            heads = block.attn.num_heads
            q, k, _ = (z @ block.attn.in_proj_weight.T + block.attn.in_proj_bias).split(width, dim=-1)
            q = q.view(*q.shape[:2], heads, -1).transpose(1, 2)
            k = k.view(*k.shape[:2], heads, -1).transpose(1, 2)
            attn = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + mask).softmax(-1)
        for r in range(len(BASE)):
            prompt = roles[r] == ROLE_CODES["prompt"]
            alpha = attn[r][:, :, prompt].sum(-1)  # [heads, queries]
            sot = int((roles[r] == ROLE_CODES["sot"]).nonzero())
            assert float(alpha[:, sot].abs().max()) == 0.0  # why SOT is left out: it cannot see the prompts
            queries = [p for p in range(roles.shape[1])
                       if ROLE_NAMES_TEXT[int(roles[r, p])] in ("word", "classname")]
            hand = alpha[:, queries].mean(-1)
            assert stored[r, layer] == pytest.approx(hand.numpy(), rel=1e-5, abs=1e-7)


ROLE_NAMES_TEXT = {v: k for k, v in ROLE_CODES.items()}


def test_key_cosines_leave_out_b_k(tiny_clip):
    model = _model(tiny_clip, BASE)
    images = torch.randn(2, 3, 32, 32)
    before = trace(model, images, progress=False)["vision"].to_dataset()
    block = model.clip.visual.transformer.resblocks[1]
    width = block.attn.embed_dim
    saved = block.attn.in_proj_bias.detach().clone()
    try:
        with torch.no_grad():  # a constant added to b_K: every score of a query moves by q·c, attention unchanged
            block.attn.in_proj_bias[width:2 * width] += 3.0 * torch.randn(width)
        after = trace(model, images, progress=False)["vision"].to_dataset()
    finally:
        with torch.no_grad():
            block.attn.in_proj_bias.copy_(saved)
    np.testing.assert_allclose(after["prompt_mass"].values, before["prompt_mass"].values, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(after["prompt_key_cosine"].values, before["prompt_key_cosine"].values,
                               rtol=1e-3, atol=1e-5)
    # and the stored cosine is the hand cosine of the bias-free keys
    seen = {}

    def recorder(call, split, z, rebuilt):
        if call.branch == "vision" and call.layer == 1:
            seen["k"] = z @ block.attn.in_proj_weight[width:2 * width].T  # z W_K, no b_K
            seen["roles"] = call.roles

    with torch.no_grad(), intervene(model, "full", recorder=recorder):
        model.encode_image(images)
    heads = block.attn.num_heads
    k = seen["k"].view(2, -1, heads, width // heads).transpose(1, 2)  # [batch, heads, tokens, d]
    prompt, patch = seen["roles"] == ROLE_CODES["prompt"], seen["roles"] == ROLE_CODES["patch"]
    hand = torch.nn.functional.cosine_similarity(k[:, :, patch], k[:, :, prompt].mean(2, keepdim=True), dim=-1)
    got = before["prompt_key_cosine"].sel(variant="full", layer=1).values.reshape(2, heads, -1)
    np.testing.assert_allclose(got, hand.detach().numpy(), rtol=1e-4, atol=1e-5)
