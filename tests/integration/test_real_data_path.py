"""The real-data path of `mmlens reproduce`: ViT-B/16 (random weights) + published-layout MaPLe checkpoints.

A fake eleven-dataset tree in the CoOp layout (``mmlens.data.make_fake_tree``, one image per class
and split) and synthetic MaPLe checkpoints written the way Dassl writes them
(``<dataset>/base/seed1/MultiModalPromptLearner/model.pth.tar-5``, ``state_dict`` with
``prompt_learner.*`` keys, fp16 prompt vectors, cached token buffers and frozen-CLIP keys to be
ignored), with ViT-B/16 shapes and depth 9 taken from PROMPT_METHODS.md (not from mmlens). The
pipeline must run to the report; a user with a GPU and the data only changes ``--data-root`` and
``--model``. Kept small (two datasets, two images per split): ViT-B/16 on a shared CPU is slow.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

DATASETS = {"EuroSAT": "eurosat", "OxfordPets": "oxford_pets"}  # MaPLe's own folder names
TEXT_WIDTH, VISION_WIDTH, N_CTX, DEPTH = 512, 768, 2, 9


def maple_state(seed: int) -> dict[str, torch.Tensor]:
    """Learned MaPLe tensors for ViT-B/16, names and shapes as in PROMPT_METHODS.md."""
    g = torch.Generator().manual_seed(seed)
    state = {
        "ctx": (torch.randn(N_CTX, TEXT_WIDTH, generator=g) * 0.02).half(),
        "proj.weight": (torch.randn(VISION_WIDTH, TEXT_WIDTH, generator=g) * 0.02).half(),
        "proj.bias": (torch.randn(VISION_WIDTH, generator=g) * 0.02).half(),
    }
    for k in range(DEPTH - 1):
        state[f"compound_prompts_text.{k}"] = torch.randn(N_CTX, TEXT_WIDTH, generator=g) * 0.02
        state[f"compound_prompt_projections.{k}.weight"] = torch.randn(VISION_WIDTH, TEXT_WIDTH, generator=g) * 0.02
        state[f"compound_prompt_projections.{k}.bias"] = torch.randn(VISION_WIDTH, generator=g) * 0.02
    return state


def write_dassl_checkpoint(path, learned: dict[str, torch.Tensor], n_classes: int) -> None:
    sd = {f"prompt_learner.{k}": v for k, v in learned.items()}
    sd["prompt_learner.token_prefix"] = torch.zeros(n_classes, 1, TEXT_WIDTH, dtype=torch.float16)
    sd["prompt_learner.token_suffix"] = torch.zeros(n_classes, 74, TEXT_WIDTH, dtype=torch.float16)
    sd["image_encoder.class_embedding"] = torch.zeros(VISION_WIDTH, dtype=torch.float16)  # frozen CLIP: ignored
    sd["logit_scale"] = torch.tensor(4.6052)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd, "epoch": 5, "optimizer": None, "scheduler": None, "val_result": None}, path)


@pytest.fixture(scope="module")
def real_path_run(tmp_path_factory):
    from mmlens.cli import main
    from mmlens.data import make_fake_tree
    from mmlens.data.protocol import base_to_novel_datasets

    base = tmp_path_factory.mktemp("realpath")
    root = base / "data"
    fake = make_fake_tree(root, base_to_novel_datasets("real"), per_class={"train": 1, "val": 0, "test": 1})
    assert len(fake) == 11
    weights = base / "maple_weights"
    learned = {}
    for name, folder in DATASETS.items():
        learned[name] = maple_state(seed=len(name))
        n_base = (len(fake[name].classnames) + 1) // 2
        write_dassl_checkpoint(weights / folder / "base" / "seed1" / "MultiModalPromptLearner" / "model.pth.tar-5",
                               learned[name], n_base)
    out = base / "out"
    # OpenAI's architecture (QuickGELU), which the published prompts were learned on
    code = main(["reproduce", "--data-root", str(root), "--model", "ViT-B-16-quickgelu", "--pretrained", "random",
                 "--maple-weights", str(weights), "--datasets", *DATASETS, "--seeds", "1", "--max-images", "2",
                 "--ablations", "routes", "--n-boot", "100", "--no-explorer", "--no-progress",
                 "--out", str(out)])
    return {"code": code, "out": out, "learned": learned, "fake": fake}


def test_runs_to_the_report(real_path_run):
    assert real_path_run["code"] == 0
    out = real_path_run["out"]
    for rel in ("report.html", "findings.md", "results/accuracy.md", "results/statistics.csv",
                "figures/accuracy_routes.png", "figures/prompt_mass.png"):
        assert (out / rel).is_file() and (out / rel).stat().st_size > 500, rel
    findings = (out / "findings.md").read_text()
    assert "ViT-B-16" in findings and "imported published MaPLe checkpoints" in findings


def test_imported_prompts_are_the_checkpoint_values(real_path_run):
    from mmlens.models.checkpoints import read_prompt_file

    out = real_path_run["out"]
    for name, learned in real_path_run["learned"].items():
        state, meta = read_prompt_file(out / "prompts" / name / "seed1" / "maple" / "prompts.safetensors")
        assert set(state) == set(learned)
        for key, value in learned.items():
            assert torch.equal(state[key], value.float()), (name, key)
        assert meta["hparams"]["depth"] == DEPTH and meta["hparams"]["n_ctx"] == N_CTX
        assert meta["training"]["imported_from"].endswith("MultiModalPromptLearner/model.pth.tar-5")


def test_stores_follow_maple_layers_and_masks(real_path_run):
    import mmlens

    out = real_path_run["out"]
    for name in DATASETS:
        tree = mmlens.open(out / "stores" / name / "seed1" / "base.zarr")
        assert json.loads(tree.attrs["method_hparams"])["depth"] == DEPTH
        assert tree.attrs["model_name"] == "ViT-B-16-quickgelu" and tree.attrs["dataset"] == name
        vision = tree["vision"].to_dataset()
        kinds = [str(k) for k in vision["layer_kind"].values]
        assert kinds == ["injected"] * DEPTH + ["carried"] * (12 - DEPTH)
        assert vision.sizes["image"] == 2 and vision.sizes["head"] == 12
        assert (vision.sizes["patch_row"], vision.sizes["patch_col"]) == (14, 14)
        # OxfordPets ships trimaps: foreground exists there and nowhere else
        assert ("foreground" in vision) == (name == "OxfordPets")
        alpha = vision["prompt_mass"].sel(variant="full").values
        assert np.isfinite(alpha).all() and (alpha > 0).all()
