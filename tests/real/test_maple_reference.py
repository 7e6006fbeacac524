"""mmlens's logits on published MaPLe prompts equal an independent re-implementation of MaPLe's forward.

Everything starts from files made the way their producers make them: CLIP weights in OpenAI's layout
(QuickGELU architecture, fp16 weights), a MaPLe checkpoint written by Dassl's save path after a few real
SGD steps under Dassl's warm-up scheduler, and a CoOp split JSON whose class names carry underscores
(OxfordPets' ``american_bulldog``). mmlens reads them through its public path (``load_clip``,
``mmlens.data.build``, ``import_prompts`` on the seed folder); the reference (``maple_reference.py``,
written from MaPLe's code, no mmlens) gets the same weights and the producer's own state dict.
"""

from __future__ import annotations

import json
import math

import open_clip
import pytest
import torch
from maple_reference import CustomCLIP, OpenAICLIP, openai_state_dict, save_model, train_maple
from PIL import Image

from mmlens.data import build, get_manifest
from mmlens.models import import_prompts, load_clip, register_config
from mmlens.models.checkpoints import read_dassl_checkpoint

pytestmark = pytest.mark.real

# OxfordPets' 37 classes as CoOp's split_zhou_OxfordPets.json spells them (lower case, underscores)
PETS = ["abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "bengal", "birman",
        "bombay", "boxer", "british_shorthair", "chihuahua", "egyptian_mau", "english_cocker_spaniel",
        "english_setter", "german_shorthaired", "great_pyrenees", "havanese", "japanese_chin", "keeshond",
        "leonberger", "maine_coon", "miniature_pinscher", "newfoundland", "persian", "pomeranian", "pug", "ragdoll",
        "russian_blue", "saint_bernard", "samoyed", "scottish_terrier", "shiba_inu", "siamese", "sphynx",
        "staffordshire_bull_terrier", "wheaten_terrier", "yorkshire_terrier"]

TINY = {"embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 9, "width": 128, "patch_size": 8, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 9}}
SEED = 2  # the published layout's seed<k>
TOLERANCE = 1e-5  # max |logit difference| relative to the largest |logit|


def write_coop_pets(root) -> None:
    """oxford_pets/images/*.jpg and split_zhou_OxfordPets.json as CoOp writes it: [impath, label, classname]."""
    folder = root / "oxford_pets"
    (folder / "images").mkdir(parents=True)
    split = {"train": [], "val": [], "test": []}
    for label, name in enumerate(PETS):
        breed = "_".join(w.capitalize() if label % 2 else w for w in name.split("_"))  # Oxford's file names
        for i, part in enumerate(split):
            file = f"{breed}_{label * 3 + i + 1}.jpg"
            Image.new("RGB", (8, 8), (label * 6, i * 80, 40)).save(folder / "images" / file)
            split[part].append([file, label, name])
    (folder / "split_zhou_OxfordPets.json").write_text(json.dumps(split, indent=4))


def dassl_subsample(split_file, subset: str) -> list[str]:
    """Dassl's ``read_split`` + MaPLe's ``subsample_classes``: the base (first half) or novel class names."""
    items = json.loads(split_file.read_text())["test"]
    lab2name = {label: name for _, label, name in items}
    labels = sorted(lab2name)
    m = math.ceil(len(labels) / 2)
    chosen = labels[:m] if subset == "base" else labels[m:]
    return [lab2name[label] for label in chosen]


def relative_deviation(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


def run_case(tmp_path, cfg: dict, model_name: str, depth: int, n_images: int = 3) -> dict[str, float]:
    torch.manual_seed(100 + depth)
    data = tmp_path / "data"
    write_coop_pets(data)
    split_file = data / "oxford_pets" / "split_zhou_OxfordPets.json"
    weights = tmp_path / "ViT-openai.pt"
    sd = openai_state_dict(cfg, seed=depth)
    torch.save(sd, weights)

    # the producer: MaPLe trained a few steps on the base classes, saved by Dassl
    base_ref = dassl_subsample(split_file, "base")
    producer = CustomCLIP(base_ref, OpenAICLIP(sd), n_ctx=2, depth=depth)
    size = cfg["vision_cfg"]["image_size"]
    train_images = torch.randn(4, 3, size, size)
    # epoch 1 runs at the warm-up's constant lr, the next ones on the cosine successor
    optim, sched = train_maple(producer, train_images, torch.arange(4) % len(base_ref), epochs=3, lr=0.5)
    run = tmp_path / "maple_weights" / "oxford_pets" / "base" / f"seed{SEED}"
    save_model(producer, optim, sched, epoch=2, directory=run, name="MultiModalPromptLearner")

    # mmlens, through its public path
    clip = load_clip(model_name, pretrained=str(weights))
    images = torch.randn(n_images, 3, size, size)
    out = {}
    for subset in ("base", "novel"):
        ds = build(get_manifest("OxfordPets"), data, "test", subset=subset)
        names_ref = dassl_subsample(split_file, subset)
        assert ds.classnames == names_ref and any("_" in c for c in ds.classnames)  # the split's own names
        model = import_prompts(run, clip, ds.classnames)
        reference = CustomCLIP(names_ref, OpenAICLIP(sd), n_ctx=2, depth=depth)
        reference.load_model(producer.state_dict())
        with torch.no_grad():
            ours, ref = model(images), reference(images)
        out[subset] = relative_deviation(ours, ref)
        if subset == "base":  # the loaded prompts matter: fresh prompts are far off
            fresh = type(model)(clip, ds.classnames, "maple", depth=depth, init_seed=0)
            with torch.no_grad():
                assert relative_deviation(fresh(images), ref) > 100 * TOLERANCE
            # the prompt text after the learned slots is MaPLe's, token for token ("of a american bulldog.")
            cached = read_dassl_checkpoint(run).state_dict["prompt_learner.token_suffix"]
            with torch.no_grad():
                ours_suffix = clip.model.token_embedding(model.prompt_tokens)[:, 1 + model.n_ctx:]
            torch.testing.assert_close(ours_suffix, cached, atol=0, rtol=0)
    print(f"\n{model_name} depth {depth}: max relative logit deviation base {out['base']:.2e}, "
          f"novel {out['novel']:.2e}")
    return out


@pytest.fixture(scope="module")
def tiny_name():
    register_config("real-tiny-openai", TINY)
    return "real-tiny-openai"


@pytest.mark.parametrize("depth", [1, 3, 9])
def test_tiny_maple_logits_equal_the_reference(tmp_path, tiny_name, depth):
    dev = run_case(tmp_path, TINY, tiny_name, depth)
    assert dev["base"] <= TOLERANCE and dev["novel"] <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("depth", [1, 3, 9])
def test_vit_b16_maple_logits_equal_the_reference(tmp_path, depth):
    cfg = open_clip.get_model_config("ViT-B-16-quickgelu")
    dev = run_case(tmp_path, cfg, "ViT-B-16", depth, n_images=2)
    assert dev["base"] <= TOLERANCE and dev["novel"] <= TOLERANCE
