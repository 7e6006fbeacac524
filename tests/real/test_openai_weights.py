"""Every route to OpenAI's weights builds OpenAI's model (QuickGELU), from files made the way their producers make them.

The reference is an independent model of OpenAI's architecture (``_openai_clip.py``), whose fp16 weights
are saved as OpenAI saves them (a traced TorchScript archive) and as the Hugging Face hub serves them
(``hub/models--timm--vit_base_patch16_clip_224.openai/{blobs,snapshots,refs}``). Features of each route
must equal the reference's in fp32 to 1e-5 relative, and GELU on the same weights must not.
"""

from __future__ import annotations

import copy
import hashlib
import os
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from _openai_clip import (
    VIT_B_16,
    OpenAICLIP,
    open_clip_config,
    save_openai_archive,
    tiny_openai_config,
    to_fp16_like_openai,
)
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

from mmlens.models.loading import WeightsNotFoundError, activation_name, load_clip, register_config

pytestmark = pytest.mark.real

NAME = "real-openai-tiny"  # a GELU config, as open_clip's "ViT-B-16" is
REPO = "timm/vit_base_patch16_clip_224.openai"
TOL = 1e-5


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (Frobenius)."""
    return float((a.double() - b.double()).norm() / b.double().norm())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _register_openai_tag(name: str, archive: Path) -> dict:
    """Give ``name`` an ``openai`` tag shaped like open_clip's own for ViT-B-16 (HF repo + OpenAI URL)."""
    cfg = dict(open_clip.get_pretrained_cfg("ViT-B-16", "openai"))
    cfg["url"] = f"https://openaipublic.azureedge.net/clip/models/{_sha(archive)}/ViT-B-16.pt"
    open_clip.pretrained._PRETRAINED[name] = {"openai": cfg}  # open_clip has no public registry API
    return cfg


def make_hf_cache(root: Path, state_dict: dict, *, files=(HF_SAFE_WEIGHTS_NAME,), repo: str = REPO) -> Path:
    """A Hugging Face hub cache as ``hf_hub_download`` leaves it: content-addressed blobs, a snapshot
    folder of symlinks named by the commit, and ``refs/main`` holding that commit."""
    from safetensors.torch import save_file

    repo_dir = root / f"models--{repo.replace('/', '--')}"
    rev = hashlib.sha1(repo.encode()).hexdigest()
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "snapshots" / rev).mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(rev)
    for fname in files:
        tmp = repo_dir / "blobs" / "incoming"
        if fname.endswith(".safetensors"):  # open_clip's save_for_hf: the state dict as it is
            save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp))
        else:
            torch.save(state_dict, tmp)
        blob = repo_dir / "blobs" / _sha(tmp)
        tmp.rename(blob)
        os.symlink(os.path.relpath(blob, repo_dir / "snapshots" / rev), repo_dir / "snapshots" / rev / fname)
    return repo_dir / "snapshots" / rev


class World:
    """One OpenAI-style model, its files, and the fp32 reference features."""

    def __init__(self, tmp: Path, cfg: dict, name: str, seed: int = 0):
        torch.manual_seed(seed)
        model = to_fp16_like_openai(OpenAICLIP(**cfg)).eval()
        self.name = name
        self.archive = save_openai_archive(model, tmp / "ViT-B-16.pt")
        # clip.load(..., device="cpu") runs OpenAI's model in fp32 after the fp16 round trip
        self.reference = copy.deepcopy(model).float().eval()
        # open_clip's own converter of OpenAI archives makes the open_clip state dict that the hub serves
        converted = open_clip.load_openai_model(str(self.archive), device="cpu", precision="fp32")
        self.hf_state = {k: v.detach().clone() for k, v in converted.state_dict().items()}
        self.hub = tmp / "hub"
        self.snapshot = make_hf_cache(self.hub, self.hf_state, files=(HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME))
        res = cfg["resolution"]
        g = torch.Generator().manual_seed(1)
        self.images = torch.randn(4, 3, res, res, generator=g)
        self.tokens = open_clip.get_tokenizer("ViT-B-16")(["a photo of a cat.", "a dog", "an owl in a tree"])
        with torch.no_grad():
            self.image_ref = self.reference.encode_image(self.images)
            self.text_ref = self.reference.encode_text(self.tokens)

    def features(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return model.encode_image(self.images), model.encode_text(self.tokens)

    def assert_openai(self, clip) -> tuple[float, float]:
        assert activation_name(clip.model) == "quick_gelu"
        assert clip.pretrained["quick_gelu"] is True
        f, g = self.features(clip.model)
        dev = rel(f, self.image_ref), rel(g, self.text_ref)
        assert max(dev) < TOL, dev
        return dev


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cfg = tiny_openai_config()
    register_config(NAME, open_clip_config(cfg))
    register_config(NAME + "-quickgelu", open_clip_config(cfg, quick_gelu=True))
    w = World(tmp_path_factory.mktemp("openai"), cfg, NAME)
    _register_openai_tag(NAME, w.archive)
    yield w
    open_clip.pretrained._PRETRAINED.pop(NAME, None)


def test_gelu_on_the_same_weights_differs(world):
    """The check below can fail: GELU on OpenAI's weights is measurably another model."""
    gelu = open_clip.create_model(NAME)  # the config's GELU
    gelu.load_state_dict(world.hf_state)
    f, g = world.features(gelu.eval())
    assert activation_name(gelu) == "gelu"
    assert rel(f, world.image_ref) > 100 * TOL and rel(g, world.text_ref) > 100 * TOL


def test_jit_archive(world):
    clip = load_clip(NAME, world.archive)
    assert clip.pretrained["format"] == "openai-jit" and clip.pretrained["activation_from"] == "file"
    world.assert_openai(clip)


def test_openai_plain_state_dict(world, tmp_path):
    path = tmp_path / "ViT-B-16-state.pt"
    torch.save(torch.jit.load(str(world.archive)).state_dict(), path)  # keeps input_resolution & co
    clip = load_clip(NAME, path)
    assert clip.pretrained["format"] == "openai-state-dict"
    world.assert_openai(clip)


def test_tag_offline_from_cache_dir(world, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = load_clip(NAME, "openai", cache_dir=world.hub)
    assert clip.pretrained["source"] == "tag" and clip.pretrained["hf_repo"] == REPO
    assert Path(clip.pretrained["path"]).name == HF_SAFE_WEIGHTS_NAME  # open_clip's first choice
    world.assert_openai(clip)


def test_tag_offline_from_default_hf_cache(world, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(world.hub))  # what HF_HOME sets
    world.assert_openai(load_clip(NAME, "openai"))


def test_tag_offline_bin_only_cache(world, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make_hf_cache(tmp_path / "hub", world.hf_state, files=(HF_WEIGHTS_NAME,))
    clip = load_clip(NAME, "openai", cache_dir=tmp_path / "hub")
    assert Path(clip.pretrained["path"]).name == HF_WEIGHTS_NAME
    world.assert_openai(clip)


def test_tag_offline_from_open_clip_url_cache(world, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "ViT-B-16.pt").write_bytes(world.archive.read_bytes())  # where open_clip's URL download lands
    clip = load_clip(NAME, "openai", cache_dir=tmp_path)
    assert clip.pretrained["format"] == "openai-jit"
    world.assert_openai(clip)


@pytest.mark.parametrize("fname", [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME])
def test_hf_file_passed_by_path_is_recognised(world, fname):
    clip = load_clip(NAME, world.snapshot / fname)
    assert clip.pretrained["hf_repo"] == REPO and clip.pretrained["activation_from"] == "hf_cache"
    world.assert_openai(clip)


def test_plain_state_dict_of_unknown_origin(world, tmp_path):
    path = tmp_path / "copied_out_of_the_cache.safetensors"
    path.write_bytes((world.snapshot / HF_SAFE_WEIGHTS_NAME).read_bytes())
    with pytest.warns(UserWarning, match=r"origin mmlens cannot tell.*quick_gelu=True.*--quick-gelu"):
        guessed = load_clip(NAME, path)
    assert activation_name(guessed.model) == "gelu"
    assert rel(world.features(guessed.model)[0], world.image_ref) > 100 * TOL
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a declaration silences the warning
        declared = load_clip(NAME, path, quick_gelu=True)
        by_name = load_clip(NAME + "-quickgelu", path)
        confirmed_gelu = load_clip(NAME, path, quick_gelu=False)
    assert declared.pretrained["activation_from"] == "declared"
    world.assert_openai(declared)
    world.assert_openai(by_name)
    assert activation_name(confirmed_gelu.model) == "gelu"


# ---- bad input: one clear error, nothing returned -------------------------------------------------------

def test_cache_without_the_file(world, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make_hf_cache(tmp_path / "hub", {"x": torch.zeros(1)}, files=("config.json.safetensors",))
    with pytest.raises(WeightsNotFoundError) as err:
        load_clip(NAME, "openai", cache_dir=tmp_path / "hub")
    msg = str(err.value)
    assert isinstance(err.value, RuntimeError) and isinstance(err.value, FileNotFoundError)
    assert str(tmp_path / "hub" / "models--timm--vit_base_patch16_clip_224.openai") in msg
    assert HF_SAFE_WEIGHTS_NAME in msg and HF_WEIGHTS_NAME in msg and str(tmp_path / "hub" / "ViT-B-16.pt") in msg
    assert f"hf_hub_download('{REPO}'" in msg and "offline" in msg


def test_unknown_tag_names_the_known_ones_and_the_owner():
    with pytest.raises(ValueError, match=r"known tags: \['openai'.*tag of 'ViT-bigG-14'"):
        load_clip("ViT-B-16", "laion2b_s39b_b160k")


def test_weights_of_another_model(world, tiny_clip, tmp_path):
    with pytest.raises(ValueError, match=r"(?s)do not fit the open_clip config 'test-tiny'.*found shape"):
        load_clip("test-tiny", world.archive)
    partial = tmp_path / "partial.safetensors"
    from safetensors.torch import save_file

    save_file({k: v for k, v in world.hf_state.items() if not k.startswith("visual.")}, str(partial))
    with pytest.raises(ValueError, match=r"missing keys .*visual\."):
        load_clip(NAME, partial, quick_gelu=True)


def test_declaring_gelu_for_openai_weights_is_refused(world):
    with pytest.raises(ValueError, match="trained with QuickGELU"):
        load_clip(NAME, world.archive, quick_gelu=False)
    with pytest.raises(ValueError, match="contradicts the model name"):
        load_clip(NAME + "-quickgelu", None, quick_gelu=False)


def test_url_cache_file_with_another_digest_is_refused(world, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    other = World(tmp_path, tiny_openai_config(), NAME, seed=5).archive  # same name, other bytes
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "ViT-B-16.pt").write_bytes(other.read_bytes())
    with pytest.raises(ValueError, match="is not the file published at"):
        load_clip(NAME, "openai", cache_dir=tmp_path / "cache")


# ---- the real ViT-B/16 names and tag ------------------------------------------------------------------------

@pytest.mark.slow
def test_vit_b_16_openai_every_route(tmp_path, monkeypatch):
    """ViT-B/16 shapes through open_clip's real registry entry for (ViT-B-16, openai)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    w = World(tmp_path, VIT_B_16, "ViT-B-16")
    w.images = w.images[:2]
    with torch.no_grad():
        w.image_ref = w.reference.encode_image(w.images)
    routes = {
        "tag via HF cache": load_clip("ViT-B-16", "openai", cache_dir=w.hub),
        "JIT archive": load_clip("ViT-B-16", w.archive),
        "HF file by path": load_clip("ViT-B-16", w.snapshot / HF_WEIGHTS_NAME),
        "declared": load_clip("ViT-B-16", w.snapshot / HF_SAFE_WEIGHTS_NAME, quick_gelu=True),
        "-quickgelu name": load_clip("ViT-B-16-quickgelu", w.archive),
    }
    for route, clip in routes.items():
        print(route, w.assert_openai(clip))
    gelu = open_clip.create_model("ViT-B-16")
    gelu.load_state_dict(w.hf_state)
    print("GELU vs QuickGELU (image, text)", [rel(a, b) for a, b in zip(w.features(gelu.eval()),
                                                                          (w.image_ref, w.text_ref))])


def test_trace_provenance_records_the_activation(world):
    from mmlens import PromptedCLIP
    from mmlens.tracing.tracer import _provenance

    for clip, expected in ((load_clip(NAME, world.archive), "quick_gelu"), (load_clip(NAME), "gelu")):
        model = PromptedCLIP(clip, ["cat", "dog"], method="zeroshot")
        assert _provenance(model, None, torch.device("cpu"))["activation"] == expected


@pytest.mark.parametrize("command", ["trace", "train", "evaluate", "reproduce"])
def test_quick_gelu_flag_declares_the_file(world, tmp_path, command):
    """`--quick-gelu` on every command that loads a CLIP; `trace`'s model builder passes it to load_clip."""
    from mmlens.cli import build_parser

    path = tmp_path / "plain.safetensors"
    path.write_bytes((world.snapshot / HF_SAFE_WEIGHTS_NAME).read_bytes())
    required = {"trace": ["--dataset", "d", "--data-root", "r", "--out", "o"],
                "train": ["--dataset", "d", "--data-root", "r", "--out", "o"],
                "evaluate": ["--prompts", "p", "--data-root", "r"], "reproduce": ["--out", "o"]}[command]
    base = [command, "--model", NAME, "--pretrained", str(path), *required]
    if command == "trace":
        base += ["--depth", "1"]
    assert build_parser().parse_args(base).quick_gelu is None  # not declared: load_clip decides
    args = build_parser().parse_args([*base, "--quick-gelu"])
    assert args.quick_gelu is True
    if command == "trace":
        from mmlens.tracing._cli import build_prompted

        model = build_prompted(args, ["cat", "dog"])
        assert activation_name(model.clip) == "quick_gelu"
        f = model.clip.encode_image(world.images).detach()
        assert rel(f, world.image_ref) < TOL
