"""Direct logit effects (docs/math.md, "Direct logit effects"): hand computations, completeness, precision, streaming.

The hand computations run each tower with plain torch ops on the open_clip modules (per-head attention
written out, the MLP and LayerNorms called directly) and never call mmlens' split or recorder.
Measured completeness errors are printed (``pytest -s``) for the record.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
import xarray as xr

import mmlens
from mmlens import PromptedCLIP, load_clip
from mmlens.models import METHODS
from mmlens.store import schema
from mmlens.store.synthetic import example_tree
from mmlens.tracing.decompose import CompletenessError
from mmlens.tracing.direct import DirectRecorder, direct_rtol
from mmlens.tracing.interventions import measure_mean_bias

CLASSES = ["cat", "dog", "airplane"]
TOY_CLASSES = ["blue ring", "red star", "green cube", "yellow blob"]


# ---------------------------------------------------------------------------------------------- helpers
def _perturbed(model: PromptedCLIP, scale: float = 0.5, seed: int = 0) -> PromptedCLIP:
    """Trained-looking prompts (or biases): visible prompt mass, non-zero learned biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.prompt_learner.parameters():
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * scale)
    return model


def _batches(images: torch.Tensor, labels: torch.Tensor, size: int = 4):
    for lo in range(0, len(images), size):
        yield {"image": images[lo:lo + size], "label": labels[lo:lo + size]}


def completeness_errors(tree: xr.DataTree) -> dict[str, float]:
    """Per tower: max |Σ components − logit| (label logit, margin, every class) / max |logit|, from the store."""
    direct, logits = tree["direct"].to_dataset(), tree["logits"]["logits"]
    scale = float(abs(logits).max())
    labelled = direct["label"] >= 0
    errors = {}
    for tower in schema.BRANCHES:
        mine = direct["tower"] == tower
        err = abs(direct["direct_effect"].where(mine).sum("component") - direct["direct_total"]).where(labelled)
        errors[tower] = float(err.max()) / scale
        if "direct_effect_all_classes" in direct:
            err_all = abs(direct["direct_effect_all_classes"].where(mine).sum("component") - logits)
            errors[tower] = max(errors[tower], float(err_all.max()) / scale)
    # the stored totals are the logits group's numbers
    label_logit = logits.isel({"class": xr.DataArray(direct["label"].values.clip(0), dims="image")})
    np.testing.assert_allclose(direct["direct_total"].sel(target="label").where(labelled).dropna("image").values,
                               label_logit.where(labelled).dropna("image").values, rtol=1e-6)
    return errors


def _attention_parts(block, x: torch.Tensor, prompt: torch.Tensor, readout: torch.Tensor,
                     mask: torch.Tensor | None):
    """Per head at each row's readout: (Σ_{j∈O} a_j v_j) W_O^h and (Σ_{m∈P} a_m v_m) W_O^h, from the weights."""
    z = block.ln_1(x)
    mha = block.attn
    heads, width = mha.num_heads, x.shape[-1]
    d = width // heads
    q, k, v = (z @ mha.in_proj_weight.T + mha.in_proj_bias).split(width, dim=-1)
    rows = torch.arange(x.shape[0])
    originals, prompts = [], []
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        scores = q[:, :, cols] @ k[:, :, cols].transpose(1, 2) / math.sqrt(d)
        if mask is not None:
            scores = scores + mask
        a = scores.softmax(-1)[rows, readout]  # [rows, keys]
        w_o = mha.out_proj.weight[:, cols]  # [width, d]
        originals.append(((a * ~prompt)[:, :, None] * v[:, :, cols]).sum(1) @ w_o.T)
        prompts.append(((a * prompt)[:, :, None] * v[:, :, cols]).sum(1) @ w_o.T)
    return z, originals, prompts


def _hand_tower(model: PromptedCLIP, tower: str, x: torch.Tensor, prompt: torch.Tensor, readout: torch.Tensor,
                prompts_for, mask=None) -> tuple[dict, torch.Tensor]:
    """Every residual component at the readout (plain torch), and x_L there."""
    blocks = model.clip.visual.transformer.resblocks if tower == "vision" else model.clip.transformer.resblocks
    rows = torch.arange(x.shape[0])
    slots = prompt[0].nonzero().flatten()  # the same slots in every row
    parts = {("embedding", -1, -1): x[rows, readout]}
    for layer, block in enumerate(blocks):
        fresh = prompts_for(layer) if layer > 0 else None
        if fresh is not None:
            x = x.clone()
            x[:, slots] = fresh
        _, originals, prompted = _attention_parts(block, x, prompt, readout, mask)
        for h, (o, p) in enumerate(zip(originals, prompted, strict=True)):
            parts["original", layer, h], parts["bias", layer, h] = o, p
        parts["output_bias", layer, -1] = block.attn.out_proj.bias.expand(x.shape[0], -1)
        x = x + block.attention(block.ln_1(x), attn_mask=mask)  # open_clip's own attention for the stream
        mlp = block.mlp(block.ln_2(x))
        parts["mlp", layer, -1] = mlp[rows, readout]
        x = x + mlp
    return parts, x[rows, readout]


def _hand_readout(ln, proj: torch.Tensor, parts: dict, x_last: torch.Tensor, scale: torch.Tensor):
    """{component: s·P(γ⊙center(u)/σ)/‖f‖ [rows, embed]} and f̂, σ and ‖f‖ frozen at x_L."""
    var = x_last.var(-1, unbiased=False, keepdim=True)  # LayerNorm's biased variance
    sigma = (var + ln.eps).sqrt()
    f = ln(x_last) @ proj
    norm = f.norm(dim=-1, keepdim=True)
    out = {key: scale * ((ln.weight * (u - u.mean(-1, keepdim=True)) / sigma) @ proj) / norm
           for key, u in parts.items()}
    out["ln_bias", -1, -1] = scale * (ln.bias @ proj).expand_as(f) / norm
    assert torch.allclose(sum(out.values()), scale * f / norm, atol=1e-4)  # the hand split itself is exact
    return out, f / norm


def _hand_direct(model: PromptedCLIP, image: torch.Tensor) -> dict[tuple[str, str, int, int], np.ndarray]:
    """{(tower, kind, layer, head): direct effect on every class logit} of one image, MaPLe prompts, by hand."""
    clip, v = model.clip, model.clip.visual
    scale = clip.logit_scale.exp()
    # vision: patches, [cls], positions; prompts appended without position; ln_pre
    x = v.conv1(image[None]).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(1, 1, -1), x], dim=1) + v.positional_embedding
    n_orig = x.shape[1]
    x = torch.cat([x, model._vision_prompts(0)[None]], dim=1)
    prompt = torch.arange(x.shape[1]) >= n_orig
    x = v.ln_pre(x)
    parts_v, x_v = _hand_tower(model, "vision", x, prompt[None], torch.tensor([0]), model._vision_prompts)
    vis, f_hat = _hand_readout(v.ln_post, v.proj, parts_v, x_v, scale)
    # text: token embeddings, the context in the slots after SOT, positions; causal mask; EOT readout
    tokens = model.prompt_tokens
    x = clip.token_embedding(tokens).clone()
    n_ctx = model.n_ctx
    x[:, 1:1 + n_ctx] = model.prompt_learner.ctx
    x = x + clip.positional_embedding
    prompt = torch.zeros(tokens.shape[1], dtype=torch.bool)
    prompt[1:1 + n_ctx] = True
    parts_t, x_t = _hand_tower(model, "text", x, prompt[None].expand(len(tokens), -1), tokens.argmax(-1),
                               model._text_prompts, mask=clip.attn_mask)
    txt, t_hat = _hand_readout(clip.ln_final, clip.text_projection, parts_t, x_t, scale)
    out = {("vision", *key): (c @ t_hat.T)[0].numpy() for key, c in vis.items()}  # [classes]
    out.update({("text", *key): (c @ f_hat[0]).numpy() for key, c in txt.items()})  # [classes]
    logits = model(image[None])[0].numpy()
    for tower in schema.BRANCHES:  # the hand decomposition adds up to the model's logits
        np.testing.assert_allclose(sum(val for key, val in out.items() if key[0] == tower), logits, atol=1e-4)
    return out


# ---------------------------------------------------------------------------------------------- hand computations
def test_direct_effects_equal_a_hand_computation_tiny(tiny_clip):
    torch.manual_seed(0)
    model = _perturbed(PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0))
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    tree = mmlens.trace(model, [{"image": images, "label": torch.tensor([2, 0, 1])}], direct_effects="all",
                        progress=False)
    with torch.no_grad():
        hand = _hand_direct(model, images[1])
    stored = tree["direct"]["direct_effect_all_classes"].sel(variant="full", image=1)
    direct = tree["direct"].to_dataset()
    keys = list(zip(direct["tower"].values, direct["kind"].values, direct["layer"].values.tolist(),
                    direct["head"].values.tolist(), strict=True))
    assert set(keys) == set(hand) and len(keys) == len(hand)  # the same components, each once
    scale = float(abs(tree["logits"]["logits"]).max())
    worst = max(float(np.abs(stored.values[i] - hand[key]).max()) for i, key in enumerate(keys)) / scale
    print(f"tiny CLIP, hand vs stored: {worst:.2e} of the largest |logit|")
    assert worst < 1e-5
    # β matters here: the prompt components are not all zero (the comparison means something)
    beta = np.abs([hand[k] for k in hand if k[1] == "bias"]).max()
    assert beta > 1e-3 * scale
    errors = completeness_errors(tree)
    print(f"tiny CLIP completeness: {errors}")
    assert max(errors.values()) <= 1e-4


def test_planted_learned_bias_has_the_hand_computed_direct_effect(tiny_clip):
    """Bias tuning: b^1 of the vision tower is planted; its direct effect is s·P(γ⊙center(b)/σ)·t̂_c/‖f‖."""
    model = PromptedCLIP(tiny_clip, CLASSES, method="bias", depth=2, init_seed=0)
    planted = torch.randn(model.vision_width, generator=torch.Generator().manual_seed(5)) * 2.0
    with torch.no_grad():
        model.prompt_learner.visual_bias.zero_()
        model.prompt_learner.visual_bias[1] = planted
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    tree = mmlens.trace(model, [{"image": images, "label": torch.tensor([1, 2])}], direct_effects="all",
                        progress=False)
    # x_L as the model itself computed it: the input of ln_post, by a plain torch hook
    seen = {}

    def readout_input(module, args):  # returns None: the input is left as it is
        seen.setdefault("x", args[0][:, 0].clone())

    v = tiny_clip.model.visual
    handle = v.ln_post.register_forward_pre_hook(readout_input)
    try:
        with torch.no_grad():
            model(images)
            t_hat = model.text_features()
    finally:
        handle.remove()
    x_last, ln = seen["x"], v.ln_post
    sigma = (x_last.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
    with torch.no_grad():
        norm = (ln(x_last) @ v.proj).norm(dim=-1, keepdim=True)
        expected = tiny_clip.model.logit_scale.exp() * (
            (ln.weight * (planted - planted.mean()) / sigma) @ v.proj / norm) @ t_hat.T  # [images, classes]
    direct = tree["direct"].to_dataset().sel(variant="full")
    assert direct["bias_source"].item() == "learned"
    bias = direct["direct_effect_all_classes"].where((direct["tower"] == "vision") & (direct["kind"] == "bias"),
                                                     drop=True)
    assert list(bias["head"].values) == [-1, -1, -1]  # one learned b per block, no per-head part
    np.testing.assert_allclose(bias.where(bias["layer"] == 1, drop=True).squeeze("component").values,
                               expected.numpy(), rtol=1e-5, atol=1e-6)
    others = bias.where(bias["layer"] != 1, drop=True)  # b^0 = 0, block 2 has no bias
    assert float(abs(others).max()) == 0.0
    assert float(abs(expected).max()) > 0.1  # a visible effect
    # margin: the label class's effect minus the mean of the others'
    margin = direct["direct_effect"].sel(target="margin").where(
        (direct["tower"] == "vision") & (direct["kind"] == "bias") & (direct["layer"] == 1), drop=True)
    labels = np.array([1, 2])
    exp = expected.numpy()
    want = exp[[0, 1], labels] - (exp.sum(1) - exp[[0, 1], labels]) / 2
    np.testing.assert_allclose(margin.squeeze("component").values, want, rtol=1e-5, atol=1e-6)
    assert max(completeness_errors(tree).values()) <= 1e-4


# ---------------------------------------------------------------------------------------------- completeness
@pytest.fixture(scope="module")
def toy_clip():
    return load_clip("mmlens-toy", pretrained="toyworld")


@pytest.fixture(scope="module")
def toy_images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3, 1, -1])


def test_completeness_on_the_toy_clip_maple_reference_and_ablations(toy_clip, toy_images):
    images, labels = toy_images
    model = _perturbed(PromptedCLIP(toy_clip, TOY_CLASSES, method="maple", depth=2, init_seed=0))
    means = measure_mean_bias(model, [images])
    tree = mmlens.trace(model, _batches(images, labels), with_reference=True,
                        variants=["full", "bias_only", "constant_bias"], mean_bias=means, direct_effects=True,
                        progress=False)
    mmlens.store.validate(tree)
    direct = tree["direct"]
    assert list(direct["variant"].values) == ["full", "bias_only", "constant_bias", "zeroshot"]
    assert "direct_effect_all_classes" not in direct  # margin mode keeps the size sane
    errors = completeness_errors(tree)
    print(f"toy CLIP (MaPLe, zeroshot, bias_only, constant_bias) completeness: {errors}")
    assert max(errors.values()) <= 1e-4
    # the unlabelled image has NaN for both targets; its logits are still there
    assert bool(direct["direct_effect"].sel(image=5).isnull().all())
    effect = direct["direct_effect"].sel(target="margin")
    bias = effect.where(direct["kind"] == "bias").sum("component")
    assert float(abs(bias.sel(variant="zeroshot")).max()) == 0.0  # no prompts, no β
    assert float(abs(bias.sel(variant="full")).max()) > 0.0
    # the ablations change the components the block used: bias_only keeps β with (a) unscaled
    original = effect.where(direct["kind"] == "original").sum("component")
    assert not np.allclose(original.sel(variant="full"), original.sel(variant="bias_only"))


def test_completeness_on_the_toy_clip_bias_tuning(toy_clip, toy_images):
    images, labels = toy_images
    model = _perturbed(PromptedCLIP(toy_clip, TOY_CLASSES, method="bias", depth=2, init_seed=0), scale=0.3)
    tree = mmlens.trace(model, _batches(images, labels), with_reference=True, variants=["full", "drop_prompts"],
                        direct_effects="all", progress=False)
    direct = tree["direct"]
    assert direct["bias_source"].item() == "learned"
    errors = completeness_errors(tree)
    print(f"toy CLIP (bias tuning) completeness: {errors}")
    assert max(errors.values()) <= 1e-4
    bias = direct["direct_effect_all_classes"].where(direct["kind"] == "bias").sum("component")
    assert float(abs(bias.sel(variant="full")).max()) > 1e-3
    assert float(abs(bias.sel(variant="drop_prompts")).max()) == 0.0  # the route drops b^ℓ


@pytest.mark.parametrize("method", METHODS)
def test_completeness_every_method_tiny(tiny_clip, method):
    model = _perturbed(PromptedCLIP(tiny_clip, CLASSES, method=method, depth=2, init_seed=0), scale=0.3)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    tree = mmlens.trace(model, [{"image": images, "label": torch.tensor([0, 1, 2])}], with_reference=True,
                        variants=["full", "bias_only"] if method != "zeroshot" else None, direct_effects="all",
                        progress=False)
    assert max(completeness_errors(tree).values()) <= 1e-4
    layout = tree["direct"].to_dataset()
    learned = method in schema.LEARNED_BIAS_METHODS
    bias_heads = set(layout["head"].where(layout["kind"] == "bias", drop=True).values.tolist())
    assert bias_heads == ({-1} if learned else {0, 1})  # per head for prompts, one per block for b^ℓ


def test_all_mode_is_consistent_with_label_and_margin(toy_clip, toy_images):
    images, labels = toy_images
    model = _perturbed(PromptedCLIP(toy_clip, TOY_CLASSES, method="maple", depth=2, init_seed=0))
    tree = mmlens.trace(model, _batches(images, labels), with_reference=True, direct_effects="all",
                        progress=False)
    direct = tree["direct"].to_dataset()
    logits = tree["logits"]["logits"]
    for tower in schema.BRANCHES:  # every class, every tower
        total = direct["direct_effect_all_classes"].where(direct["tower"] == tower).sum("component")
        np.testing.assert_allclose(total.values, logits.values, atol=1e-4 * float(abs(logits).max()))
    every = direct["direct_effect_all_classes"].values  # [variant, image, component, class]
    lab = labels.numpy()
    for i in range(len(lab)):
        got = direct["direct_effect"].values[:, i]  # [variant, component, target]
        if lab[i] < 0:
            assert np.isnan(got).all()
            continue
        label = every[:, i, :, lab[i]]
        others = np.delete(every[:, i], lab[i], axis=-1).mean(-1)
        np.testing.assert_allclose(got[..., 0], label, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[..., 1], label - others, rtol=1e-4, atol=1e-5)


_MODES = [("fp16 weights", "fp16", None), ("bf16 autocast", "fp32", torch.bfloat16)]


@pytest.mark.parametrize(("label", "weights", "autocast"), _MODES, ids=[m[0] for m in _MODES])
def test_half_precision_runs_pass_the_check(label, weights, autocast, toy_images):
    images, labels = toy_images
    clip = load_clip("mmlens-toy", pretrained="toyworld", precision=weights)
    model = _perturbed(PromptedCLIP(clip, TOY_CLASSES, method="maple", depth=2, init_seed=0))
    region = torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with region:  # the runtime check ran on every batch with the compute dtype's tolerance
        tree = mmlens.trace(model, _batches(images, labels), with_reference=True, direct_effects="all",
                            progress=False)
    compute = autocast or torch.float16
    assert tree.attrs["compute_dtype"] == str(compute).replace("torch.", "")
    assert tree["direct"]["direct_effect"].dtype == np.float32
    errors = completeness_errors(tree)
    print(f"toy CLIP {label} completeness: {errors} (tolerance {direct_rtol(compute):.0e})")
    assert max(errors.values()) <= direct_rtol(compute)


def test_a_broken_component_fails_the_completeness_check(tiny_clip, monkeypatch):
    model = _perturbed(PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0))
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    components = DirectRecorder.components

    def without_last_mlp(self):  # what a forgotten component looks like
        out = components(self).clone()
        if self.tower == "vision":
            out[:, -1] = 0.0
        return out

    monkeypatch.setattr(DirectRecorder, "components", without_last_mlp)
    batch = {"image": images, "label": torch.tensor([0, 1])}
    with pytest.raises(CompletenessError, match=r"vision tower \(variant full\).*tolerance 1e-04"):
        mmlens.trace(model, [batch], direct_effects=True, progress=False)
    # without the checks the run goes through, and the stored numbers show the gap the check caught
    tree = mmlens.trace(model, [batch], direct_effects=True, progress=False, check_completeness=False)
    errors = completeness_errors(tree)
    assert errors["vision"] > 1e-3 and errors["text"] < 1e-5


def test_bad_direct_effects_argument_names_the_choices(tiny_clip):
    model = PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0)
    with pytest.raises(ValueError, match="expected False, True, 'margin'"):
        mmlens.trace(model, torch.randn(1, 3, 32, 32), direct_effects="everything", progress=False)


@pytest.mark.slow  # real-size ViT-B/16 (random weights)
def test_completeness_vit_b16_random():
    torch.manual_seed(0)
    clip = load_clip("ViT-B-16")
    model = _perturbed(PromptedCLIP(clip, CLASSES, method="maple", init_seed=0), scale=0.05)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    tree = mmlens.trace(model, [{"image": images, "label": torch.tensor([0, 2])}], with_reference=True,
                        direct_effects="all", progress=False)
    errors = completeness_errors(tree)
    print(f"ViT-B/16 random weights (MaPLe) completeness: {errors}")
    assert max(errors.values()) <= 1e-4


# ---------------------------------------------------------------------------------------------- store
def test_trace_to_store_streams_and_resumes_the_direct_group(tmp_path, tiny_clip):
    model = _perturbed(PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0))
    images = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    labels = torch.arange(12) % 3

    def interrupted():
        batches = _batches(images, labels)
        yield next(batches)
        yield next(batches)
        raise KeyboardInterrupt  # the run dies after two committed batches

    path = tmp_path / "direct.zarr"
    with pytest.raises(KeyboardInterrupt):
        mmlens.trace_to_store(model, interrupted(), path, with_reference=True, direct_effects="all",
                              batch_size=4, progress=False)
    with pytest.warns(UserWarning):  # incomplete until resumed
        partial = mmlens.open(path)
    assert partial["direct"].sizes["image"] == 8
    mmlens.trace_to_store(model, _batches(images, labels), path, with_reference=True, direct_effects="all",
                          batch_size=4, progress=False)
    stored = mmlens.open(path).load()
    traced = mmlens.trace(model, _batches(images, labels), with_reference=True, direct_effects="all",
                          progress=False)
    assert stored["direct"].to_dataset().identical(traced["direct"].to_dataset())
    assert stored["direct"]["direct_effect"].chunks is None  # loaded; the store itself is chunked along image


def test_cli_direct_effects_flag(tmp_path, tiny_clip, capsys):
    from mmlens.cli import main
    from mmlens.data import make_fake_tree

    make_fake_tree(tmp_path / "data", ["EuroSAT"], image_size=40, per_class={"train": 1, "val": 1, "test": 1})
    args = ["trace", "--model", "test-tiny", "--pretrained", "random", "--method", "maple", "--depth", "2",
            "--dataset", "EuroSAT", "--data-root", str(tmp_path / "data"), "--limit", "3", "--batch-size", "2"]
    assert main([*args, "--direct-effects", "--out", str(tmp_path / "m.zarr")]) == 0  # bare flag: margin
    direct = mmlens.open(tmp_path / "m.zarr")["direct"]
    assert direct.sizes["image"] == 3 and "direct_effect_all_classes" not in direct
    assert list(direct["target"].values) == list(schema.DIRECT_TARGETS)
    with pytest.raises(SystemExit):
        main([*args, "--direct-effects", "some", "--out", str(tmp_path / "x.zarr")])
    assert "direct_effects='some'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- schema
def test_schema_validates_the_direct_group_and_names_bad_values():
    tree = example_tree(n_images=4, direct_effects="all")
    schema.validate(tree)
    direct = tree["direct"].to_dataset()
    assert set(direct["kind"].values) == set(schema.DIRECT_KINDS)
    assert schema.infer_group(direct) == "direct"
    bad = direct.assign_coords(kind=("component", np.where(direct["kind"] == "mlp", "ffn", direct["kind"])))
    with pytest.raises(schema.SchemaError, match=r"expected 'kind' values among .*found \['ffn'\]"):
        schema.validate(bad, group="direct", require_provenance=False)
    with pytest.raises(schema.SchemaError, match="expected coordinate 'tower' on dim 'component'"):
        schema.validate(direct.drop_vars("tower"), group="direct", require_provenance=False)
    assert any("`direct` group" in text for text in schema.lacks(2))
