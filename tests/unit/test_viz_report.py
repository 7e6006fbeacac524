"""The standalone HTML report: embedded frames match what HoloViews renders, no network resources, the CLI."""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr

from mmlens.store.synthetic import example_study, example_tree


def test_embedded_frames_have_the_layout_bokeh_renders():
    import holoviews as hv

    from mmlens.viz import plots
    from mmlens.viz._static import _frame_entry

    values = xr.DataArray(np.arange(6.0).reshape(3, 2), dims=("layer", "head"),
                          coords={"layer": [0, 1, 2], "head": [0, 1]})
    element = plots.head_heatmap(values, title="t")
    rendered = hv.render(element, backend="bokeh")
    glyph = [r for r in rendered.renderers if type(r.glyph).__name__ == "Image"][0]
    flat, title, low, high = _frame_entry(element, digits=6)
    np.testing.assert_allclose(flat, np.asarray(glyph.data_source.data["image"][0]).ravel())
    assert (title, low, high) == ("t", 0.0, 5.0)
    # an overlay (picture * map * outline) contributes its one image
    overlay = plots.picture_rgb(None, (2, 2)) * plots.grid_image(np.eye(2), title="m") * plots.mask_contour(np.eye(2))
    flat, title, _, _ = _frame_entry(overlay, digits=6)
    assert title == "m" and len(flat) == 4


def test_frame_switcher_refuses_unequal_frames():
    from mmlens.viz import plots
    from mmlens.viz._static import frame_switcher

    a = plots.grid_image(np.eye(2))
    with pytest.raises(ValueError, match="first frame has 2"):
        frame_switcher({(0,): (a, a), (1,): (a,)}, ["layer"])


def test_report_cli_on_a_lazy_zarr_store(tmp_path):
    from mmlens.cli import main
    from mmlens.store.io import to_zarr

    study = example_study(n_datasets=2, n_images=4, n_layers=2, n_heads=2, grid=3, n_classes=3, width=8)
    store = to_zarr(study, tmp_path / "study.zarr")
    out = tmp_path / "report.html"
    assert main(["report", str(store), "--out", str(out), "--images", "1"]) == 0
    html = out.read_text(encoding="utf-8")
    assert len(html) < 8_000_000  # bounded: bokeh + panel inline (~3 MB) and a few frames
    # nothing is fetched from the network: no external stylesheets/scripts left by Panel's template
    assert not re.search(r'<(link|script)[^>]*(href|src)="https?://', html)
    assert not re.search(r'"url":\s*"https?://', html)  # component stylesheets (inlined as data: URIs)
    assert "cdn.holoviz.org" not in html
    # every (dataset, variant) frame of the heatmaps and every (layer, head) frame is embedded
    for key in ("dataset_00|full", "dataset_01|zeroshot"):
        assert f'"{key}"' in html
    assert "mmlens report" in html and "dataset_01" in html


def test_report_cli_missing_store(tmp_path, capsys):
    from mmlens.cli import main

    assert main(["report", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "r.html")]) == 2
    assert "no store at" in capsys.readouterr().err


def test_report_of_a_partial_store(tmp_path):
    from mmlens.viz.report import write_report

    tree = example_tree(n_images=2, n_layers=2, n_heads=1, grid=2, n_classes=2, width=4)
    partial = xr.DataTree.from_dict({"/": xr.Dataset(attrs=dict(tree.attrs)), "vision": tree["vision"].to_dataset()
                                     .drop_vars(["bias_head_norm"])})
    out = write_report(partial, tmp_path / "partial.html", images=1)
    html = out.read_text(encoding="utf-8")
    assert re.search(r"no \S{0,12}text\S{0,12} group", html)
    assert "not in this store" in html


def test_role_bars_colour_each_bar_by_its_variant():
    import holoviews as hv

    from mmlens.viz import plots

    roles = xr.DataArray([[0.1, 0.5, 0.4], [0.6, 0.0, 0.4]], dims=("variant", "key_role"),
                         coords={"variant": ["full", "zeroshot"], "key_role": ["sot", "prompt", "word"]})
    fig = hv.render(plots.role_bars(roles), backend="bokeh")
    data = [r for r in fig.renderers if "attention" in r.data_source.data][0].data_source.data
    colour = {"full": "#1f77b4", "zeroshot": "#7f7f7f"}
    for (role, variant), value, c in zip(data["xoffsets"], data["attention"], data["color"]):
        assert c == colour[variant]
        assert value == pytest.approx(float(roles.sel(variant=variant, key_role=role)))
