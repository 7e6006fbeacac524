"""Role-aligned constant bias (issue II): the mean β per token role, against hand computations."""

from __future__ import annotations

import pytest
import torch

from mmlens import PromptedCLIP
from mmlens.models.prompted import ROLE_CODES
from mmlens.trace.interventions import RoleMeanBias, SplitHook, intervene, measure_mean_bias
from mmlens.trace.tracer import trace

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
