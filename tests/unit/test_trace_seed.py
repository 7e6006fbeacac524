"""`mmlens trace`: a store's `seed` is the run's seed (the prompts' training seed, else --seed), read back."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import tiny_config

import mmlens
from mmlens.cli import main
from mmlens.data import make_fake_tree
from mmlens.models import PromptedCLIP, load_clip, register_config, save_prompts
from mmlens.models.checkpoints import read_prompt_file


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeddata")
    make_fake_tree(root, ["EuroSAT"], image_size=40, per_class={"train": 1, "val": 1, "test": 1})
    return root


def trace(data_root, out, *extra) -> dict:
    args = ["trace", "--dataset", "EuroSAT", "--data-root", str(data_root), "--subset", "base", "--limit", "2",
            "--batch-size", "2", "--out", str(out), *extra]
    assert main(args) == 0
    return dict(mmlens.open(out).attrs)


def test_seed_flag_is_stored_and_seeds_random_prompts(tmp_path, data_root, tiny_clip):
    common = ["--model", "test-tiny", "--pretrained", "random", "--method", "maple", "--depth", "2"]
    a = trace(data_root, tmp_path / "a.zarr", *common, "--seed", "3")
    b = trace(data_root, tmp_path / "b.zarr", *common, "--seed", "4")
    again = trace(data_root, tmp_path / "c.zarr", *common, "--seed", "3")
    default = trace(data_root, tmp_path / "d.zarr", *common)
    assert (a["seed"], b["seed"], again["seed"], default["seed"]) == (3, 4, 3, 0)
    assert a["prompt_sha256"] == again["prompt_sha256"] != b["prompt_sha256"]  # random prompt inits follow it
    assert a["weights_sha256"] == again["weights_sha256"] != b["weights_sha256"]  # and random weights
    # the other provenance keys against the flags that made the store
    assert (a["dataset"], a["method"], a["model_name"]) == ("EuroSAT", "maple", "test-tiny")
    hp = json.loads(a["method_hparams"])
    assert (hp["depth"], hp["n_ctx"]) == (2, 2)


def test_prompt_file_seed_is_the_run_seed(tmp_path, data_root, tiny_clip, capsys):
    weights = tmp_path / "tiny.pt"
    torch.save(tiny_clip.model.state_dict(), weights)
    clip = load_clip("test-tiny", pretrained=str(weights))
    model = PromptedCLIP(clip, ["AnnualCrop", "Forest"], "maple", depth=2, init_seed=9)
    prompts = save_prompts(model, tmp_path / "p.safetensors", extra={"training": {"seed": 5}})
    common = ["--model", "test-tiny", "--pretrained", str(weights), "--prompts", str(prompts)]
    attrs = trace(data_root, tmp_path / "a.zarr", *common)
    assert attrs["seed"] == 5 and attrs["prompt_sha256"] == read_prompt_file(prompts)[1]["prompt_sha256"]
    assert trace(data_root, tmp_path / "b.zarr", *common, "--seed", "5")["seed"] == 5
    assert main(["trace", "--dataset", "EuroSAT", "--data-root", str(data_root), "--out", str(tmp_path / "c.zarr"),
                 *common, "--seed", "4"]) == 2
    assert re.search(r"--seed 4 disagrees with --prompts .*p.safetensors, which were trained with seed 5\. "
                     r"Drop --seed .* or pass --seed 5", capsys.readouterr().err)
    assert not (tmp_path / "c.zarr").exists()


def test_maple_seed_folder_is_the_run_seed(tmp_path, data_root, capsys):
    register_config("test-tiny-quickgelu", tiny_config(quick_gelu=True))  # MaPLe's prompts are for QuickGELU CLIP
    torch.manual_seed(0)
    model = PromptedCLIP(load_clip("test-tiny-quickgelu"), ["a", "b"], "maple", depth=2, init_seed=1)
    run = tmp_path / "eurosat" / "base" / "seed7" / "MultiModalPromptLearner"
    run.mkdir(parents=True)
    state = {f"prompt_learner.{k}": v for k, v in model.prompt_state_dict().items()}
    torch.save({"state_dict": state, "epoch": 5, "optimizer": None, "scheduler": None}, run / "model.pth.tar-5")
    common = ["--model", "test-tiny-quickgelu", "--pretrained", "random",
              "--prompts", str(tmp_path / "eurosat" / "base" / "seed7")]
    attrs = trace(data_root, tmp_path / "a.zarr", *common)
    assert attrs["seed"] == 7 and attrs["method"] == "maple"
    assert main(["trace", "--dataset", "EuroSAT", "--data-root", str(data_root), "--out", str(tmp_path / "b.zarr"),
                 *common, "--seed", "1"]) == 2
    assert "trained with seed 7" in capsys.readouterr().err
