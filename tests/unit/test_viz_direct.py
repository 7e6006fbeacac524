"""What the prompts learn, without a browser: β's direct-effect maps follow the selection and equal the statistics;
the lens table follows the dataset; a store without the `direct` group gets a note; text from data is escaped."""

from __future__ import annotations

import numpy as np
import pytest

import mmlens
from mmlens.store.synthetic import example_study, example_tree
from mmlens.viz.slices import MissingData
from tests.unit._direct import lens_dataset, with_direct

HOSTILE = ['<img src=x onerror="window.__pwned=1">', '"><script>window.__pwned=2</script>', "*_[a](javascript:x)_*"]


@pytest.fixture(scope="module")
def study():
    return with_direct(example_study(n_datasets=2, n_images=6, n_layers=3, n_heads=2, grid=3, n_classes=3, width=8))


def _by_hand(tree, tower, dataset, variant, images=None):
    """Mean over images of the `bias` components' margin effects, arranged (layer, head), from the raw group."""
    ds = tree["direct"].to_dataset()
    if "dataset" in ds.dims:
        ds = ds.sel(dataset=dataset).isel(seed=0)
    values = ds["direct_effect"].sel(variant=variant, target="margin").values  # (image, component)
    if images is not None:
        values = values[[list(ds["image"].values).index(i) for i in images]]
    tower_c, kind, layer, head = (ds[c].values for c in ("tower", "kind", "layer", "head"))
    pick = np.flatnonzero((tower_c == tower) & (kind == "bias"))
    heads = sorted(set(head[pick]))
    out = np.full((int(layer[pick].max()) + 1, len(heads)), np.nan)
    for c in pick:
        out[layer[c], heads.index(head[c])] = np.nanmean(values[:, c])
    return out


def _labels(tree, dataset):
    return tree["direct"].to_dataset()["label"].sel(dataset=dataset).values


def test_maps_equal_the_statistics_and_a_hand_computation(study):
    from mmlens import stats

    app = mmlens.explore(study, dataset="dataset_01")
    for tower in ("vision", "text"):
        shown = app.direct_data(tower)
        assert shown.dims == ("layer", "head") and shown.attrs["n_items"] == 6
        np.testing.assert_allclose(shown.values, _by_hand(study, tower, "dataset_01", "full"), rtol=1e-5)
        run = study["direct"].to_dataset().sel(dataset="dataset_01", seed=study["direct"]["seed"].values[0])
        library = stats.bias_margin_effect(run, tower=tower, per_head=True).sel(estimate="mean")
        np.testing.assert_allclose(shown.values, library.transpose("layer", "head").values, rtol=1e-5)
        interval = app.direct_interval(tower)
        assert (interval.sel(estimate="low") <= interval.sel(estimate="high")).all()
    # the numbers the board draws are these numbers (and the hover's interval is bias_margin_effect's)
    from bokeh.document import Document

    app.panel().get_root(Document())
    cells = app._board.direct_sources["vision"].data
    np.testing.assert_allclose(np.asarray(cells["value"]).reshape(3, 2), app.direct_data("vision").values)
    low = float(app.direct_interval("vision").sel(layer=0, head=0, estimate="low"))
    assert cells["ci"][0].startswith(f"{low:.3f}")


def test_changing_the_selection_changes_the_maps(study):
    from bokeh.document import Document

    app = mmlens.explore(study)
    app.panel().get_root(Document())
    board, s = app._board, app.state
    first = app.direct_data("vision").values.copy()
    s.dataset = "dataset_01"  # a new run rebuilds the board
    board = app._board
    np.testing.assert_allclose(app.direct_data("vision").values, _by_hand(study, "vision", "dataset_01", "full"),
                               rtol=1e-5)
    assert not np.allclose(first, app.direct_data("vision").values)
    # the class selection: only that class's images
    s.direct_images = "selected class"
    klass = s.class_
    images = [int(i) for i, v in enumerate(_labels(study, "dataset_01")) if v == klass]
    assert images, "the fixture should have images of the first class"
    expected = _by_hand(study, "vision", "dataset_01", "full", images)
    np.testing.assert_allclose(app.direct_data("vision").values, expected, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(board.direct_sources["vision"].data["value"]).reshape(3, 2), expected,
                               rtol=1e-5)
    assert board.direct_labels["vision"].text == f"mean over {len(images)} image{'s' if len(images) != 1 else ''}"
    other = next(v for v in s.param["class_"].objects.values() if v != klass
                 and (_labels(study, "dataset_01") == v).any())
    s.class_ = other  # the page's map follows the class (pushed from Python)
    images = [int(i) for i, v in enumerate(_labels(study, "dataset_01")) if v == other]
    np.testing.assert_allclose(np.asarray(board.direct_sources["vision"].data["value"]).reshape(3, 2),
                               _by_hand(study, "vision", "dataset_01", "full", images), rtol=1e-5)
    # the selected image
    s.direct_images = "selected image"
    s.image = 4
    np.testing.assert_allclose(np.asarray(board.direct_sources["text"].data["value"]).reshape(3, 2),
                               _by_hand(study, "text", "dataset_01", "full", [4]), rtol=1e-5)
    # the variant: without prompts β is zero (the test store says so)
    s.param.update(direct_images="all images", variant="zeroshot")
    np.testing.assert_allclose(app.direct_data("vision").values, 0.0)
    assert app._board.direct_sources["vision"].data["ci"][0].startswith("(variant full")


def test_learned_bias_is_one_column_per_layer():
    tree = with_direct(example_tree(n_images=5, n_layers=4, n_heads=2, grid=3, n_classes=3, width=8),
                       learned_bias=True)
    app = mmlens.explore(tree)
    shown = app.direct_data("vision")
    assert shown["head"].values.tolist() == [-1] and not shown.attrs["per_head"]
    np.testing.assert_allclose(shown.values, _by_hand(tree, "vision", None, "full"), rtol=1e-5)


def test_a_store_without_direct_effects_shows_a_note_not_an_error():
    import panel as pn
    from bokeh.document import Document

    app = mmlens.explore(example_tree(n_images=3, n_layers=2, n_heads=2, grid=3, n_classes=3, width=8))
    with pytest.raises(MissingData, match="--direct-effects"):
        app.direct_data("vision")
    layout = app.panel()
    layout.get_root(Document())
    assert app._board.direct_figures == [] and "--direct-effects" in app._board.direct_note
    texts = [p.object for p in layout.select(pn.pane.Markdown)]
    assert any("mmlens trace --direct-effects" in t for t in texts)
    assert any("mmlens lens" in t for t in texts)  # and how to get a lens


def test_lens_table_follows_the_dataset(study):
    lenses = [lens_dataset(dataset=f"dataset_0{k}", n_layers=3, n_heads=2, seed=k,
                           phrases=["dark", "night", "seen from above", "grass", "snow"]) for k in (0, 1)]
    app = mmlens.explore(study, lens=lenses)
    for k, dataset in enumerate(("dataset_00", "dataset_01")):
        app.state.dataset = dataset
        table = app.lens_data()
        lens = lenses[k]
        assert len(table) == 6 and list(table["tower"]) == ["vision"] * 3 + ["text"] * 3
        for row in table.itertuples():
            d = int(np.flatnonzero((lens["kind"].values == "layer_bias") & (lens["tower"].values == row.tower)
                                   & (lens["layer"].values == row.layer))[0])
            assert row.phrases == list(lens["phrase"].values[d])
            np.testing.assert_allclose(row.cosines, lens["cosine"].values[d])
            assert row.control_cosine == pytest.approx(float(lens["control_cosine"].values[d]))
    # per-head directions are there too, and the direct map's hover names each head's top phrases
    heads = app.lens_data("head_bias")
    assert len(heads) == 2 * 3 * 2
    from mmlens.viz.board import direct_cells

    cells = direct_cells(app, "text")
    row = heads[(heads["tower"] == "text") & (heads["layer"] == 2) & (heads["head"] == 1)].iloc[0]
    k = next(n for n, (ell, h) in enumerate(zip(cells["layer"], cells["head"])) if (ell, h) == (2, 1))
    assert cells["lens"][k].startswith(f"{row.phrases[0]} ({row.cosines[0]:.2f}); {row.phrases[1]}")
    # a lens of another dataset only: a note naming what was given
    only = mmlens.explore(study, lens=lenses[1])
    html, note = only.lens_html()
    assert html is None and "dataset_00" in note and "dataset_01" in note


def test_a_lens_from_a_netcdf_file(tmp_path, study):
    lens = lens_dataset(dataset="dataset_00", n_layers=3, n_heads=2, phrases=["a", "b", "c"])
    lens.to_netcdf(tmp_path / "lens.nc")
    app = mmlens.explore(study, lens=tmp_path / "lens.nc")
    assert app.lens_data()["phrases"][0] == list(lens["phrase"].values[0])
    with pytest.raises(ValueError, match="lacks"):
        mmlens.explore(study, lens=lens.drop_vars("phrase"))


def test_text_from_data_is_escaped():
    import panel as pn
    from bokeh.document import Document

    from mmlens.viz.direct import lens_markdown

    tree = with_direct(example_tree(n_images=4, n_layers=2, n_heads=2, grid=3, n_classes=3, width=8,
                                    dataset=HOSTILE[1]))
    lens = lens_dataset(dataset=HOSTILE[1], n_layers=2, n_heads=2, phrases=HOSTILE, top=3)
    app = mmlens.explore(tree, lens=lens)
    layout = app.panel()
    layout.get_root(Document())
    html = " ".join(p.object for p in layout.select(pn.pane.HTML) if "mmlens-lens" in str(p.object))
    assert html, "the lens table is on the page"
    for raw in HOSTILE[:2]:
        assert raw not in html
    assert "&lt;img src=x onerror=&quot;window.__pwned=1&quot;&gt;" in html
    assert "<script" not in html and "<img" not in html
    # a note naming the hostile dataset, and the Markdown hook for the findings page
    other = mmlens.explore(tree, lens=lens.assign_attrs(dataset=HOSTILE[0]))
    _, note = other.lens_html()
    texts = [p.object for p in other.panel().select(pn.pane.Markdown) if "no text lens" in str(p.object)]
    assert HOSTILE[0] in note and texts and "<img" not in texts[0]
    text = lens_markdown(lens)
    assert "<script" not in text and "<img" not in text and "\\*\\_\\[a\\]" in text


def test_report_has_the_section_for_every_dataset(tmp_path, study):
    from mmlens.viz.report import write_report

    lenses = [lens_dataset(dataset=f"dataset_0{k}", n_layers=3, n_heads=2, seed=k,
                           phrases=["dark", "night", "grassland"]) for k in (0, 1)]
    html = write_report(study, tmp_path / "r.html", images=1, lens=lenses).read_text(encoding="utf-8")
    assert "What the prompts learn" in html
    assert html.count("mmlens-lens") >= 2  # the board's table (first dataset) and the second dataset's
    assert "mmlens-direct-vision" in html and "mmlens-direct-text" in html  # the board's two maps
    for key in ("dataset_00|full", "dataset_01|zeroshot"):
        assert f'"{key}"' in html


def test_report_cli_names_a_missing_lens_file(tmp_path, capsys):
    from mmlens.cli import main
    from mmlens.store.io import to_zarr

    store = to_zarr(example_tree(n_images=2, n_layers=2, n_heads=1, grid=2, n_classes=2, width=4),
                    tmp_path / "run.zarr")
    assert main(["report", str(store), "--out", str(tmp_path / "r.html"), "--lens",
                 str(tmp_path / "missing.nc")]) == 2
    assert "no lens file" in capsys.readouterr().err


def test_direct_map_of_a_study_keeps_runs_apart(study):
    app = mmlens.explore(study)
    a = app.direct_data("text").values
    app.state.dataset = "dataset_01"
    b = app.direct_data("text").values
    assert not np.allclose(a, b)
    import holoviews as hv

    assert isinstance(app.plot_direct("text"), hv.Image)
    # zeroshot β is zero: a diverging map of zeros still renders
    app.state.variant = "zeroshot"
    assert np.isfinite(np.asarray(app.plot_direct("vision").data)).all()
