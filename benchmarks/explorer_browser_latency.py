"""How fast the explorer answers in the real browser: input event to changed pixels, notebook vs report.

Opens the explorer in JupyterLab (headless Debian chromium driven by Playwright, the kernel on the
same machine) and the standalone report of the same store, and for each interaction kind
(``layer`` key, ``head`` key, ``image`` key on the sliders, ``click`` on a heatmap cell) runs
``--trials`` trials. Each trial starts a ``requestAnimationFrame`` probe in the page that hashes
every canvas each frame; the input event (keydown / pointerdown, captured) starts the clock, and
the latency is the time of the last canvas change after it, i.e. when *every* affected view has
redrawn (the probe waits ``--quiet`` ms without change before it stops). Prints median and p90 per
kind, and the notebook / report ratio of medians.

Stores: ``--store toy`` (default, a synthetic run of 12 layers x 12 heads x 14x14 patches, 64
images) or ``--store PATH`` (e.g. the 11-dataset study that ``benchmarks/explorer_latency.py``
builds; the explorer opens it lazily). The report has no image slider (its images are embedded and
switched with a select), so its ``image`` row switches between two embedded images. The notebook's
``image`` row steps the slider back and forth; the page holds the neighbouring images
(``Board.NEIGHBOURS``), so these steps are drawn in the page like the report's. The load average
is printed with the numbers.

Run: python benchmarks/explorer_browser_latency.py [--trials 20] [--store PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.browser._pages import (  # noqa: E402
    CHROMIUM_ARGS,
    PROBE_JS,
    JupyterLab,
    chromium,
    run_all,
    write_notebook,
)


def toy_store(path: Path) -> Path:
    from mmlens.store.io import to_zarr
    from mmlens.store.synthetic import example_tree

    if not path.exists():
        to_zarr(example_tree(n_images=64, n_layers=12, n_heads=12, grid=14, n_classes=20, prompt_depth=9,
                             with_vectors=False), path)
    return path


def probe(page, press, quiet_ms: int) -> dict:
    page.evaluate(f"() => {{ window.__probe = ({PROBE_JS})({quiet_ms}); return 1; }}")
    page.wait_for_timeout(50)
    press()
    return page.evaluate("window.__probe")


def trials(page, kind: str, n: int, quiet_ms: int, *, image_control: str) -> list[float]:
    out = []
    handles = {"layer": page.locator(".mmlens-layer .noUi-handle").first,
               "head": page.locator(".mmlens-head .noUi-handle").first}
    for k in range(n):
        key = "ArrowRight" if k % 2 == 0 else "ArrowLeft"
        if kind in ("layer", "head"):
            handles[kind].focus()
            press = lambda key=key, kind=kind: handles[kind].press(key)  # noqa: E731
        elif kind == "image":
            if image_control == "slider":
                handle = page.locator(".mmlens-image .noUi-handle").first
                handle.focus()
                press = lambda key=key, handle=handle: handle.press(key)  # noqa: E731
            else:
                select = page.locator(".mmlens-image select").first
                select.focus()
                press = lambda key=key, select=select: select.press("ArrowDown" if key == "ArrowRight" else "ArrowUp")  # noqa: E731
        else:  # a click on a heatmap cell: alternate between two cells of the first heatmap
            heat = page.locator(".mmlens-heat").first
            heat.scroll_into_view_if_needed()
            box = heat.bounding_box()
            x = box["x"] + box["width"] * (0.35 if k % 2 == 0 else 0.55)
            y = box["y"] + box["height"] * (0.4 if k % 2 == 0 else 0.6)
            press = lambda x=x, y=y: page.mouse.click(x, y)  # noqa: E731
        result = probe(page, press, quiet_ms)
        if result["latency"] is not None:
            out.append(result["latency"])
        page.wait_for_timeout(150)
    return out


def _load() -> str:
    """The machine's load average: the numbers mean little without it on a shared machine."""
    import os

    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def summary(values: list[float]) -> str:
    if not values:
        return "   no change seen"
    return f"{statistics.median(values):7.0f} {np.percentile(values, 90):7.0f}   (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--store", default="toy", help="'toy' or the path of a store")
    parser.add_argument("--quiet", type=int, default=400, help="ms without a canvas change that end a trial")
    parser.add_argument("--kinds", default="layer,head,image,click")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from mmlens.viz.report import write_report

    work = Path(tempfile.mkdtemp(prefix="mmlens_browser_latency_"))
    store = toy_store(work / "toy.zarr") if args.store == "toy" else Path(args.store).resolve()
    report = write_report(store, work / "report.html", images=4, max_datasets=1)
    write_notebook(work / "explorer.ipynb", [
        "import mmlens\nfrom mmlens.viz import load_extensions\nload_extensions()",
        f"app = mmlens.explore({str(store)!r})\napp",
    ])
    kinds = args.kinds.split(",")
    load_before = _load()
    results: dict[tuple[str, str], list[float]] = {}
    with JupyterLab(work) as lab, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        start = time.perf_counter()
        run_all(page, lab.url("explorer.ipynb"))
        page.wait_for_selector(".mmlens-layer .noUi-handle", timeout=120_000)
        page.wait_for_timeout(3000)
        print(f"notebook ready in {time.perf_counter() - start:.0f} s")
        rpage = browser.new_page(viewport={"width": 1400, "height": 1000})
        rpage.goto(report.as_uri(), wait_until="load")
        rpage.wait_for_selector(".mmlens-layer .noUi-handle", timeout=60_000)
        rpage.wait_for_timeout(2000)
        for kind in kinds:  # interleave notebook and report per kind: machine load hits both alike
            for half in range(2):
                n = args.trials // 2 + (args.trials % 2 if half == 0 else 0)
                page.bring_to_front()
                results.setdefault(("notebook", kind), []).extend(
                    trials(page, kind, n, args.quiet, image_control="slider"))
                rpage.bring_to_front()
                results.setdefault(("report", kind), []).extend(
                    trials(rpage, kind, n, args.quiet, image_control="select"))
        page.screenshot(path=str(work / "explorer.png"), full_page=True)
        browser.close()
    print(f"\nstore: {store}; {args.trials} trials per kind; input event -> last changed canvas pixel (ms)")
    print(f"machine load (1/5/15 min) before: {load_before}, after: {_load()}\n")
    print(f"{'kind':<7} {'notebook median':>16} {'p90':>6}   {'report median':>14} {'p90':>6}   ratio of medians")
    for kind in kinds:
        nb, rp = results.get(("notebook", kind), []), results.get(("report", kind), [])
        ratio = statistics.median(nb) / statistics.median(rp) if nb and rp else float("nan")
        print(f"{kind:<7} {summary(nb):>28}   {summary(rp):>26}   {ratio:5.2f}")
    (work / "latency.json").write_text(json.dumps({f"{a}/{b}": v for (a, b), v in results.items()}))
    print(f"\nraw numbers and a screenshot in {work}")


if __name__ == "__main__":
    main()
