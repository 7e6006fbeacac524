"""The toy CLIP's pre-training recipe, reduced: it runs in seconds, its loss goes down, and what it saves
is an open_clip state dict that open_clip itself loads."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch

from mmlens.models import toy
from mmlens.train.pretrain_toy import (
    PretrainConfig,
    multi_positive_clip_loss,
    pretrain,
    save_weights,
    sha256_file,
    zero_shot_accuracy,
)


def test_reduced_recipe_loss_decreases_and_is_reproducible(tmp_path):
    # the shipped recipe with fewer, smaller steps; large objects throughout (curriculum over all steps)
    cfg = PretrainConfig(
        steps=100, batch_size=32, warmup=5, curriculum=1.0, text_warmup=10, text_warmup_batch=64,
        eval_every=0, log_every=1, seed=3,
    )
    model, hist = pretrain(cfg, log=None)
    losses = np.array([h["loss"] for h in hist])
    assert len(losses) == 100 and np.isfinite(losses).all()  # (text warm-up steps are not in the history)
    chance = np.log(32)
    assert losses[:5].mean() > chance - 0.3  # starts near chance ...
    assert losses[-8:].mean() < losses[:5].mean() - 0.2, losses  # ... and learns

    path = tmp_path / "toy.safetensors"
    meta = save_weights(model, path, recipe=cfg, history=hist)
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["sha256"] == sha256_file(path) == meta["sha256"]
    assert side["recipe"]["steps"] == 100 and side["seed"] == 3

    # open_clip's own loading path reads the file into a fresh mmlens-toy model, identically
    toy.register()
    fresh = open_clip.create_model(toy.TOY_MODEL_NAME, pretrained=str(path))
    fresh.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fresh.encode_image(x), model.encode_image(x), atol=1e-5)

    # same seed -> same first steps (data and init are seeded)
    again, hist2 = pretrain(PretrainConfig(**{**cfg.__dict__, "steps": 3}), log=None)
    short, hist3 = pretrain(PretrainConfig(**{**cfg.__dict__, "steps": 3}), log=None)
    assert [h["loss"] for h in hist2] == [h["loss"] for h in hist3]
    assert 0.0 <= zero_shot_accuracy(model, toy.get_tokenizer(), "photo", n_per_class=1) <= 100.0


def test_multi_positive_loss_hand_case():
    # two images, two captions; image 0 matches both captions, image 1 only caption 1
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    match = torch.tensor([[True, True], [False, True]])
    s = 2.0
    logits = s * img @ txt.T  # [[2, 0], [0, 2]]
    ls_row = torch.log_softmax(logits, 1)
    ls_col = torch.log_softmax(logits, 0)
    i2t = (-(ls_row[0, 0] + ls_row[0, 1]) / 2 - ls_row[1, 1]) / 2
    t2i = (-ls_col[0, 0] - (ls_col[0, 1] + ls_col[1, 1]) / 2) / 2
    want = (i2t + t2i) / 2
    got = multi_positive_clip_loss(img, txt, torch.tensor(s), match)
    assert torch.isclose(got, want)


def test_interrupted_run_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    cfg = PretrainConfig(steps=6, batch_size=8, warmup=2, text_warmup=2, text_warmup_batch=16, eval_every=0,
                         log_every=1, seed=5)
    whole, hist_whole = pretrain(cfg, log=None)

    ckpt = tmp_path / "run.ckpt"

    def stop_at_step_5(line: str) -> None:
        if line.startswith("step=5 "):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, log=stop_at_step_5, checkpoint=ckpt, checkpoint_every=2)
    assert torch.load(ckpt, weights_only=False)["step"] == 4  # steps 1-4 kept, step 5 lost

    lines: list[str] = []
    resumed, hist_resumed = pretrain(cfg, log=lines.append, checkpoint=ckpt, checkpoint_every=2)
    assert lines[0] == f"resumed from {ckpt} at step 4"
    assert [h["step"] for h in hist_resumed] == [1, 2, 3, 4, 5, 6]
    assert [h["loss"] for h in hist_resumed] == [h["loss"] for h in hist_whole]
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name

    with pytest.raises(ValueError, match="different recipe"):
        pretrain(PretrainConfig(**{**cfg.__dict__, "lr": 5e-4}), log=None, checkpoint=ckpt)
