"""β's direct-effect map in JupyterLab (headless chromium): it appears and follows a class chosen in the page."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser._pages import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    JupyterLab,
    chromium,
    missing,
    run_all,
    shrink_png,
    skip_or_fail,
    write_notebook,
)
from tests.browser.test_explorer_browser import _differs

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]


def test_direct_effect_map_follows_the_class_selection(tmp_path):
    skip_or_fail(missing("jupyterlab", "jupyter_bokeh"))
    from playwright.sync_api import sync_playwright

    write_notebook(tmp_path / "direct.ipynb", [
        # the `direct` group: hand-built test data
        f"import sys\nsys.path.insert(0, {str(REPO)!r})  # the kernel runs in tmp_path: the repo's tests package\n"
        "import mmlens\nfrom mmlens.viz import load_extensions\n"
        "from mmlens.store.synthetic import example_tree\n"
        "from tests.unit._direct import lens_dataset, with_direct\n"
        "load_extensions()\n"
        "tree = with_direct(example_tree(n_images=12, n_layers=6, n_heads=4, grid=4, n_classes=3, width=8))\n"
        "lens = lens_dataset(dataset='synthetic', n_layers=6, n_heads=4, phrases=['dark', 'night', 'snow', 'sky'])",
        "app = mmlens.explore(tree, lens=lens, direct_images='selected class')\napp",
    ])
    ARTIFACTS.mkdir(exist_ok=True)
    errors = []
    with JupyterLab(tmp_path) as lab, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 3000})
        page.on("pageerror", lambda e: errors.append(str(e)))
        run_all(page, lab.url("direct.ipynb"))
        cell = page.locator(".jp-Cell").nth(1)
        direct = cell.locator(".mmlens-direct-vision").first
        direct.wait_for(timeout=120_000)
        assert cell.locator(".mmlens-lens").count() > 0, "the lens table is not on the page"
        page.wait_for_timeout(2000)
        direct.scroll_into_view_if_needed()
        before = direct.screenshot()
        # another class in the sidebar: Python pushes the new class's map to the page
        select = cell.locator("select").filter(has_text="class_1").first
        select.select_option(index=1)
        page.wait_for_timeout(3000)
        after = direct.screenshot()
        assert _differs(before, after) > 0.01, "the direct-effect map did not follow the class selection"
        cell.locator(".jp-OutputArea").first.screenshot(path=str(ARTIFACTS / "explorer_direct.png"))
        shrink_png(ARTIFACTS / "explorer_direct.png")
        browser.close()
    assert not [e for e in errors if "mmlens" in e or "Bokeh" in e], errors[:5]
