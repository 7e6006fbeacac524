"""The quickstart in a real browser: JupyterLab on localhost, headless Chromium, run all, move the layer slider.

Needs Debian's ``chromium`` and the pip packages ``jupyterlab`` and ``playwright`` (``bash
scripts/install_browser.sh``). Without them the test is skipped, unless ``MMLENS_REQUIRE_BROWSER=1``
(CI), where a missing piece is a failure. Screenshots go to ``test-artifacts/``. The page may only
talk to the local server: any other request is blocked and reported (the plots must render from
inlined resources). ``MMLENS_QUICKSTART`` points the test at another notebook (default:
notebooks/01_quickstart.ipynb).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
NOTEBOOK = Path(os.environ.get("MMLENS_QUICKSTART", REPO / "notebooks" / "01_quickstart.ipynb"))
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
RUN_TIMEOUT_S = 600  # the quickstart takes ~2 min on two free cores; shared CI machines are slower
# Panel re-links its loading-spinner stylesheet from its CDN when a pane updates over the notebook comm,
# past mmlens' inlining hook (holoviz/panel#6759). Offline, only the spinner's look is lost; every other
# request off localhost fails the test.
KNOWN_PANEL_CDN_CSS = ("/dist/css/loading.css",)


def _chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _missing() -> list[str]:
    missing = []
    if _chromium() is None:
        missing.append("Debian's chromium (/usr/bin/chromium)")
    for module, package in (("jupyterlab", "jupyterlab"), ("playwright", "playwright")):
        if importlib.util.find_spec(module) is None:
            missing.append(f"pip package {package}")
    return missing


@pytest.fixture(scope="module")
def browser_parts():
    missing = _missing()
    if missing:
        message = f"browser test needs {', '.join(missing)}: run `bash scripts/install_browser.sh`"
        if os.environ.get("MMLENS_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " (MMLENS_REQUIRE_BROWSER=1: required here)")
        pytest.skip(message)
    return _chromium()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory, browser_parts):
    """A JupyterLab server on 127.0.0.1 serving a scratch folder holding a copy of the notebook."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    # user settings: keep every cell in the DOM (no windowing), no news pop-up
    settings = root / ".jupyterlab-settings"
    for plugin, values in {"notebook-extension/tracker": {"windowingMode": "none"},
                           "apputils-extension/notification": {"fetchNews": "false"}}.items():
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JUPYTER_CONFIG_DIR": str(root / ".jupyter-config"),
           "JUPYTER_RUNTIME_DIR": str(root / ".jupyter-runtime"), "IPYTHONDIR": str(root / ".ipython"),
           "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(root / ".workspaces"),
           "PYTHONUNBUFFERED": "1"}
    log = open(root / "jupyterlab.log", "w")  # noqa: SIM115 (closed in the finaliser below)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=True",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI often run as root
        cmd.append("--ServerApp.allow_root=True")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {proc.returncode}:\n"
                                   f"{(root / 'jupyterlab.log').read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            if time.time() > deadline:
                raise RuntimeError("JupyterLab did not answer within 120 s; see " + str(root / "jupyterlab.log"))
            time.sleep(0.5)
        yield {"base": base, "token": token, "root": root, "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(root / "jupyterlab.log", ARTIFACTS / "quickstart_jupyterlab.log")


# What the page's Bokeh models hold: the explorer's sliders, the outlined cell, the curves' layer line, the
# maps' FG labels and the info line (Bokeh 3 keeps every document in window.Bokeh.documents).
BOKEH_STATE_JS = r"""
() => {
  const models = window.Bokeh.documents.flatMap((d) => Array.from(d.all_models));
  const kind = (m) => m.constructor.__name__;
  const slider = (cls) => models.find((m) => kind(m) === 'Slider' && (m.css_classes || []).includes(cls));
  const marker = models.find((m) => kind(m) === 'ColumnDataSource' && Object.keys(m.data).sort().join() === 'x,y'
                                    && m.data.x.length === 1);
  const info = models.find((m) => kind(m) === 'Div' && (m.css_classes || []).includes('mmlens-info'));
  const fg = models.filter((m) => kind(m) === 'Label' && /^FG /.test(m.text || ''))
                   .map((m) => parseFloat(m.text.slice(3)));
  const spans = models.filter((m) => kind(m) === 'Span').map((m) => m.location);
  return {layer: slider('mmlens-layer')?.value, head: slider('mmlens-head')?.value,
          marker: marker ? [marker.data.x[0], marker.data.y[0]] : null, info: info?.text ?? '', fg, spans};
}
"""


def _png_differs(a: bytes, b: bytes) -> float:
    """Share of pixels that differ between two same-size PNG screenshots."""
    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), dtype=np.int16)
    y = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.int16)
    if x.shape != y.shape:
        return 1.0
    return float((np.abs(x - y).sum(axis=-1) > 30).mean())


def _not_blank(png: bytes) -> bool:
    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    return x.std() > 10.0  # a rendered heatmap/map has structure; an empty canvas is flat


def _wait_until(predicate, timeout: float, what: str, page=None, every: float = 1.0):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            if page is not None:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "quickstart_timeout.png"), full_page=True)
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def test_quickstart_runs_and_the_layer_slider_updates_the_views(jupyterlab, browser_parts):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    base, token = jupyterlab["base"], jupyterlab["token"]
    blocked, errors = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_parts, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1200})

        def local_only(route):
            url = route.request.url
            if url.startswith(base) or url.startswith(("data:", "blob:", "ws://127.0.0.1", "about:")):
                route.continue_()
            else:
                blocked.append(url)
                route.abort()

        page.route("**/*", local_only)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}", wait_until="domcontentloaded")
        page.wait_for_selector(".jp-Notebook", timeout=120_000)
        with contextlib.suppress(Exception):  # JupyterLab may ask which kernel to start: the default one
            page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept").first.click(timeout=10_000)
        with contextlib.suppress(Exception):  # "get notified about official Jupyter news?": no
            page.locator(".jp-toast-button", has_text="No").first.click(timeout=2_000)
        _wait_until(lambda: page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0
                    or "Idle" in (page.locator(".jp-StatusBar").inner_text() or ""), 120, "an idle kernel", page)

        # Run > Run All Cells
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

        handle = page.locator(".mmlens-layer .noUi-handle").first
        _wait_until(lambda: handle.count() > 0 and handle.is_visible(), RUN_TIMEOUT_S,
                    "the explorer's layer slider", page, every=2.0)

        def all_cells_ran() -> bool:  # every code cell shows its execution count, "[12]:"
            prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
            return bool(prompts) and all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts)

        try:
            _wait_until(all_cells_ran, RUN_TIMEOUT_S, "every cell to finish", page, every=2.0)
        except AssertionError as err:
            prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
            raise AssertionError(f"{err}; code cell prompts: {prompts}") from None
        error_outputs = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] "
                                     ".jp-RenderedText:has-text('Traceback')")
        assert error_outputs.count() == 0, "a cell raised:\n" + "\n".join(error_outputs.all_inner_texts())[:3000]

        # the notebook's last explorer cell moved the selection from code: layer 4, head 2, image 3; it printed
        # the foreground attention of that map, which the page must show too
        printed = page.get_by_text(re.compile(r"foreground attention of \[cls\] at layer \d+, head \d+")).first
        said = re.search(r"image (\d+) .*at layer (\d+), head (\d+): \{'full': ([\d.]+), 'zeroshot': ([\d.]+)\}",
                         printed.inner_text(), re.DOTALL)
        assert said, printed.inner_text()
        image, layer, head = (int(said.group(i)) for i in (1, 2, 3))
        fg_printed = sorted(float(said.group(i)) for i in (4, 5))
        cell = page.locator(".jp-Cell", has=page.locator(".mmlens-layer")).first
        overlay = cell.locator(".mmlens-map-full").first
        heatmap = cell.locator(".mmlens-heat").first
        overlay.scroll_into_view_if_needed()
        page.wait_for_timeout(2000)
        page.screenshot(path=str(ARTIFACTS / "quickstart_before.png"), full_page=True)
        shown = page.evaluate(BOKEH_STATE_JS)
        assert (shown["layer"], shown["head"]) == (layer, head), shown  # the sliders followed the code
        assert shown["marker"] == [head, layer], shown  # the outlined cell is the selected one
        assert f"image {image}" in shown["info"], shown
        # the maps drawn are the selected image's at that layer and head: their FG labels are the printed numbers
        np.testing.assert_allclose(sorted(shown["fg"]), fg_printed, atol=1.5e-3)
        overlay_before, heatmap_before = overlay.screenshot(), heatmap.screenshot()
        assert _not_blank(overlay_before) and _not_blank(heatmap_before), "plots did not render (blank canvas)"
        (ARTIFACTS / "quickstart_overlay_before.png").write_bytes(overlay_before)

        handle.focus()
        page.keyboard.press("ArrowLeft" if layer > 0 else "ArrowRight")
        expected = layer - 1 if layer > 0 else layer + 1
        _wait_until(lambda: page.evaluate(BOKEH_STATE_JS)["marker"] == [head, expected], 60,
                    f"the outline to move to layer {expected}", page)

        def changed() -> bool:
            return _png_differs(overlay_before, overlay.screenshot()) > 0.02 and \
                _png_differs(heatmap_before, heatmap.screenshot()) > 0.002

        _wait_until(changed, 60, "the overlay and the heatmap outline to follow the layer slider", page)
        after = page.evaluate(BOKEH_STATE_JS)
        assert after["layer"] == expected and after["spans"] and set(after["spans"]) == {expected}, after
        assert sorted(after["fg"]) != sorted(shown["fg"]), "the FG labels did not follow the layer"
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "quickstart_after.png"), full_page=True)
        (ARTIFACTS / "quickstart_overlay_after.png").write_bytes(overlay.screenshot())
        browser.close()
    (ARTIFACTS / "quickstart_browser.json").write_text(json.dumps({"blocked_requests": blocked,
                                                                  "page_errors": errors}, indent=1))
    unexpected = [u for u in blocked if not any(k in u.split("?")[0] for k in KNOWN_PANEL_CDN_CSS)]
    assert not unexpected, f"the page tried to reach the network (resources must be inlined): {unexpected[:5]}"
    assert not errors, f"JavaScript errors in the page: {errors[:5]}"
