"""`mmlens trace` on a fake dataset tree in the real CoOp layout (OxfordPets: with trimaps)."""

from __future__ import annotations

import numpy as np
import pytest

import mmlens
from mmlens.cli import main
from mmlens.data import make_fake_tree


@pytest.mark.parametrize("dataset", ["OxfordPets", "EuroSAT"])
def test_trace_cli_on_fake_tree(tmp_path, tiny_clip, dataset):
    make_fake_tree(tmp_path / "data", [dataset], image_size=40, per_class={"train": 1, "val": 1, "test": 2})
    out = tmp_path / "store.zarr"
    args = ["trace", "--model", "test-tiny", "--method", "maple", "--depth", "2", "--dataset", dataset,
            "--data-root", str(tmp_path / "data"), "--subset", "base", "--limit", "6", "--batch-size", "4",
            "--with-reference", "--out", str(out)]
    assert main(args) == 0
    tree = mmlens.open(out)
    vision = tree["vision"]
    assert vision.sizes["image"] == 6 and set(vision["split"].values) == {"base"}
    assert tree.attrs["dataset"] == dataset and tree.attrs["method"] == "maple"
    if dataset == "OxfordPets":  # trimaps -> per-patch foreground fractions in [0, 1]
        fg = vision["foreground"].values
        assert np.isfinite(fg).all() and 0 <= fg.min() and fg.max() <= 1
    else:
        assert "foreground" not in vision
    assert main(args) == 0  # rerun: the finished store is kept, not duplicated
    assert mmlens.open(out)["vision"].sizes["image"] == 6
