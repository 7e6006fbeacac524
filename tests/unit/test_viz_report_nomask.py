"""`mmlens trace` then `mmlens report` on a fake EuroSAT tree (no masks), end to end through the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def eurosat_store(tmp_path_factory):
    """A store traced the way a user does it: the CLI, the shipped toy weights, a CoOp-layout EuroSAT copy."""
    from mmlens.cli import main
    from mmlens.data.fake import make_fake_tree

    root = tmp_path_factory.mktemp("eurosat")
    make_fake_tree(root / "data", ["EuroSAT"], per_class={"train": 1, "val": 1, "test": 1}, image_size=24)
    out = root / "eurosat.zarr"
    code = main(["trace", "--model", "mmlens-toy", "--method", "maple", "--dataset", "EuroSAT",
                 "--data-root", str(root / "data"), "--limit", "4", "--with-reference", "--batch-size", "4",
                 "--out", str(out)])
    assert code == 0
    return out, root / "data"


def test_report_of_a_store_without_masks_says_so_and_shows_the_rest(eurosat_store, tmp_path):
    from mmlens.cli import main

    store, _ = eurosat_store
    page = tmp_path / "report.html"
    assert main(["report", str(store), "--out", str(page), "--images", "2"]) == 0
    html = page.read_text(encoding="utf-8")
    assert "no foreground mask in this store" in html  # the note naming what is left out and why
    # Bokeh embeds titles as JSON (non-ASCII escaped): compare the ASCII part
    # no heatmap of a measure that needs masks (its title and colour bar)
    assert "vision: foreground FG" not in html and "foreground attention FG" not in html
    assert "vision: prompt mass" in html and "text: prompt mass" in html  # the views the store can show
    assert "EuroSAT" in html and "Traceback" not in html


def test_the_foreground_views_are_named_in_a_report_of_a_store_with_masks(tmp_path):
    """The control of the test above: with masks the same strings are in the page."""
    from mmlens.store.synthetic import example_tree
    from mmlens.viz.report import write_report

    html = write_report(example_tree(n_images=2, n_layers=2, n_heads=2, grid=3), tmp_path / "r.html",
                        images=1).read_text(encoding="utf-8")
    assert "vision: foreground FG" in html and "foreground attention FG" in html
    assert "no foreground mask in this store" not in html


def test_a_traced_store_records_the_models_picture_geometry_and_the_explorer_uses_it(eurosat_store):
    import mmlens
    from mmlens.train.transforms import input_spec
    from mmlens.viz.explorer import Explorer
    from mmlens.viz.pictures import Preprocess, model_view, preprocess_of

    store, data_root = eurosat_store
    tree = mmlens.open(store)
    spec = input_spec(mmlens.load_clip("mmlens-toy", pretrained="toyworld"))
    recorded = json.loads(tree.attrs["preprocess"])
    assert recorded == {"size": spec.size[0], "resize_mode": spec.resize_mode, "crop": "center"}
    app = Explorer(tree, data_root=data_root)
    geometry = preprocess_of(app.view.attrs)
    assert (geometry.size, geometry.resize_mode) == (spec.size[0], spec.resize_mode)
    path = str(tree["vision"]["path"].values[0])
    picture = app.picture_of(app.state.dataset, 0, path)
    original = np.asarray(Image.open(data_root / path).convert("RGB"))
    np.testing.assert_array_equal(picture, model_view(original, Preprocess(spec.size[0], spec.resize_mode)))
