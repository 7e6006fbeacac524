"""GPU precision emulated on CPU: fp16 weights, fp16 / bf16 autocast and GradScaler("cpu") in trace, fit, evaluate.

The split is float32 whatever the model runs in (docs/math.md, Numerics): checked against an
independent float64 recomputation from each block's own input, with a half-precision
recomputation alongside to show the check would catch a split computed in half precision.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _datasets import ColourItems

from mmlens import PromptedCLIP, load_clip, trace
from mmlens.models.precision import resolve_precision
from mmlens.models.prompted import ROLE_CODES
from mmlens.tracing.decompose import CompletenessError, check_module_output, completeness_rtol, merged_output
from mmlens.tracing.interventions import SplitHook

CLASSES = ["cat", "dog", "bird", "fish"]
#: (label, load_clip precision, autocast dtype): the three ways a GPU run computes in half precision
MODES = [("fp16 weights", "fp16", None), ("fp16 autocast", "fp32", torch.float16),
         ("bf16 autocast", "fp32", torch.bfloat16)]
MODE_IDS = [m[0].replace(" ", "-") for m in MODES]


def _autocast(dtype: torch.dtype | None):
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _toy(precision: str) -> PromptedCLIP:
    """The issue's reproduction: mmlens-toy / toyworld, MaPLe prompts with a visible prompt mass."""
    clip = load_clip("mmlens-toy", pretrained="toyworld", precision=precision)
    model = PromptedCLIP(clip, CLASSES, method="maple", depth=2, init_seed=0)
    with torch.no_grad():  # trained-looking prompts: α of a few percent instead of ~0
        for p in model.prompt_learner.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.5)
    return model


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def fp32_tree(images):
    return trace(_toy("fp32"), images, with_reference=True, store_bias_vectors=True, progress=False)


# ---------------------------------------------------------------------------------------------- trace
@pytest.mark.parametrize(("label", "weights", "autocast"), MODES, ids=MODE_IDS)
def test_trace_in_half_precision_passes_completeness_and_stays_near_fp32(label, weights, autocast, images,
                                                                         fp32_tree):
    # before the fix: CompletenessError 2.8e-4 (tolerance 1e-5) with fp16 weights, and a failure under
    # bf16 autocast; check_completeness=True (the default) runs both checks in every block
    model = _toy(weights)
    with _autocast(autocast):
        tree = trace(model, images, with_reference=True, store_bias_vectors=True, progress=False)
    expected_compute = autocast or torch.float16
    assert tree.attrs["compute_dtype"] == str(expected_compute).replace("torch.", "")
    assert tree.attrs["dtype"] == ("float16" if weights == "fp16" else "float32")
    for group, name in [("vision", "prompt_mass"), ("text", "prompt_mass"), ("vision", "bias"), ("text", "bias"),
                        ("vision", "cls_attention"), ("logits", "logits")]:
        assert tree[group][name].dtype == np.float32, (group, name)
    alpha, ref = tree["vision"]["prompt_mass"].values, fp32_tree["vision"]["prompt_mass"].values
    assert np.isfinite(alpha).all() and ref.max() > 0.01  # prompts carry mass: the comparison means something
    # the bound; what is measured is ~1e-3 (fp16) and ~1e-2 (bf16) relative, from the half-precision
    # residual stream (MLPs, LayerNorm inputs) the split is fed, not from the split
    assert np.abs(alpha - ref).max() <= 3e-2
    assert np.abs(tree["text"]["prompt_mass"].values - fp32_tree["text"]["prompt_mass"].values).max() <= 3e-2
    logits, ref_logits = tree["logits"]["logits"].values, fp32_tree["logits"]["logits"].values
    assert np.abs(logits - ref_logits).max() <= 3e-2 * np.abs(ref_logits).max()


def _reference(z: torch.Tensor, block, prompt: torch.Tensor, attn_mask, dtype: torch.dtype):
    """α at every query and Σ_h β_h of one block, in ``dtype``, from torch primitives (not mmlens).

    Written from nn.MultiheadAttention's definition: packed in_proj -> heads -> softmax(q k^T / √d + mask)
    -> per-path context -> out_proj without its bias.
    """
    mha = block.attn
    batch, tokens, width = z.shape
    heads, head_dim = mha.num_heads, width // mha.num_heads
    qkv = F.linear(z.to(dtype), mha.in_proj_weight.to(dtype), mha.in_proj_bias.to(dtype))
    q, k, v = qkv.view(batch, tokens, 3, heads, head_dim).unbind(2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [batch, heads, tokens, head_dim]
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    if attn_mask is not None:
        scores = scores + attn_mask.to(dtype)
    attn = scores.softmax(-1)
    keep = prompt.view(prompt.shape[0] if prompt.dim() == 2 else 1, 1, 1, tokens).to(dtype)
    alpha = (attn * keep).sum(-1)  # [batch, heads, queries]
    beta_context = (attn * keep) @ v  # Σ_{m∈P} a_im v_m
    beta = beta_context.transpose(1, 2).reshape(batch, tokens, width) @ mha.out_proj.weight.to(dtype).T
    return alpha, beta


@pytest.mark.parametrize(("label", "weights", "autocast"), MODES, ids=MODE_IDS)
def test_split_is_float32_whatever_the_model_runs_in(label, weights, autocast, images):
    """The split recorded in half-precision runs equals a float64 recomputation from the same block input.

    A half-precision split (the bug) is measured alongside: its error is orders of magnitude above the
    bound, so this test fails if the split were computed in the model's precision.
    """
    model = _toy(weights)
    ours, half = [], []

    def recorder(call, split, z, rebuilt):
        prompt = call.roles == ROLE_CODES["prompt"]
        if not bool(prompt.any()):
            return
        ref_alpha, ref_beta = _reference(z, call.block, prompt, call.attn_mask, torch.float64)
        half_alpha, half_beta = _reference(z, call.block, prompt, call.attn_mask, autocast or torch.float16)
        alpha, beta = split.prompt_mass, merged_output(split, split.prompt_context)
        assert alpha.dtype == beta.dtype == torch.float32
        scale_a, scale_b = ref_alpha.abs().max(), ref_beta.abs().max()
        ours.append((float((alpha - ref_alpha).abs().max() / scale_a), float((beta - ref_beta).abs().max() / scale_b)))
        half.append((float((half_alpha - ref_alpha).abs().max() / scale_a),
                     float((half_beta - ref_beta).abs().max() / scale_b)))

    previous = model.block_hook
    model.block_hook = SplitHook(recorder=recorder)
    try:
        with torch.no_grad(), _autocast(autocast):
            model(images)
    finally:
        model.block_hook = previous
    assert len(ours) >= 4  # prompted blocks of both towers were seen
    worst, worst_half = np.max(ours, axis=0), np.min(np.max(half, axis=0))
    assert worst.max() < 1e-5, worst  # float32 rounding (measured ~1e-7)
    assert worst_half > 1e-4, worst_half  # half precision: ~1e-3 (fp16) to ~1e-2 (bf16)


def test_completeness_tolerance_follows_the_module_output_dtype():
    ref = torch.randn(2, 5, 8)
    close = ref * (1 + 1e-3)  # a half-precision-sized discrepancy
    wrong = ref.clone()
    wrong[:, :, :4] = 0  # half the channels lost: what a wrong split looks like
    assert completeness_rtol(torch.float16) > 1e-3 > completeness_rtol(torch.float32)
    with pytest.raises(CompletenessError, match="tolerance 1e-05"):
        check_module_output(close, ref, branch="vision", layer=0)
    check_module_output(close, ref.half(), branch="vision", layer=0)  # an fp16 module: within its bound
    check_module_output(close, ref.bfloat16(), branch="vision", layer=0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        with pytest.raises(CompletenessError, match="layer 3"):
            check_module_output(wrong, ref.to(dtype), branch="vision", layer=3)
    with pytest.raises(ValueError, match="float8"):
        completeness_rtol(torch.float8_e4m3fn)


def test_trace_to_store_records_compute_dtype_and_float32(tmp_path, images):
    from mmlens import open as open_store
    from mmlens.tracing.tracer import trace_to_store

    model = _toy("fp32")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trace_to_store(model, images, tmp_path / "s.zarr", batch_size=4, progress=False)
    tree = open_store(tmp_path / "s.zarr")
    assert tree.attrs["compute_dtype"] == "bfloat16" and tree.attrs["dtype"] == "float32"
    assert tree["vision"]["prompt_mass"].dtype == np.float32 and tree["vision"].sizes["image"] == 8
    # resuming the same store in another precision would mix numbers: refused like any identity change
    from mmlens.store.io import StoreIdentityError

    with pytest.raises(StoreIdentityError, match="compute_dtype"):
        trace_to_store(model, images, tmp_path / "s.zarr", batch_size=4, progress=False)


# ---------------------------------------------------------------------------------------------- fit
def _fit(clip, precision, tmp_path):
    from mmlens.train import fit

    model = PromptedCLIP(clip, ["x"], "maple", depth=2, init_seed=1)
    before = {k: v.clone() for k, v in model.prompt_state_dict().items()}
    # momentum 0: GradScaler skips its first steps while it lowers its scale from 2^16 (this random
    # tiny model has text-prompt gradients ~5, which overflow float16 at that scale); with momentum
    # those skipped warm-up steps would leave a different momentum buffer and the runs would drift apart
    result = fit(model, ColourItems(), epochs=3, lr=0.01, momentum=0.0, precision=precision, progress=False,
                 checkpoint_dir=tmp_path / precision)
    after = model.prompt_state_dict()
    return result, before, after


@pytest.fixture(scope="module")
def fit_fp32(tiny_clip, tmp_path_factory):
    return _fit(tiny_clip, "fp32", tmp_path_factory.mktemp("fit"))


@pytest.mark.parametrize("precision", ["amp", "bf16"])
def test_fit_with_amp_on_cpu_trains_like_fp32(tiny_clip, precision, fit_fp32, tmp_path):
    result, before, after = _fit(tiny_clip, precision, tmp_path)
    ref_result, _, ref_after = fit_fp32
    assert all(np.isfinite(result.loss)) and result.loss[-1] < result.loss[0]
    assert all(torch.isfinite(v).all() for v in after.values())
    update = max(float((ref_after[k] - before[k]).abs().max()) for k in before)
    drift = max(float((after[k] - ref_after[k]).abs().max()) for k in before)
    assert update > 0.05  # the prompts really moved
    assert drift < 0.1 * update, (drift, update)  # measured: ~4 % (amp), ~2 % (bf16)
    state = torch.load(result.checkpoint_dir / "epoch-003.pt", map_location="cpu", weights_only=True)
    assert state["fingerprint"]["amp"] is True
    if precision == "amp":  # GradScaler("cpu") ran: it met the overflows and lowered its scale
        assert 0 < state["scaler"]["scale"] < 2.0**16
    else:  # bfloat16 has float32's range: no scaler
        assert state["scaler"] == {} and state["fingerprint"]["amp_dtype"] == "bfloat16"


def test_fit_refuses_fp16_and_unknown_precisions(tiny_clip):
    from mmlens.train import fit

    model = PromptedCLIP(tiny_clip, ["x"], "maple", depth=2, init_seed=1)
    for bad in ("fp16", "half"):
        with pytest.raises(ValueError, match="auto, fp32, amp, bf16"):
            fit(model, ColourItems(), precision=bad, progress=False)


# ---------------------------------------------------------------------------------------------- evaluate
def test_evaluate_with_amp_on_cpu_matches_fp32():
    """Counts equal fp32's up to the images whose fp32 top-2 margin is within half precision's logit change.

    The toy model at 32 px is a weak classifier (~30 % on these classes) with many near ties, so a
    flip of such an image under half-precision rounding is expected and is the stated tolerance;
    the number of such images is measured from direct model calls and must stay small.
    """
    from mmlens.data.toyworld.dataset import build_in_memory
    from mmlens.data.transforms import input_spec
    from mmlens.tracing.interventions import intervene
    from mmlens.train import evaluate, model_inputs

    base = build_in_memory("satellite", "test", subset="base")
    model = PromptedCLIP(load_clip("mmlens-toy", pretrained="toyworld"), base.classnames, "maple", depth=2,
                         init_seed=0)
    variants = ["full", "zeroshot", "bias_only"]
    x = model_inputs(torch.stack([base[i]["image"] for i in range(len(base))]), input_spec(model), True)
    y = torch.tensor([base[i]["label"] for i in range(len(base))])

    def direct(variant, dtype):
        with torch.no_grad(), (intervene(model, variant) if variant != "full" else contextlib.nullcontext()), \
                _autocast(dtype):
            return model(x).float()

    ref = evaluate(model, {"satellite": {"base": base}}, variants=variants, splits=["base"], precision="fp32",
                   progress=False)
    for precision, dtype in (("amp", torch.float16), ("bf16", torch.bfloat16)):
        got = evaluate(model, {"satellite": {"base": base}}, variants=variants, splits=["base"],
                       precision=precision, progress=False)
        assert got.attrs["precision"] == precision
        for variant in variants:
            logits32 = direct(variant, None)
            assert int((logits32.argmax(-1) == y).sum()) == int(ref["correct"].sel(variant=variant).sum())
            change = float((direct(variant, dtype) - logits32).abs().max())
            top2 = logits32.topk(2, dim=-1).values
            near_ties = int((top2[:, 0] - top2[:, 1] < 2 * change).sum())
            assert near_ties <= len(base) // 8, (precision, variant, near_ties)  # the tolerance stays small
            diff = abs(int(got["correct"].sel(variant=variant).sum()) - int(ref["correct"].sel(variant=variant).sum()))
            assert diff <= near_ties, (precision, variant, diff, near_ties)


# ---------------------------------------------------------------------------------------------- precision names
def test_precision_names():
    assert resolve_precision("auto", "cuda", auto_cuda="fp16").weights == "fp16"
    amp = resolve_precision("amp", "cpu")
    assert amp.autocast_dtype == torch.float16 and isinstance(amp.grad_scaler(), torch.amp.GradScaler)
    assert resolve_precision("fp32", "cpu").grad_scaler() is None
    with pytest.raises(ValueError, match="precision='fp8'"):
        resolve_precision("fp8", "cpu")


# ---------------------------------------------------------------------------------------------- gpu_check
def _gpu_check():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_code_path_runs_on_cpu_with_a_tiny_model():
    lines: list[str] = []
    assert _gpu_check().run_check("cpu", tiny=True, n_images=4, steps=3, log=lines.append), lines
    assert lines[-1] == "PASS gpu_check on cpu"
    assert sum("autocast" in line and "float32" in line for line in lines) == 3  # three traces, stored float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_gpu_check_without_cuda_exits_0(capsys):
    assert _gpu_check().main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_trace_cli_runs_the_gpu_path_on_cpu(tmp_path, tiny_clip, precision):
    """``mmlens trace --precision``: the autocast follows --device, so the CUDA path runs here on CPU."""
    import mmlens
    from mmlens.cli import main
    from mmlens.data import make_fake_tree

    make_fake_tree(tmp_path / "data", ["EuroSAT"], image_size=40, per_class={"train": 1, "val": 1, "test": 2})
    out = tmp_path / "store.zarr"
    assert main(["trace", "--model", "test-tiny", "--pretrained", "random",
                 "--method", "maple", "--depth", "2", "--dataset", "EuroSAT",
                 "--data-root", str(tmp_path / "data"), "--limit", "4", "--batch-size", "4", "--device", "cpu",
                 "--precision", precision, "--out", str(out)]) == 0
    tree = mmlens.open(out)
    assert (tree.attrs["dtype"], tree.attrs["compute_dtype"]) == (
        ("float16", "float16") if precision == "fp16" else ("float32", "bfloat16"))
    assert tree["vision"]["prompt_mass"].dtype == np.float32 and tree["vision"].sizes["image"] == 4


@pytest.mark.slow
def test_reproduce_steps_run_in_bf16_on_cpu(tmp_path):
    """``mmlens reproduce --precision bf16``: fit and trace under bfloat16 autocast on the run's device."""
    import mmlens
    from mmlens.experiments._pipeline import Config, _Runner

    cfg = Config(out=str(tmp_path), datasets=["ToySatellite"], seeds=[1], precision="bf16", shots=1, epochs=1,
                 max_images=4, progress=False, methods=["maple"])
    runner = _Runner(cfg)
    assert np.isfinite(runner.prompts("ToySatellite", 1, "maple")["train_loss"])
    runner.trace("ToySatellite", 1, "base")
    tree = mmlens.open(runner.store_path("ToySatellite", 1, "base"))
    assert (tree.attrs["dtype"], tree.attrs["compute_dtype"]) == ("float32", "bfloat16")
    assert tree["vision"]["prompt_mass"].dtype == np.float32
