"""Reports in the real browser: hostile class names stay text, the views render, screenshots to look at."""

from __future__ import annotations

import pytest

from tests.browser._pages import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    HOSTILE,
    chromium,
    hostile_tree,
    missing,
    shrink_png,
    skip_or_fail,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    skip_or_fail(missing())
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser, path, dialogs, errors, width=1400):
    page = browser.new_page(viewport={"width": width, "height": 1000})
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(str(e)))
    blocked = []

    def local_only(route):
        url = route.request.url
        if url.startswith(("file:", "data:", "blob:", "about:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    page.route("**/*", local_only)
    page.goto(path.as_uri(), wait_until="load")
    page.wait_for_selector(".mmlens-info", timeout=60_000)
    page.wait_for_timeout(1500)
    return page, blocked


def test_hostile_class_names_never_run_as_code(browser, tmp_path):
    from mmlens.viz.report import write_report

    out = write_report(hostile_tree(), tmp_path / "hostile.html", images=3)
    dialogs, errors = [], []
    page, blocked = _open(browser, out, dialogs, errors)
    # switch the embedded image (its info line is rebuilt in the page) and move the layer slider
    page.locator(".mmlens-image select").select_option(index=1)
    page.wait_for_timeout(300)
    page.locator(".mmlens-image select").select_option(index=2)
    page.locator(".mmlens-layer .noUi-handle").first.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_timeout(800)
    assert dialogs == [], f"a dialog fired: {dialogs}"
    assert page.evaluate("window.__pwned") is None, "an injected script ran"
    # the names are shown as typed: text, not markup
    info = page.evaluate("() => document.querySelector('.mmlens-info')?.shadowRoot?.textContent "
                         "?? Array.from(document.querySelectorAll('*')).map(e => e.shadowRoot)"
                         ".filter(Boolean).map(r => r.querySelector('.mmlens-info')?.shadowRoot?.textContent)"
                         ".filter(Boolean).join(' ')")
    assert any(name in info for name in HOSTILE), f"the class name is not shown as text: {info!r}"
    page.locator(".mmlens-info").first.scroll_into_view_if_needed()  # the line with the hostile class name
    page.screenshot(path=str(ARTIFACTS / "report_hostile.png"), full_page=False)
    shrink_png(ARTIFACTS / "report_hostile.png")
    assert page.get_by_text('"><script>window.__pwned=2;alert(2)</script>').count() > 0
    assert page.locator("img[src=x]").count() == 0
    assert not blocked, f"the report reached for the network: {blocked[:3]}"
    assert not errors, f"JavaScript errors: {errors[:3]}"
    page.close()


def test_report_screenshots(browser, tmp_path):
    """The toy report at 1400 px and 1000 px (committed under test-artifacts/ to look at)."""
    from mmlens.store.synthetic import example_tree
    from mmlens.viz.report import write_report

    out = write_report(example_tree(n_images=4, n_layers=6, n_heads=4, grid=7, n_classes=8, prompt_depth=3),
                       tmp_path / "toy.html", images=2)
    ARTIFACTS.mkdir(exist_ok=True)
    for width in (1400, 1000):
        dialogs, errors = [], []
        page, blocked = _open(browser, out, dialogs, errors, width=width)
        scroll = page.evaluate("document.documentElement.scrollWidth")
        assert scroll <= width, f"the report is {scroll} px wide in a {width} px window"
        page.screenshot(path=str(ARTIFACTS / f"report_{width}.png"), full_page=True)
        shrink_png(ARTIFACTS / f"report_{width}.png")
        assert not errors and not blocked
        page.close()
