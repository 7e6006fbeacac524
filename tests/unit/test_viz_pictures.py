"""Pictures under the maps use the model's resize and crop: a known patch of a non-square picture lands on its cell."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mmlens.store.synthetic import example_tree
from mmlens.viz.explorer import Explorer
from mmlens.viz.pictures import Preprocess, model_view, preprocess_of


def _wide_picture_with_a_red_patch(path):
    # 60 x 40 picture; with shortest-side resize to 32 (scale 0.8, width 48) and a centre crop
    # (8 px cut on the left), patch (row 1, col 2) of a 4 x 4 grid of 8 px patches covers
    # model-view x in [16, 24), y in [8, 16), i.e. original x in [30, 40), y in [10, 20) (by hand)
    picture = np.full((40, 60, 3), 40, np.uint8)
    picture[10:20, 30:40] = (255, 0, 0)
    Image.fromarray(picture).save(path)
    return picture


def test_a_known_patch_of_a_non_square_picture_lands_on_its_cell(tmp_path):
    _wide_picture_with_a_red_patch(tmp_path / "wide.png")
    tree = example_tree(n_images=2, n_layers=2, n_heads=1, grid=4)
    vision = tree["vision"].to_dataset()
    tree["vision"] = vision.assign_coords(path=("image", ["wide.png", "wide.png"]))
    tree.attrs = {**tree.attrs, "preprocess": json.dumps({"size": 32, "resize_mode": "shortest", "crop": "center"})}
    app = Explorer(tree, data_root=tmp_path)
    seen = app.picture_of(app.state.dataset, 0, "wide.png")
    assert seen.shape == (32, 32, 3)
    cells = seen.reshape(4, 8, 4, 8, 3).mean(axis=(1, 3))  # mean colour per patch
    red = (cells[..., 0] > 200) & (cells[..., 1] < 60)
    assert red.tolist() == [[r == 1 and c == 2 for c in range(4)] for r in range(4)]
    # squashing the picture to a square (what the explorer used to do) puts it elsewhere
    squashed = np.asarray(Image.open(tmp_path / "wide.png").convert("RGB").resize((32, 32)))
    red_squashed = squashed.reshape(4, 8, 4, 8, 3).mean(axis=(1, 3))[..., 0] > 200
    assert red_squashed.tolist() != red.tolist()


@pytest.mark.parametrize("mode, size", [("squash", (24, 24)), ("longest", (24, 24))])
def test_other_resize_modes(mode, size):
    picture = np.full((20, 40, 3), 255, np.uint8)
    out = model_view(picture, Preprocess(size=24, resize_mode=mode))
    assert out.shape[:2] == size
    if mode == "longest":  # 40 -> 24, 20 -> 12: padded with black above and below
        assert out[:5].max() == 0 and out[-5:].max() == 0 and out[12].min() == 255


def test_preprocess_of_reads_provenance_and_refuses_unknown_modes():
    assert preprocess_of({"preprocess": {"size": [336, 336]}}).size == 336
    with pytest.raises(ValueError, match="resize_mode must be"):
        preprocess_of({"preprocess": {"resize_mode": "stretch"}})
