"""Unreadable images are counted, not fatal: whole broken batches, partial ones, the lines a user reads."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import mmlens
from mmlens._progress import progress_bar, write_line
from mmlens.cli import main
from mmlens.data import ImageDataset, Item, load_split, make_fake_tree
from mmlens.data.fake import corrupt_file

CLASSES = ["cat", "dog"]
SUMMARY = "{} images, {} skipped (see vision/failures)"


def _to_tensor(img):
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)


def _folder(tmp_path, broken: set[int], n: int = 12) -> list[Item]:
    """``n`` PNG images (distinct pixels), those at ``broken`` overwritten with bytes no decoder reads."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        p = tmp_path / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(p)
        if i in broken:
            corrupt_file(p)
        items.append(Item(str(p), i % 2, CLASSES[i % 2]))
    return items


@pytest.fixture
def model(tiny_clip):
    return mmlens.PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0)


def _skipped_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("skipped ")]


# batches of 4: a whole broken batch first, in the middle, last; and partial batches around them
@pytest.mark.parametrize("broken", [{0, 1, 2, 3, 9}, {4, 5, 6, 7, 10}, {1, 8, 9, 10, 11}, {4, 5, 6, 7, 8, 9, 10, 11}])
def test_broken_batches_are_recorded_and_the_trace_goes_on(tmp_path, model, capsys, broken):
    items = _folder(tmp_path, broken)
    good = [it for i, it in enumerate(items) if i not in broken]
    dataset = ImageDataset(items, CLASSES, transform=_to_tensor, on_error="skip")
    path = mmlens.trace_to_store(model, dataset, tmp_path / "s.zarr", batch_size=4, with_reference=True)
    err = capsys.readouterr().err
    tree = mmlens.open(path)
    vision = tree["vision"]
    assert list(vision["path"].values) == [it.path for it in good]
    assert sorted(vision["failure_path"].values) == sorted(items[i].path for i in broken)
    assert all(e == "OSError: Truncated File Read" for e in vision["failures"].values)
    assert tree.attrs["mmlens_schema"] and mmlens.open(path)["logits"].sizes["image"] == len(good)
    # every readable image is traced as it is without the broken ones
    clean = mmlens.trace(model, ImageDataset(good, CLASSES, transform=_to_tensor), batch_size=4,
                         with_reference=True, progress=False)
    for name in ("prompt_mass", "bias_norm", "cls_attention"):
        np.testing.assert_allclose(vision[name].values, clean["vision"][name].values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tree["logits"]["logits"].values, clean["logits"]["logits"].values, rtol=1e-5)
    # what the user reads: one line per skipped file, then the count; no bar redraws in a log
    lines = _skipped_lines(err)
    assert [line.split(": ")[0] for line in lines] == [f"skipped {items[i].path}" for i in sorted(broken)]
    assert all(line.endswith(": OSError: Truncated File Read") for line in lines)
    assert err.strip().splitlines()[-1] == SUMMARY.format(len(good), len(broken))
    assert "\r" not in err
    # a rerun finds the store complete and says the same
    mmlens.trace_to_store(model, dataset, path, batch_size=4, with_reference=True)
    assert capsys.readouterr().err.strip().splitlines()[-1] == SUMMARY.format(len(good), len(broken))


def test_trace_in_memory_keeps_the_failures_of_every_batch(tmp_path, model, capsys):
    broken = {0, 1, 2, 3, 6, 11}
    items = _folder(tmp_path, broken)
    tree = mmlens.trace(model, ImageDataset(items, CLASSES, transform=_to_tensor, on_error="skip"), batch_size=4,
                        progress=False)
    assert tree["vision"].sizes["image"] == 6
    assert list(tree["vision"]["failure_path"].values) == [items[i].path for i in sorted(broken)]
    err = capsys.readouterr().err
    assert len(_skipped_lines(err)) == 6 and err.strip().splitlines()[-1] == SUMMARY.format(6, 6)


def test_nothing_readable_is_one_clear_error(tmp_path, model):
    items = _folder(tmp_path, set(range(4)), n=4)
    dataset = ImageDataset(items, CLASSES, transform=_to_tensor, on_error="skip")
    with pytest.raises(ValueError, match="no readable image: all 4 inputs failed to decode"):
        mmlens.trace(model, dataset, batch_size=2, progress=False)


def test_trace_cli_skips_a_whole_broken_batch(tmp_path, tiny_clip, capsys):
    make_fake_tree(tmp_path / "data", ["EuroSAT"], image_size=40, per_class={"train": 1, "val": 1, "test": 1})
    items = load_split("EuroSAT", tmp_path / "data", "test").items
    broken = [2, 3, 5]  # with --batch-size 2: the second batch entirely, the third in part
    for i in broken:
        corrupt_file(items[i].path)
    out = tmp_path / "store.zarr"
    args = ["trace", "--model", "test-tiny", "--pretrained", "random",
            "--method", "maple", "--depth", "2", "--dataset", "EuroSAT",
            "--data-root", str(tmp_path / "data"), "--limit", "8", "--batch-size", "2", "--out", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert [line.split(": ")[0] for line in _skipped_lines(err)] == [f"skipped {items[i].path}" for i in broken]
    assert SUMMARY.format(5, 3) in err.splitlines()
    vision = mmlens.open(out)["vision"]
    assert vision.sizes["image"] == 5 and list(vision["failure_path"].values) == [items[i].path for i in broken]
    assert list(vision["path"].values) == [items[i].path for i in range(8) if i not in broken]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_skip_lines_do_not_break_the_bar():
    # on a terminal the bar is redrawn in place ("\r"), and a line written meanwhile stands on its own
    term = _Terminal()
    bar = progress_bar(total=4, desc="trace", file=term)
    bar.update(2)
    write_line("skipped a.jpg: broken", file=term)
    bar.update(2)
    bar.close()
    text = term.getvalue()
    assert "\r" in text and "skipped a.jpg: broken\n" in text
    assert not any(line.startswith("trace") and "skipped" in line for line in text.replace("\r", "\n").splitlines())
    # in a log: whole lines, the skip line between status lines
    log = io.StringIO()
    bar = progress_bar(total=4, desc="trace", file=log)
    bar.update(2)
    write_line("skipped a.jpg: broken", file=log)
    bar.update(2)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and lines[1] == "skipped a.jpg: broken"
    assert lines[0].startswith("trace:   0%") and lines[-1].startswith("trace: 100%") and len(lines) == 3
    # disabled: nothing at all
    quiet = io.StringIO()
    bar = progress_bar(total=4, file=quiet, enabled=False)
    bar.update(4)
    bar.close()
    assert quiet.getvalue() == ""


def test_log_lines_are_periodic_and_postfix_updates_add_none(monkeypatch):
    import mmlens._progress as progress

    log = io.StringIO()
    bar = progress_bar(total=50, desc="train", file=log)  # the default interval: only the first and last line
    for i in range(50):
        bar.update(1)
        bar.set_postfix(loss=f"{i}")  # refreshes: a terminal redraw, no log line
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("train: 100%") and lines[-1].endswith("loss=49]")
    monkeypatch.setattr(progress, "LINE_INTERVAL", 0.0)  # every update is due: one line each
    log = io.StringIO()
    bar = progress_bar(total=5, desc="train", file=log)
    for _ in range(5):
        bar.update(1)
    bar.close()
    assert [line.split("|")[0] for line in log.getvalue().splitlines()] == [
        f"train: {p:3d}%" for p in (0, 20, 40, 60, 80, 100)]
