"""fit(): every method trains, seeded determinism, bit-identical resume, a fixed point stays fixed."""

from __future__ import annotations

import pytest
import torch
from _datasets import ColourItems

from mmlens.models.prompted import METHODS, PromptedCLIP
from mmlens.train import fit
from mmlens.train.trainer import latest_checkpoint


class Exploding(torch.utils.data.Dataset):
    """Wraps a dataset and raises KeyboardInterrupt at the n-th image read (a kill in mid-epoch)."""

    def __init__(self, inner, explode_at):
        self.inner, self.explode_at, self.reads = inner, explode_at, 0
        self.classnames = inner.classnames

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads == self.explode_at:
            raise KeyboardInterrupt("simulated kill")
        return self.inner[i]


def _model(clip, method="maple", init_seed=1):
    return PromptedCLIP(clip, ["x"], method, depth=2, init_seed=init_seed)


def _prompts_equal(a, b):
    sa, sb = a.prompt_state_dict(), b.prompt_state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


FAST = {"epochs": 3, "lr": 0.05, "progress": False}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_its_own_parameters_only(tiny_clip, method, tmp_path):
    model = _model(tiny_clip, method)
    before = model.prompt_state_dict()
    frozen = {k: v.clone() for k, v in model.clip.state_dict().items()}
    result = fit(model, ColourItems(), checkpoint_dir=tmp_path, **FAST)
    after = model.prompt_state_dict()
    assert model.classnames == ["cat", "dog", "bird"]
    assert result.prompts_path.is_file()
    assert all(torch.equal(v, model.clip.state_dict()[k]) for k, v in frozen.items())
    if method == "zeroshot":
        assert result.history == [] and result.trainable_parameters == 0
        return
    assert result.trainable_parameters == model.trainable_parameter_count() > 0
    assert len(result.history) == 3 and all(torch.isfinite(torch.tensor(result.loss)))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, f"{method}: no parameter moved"
    # the prompt file holds the trained prompts and the training record
    from mmlens.models.checkpoints import read_prompt_file

    state, meta = read_prompt_file(result.prompts_path)
    assert all(torch.equal(state[k], after[k]) for k in after)
    assert meta["training"]["seed"] == 1 and meta["training"]["epochs"] == 3
    assert [h["loss"] for h in meta["training"]["history"]] == result.loss


def test_same_seed_same_prompts_other_seed_other_prompts(tiny_clip):
    runs = []
    for seed in (1, 1, 2):
        model = _model(tiny_clip)
        r = fit(model, ColourItems(), seed=seed, **FAST)
        runs.append((model, r))
    (m1, r1), (m2, r2), (m3, r3) = runs
    assert _prompts_equal(m1, m2) and r1.loss == r2.loss and r1.accuracy == r2.accuracy
    assert not _prompts_equal(m1, m3)  # same init, other seed: other image order and crops


def test_resume_after_an_exception_in_the_epoch_callback_is_bit_identical(tiny_clip, tmp_path):
    reference = _model(tiny_clip)
    r_ref = fit(reference, ColourItems(), checkpoint_dir=tmp_path / "ref", **FAST)

    def stop_after_first_epoch(info):
        if info["epoch"] == 1:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        fit(_model(tiny_clip), ColourItems(), checkpoint_dir=tmp_path / "run", callback=stop_after_first_epoch, **FAST)
    assert latest_checkpoint(tmp_path / "run").name == "epoch-001.pt"
    assert not (tmp_path / "run" / "prompts.safetensors").exists()
    # a fresh process would build the model again (here: other init) and call fit with the same arguments
    resumed = _model(tiny_clip, init_seed=99)
    r = fit(resumed, ColourItems(), checkpoint_dir=tmp_path / "run", **FAST)
    assert r.resumed_from_epoch == 1 and len(r.history) == 3
    assert _prompts_equal(resumed, reference)
    assert r.loss == r_ref.loss
    a = torch.load(latest_checkpoint(tmp_path / "ref"), weights_only=True)
    b = torch.load(latest_checkpoint(tmp_path / "run"), weights_only=True)
    for k, v in a["optimizer"]["state"].items():  # momentum buffers too
        assert torch.equal(v["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])


def test_resume_after_a_kill_in_mid_epoch_is_bit_identical(tiny_clip, tmp_path):
    reference = _model(tiny_clip)
    fit(reference, ColourItems(), seed=2, **FAST)
    data = ColourItems()
    killer = Exploding(data, explode_at=len(data) + 5)  # inside epoch 2
    with pytest.raises(KeyboardInterrupt):
        fit(_model(tiny_clip), killer, seed=2, checkpoint_dir=tmp_path, **FAST)
    assert latest_checkpoint(tmp_path).name == "epoch-001.pt"
    assert not list(tmp_path.glob("*.tmp"))
    resumed = _model(tiny_clip)
    fit(resumed, data, seed=2, checkpoint_dir=tmp_path, **FAST)
    assert _prompts_equal(resumed, reference)


def test_a_finished_run_is_not_repeated_and_resume_false_restarts(tiny_clip, tmp_path):
    first = _model(tiny_clip)
    r1 = fit(first, ColourItems(), checkpoint_dir=tmp_path, keep_checkpoints=1, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-003.pt", "prompts.safetensors"]
    calls = []
    again = _model(tiny_clip, init_seed=5)
    r2 = fit(again, ColourItems(), checkpoint_dir=tmp_path, callback=calls.append, **FAST)
    assert calls == [] and r2.resumed_from_epoch == 3 and r2.loss == r1.loss
    assert _prompts_equal(first, again)
    fresh = _model(tiny_clip, init_seed=5)
    r3 = fit(fresh, ColourItems(), checkpoint_dir=tmp_path, resume=False, callback=calls.append, **FAST)
    assert len(calls) == 3 and r3.resumed_from_epoch == 0
    assert not _prompts_equal(first, fresh)  # other initialisation, really retrained


def test_resume_refuses_a_checkpoint_of_another_run(tiny_clip, tmp_path):
    fit(_model(tiny_clip), ColourItems(), checkpoint_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match=r"different training run(.|\n)*lr: checkpoint 0.05, this call 0.01"):
        fit(_model(tiny_clip), ColourItems(), checkpoint_dir=tmp_path, **{**FAST, "lr": 0.01})
    with pytest.raises(ValueError, match="method"):
        fit(_model(tiny_clip, "ivlp"), ColourItems(), checkpoint_dir=tmp_path, **FAST)


def test_prompts_at_the_optimum_stay_there(tiny_clip):
    """Two classes with the same name, every image shown once with each label: p = 1/2 for every image
    is the minimum of the cross-entropy whatever the prompts, so the gradient is exactly zero. Bias tuning
    starts at b = 0, which is also the minimum of the weight-decay term: with MaPLe's full recipe (momentum,
    weight decay, augmentation off so that both copies of an image are identical) nothing may move."""
    labels = [0, 1] * 6
    same_names = ColourItems(classnames=("cat", "cat"), labels=labels)
    same_names.images = [same_names.images[2 * (i // 2)] for i in range(len(labels))]  # pairs: same image
    model = _model(tiny_clip, "bias")
    before = model.prompt_state_dict()
    fit(model, same_names, epochs=3, lr=0.5, augment=False, progress=False, batch_size=4)
    assert all(torch.equal(before[k], v) for k, v in model.prompt_state_dict().items())
    # MaPLe's prompts are not zero, so weight decay alone would move them: without it they stay put too
    maple = _model(tiny_clip, "maple")
    before = maple.prompt_state_dict()
    fit(maple, same_names, epochs=3, lr=0.5, augment=False, progress=False, weight_decay=0.0)
    assert all(torch.equal(before[k], v) for k, v in maple.prompt_state_dict().items())
    # control: the same problem with distinct class names is not at an optimum, and training moves b
    control = ColourItems(classnames=("cat", "dog"), labels=labels)
    control.images = same_names.images
    moved = _model(tiny_clip, "bias")
    fit(moved, control, epochs=3, lr=0.5, augment=False, progress=False)
    assert not all(torch.equal(before_b, v) for before_b, v in
                   zip(_model(tiny_clip, "bias").prompt_state_dict().values(), moved.prompt_state_dict().values()))


@pytest.mark.parametrize("method", ["coop", "bias"])
def test_train_loss_decreases_on_an_easy_problem(tiny_clip, method):
    # (a random tiny CLIP: only the cheap methods learn this fast; the toyworld test covers all of them)
    r = fit(_model(tiny_clip, method), ColourItems(per_class=8), epochs=6, lr=0.05, warmup_epochs=0, augment=False,
            progress=False)
    assert r.loss[-1] < 0.8 * r.loss[0]
    assert r.accuracy[-1] > r.accuracy[0]


def test_dataset_by_name_uses_the_protocol(tiny_clip, tmp_path):
    from mmlens.data import build
    from mmlens.data.fake import make_fake_tree

    make_fake_tree(tmp_path, ["EuroSAT"], per_class={"train": 3, "val": 1, "test": 1})
    model = _model(tiny_clip, "coop")
    r = fit(model, "EuroSAT", root=tmp_path, shots=2, seed=3, epochs=1, progress=False,
            checkpoint_dir=tmp_path / "run")
    expected = build("EuroSAT", tmp_path, "train", shots=2, seed=3, subset="base")
    assert model.classnames == expected.classnames and len(model.classnames) == 5
    assert r.history[0]["images"] == len(expected) // 4 * 4  # incomplete last batch dropped
    from mmlens.models.checkpoints import read_prompt_file

    training = read_prompt_file(r.prompts_path)[1]["training"]
    assert (training["dataset"], training["shots"], training["subset"], training["seed"]) == ("EuroSAT", 2, "base", 3)


def test_errors_say_what_to_do(tiny_clip):
    with pytest.raises(ValueError, match="root"):
        fit(_model(tiny_clip), "EuroSAT", progress=False)
    with pytest.raises(ValueError, match="precision='fp16'.*auto, fp32, amp, bf16"):
        fit(_model(tiny_clip), ColourItems(), precision="fp16", progress=False)
    with pytest.raises(ValueError, match="empty"):
        fit(_model(tiny_clip), ColourItems(labels=[]), progress=False)
