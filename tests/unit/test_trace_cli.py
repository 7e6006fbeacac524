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
    args = ["trace", "--model", "test-tiny", "--pretrained", "random", "--method", "maple", "--depth", "2",
            "--dataset", dataset,
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


def test_trace_cli_attribution(tmp_path, tiny_clip, capsys):
    make_fake_tree(tmp_path / "data", ["EuroSAT"], image_size=40, per_class={"train": 1, "val": 1, "test": 2})
    out = tmp_path / "store.zarr"
    args = ["trace", "--model", "test-tiny", "--pretrained", "random", "--method", "maple", "--depth", "2",
            "--dataset", "EuroSAT",
            "--data-root", str(tmp_path / "data"), "--limit", "5", "--batch-size", "2", "--with-reference",
            "--attribution", "occlusion,attention_gradcam", "--out", str(out)]
    assert main(args) == 0
    tree = mmlens.open(out)  # validates, the attribution group included
    att, vision = tree["attribution"], tree["vision"]
    assert set(att.data_vars) >= {"occlusion", "attention_gradcam", "occlusion_logit"}
    assert att.sizes["image"] == 5 and list(att["variant"].values) == ["full", "zeroshot"]
    np.testing.assert_array_equal(att["path"].values, vision["path"].values)
    np.testing.assert_array_equal(att["target"].values, vision["label"].values)  # the true class is explained
    # the explained logit is the traced one at the true class
    logits = tree["logits"]["logits"].sel(variant="full").values
    np.testing.assert_allclose(att["occlusion_logit"].sel(variant="full").values,
                               logits[np.arange(5), vision["label"].values], rtol=1e-5)
    with pytest.raises(SystemExit):
        main([*args[:-4], "--attribution", "occlusion,gradcam", "--out", str(tmp_path / "x.zarr")])
    err = capsys.readouterr().err
    assert "Unknown attribution method(s) ['gradcam']" in err and "expected names among" in err
    with pytest.raises(SystemExit):
        main([*args[:-4], "--attribution", " , ", "--out", str(tmp_path / "y.zarr")])
    assert "expected comma-separated names among" in capsys.readouterr().err
