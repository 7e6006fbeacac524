"""Loading CLIP weights (open_clip, OpenAI formats, offline tags) and prompt checkpoints."""

from __future__ import annotations

import time

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from mmlens import PromptedCLIP, load_clip, load_prompts, save_prompts
from mmlens.models import load_maple_checkpoint, register_config

CLASSES = ["cat", "dog", "owl"]


@pytest.fixture(scope="module")
def openai_tiny():
    # OpenAI-format files imply width//64 heads; a config with 64-wide heads matches them.
    cfg = tiny_config(layers=2, v_width=128, t_width=64, heads=1, context=77, quick_gelu=False)
    cfg["vision_cfg"]["head_width"] = 64
    register_config("test-openai-tiny", cfg)
    torch.manual_seed(0)
    src = open_clip.create_model("test-openai-tiny", force_quick_gelu=True)
    with torch.no_grad():  # OpenAI files hold fp16 values (open_clip's own loader rounds through fp16)
        for p in src.parameters():
            p.copy_(p.half().float())
    return src


def _openai_state_dict(model):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    return sd


def test_openai_state_dict_file_matches_open_clip_reference(tmp_path, openai_tiny):
    path = tmp_path / "tiny-openai.pt"
    torch.save(_openai_state_dict(openai_tiny), path)
    clip = load_clip("test-openai-tiny", pretrained=str(path))
    assert clip.pretrained["format"] == "openai-state-dict"
    assert clip.pretrained["quick_gelu"] is True  # OpenAI weights were trained with QuickGELU
    ref = open_clip.load_openai_model(str(path), device="cpu", precision="fp32")  # open_clip's own loader
    images = torch.randn(2, 3, 32, 32)
    tokens = clip.tokenizer([f"a photo of a {c}." for c in CLASSES])
    model = PromptedCLIP(clip, CLASSES, method="zeroshot")
    with torch.no_grad():
        ours = model(images)
        f = F.normalize(ref.encode_image(images), dim=-1)
        g = F.normalize(ref.encode_text(tokens), dim=-1)
        expected = ref.logit_scale.exp() * f @ g.T
    # open_clip's OpenAI loader computes LayerNorm through its fp32-cast class: agree to 1e-6 relative
    torch.testing.assert_close(ours, expected, atol=0, rtol=1e-6)
    assert len(clip.weights_sha256) == 64


def test_openai_jit_archive(tmp_path, openai_tiny):
    class Holder(torch.nn.Module):  # a TorchScript archive whose state dict has OpenAI's keys
        def __init__(self, sd):
            super().__init__()
            self.inner = torch.nn.Module()
            for k, v in sd.items():
                parts = k.split(".")
                mod = self
                for p in parts[:-1]:
                    if not hasattr(mod, p):
                        mod.add_module(p, torch.nn.Module())
                    mod = getattr(mod, p)
                mod.register_buffer(parts[-1], v)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    sd = _openai_state_dict(openai_tiny)
    path = tmp_path / "tiny-openai-jit.pt"
    torch.jit.save(torch.jit.script(Holder(sd)), str(path))
    clip = load_clip("test-openai-tiny", pretrained=str(path))
    assert clip.pretrained["format"] == "openai-jit"
    for k, v in openai_tiny.state_dict().items():
        torch.testing.assert_close(clip.model.state_dict()[k], v, atol=0, rtol=0)


def test_offline_tag_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as err:
        load_clip("ViT-B-16", pretrained="openai")
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "'openai'" in msg and "offline" in msg and "pretrained='/path/to/" in msg


def test_missing_file_and_unknown_names():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_clip("ViT-B-16", pretrained="/nowhere/ViT-B-16.pt")
    with pytest.raises(ValueError, match="Did you mean 'ViT-B-16'"):
        load_clip("ViT-B16")
    with pytest.raises(ValueError, match="neither a file nor a pretrained tag"):
        load_clip("ViT-B-16", pretrained="not-a-tag")


def test_wrong_model_weights_are_named(tmp_path, tiny_clip, openai_tiny):
    path = tmp_path / "other.pt"
    torch.save(openai_tiny.state_dict(), path)
    with pytest.raises(ValueError, match="found shape .* expected"):
        load_clip("test-tiny", pretrained=str(path))


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_clip("ViT-B-16", pretrained=str(path))
    with pytest.raises(ValueError, match="weights_only"):
        load_maple_checkpoint(path)


def _perturbed(model):
    with torch.no_grad():
        for p in model.prompt_learner.parameters():
            # fp16-representable values, so the fp16 Dassl round trip below is exact
            p.copy_((p + torch.randn_like(p) * 0.3).half().float())
    return model


def test_save_load_round_trip(tmp_path, tiny_clip):
    model = _perturbed(PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=3, init_seed=1))
    path = save_prompts(model, tmp_path / "p.safetensors")
    again = load_prompts(path, tiny_clip)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(images), model(images), atol=0, rtol=0)
    assert again.method == "maple" and again.depth == 3 and again.classnames == CLASSES


def test_synthetic_dassl_maple_file(tmp_path, tiny_clip):
    model = _perturbed(PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=3, init_seed=2))
    state = {}
    for k, v in model.prompt_state_dict().items():  # MaPLe stores prompt vectors and proj in fp16
        state[f"module.prompt_learner.{k}"] = v.half() if k in ("ctx", "proj.weight", "proj.bias") else v
    state["module.prompt_learner.token_prefix"] = torch.zeros(3, 1, 32)
    state["module.prompt_learner.token_suffix"] = torch.zeros(3, 17, 32)
    for k, v in tiny_clip.model.state_dict().items():  # the whole frozen model rides along
        state["module.image_encoder." + k if k.startswith("visual") else "module.text_encoder." + k] = v
    state["module.logit_scale"] = tiny_clip.model.logit_scale.detach()
    d = tmp_path / "eurosat/base/seed1/MultiModalPromptLearner"
    d.mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": 5, "optimizer": {"state": {}, "param_groups": []},
                "scheduler": {"last_epoch": 5}, "val_result": 91.2}, d / "model.pth.tar-5")
    loaded = load_maple_checkpoint(tmp_path / "eurosat/base/seed1")
    assert set(loaded) == set(model.prompt_state_dict())
    fresh = PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=3, init_seed=99)
    fresh.load_prompt_state(loaded)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), model(images), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"depth": 2}, r"unexpected key 'compound_prompts_text.1'[\s\S]*checkpoint has depth=3, this model depth=2"),
        ({"depth": 3, "n_ctx": 4, "ctx_init": None},
         r"key 'ctx': found shape \(2, 32\), expected \(4, 32\)[\s\S]*n_ctx"),
    ],
)
def test_prompt_mismatch_messages(tiny_clip, kwargs, pattern):
    src = PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=3, init_seed=0).prompt_state_dict()
    target = PromptedCLIP(tiny_clip, CLASSES, method="maple", **kwargs)
    with pytest.raises(ValueError, match=pattern):
        target.load_prompt_state(src, source="ckpt.pth")


def test_other_backbone_width_message(tiny_clip):
    register_config("test-wide", tiny_config(v_width=48, t_width=48, heads=2))
    wide = load_clip("test-wide")
    src = PromptedCLIP(wide, CLASSES, method="maple", depth=3, init_seed=0).prompt_state_dict()
    target = PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=3)
    with pytest.raises(ValueError, match="another backbone"):
        target.load_prompt_state(src)


def test_missing_keys_message(tiny_clip):
    target = PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=3)
    with pytest.raises(ValueError, match="missing key 'proj.weight'"):
        target.load_prompt_state({k: v for k, v in target.prompt_state_dict().items() if k != "proj.weight"})
