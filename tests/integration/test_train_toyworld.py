"""Training and evaluation on toyworld with the toy CLIP: loss decreases, a killed process resumes exactly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mmlens import PromptedCLIP, load_clip
from mmlens.data.toyworld.dataset import build_in_memory
from mmlens.models import toy
from mmlens.train import evaluate, fit


@pytest.fixture(scope="module")
def toy_clip():
    if not toy.WEIGHTS_FILE.is_file():
        pytest.skip(f"the shipped toy weights are not there yet ({toy.WEIGHTS_FILE})")
    return load_clip("mmlens-toy", pretrained="toyworld")


def test_maple_loss_decreases_on_toyworld_and_novel_accuracy_is_reported(toy_clip):
    train = build_in_memory("ToySatellite", "train", shots=2, seed=1, subset="base", size="small")
    model = PromptedCLIP(toy_clip, ["x"], "maple", depth=4, init_seed=1)
    r = fit(model, train, epochs=4, warmup_epochs=0, lr=0.0035, progress=False)
    assert r.loss[-1] < r.loss[0], r.loss
    data = {"ToySatellite": {s: build_in_memory("ToySatellite", "test", subset=s, size="small")
                             for s in ("base", "novel")}}
    data["ToySatellite"]["train"] = train
    ds = evaluate(model, data, variants=["full", "zeroshot", "constant_bias", "drop_prompts:both:carried"],
                  progress=False)
    acc = ds.accuracy.squeeze(("dataset", "seed", "method"))
    assert acc.notnull().all() and ((acc >= 0) & (acc <= 100)).all()
    chance = 100 / 16
    assert float(acc.sel(variant="full", split="base")) > chance  # trained prompts beat chance on base classes


_CHILD = textwrap.dedent("""
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from mmlens import PromptedCLIP, load_clip
    from mmlens.data.toyworld.dataset import build_in_memory
    from mmlens.train import fit
    torch.manual_seed(0)
    clip = load_clip("mmlens-toy", pretrained="random")   # random weights: resuming does not need the trained ones
    train = build_in_memory("ToySatellite", "train", shots=1, seed=1, subset="base", size="small")
    model = PromptedCLIP(clip, ["x"], "maple", depth=3, init_seed=1)
    def kill(info):
        if info["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGKILL)
    fit(model, train, epochs=3, progress=False, checkpoint_dir=sys.argv[1],
        callback=kill if sys.argv[2] == "kill" else None)
""")


def _fixed_random_clip():
    torch.manual_seed(0)
    return load_clip("mmlens-toy", pretrained="random")


def test_a_killed_training_process_resumes_to_bit_identical_prompts(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "run"), "kill"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["epoch-001.pt"]
    # resume in this process; the reference runs uninterrupted in a fresh subprocess
    done = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "ref"), "no"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    clip = _fixed_random_clip()
    train = build_in_memory("ToySatellite", "train", shots=1, seed=1, subset="base", size="small")
    model = PromptedCLIP(clip, ["x"], "maple", depth=3, init_seed=1)
    r = fit(model, train, epochs=3, progress=False, checkpoint_dir=tmp_path / "run")
    assert r.resumed_from_epoch == 1
    from mmlens.models.checkpoints import read_prompt_file

    resumed, _ = read_prompt_file(tmp_path / "run" / "prompts.safetensors")
    reference, _ = read_prompt_file(tmp_path / "ref" / "prompts.safetensors")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
