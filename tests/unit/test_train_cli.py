"""`mmlens train` and `mmlens evaluate` end to end on a fake EuroSAT tree with a tiny model."""

from __future__ import annotations

import pytest

from mmlens.cli import main


def test_train_then_evaluate(tiny_clip, tmp_path, capsys):
    from mmlens.data.fake import make_fake_tree
    from mmlens.models.checkpoints import read_prompt_file

    make_fake_tree(tmp_path / "data", ["EuroSAT"], per_class={"train": 2, "val": 1, "test": 1})
    out = tmp_path / "runs" / "coop" / "seed1"
    args = ["train", "--model", "test-tiny", "--pretrained", "random", "--method", "coop", "--dataset", "EuroSAT",
            "--data-root",
            str(tmp_path / "data"), "--shots", "2", "--seed", "1", "--epochs", "2", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "epoch 2:" in printed and "trainable parameters" in printed
    state, meta = read_prompt_file(out / "prompts.safetensors")
    assert meta["hparams"]["method"] == "coop" and meta["training"]["dataset"] == "EuroSAT"
    assert len(meta["classnames"]) == 5  # the base half of EuroSAT's 10 classes
    # a second call resumes the finished run instead of training again
    assert main(args) == 0
    assert "resumed after epoch 2" in capsys.readouterr().out

    table = tmp_path / "table.md"
    assert main(["evaluate", "--prompts", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data"),
                 "--model", "test-tiny", "--pretrained", "random", "--variants", "full", "zeroshot",
                 "--out", str(table),
                 "--no-progress"]) == 0
    text = table.read_text()
    assert text.startswith("| method / variant | params | Base | Novel | HM | EuroSAT |")
    assert "| coop / full |" in text and "| coop / zeroshot |" in text
    csv = tmp_path / "table.csv"
    assert main(["evaluate", "--prompts", str(out / "prompts.safetensors"), "--data-root", str(tmp_path / "data"),
                 "--model", "test-tiny", "--pretrained", "random", "--out", str(csv), "--no-progress"]) == 0
    assert csv.read_text().splitlines()[0] == "dataset,seed,method,variant,split,accuracy,correct,total"
    assert len(csv.read_text().splitlines()) == 3  # base and novel


def test_prompt_depth_is_the_recipe_clipped_to_the_model():
    from mmlens.train.recipes import prompt_depth

    assert [prompt_depth(n)[0] for n in (12, 10, 6, 2, 1)] == [9, 9, 5, 1, 1]
    assert prompt_depth(12)[1] is None and "clipped" in prompt_depth(6)[1]
    assert prompt_depth(6, 6) == (6, None)  # an explicit depth is kept ...
    with pytest.raises(ValueError, match="choose 1..6"):
        prompt_depth(6, 7)  # ... and checked, not clipped
