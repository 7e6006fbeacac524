"""The explorer in JupyterLab (headless chromium): as a Panel output and as an ipywidget inside an ipywidgets layout."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.browser._pages import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    OVERFLOW_JS,
    JupyterLab,
    chromium,
    missing,
    run_all,
    shrink_png,
    skip_or_fail,
    write_notebook,
)

pytestmark = pytest.mark.browser


def _differs(a: bytes, b: bytes) -> float:
    from PIL import Image

    x = np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), np.int16)
    y = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), np.int16)
    return 1.0 if x.shape != y.shape else float((np.abs(x - y).sum(-1) > 30).mean())


def test_explorer_in_jupyterlab_as_panel_and_as_ipywidget(tmp_path):
    skip_or_fail(missing("jupyterlab", "jupyter_bokeh"))
    from playwright.sync_api import sync_playwright

    from mmlens.store.io import to_zarr
    from mmlens.store.synthetic import example_tree

    store = to_zarr(example_tree(n_images=6, n_layers=8, n_heads=4, grid=7, n_classes=8, prompt_depth=4,
                                 with_vectors=False), tmp_path / "run.zarr")
    write_notebook(tmp_path / "explorer.ipynb", [
        "import ipywidgets, mmlens\nfrom mmlens.viz import load_extensions\nload_extensions()",
        f"app = mmlens.explore({str(store)!r}, layer=1)\napp",
        f"other = mmlens.explore({str(store)!r})\n"
        "ipywidgets.VBox([ipywidgets.HTML('<b class=\"composed\">an ipywidgets layout</b>'), other.widget()])",
    ])
    ARTIFACTS.mkdir(exist_ok=True)
    errors = []
    with JupyterLab(tmp_path) as lab, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda e: errors.append(str(e)))
        run_all(page, lab.url("explorer.ipynb"))
        outputs = page.locator(".jp-OutputArea-output")
        page.wait_for_function("() => document.querySelectorAll('.jp-OutputArea-output').length >= 2")
        panel_out = page.locator(".jp-Cell").nth(1)
        widget_out = page.locator(".jp-Cell").nth(2)
        panel_out.locator(".mmlens-layer .noUi-handle").first.wait_for(timeout=120_000)
        # the ipywidget: rendered by jupyter_bokeh inside an ipywidgets VBox next to another widget
        widget_out.locator(".composed").wait_for(timeout=60_000)
        widget_out.locator(".mmlens-layer .noUi-handle").first.wait_for(timeout=120_000)
        assert outputs.count() >= 2
        page.wait_for_timeout(2000)
        for cell in (panel_out, widget_out):
            maps = cell.locator(".mmlens-heat").first
            before = maps.screenshot()
            handle = cell.locator(".mmlens-head .noUi-handle").first
            handle.focus()
            handle.press("ArrowRight")
            page.wait_for_timeout(1500)
            assert _differs(before, maps.screenshot()) > 0.002, "the heatmap outline did not follow the head slider"
        widths = {}
        for width in (1400, 1000):  # a tall window, so that the whole output is on screen at once
            page.set_viewport_size({"width": width, "height": 3000})
            page.wait_for_timeout(2500)
            panel_out.scroll_into_view_if_needed()
            area = panel_out.locator(".jp-OutputArea-output").first
            edges = area.evaluate(OVERFLOW_JS)
            # nothing of the explorer sticks out of the notebook's output area (cut off, or a scrollbar)
            assert edges["right"] <= edges["area_right"] + 1, f"at {width} px: {edges}"
            widths[width] = edges["area_right"] - edges["area_left"]
            # an element taller than the window is cut by JupyterLab's scrolling panel: make the window taller
            tall = int(area.bounding_box()["height"]) + 600
            if tall > 3000:
                page.set_viewport_size({"width": width, "height": tall})
                page.wait_for_timeout(1500)
                panel_out.scroll_into_view_if_needed()
            panel_out.locator(".jp-OutputArea").first.screenshot(path=str(ARTIFACTS / f"explorer_{width}.png"))
            shrink_png(ARTIFACTS / f"explorer_{width}.png")
        assert widths[1400] > widths[1000]  # the two windows really gave the explorer different widths
        browser.close()
    assert not [e for e in errors if "mmlens" in e or "Bokeh" in e], errors[:5]
