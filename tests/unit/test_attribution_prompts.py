"""Prompt-side IG: identical to captum called directly, complete, and its baselines are what they claim."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from torch.func import functional_call

from mmlens import PromptedCLIP
from mmlens.attribution import PromptIntegratedGradients, handcrafted_prompts, prompt_parameters
from mmlens.attribution.prompts import PromptForward

CLASSES = ["cat", "dog", "bird"]
LABELS = torch.tensor([1, 2])


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _trained(tiny_clip, method: str, seed: int = 0, **kw) -> tuple[PromptedCLIP, dict]:
    """A prompted model whose prompts moved away from their initial values (as training would)."""
    model = PromptedCLIP(tiny_clip, CLASSES, method=method, depth=2, init_seed=seed, **kw)
    initial = model.prompt_state_dict()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.prompt_learner.named_parameters():
            if "proj" not in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model, initial


def test_prompt_parameters_map_to_branch_and_layer(tiny_clip):
    maple = PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=3)
    assert [(p.name, p.branch, p.rows) for p in prompt_parameters(maple)] == [
        ("ctx", "text", ((0, 0), (0, 1))),
        ("compound_prompts_text.0", "text", ((1, 0), (1, 1))),
        ("compound_prompts_text.1", "text", ((2, 0), (2, 1))),
    ]
    ivlp = PromptedCLIP(tiny_clip, CLASSES, method="ivlp", depth=2)
    assert {(p.name, p.branch, p.rows[0][0]) for p in prompt_parameters(ivlp)} == {
        ("ctx", "text", 0), ("compound_prompts_text.0", "text", 1),
        ("visual_ctx", "vision", 0), ("compound_prompts_visual.0", "vision", 1)}
    bias = PromptedCLIP(tiny_clip, CLASSES, method="bias", depth=2)
    assert [(p.name, p.rows) for p in prompt_parameters(bias)] == [
        ("text_bias", ((0, 0), (1, 0))), ("visual_bias", ((0, 0), (1, 0)))]
    with pytest.raises(ValueError, match="no learned prompt vectors"):
        PromptIntegratedGradients(PromptedCLIP(tiny_clip, CLASSES, method="zeroshot"))


def test_equals_captum_direct_and_is_complete(tiny_clip, images):
    model, _ = _trained(tiny_clip, "maple")
    pig = PromptIntegratedGradients(model, progress=False)
    ours = pig.attribute(images, labels=LABELS, n_steps=8, batch_size=None)
    # captum called directly, with a forward written here
    ctx, deep = model.prompt_learner.ctx.detach(), model.prompt_learner.compound_prompts_text[0].detach()

    def forward(c, d, x):
        return torch.cat([functional_call(model, {"prompt_learner.ctx": c[r],
                                                  "prompt_learner.compound_prompts_text.0": d[r]}, (x[r:r + 1],))
                          for r in range(x.shape[0])])

    inputs = (ctx.expand(2, *ctx.shape).clone(), deep.expand(2, *deep.shape).clone())
    attrs, delta = IntegratedGradients(forward).attribute(
        inputs, baselines=tuple(torch.zeros_like(i) for i in inputs), target=LABELS, additional_forward_args=(images,),
        n_steps=8, return_convergence_delta=True)
    np.testing.assert_array_equal(ours.sel(branch="text", layer=0).values, attrs[0].sum(-1).numpy())
    np.testing.assert_array_equal(ours.sel(branch="text", layer=1).values, attrs[1].sum(-1).numpy())
    np.testing.assert_array_equal(ours.convergence_delta.values, delta.numpy())
    # completeness: all prompt vectors together explain logit(learned) - logit(zero prompts)
    zero = PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0)
    zero.load_prompt_state({**model.prompt_state_dict(), "ctx": torch.zeros_like(ctx),
                            "compound_prompts_text.0": torch.zeros_like(deep)})
    with torch.no_grad():
        logit = model(images).gather(1, LABELS[:, None])[:, 0].numpy()
        base = zero(images).gather(1, LABELS[:, None])[:, 0].numpy()
    np.testing.assert_allclose(ours.logit.values, logit, rtol=1e-5)
    np.testing.assert_allclose(ours.baseline_logit.values, base, rtol=1e-5)
    total = ours.sum(("branch", "layer", "prompt_token")).values
    np.testing.assert_allclose(total - (logit - base), ours.convergence_delta.values, atol=1e-4)
    # with enough steps the path integral converges: the delta becomes small against the logit change
    fine = pig.attribute(images[:1], target=int(LABELS[0]), n_steps=64)
    diff = float(fine.logit[0] - fine.baseline_logit[0])
    assert abs(diff) > 0.5
    assert abs(float(fine.convergence_delta[0])) < 0.01 * abs(diff)
    assert float(fine.sum(("branch", "layer", "prompt_token"))[0]) == pytest.approx(diff, rel=0.01)
    assert ours.dims == ("image", "branch", "layer", "prompt_token")


@pytest.mark.parametrize("method", ["coop", "deep_language"])
def test_handcrafted_baseline_is_the_handwritten_prompt(tiny_clip, images, method):
    """With text prompts only, the hand-crafted baseline model *is* zero-shot CLIP with "a photo of a {}."."""
    model, _ = _trained(tiny_clip, method)
    pig = PromptIntegratedGradients(model, progress=False)
    values, notes = handcrafted_prompts(model)
    assert notes["handcrafted_words"] == "a photo of a" and notes["handcrafted_class_spread"] < 1e-5
    a = pig.attribute(images, labels=LABELS, baselines="handcrafted", n_steps=8, batch_size=None)
    model.prompts_enabled = False
    try:
        with torch.no_grad():
            zeroshot = model(images).gather(1, LABELS[:, None])[:, 0].numpy()
    finally:
        model.prompts_enabled = True
    np.testing.assert_allclose(a.baseline_logit.values, zeroshot, rtol=1e-4, atol=1e-5)
    assert a.baseline.item() == "handcrafted"
    assert not np.allclose(a.logit.values, zeroshot)  # the trained prompts do change the logit


def test_initial_baseline_and_several_baselines(tiny_clip, images):
    model, initial = _trained(tiny_clip, "ivlp", seed=4)
    pig = PromptIntegratedGradients(model, initial_prompts=initial, progress=False)
    a = pig.attribute(images, labels=LABELS, baselines=["zero", "handcrafted", "initial"], n_steps=6,
                      internal_batch_size=4, batch_size=1)
    assert a.dims == ("baseline", "image", "branch", "layer", "prompt_token")
    assert list(a.baseline.values) == ["zero", "handcrafted", "initial"]
    assert list(a.branch.values) == ["text", "vision"]
    start = PromptedCLIP(tiny_clip, CLASSES, method="ivlp", depth=2, init_seed=4)
    with torch.no_grad():
        expected = start(images).gather(1, LABELS[:, None])[:, 0].numpy()
    np.testing.assert_allclose(a.baseline_logit.sel(baseline="initial").values, expected, rtol=1e-5)
    hand = pig.baseline_values("handcrafted")
    assert torch.count_nonzero(hand["visual_ctx"]) == 0 and torch.count_nonzero(hand["ctx"]) > 0
    # at its own values (the untrained model against its initial prompts) every attribution is zero
    same = PromptIntegratedGradients(start, initial_prompts=start, progress=False).attribute(
        images[:1], target=0, baselines="initial", n_steps=4)
    assert np.all(np.nan_to_num(same.values) == 0)


def test_internal_batch_size_bounds_the_rows_per_forward(tiny_clip, images, monkeypatch):
    model, _ = _trained(tiny_clip, "coop")
    rows: list[int] = []
    original = PromptForward.__call__

    def counting(self, *args):
        rows.append(args[-1].shape[0])
        return original(self, *args)

    monkeypatch.setattr(PromptForward, "__call__", counting)
    pig = PromptIntegratedGradients(model, progress=False)
    small = pig.attribute(images, labels=LABELS, n_steps=6, internal_batch_size=4, batch_size=None)
    assert max(rows[:-2]) <= 4  # the last two calls evaluate the input and the baseline
    rows.clear()
    big = pig.attribute(images, labels=LABELS, n_steps=6, batch_size=None)
    assert max(rows) == 12
    np.testing.assert_allclose(small.values, big.values, rtol=1e-5, atol=1e-6)


def test_errors_say_what_to_do(tiny_clip, images):
    model, _ = _trained(tiny_clip, "coop")
    pig = PromptIntegratedGradients(model, progress=False)
    with pytest.raises(ValueError, match="initial_prompts=model.prompt_state_dict"):
        pig.attribute(images, labels=LABELS, baselines="initial", n_steps=2)
    with pytest.raises(ValueError, match="baseline must be one of"):
        pig.attribute(images, labels=LABELS, baselines="random", n_steps=2)
    with pytest.raises(ValueError, match="missing"):
        pig.attribute(images, labels=LABELS, baselines={"other": torch.zeros(2)}, n_steps=2)
    model.prompts_enabled = False
    try:
        with pytest.raises(ValueError, match="prompts_enabled is False"):
            pig.attribute(images, labels=LABELS, n_steps=2)
    finally:
        model.prompts_enabled = True
