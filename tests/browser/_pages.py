"""Shared pieces of the browser tier: Debian's chromium through Playwright, hostile stores, pixel probes."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: Class names, a dataset name and a path that run as code if they reach HTML unescaped.
HOSTILE = ['<img src=x onerror="window.__pwned=1;alert(1)">', '"><script>window.__pwned=2;alert(2)</script>',
           "*_[md](javascript:alert(3))_*", "<b>bold</b> & co"]


def chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def missing(*modules: str) -> list[str]:
    out = [] if chromium() else ["Debian's chromium (/usr/bin/chromium)"]
    out += [f"pip package {m}" for m in ("playwright", *modules) if importlib.util.find_spec(m) is None]
    return out


def skip_or_fail(parts: list[str]) -> None:
    import pytest

    if parts:
        message = f"browser test needs {', '.join(parts)}: run `bash scripts/install_browser.sh`"
        if os.environ.get("MMLENS_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " (MMLENS_REQUIRE_BROWSER=1: required here)")
        pytest.skip(message)


def hostile_tree(n_images: int = 4):
    """A schema-valid synthetic store whose class names, dataset, paths and provenance hold HTML/JS."""
    from mmlens.store.synthetic import example_tree

    tree = example_tree(n_images=n_images, n_layers=3, n_heads=2, n_classes=4, dataset=HOSTILE[1])
    names = np.array(HOSTILE, dtype=object)
    for group in ("vision", "text", "logits"):
        ds = tree[group].to_dataset()
        if "class" in ds.dims:
            ds = ds.assign_coords(classname=("class", names[: ds.sizes["class"]].astype(str)))
        if "image" in ds.dims:
            labels = ds["label"].values
            ds = ds.assign_coords(classname=("image", names[labels % len(names)].astype(str)))
            if "path" in ds.coords:
                ds = ds.assign_coords(path=("image", [f"{HOSTILE[0]}/{i}.jpg" for i in range(ds.sizes["image"])]))
        tree[group] = ds
    tree.attrs = {**tree.attrs, "model_name": HOSTILE[0], "method": HOSTILE[1], "dataset": HOSTILE[1]}
    return tree


# Collects every canvas under shadow roots (Bokeh 3 draws each plot into its own shadow DOM).
CANVASES_JS = """
() => {
  const out = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.tagName === 'CANVAS' && el.width > 0 && el.height > 0) { out.push(el); }
      if (el.shadowRoot) { walk(el.shadowRoot); }
    }
  };
  walk(document);
  return out.length;
}
"""


def shrink_png(path: Path) -> Path:
    """Re-save a screenshot with a 256-colour palette: small enough to commit, plots still readable."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """A JupyterLab server on 127.0.0.1 serving ``root`` (no windowing, no news), as a context manager."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __enter__(self) -> JupyterLab:
        import contextlib
        import json
        import secrets
        import subprocess
        import sys
        import time
        import urllib.request

        settings = self.root / ".jupyterlab-settings"
        for plugin, values in {"notebook-extension/tracker": {"windowingMode": "none"},
                               "apputils-extension/notification": {"fetchNews": "false"}}.items():
            path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        port, self.token = free_port(), secrets.token_hex(16)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "JUPYTER_CONFIG_DIR": str(self.root / ".jupyter-config"),
               "JUPYTER_RUNTIME_DIR": str(self.root / ".jupyter-runtime"), "IPYTHONDIR": str(self.root / ".ipython"),
               "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(self.root / ".ws"),
               "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.log = open(self.root / "jupyterlab.log", "w")  # noqa: SIM115 (closed in __exit__)
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.root}", "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=True",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--ServerApp.allow_root=True")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited: {(self.root / 'jupyterlab.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.base}/api/status?token={self.token}", timeout=2) as r:
                    if r.status == 200:
                        return self
            if time.time() > deadline:
                raise RuntimeError("JupyterLab did not answer within 120 s")
            time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        import subprocess

        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    def url(self, notebook: str) -> str:
        return f"{self.base}/lab/tree/{notebook}?token={self.token}"


def write_notebook(path: Path, cells: list[str]) -> Path:
    import json

    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                     "source": src} for i, src in enumerate(cells)],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    return path


def run_all(page, url: str, timeout_s: float = 300) -> None:
    """Open a notebook in JupyterLab, run every cell, wait until all have run; raise on a traceback."""
    import contextlib
    import re
    import time

    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook", timeout=120_000)
    with contextlib.suppress(Exception):
        page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept").first.click(timeout=8_000)
    deadline = time.time() + 120
    while not (page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0
               or "Idle" in (page.locator(".jp-StatusBar").inner_text() or "")):
        if time.time() > deadline:
            raise AssertionError("no idle kernel after 120 s")
        time.sleep(0.5)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] "
                          ".jp-RenderedText:has-text('Traceback')")
    deadline = time.time() + timeout_s
    while True:
        prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
        if prompts and all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts):
            break
        if errors.count():  # "Run All" stops at a cell that raised: the cells after it never run
            break
        if time.time() > deadline:
            raise AssertionError(f"cells did not finish in {timeout_s:.0f} s: {prompts}")
        time.sleep(1.0)
    if errors.count():
        raise AssertionError("a cell raised:\n" + "\n".join(errors.all_inner_texts())[:3000])


# A requestAnimationFrame probe: hashes every canvas (through shadow roots) and the explorer's info line
# each frame, from the input event (keydown / pointerdown, captured) until nothing has changed for
# `quiet` ms; the latency is the time of the last change after the event.
PROBE_JS = r"""
(quiet) => new Promise((resolve) => {
  const collect = () => {
    const out = [];
    const walk = (root) => {
      for (const el of root.querySelectorAll('*')) {
        if (el.tagName === 'CANVAS' && el.width > 0 && el.height > 0) { out.push(el); }
        if (el.shadowRoot) { walk(el.shadowRoot); }
      }
    };
    walk(document);
    return out;
  };
  const hash = (c) => {
    try {
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let h = 0;
      for (let i = 0; i < d.length; i += 4) { h = (h * 31 + d[i] + 7 * d[i + 1] + 13 * d[i + 2]) | 0; }
      return h;
    } catch (e) { return 0; }
  };
  let t0 = null;
  const mark = () => { if (t0 === null) { t0 = performance.now(); } };
  document.addEventListener('keydown', mark, {capture: true, once: true});
  document.addEventListener('pointerdown', mark, {capture: true, once: true});
  let canvases = collect();
  let before = canvases.map(hash);
  let last = null, changed = new Set();
  const started = performance.now();
  const frame = () => {
    const now = performance.now();
    const fresh = collect();
    if (fresh.length !== canvases.length) { canvases = fresh; before = canvases.map(hash); last = now; }
    else if (t0 !== null) {
      for (let i = 0; i < canvases.length; i++) {
        const h = hash(canvases[i]);
        if (h !== before[i]) { before[i] = h; last = now; changed.add(i); }
      }
    }
    // before the first change, wait up to 10 s (a kernel round trip under load); after it, `quiet` ms
    const done = t0 !== null && (last === null ? now - t0 > 10000 : now - last > quiet);
    if (done || now - started > 15000) {
      resolve({latency: last === null || t0 === null ? null : last - t0, changed: changed.size,
               canvases: canvases.length});
      return;
    }
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
})
"""


# The right edge of everything a reader sees inside an element (canvases, form controls, tables, text; through
# shadow roots), against the element's own: content that sticks out is cut off or needs a horizontal scroll.
# Empty boxes (Bokeh's annotation overlays, layout wrappers) do not count: they draw nothing.
OVERFLOW_JS = r"""
(area) => {
  const box = area.getBoundingClientRect();
  const drawn = new Set(['CANVAS', 'IMG', 'INPUT', 'SELECT', 'BUTTON', 'TABLE', 'svg']);
  const hasText = (el) => Array.from(el.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim());
  let right = box.left, worst = '';
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (drawn.has(el.tagName) || hasText(el)) {
        const r = el.getBoundingClientRect();
        const st = getComputedStyle(el);
        if (r.width > 0 && r.height > 0 && r.right > right && st.visibility !== 'hidden' && st.display !== 'none') {
          right = r.right;
          worst = el.tagName + ' ' + (el.textContent || '').trim().slice(0, 40);
        }
      }
      if (el.shadowRoot) { walk(el.shadowRoot); }
    }
  };
  walk(area);
  return {area_left: box.left, area_right: box.right, right: right, worst: worst};
}
"""
