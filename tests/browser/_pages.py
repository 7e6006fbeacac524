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
