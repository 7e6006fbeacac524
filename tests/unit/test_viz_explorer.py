"""The explorer's view state and linked views, without a browser: selections, choices, taps, partial stores."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import mmlens
from mmlens.store.synthetic import example_study, example_tree
from mmlens.viz.explorer import Explorer, ExplorerState
from mmlens.viz.slices import StudyView


@pytest.fixture(scope="module")
def study():
    return example_study(n_datasets=2, n_images=4, n_layers=3, n_heads=2, grid=3, n_classes=4, width=8)


def test_state_choices_come_from_the_store(study):
    app = mmlens.explore(study)
    s = app.state
    assert s.param["dataset"].objects == ["dataset_00", "dataset_01"]
    assert s.param["layer"].objects == [0, 1, 2] and s.param["head"].objects == [0, 1]
    assert s.param["variant"].objects == ["full", "zeroshot"] and s.variant == "full"
    assert s.param["image"].bounds == (0, 3)
    assert s.method == "maple" and s.param["method"].objects == ["maple"]
    assert all("dataset_00_class" in name for name in s.param["class_"].names)
    s.dataset = "dataset_01"
    assert all("dataset_01_class" in name for name in s.param["class_"].names)
    with pytest.raises(ValueError):
        s.layer = 7  # not a layer of this store


def test_initial_selection_and_unknown_names(study):
    app = Explorer(study, layer=2, head=1, dataset="dataset_01", image=3)
    assert (app.state.layer, app.state.head, app.state.dataset, app.state.image) == (2, 1, "dataset_01", 3)
    with pytest.raises(TypeError, match="unknown selection"):
        Explorer(study, colour="red")


def test_select_cell_rounds_and_clamps():
    state = ExplorerState({"m": StudyView(example_tree(n_layers=4, n_heads=3, n_images=2))})
    state.select_cell(layer=2.4, head=0.6)
    assert (state.layer, state.head) == (2, 1)
    state.select_cell(layer=9.0, head=-3.0)
    assert (state.layer, state.head) == (3, 0)
    state.select_cell(layer=float("nan"), head=1.0)  # a tap outside the plot changes nothing
    assert (state.layer, state.head) == (3, 0)


def test_switching_method_updates_choices():
    small = example_tree(n_layers=2, n_heads=2, n_images=3, dataset="dtd")
    big = example_tree(n_layers=5, n_heads=3, n_images=7, dataset="eurosat")
    app = Explorer({"ivlp": small, "maple": big}, method="maple", layer=4, head=2, image=6)
    s = app.state
    assert s.param["layer"].objects == [0, 1, 2, 3, 4]
    s.method = "ivlp"
    assert s.param["layer"].objects == [0, 1] and s.layer == 0  # 4 is not a layer of the other store
    assert s.head == 0 and s.image == 0 and s.dataset == "dtd"
    assert app.heatmap_data("vision", "prompt_mass").shape == (2, 2)
    with pytest.raises(ValueError, match="share the method name"):
        Explorer([small, big])


def test_views_follow_the_selection(study):
    app = Explorer(study)
    s = app.state
    s.param.update(dataset="dataset_01", variant="zeroshot", layer=1, head=1, image=2)
    vision = study["vision"].to_dataset().sel(dataset="dataset_01", seed=1)
    np.testing.assert_allclose(app.heatmap_data("vision", "prompt_mass").values,
                               vision.prompt_mass.sel(variant="zeroshot").mean("image").values, rtol=1e-6)
    sl = app.image_data()
    assert (sl.dataset, sl.image, sl.layer, sl.head) == ("dataset_01", 2, 1, 1)
    np.testing.assert_array_equal(sl.attention["full"],
                                  vision.cls_attention.sel(variant="full", image=2, layer=1, head=1).values)
    roles = app.roles_data()
    np.testing.assert_array_equal(
        roles.sel(variant="full").values,
        study["text"]["attention_by_role"].sel(dataset="dataset_01", seed=1, variant="full", layer=1, head=1).values,
    )
    table = app.accuracy_data()
    assert set(table["variant"]) == {"full", "zeroshot"} and set(table["dataset"]) == {"dataset_01"}


def test_plots_keep_their_type_when_data_are_missing(study):
    import holoviews as hv

    app = Explorer(study)
    full_types = {
        "heat": type(app.plot_heatmap("vision", "bias_ratio")),
        "curve": type(app.plot_curves("text")),
        "roles": type(app.plot_roles()),
        "roles_all": type(app.plot_roles_all()),
    }
    app.state.curve_measure = "foreground_attention"  # a vision-only measure, asked of the text tower
    curve = app.plot_curves("text")
    assert type(curve) is full_types["curve"] and "vision-tower" in curve.opts.get().kwargs["title"]
    # a store without text, logits and cls_attention still yields plots (with messages)
    vision = study["vision"].to_dataset().drop_vars(["cls_attention", "bias_head_norm"])
    partial = Explorer(xr.DataTree.from_dict({"/": xr.Dataset(attrs=dict(study.attrs)), "vision": vision}))
    heat = partial.plot_heatmap("vision", "bias_ratio")
    assert isinstance(heat, hv.Image) and "bias_head_norm" in heat.opts.get().kwargs["title"]
    assert type(partial.plot_roles()) is full_types["roles"]
    assert type(partial.plot_roles_all()) is full_types["roles_all"]
    assert partial.image_slots() == ["mask"]
    assert isinstance(partial.plot_image(), hv.Layout)


def test_layout_builds_and_the_page_sliders_and_the_state_follow_each_other(study):
    from bokeh.document import Document

    app = Explorer(study)
    app.panel().get_root(Document())
    board = app._board
    board.layer.value = 2  # as the page reports a slider move (the JS has already redrawn)
    assert app.state.layer == 2
    app.state.head = 1  # from code: the page's slider follows, and with it every view
    assert board.head.value == 1
    app.state.image = 3
    data = board.image_source.data
    assert board.image_slider.value == 3
    app.state.param.update(layer=1, head=0, image=2)  # several at once (one batch of events), as notebooks do
    assert (board.layer.value, board.head.value, board.image_slider.value) == (1, 0, 2)
    app.state.image = 3
    k = data["id"].index(3)  # the selected image is in the page, with its own info line
    assert "<b>image 3</b>" in data["info"][k]
    assert all(fig.js_event_callbacks.get("tap") for fig in board.heat_figures)  # a click selects a cell


def test_board_sends_every_layer_and_head_of_the_selected_image(study):
    app = Explorer(study, image=2)
    board = app.new_board()
    payload = board.image_payload(2)
    vision = study["vision"].to_dataset()
    expected = vision["cls_attention"].sel(dataset=app.state.dataset, seed=app.state.seed, image=2, variant="full")
    full = board.slots.index("full")
    for li, layer in enumerate(board.layers):
        for hi, head in enumerate(board.heads):
            want = expected.sel(layer=layer, head=head).transpose("patch_row", "patch_col").values
            np.testing.assert_allclose(payload.maps[full, li, hi], want[::-1], rtol=1e-6)  # drawn image-up
    assert payload.maps.dtype == np.float32


def test_hostile_text_is_escaped_in_the_board_and_the_markdown():
    from tests.browser._pages import HOSTILE, hostile_tree

    app = Explorer(hostile_tree())
    board = app.new_board()
    for image in app.view.images:
        info = board.image_payload(image).info
        assert "<img" not in info and "<script" not in info and "&lt;" in info
    from mmlens.viz.layout import main_panes

    texts = " ".join(str(getattr(p, "object", "")) for p in main_panes(app, board))
    assert "<script" not in texts and "<img" not in texts and HOSTILE[1] not in texts


def test_a_store_without_masks_attributions_or_reference(tmp_path):
    from bokeh.document import Document

    tree = example_tree(n_images=3, n_layers=3, n_heads=2, grid=3, variants=("full",), with_foreground=False)
    app = Explorer(tree)
    assert "foreground_attention" not in app.state.param["curve_measure"].objects
    app.panel().get_root(Document())
    board = app._board
    assert board.slots == ["full"]
    texts = " ".join(str(getattr(p, "object", "")) for p in app.panel().objects[1].objects)
    assert "no foreground mask" in texts and "no zeroshot variant" in texts and "no attribution group" in texts


def test_robust_limits_clip_a_ratio_outlier_and_grey_out_tiny_denominators():
    from mmlens.viz.board import robust_limits

    values = np.array([1.0, 1.1, 0.9, 1.05, 480.0])
    low, high, clipped = robust_limits(values, ratio=True, q=75)
    assert high == 1.1 and clipped.tolist() == [False, False, False, False, True]
    low, high, clipped = robust_limits(values, ratio=False)
    assert high == 480.0 and not clipped.any()  # not a ratio: the full range


def test_layout_builds_for_a_partial_store(study):
    from bokeh.document import Document

    logits_only = xr.DataTree.from_dict({"/": xr.Dataset(attrs=dict(study.attrs)),
                                         "logits": study["logits"].to_dataset()})
    app = Explorer(logits_only)
    app.panel().get_root(Document())  # no vision/text: messages in those panels, the table still shows
    assert app.accuracy_data().shape[0] == 2


def test_pictures_from_the_traced_dataset(study):
    torch = pytest.importorskip("torch")
    app = Explorer(example_tree(n_images=2, n_layers=2, grid=3))
    path = str(app.view.image_info("synthetic", 1)["path"])
    app.pictures = [{"image": torch.zeros(3, 6, 6), "path": "a"}, {"image": torch.full((3, 6, 6), 0.5), "path": path}]
    app.state.image = 1
    picture = app._picture(app.image_data())
    assert picture.shape == (6, 6, 3) and picture.dtype == np.uint8 and int(picture[0, 0, 0]) == 128
    app.state.image = 0  # the sample's path is not the store's: no picture rather than a wrong one
    assert app._picture(app.image_data()) is None


def test_trace_image_on_demand_opens_in_the_explorer(tiny_clip):
    torch = pytest.importorskip("torch")
    from mmlens.viz import trace_image

    model = mmlens.PromptedCLIP(tiny_clip, ["cat", "dog"], method="maple", depth=2, init_seed=0)
    mask = torch.zeros(32, 32)
    mask[:8, :8] = 1  # exactly the top-left patch (8x8 patches)
    tree = trace_image(model, torch.randn(3, 32, 32), mask=mask, label=1, path="x.png")
    app = Explorer(tree)
    sl = app.image_data()
    assert (sl.label, sl.classname, sl.path) == (1, "dog", "x.png")
    assert set(sl.attention) == {"full", "zeroshot"} and sl.foreground[0, 0] == 1 and sl.foreground.sum() == 1
    assert sl.foreground_attention["full"] == pytest.approx(float(sl.attention["full"][0, 0]))
    with pytest.raises(ValueError, match="expected one image"):
        trace_image(model, torch.randn(2, 3, 32, 32))


def test_evaluation_table_from_mmlens_train(study, tmp_path):
    acc = np.array([[[[[80.0, 60.0], [70.0, 65.0]]]]])
    ds = xr.Dataset({"accuracy": (("dataset", "seed", "method", "variant", "split"), acc)},
                    coords={"dataset": ["a"], "seed": [1], "method": ["maple"], "variant": ["full", "bias_only"],
                            "split": ["base", "novel"]})
    assert Explorer(study).evaluation_markdown() is None
    text = Explorer(study, evaluation=ds).evaluation_markdown()
    assert "bias_only" in text and "80.0" in text and "68.6" in text  # HM of 80 and 60
    ds.to_netcdf(tmp_path / "accuracy.nc")
    assert Explorer(study, evaluation=tmp_path / "accuracy.nc").evaluation_markdown() == text


def test_offline_layout_links_no_stylesheet_from_the_cdn(study):
    from bokeh.document import Document
    from bokeh.models import ImportedStyleSheet
    from panel.io.resources import CDN_DIST

    app = Explorer(study)
    root = app.panel().get_root(Document())
    urls = [s.url for s in root.select({"type": ImportedStyleSheet})]
    assert urls and not [u for u in urls if u.startswith(CDN_DIST)]
    app.state.dataset = "dataset_01"  # panes rebuilt by the update are covered too
    urls = [s.url for s in root.select({"type": ImportedStyleSheet})]
    assert not [u for u in urls if u.startswith(CDN_DIST)]


def test_spearman_of_every_layer_and_head_matches_map_agreement():
    from mmlens.viz.board import spearman_maps
    from mmlens.viz.slices import map_agreement

    rng = np.random.default_rng(0)
    a = rng.random((3, 2, 4, 4))
    b = a + rng.normal(0, 0.3, a.shape)
    b[0, 1] = np.round(b[0, 1], 1)  # ties
    b[1, 0] = 0.5  # a constant map: undefined
    a[2, 1, 0, 0] = np.nan  # not finite: undefined
    rho = spearman_maps(a, b)
    for i in range(3):
        for j in range(2):
            want = map_agreement(a[i, j], b[i, j], None)["spearman"]
            np.testing.assert_allclose(rho[i, j], want, rtol=1e-12, equal_nan=True)
    assert np.isnan(rho[1, 0]) and np.isnan(rho[2, 1]) and np.isfinite(rho[0, 1])


def test_the_page_holds_the_selected_image_and_its_neighbours():
    """An image slider step is drawn by the page: Python keeps the neighbours there, streamed, bounded."""
    from bokeh.document import Document

    from mmlens.store.synthetic import example_tree

    app = Explorer(example_tree(n_images=20, n_layers=3, n_heads=2, grid=4), image=5)
    app.panel().get_root(Document())
    board = app._board
    ids = board.image_source.data["id"]
    assert ids[0] == 5 and set(ids) == {3, 4, 5, 6, 7}
    app.state.image = 6  # one step: only the new neighbour is sent
    assert set(board.image_source.data["id"]) == {3, 4, 5, 6, 7, 8}
    app.state.image = 15  # a jump: the oldest rows roll out
    data = board.image_source.data
    assert len(data["id"]) == board.KEEP and {13, 14, 15, 16, 17} <= set(data["id"])
    k = data["id"].index(15)
    assert "<b>image 15</b>" in data["info"][k]
    want = board.image_payload(15).maps.ravel()
    np.testing.assert_array_equal(data["maps"][k], want)


def test_a_store_still_being_written_says_how_far_it_got(tmp_path):
    """The header and the report read the writer's progress through mmlens.store.store_status (one reader)."""
    from mmlens.store.io import IncompleteStoreWarning, StoreWriter
    from mmlens.store.synthetic import example_tree
    from mmlens.viz.layout import incomplete_note
    from mmlens.viz.report import _provenance_markdown

    tree, path = example_tree(n_images=6, n_layers=2, n_heads=2, grid=3), tmp_path / "run.zarr"
    writer = StoreWriter(path, dict(tree.attrs), total=6)
    writer.append(tree.isel(image=slice(0, 4)))
    with pytest.warns(IncompleteStoreWarning):  # mmlens.open says so too
        app = Explorer(str(path))
    assert app.status().message == "incomplete: 4 of 6 images"
    note = incomplete_note(app.status())
    assert note.startswith("incomplete: 4 of 6 images")
    assert "incomplete: 4 of 6 images" in _provenance_markdown(app.view)[0]  # the summary line
    writer.append(tree.isel(image=slice(4, 6)))
    writer.close()
    app.refresh()
    assert app.status().complete and incomplete_note(app.status()) is None
    assert incomplete_note(Explorer(tree).status()) is None  # in memory: nothing to say


def test_the_heatmap_caption_states_the_clipping_rule_robust_limits_applies():
    from mmlens.viz.board import CAPTIONS, robust_limits

    assert "1.5 × its 98th percentile" in CAPTIONS["heatmaps"]
    base = np.linspace(1.0, 2.0, 99)
    cap = float(np.percentile(np.append(base, 2.0), 98))
    for factor, clipped in ((1.4, False), (1.6, True)):
        values = np.append(base, factor * cap)
        high = robust_limits(values, ratio=True)[1]
        p98 = float(np.percentile(values, 98))
        assert (high == p98) is clipped and (high == values.max()) is not clipped
