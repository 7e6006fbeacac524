"""The standalone HTML report of a reproduce run: findings, tables and embedded PNG figures in one file."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

__all__ = ["write_html_report", "markdown_to_html"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; }
th { background: #f3f3f3; }
code { background: #f5f5f5; padding: 0 3px; }
pre { background: #f5f5f5; padding: 0.6em; overflow-x: auto; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; }
figure { margin: 1em 0 2em 0; }
figcaption { font-size: 0.9em; color: #555; }
blockquote { border-left: 4px solid #e0a040; margin: 0; padding: 0.2em 1em; background: #fff8ec; }
nav a { margin-right: 1em; }
"""


def markdown_to_html(text: str) -> str:
    """Markdown (tables, lists, code) to HTML with the ``markdown`` package (a Panel dependency); else ``<pre>``."""
    try:
        import markdown
    except ImportError:  # pragma: no cover - panel depends on markdown
        return f"<pre>{html.escape(text)}</pre>"
    return markdown.markdown(text, extensions=["tables", "fenced_code"])


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)} (<code>figures/{html.escape(path.name)}</code>)</figcaption></figure>")


def write_html_report(files: dict[str, Any], *, title: str = "mmlens reproduce") -> Path:
    """Write ``report.html``: findings, figures (embedded), accuracy and statistics tables; no network needed.

    Parameters
    ----------
    files
        The output folder's files (:func:`mmlens.experiments._pipeline.layout`): ``findings``,
        ``figures``, ``accuracy_md``, ``statistics_md`` and ``report`` (where to write).

    Returns
    -------
    pathlib.Path
    """
    from mmlens.experiments._figures import FIGURES

    out = Path(files["report"])
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body>",
             "<nav><a href='#findings'>Findings</a><a href='#figures'>Figures</a>"
             "<a href='#accuracy'>Accuracy</a><a href='#statistics'>Statistics</a></nav>",
             f"<h1>{html.escape(title)}</h1>"]
    explorer = Path(files.get("explorer", ""))
    if explorer.name and explorer.is_file():
        parts.append(f"<p>Interactive views of the traces (layer × head maps, attention on images): "
                     f"<a href='{html.escape(explorer.name)}'>{html.escape(explorer.name)}</a>.</p>")
    findings = Path(files["findings"])
    parts.append("<section id='findings'>")
    parts.append(markdown_to_html(findings.read_text()) if findings.is_file() else "<p>No findings yet.</p>")
    parts.append("</section><section id='figures'><h1>Figures</h1>")
    folder = Path(files["figures"])
    for name, caption in FIGURES.items():
        if (folder / name).is_file():
            parts.append(_figure(folder / name, caption))
    parts.append("</section>")
    for anchor, key in (("accuracy", "accuracy_md"), ("statistics", "statistics_md")):
        path = Path(files[key])
        parts.append(f"<section id='{anchor}'>")
        parts.append(markdown_to_html(path.read_text()) if path.is_file() else f"<p>{path.name} missing.</p>")
        parts.append("</section>")
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(out)
    return out
