"""What the prompts learn: β's direct effect on the margin (layer × head, per tower) and the text lens on the bias.

Two views for the explorer (:mod:`mmlens.viz.board`, :mod:`mmlens.viz.layout`) and the report
(:mod:`mmlens.viz.report`). Their numbers come from :mod:`mmlens.stats` (``direct_effects``,
``bias_margin_effect``) through :class:`~mmlens.viz.slices.StoreSlices`, and from the lens result of
``mmlens.lens`` / ``mmlens lens --out lens.nc`` (docs/explorer.md, "What the prompts learn"); nothing is
computed here. Text from data (phrases, class names, dataset names) is escaped before it reaches HTML.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from mmlens.viz._text import esc, md
from mmlens.viz.slices import DIRECT_MISSING

if TYPE_CHECKING:
    from mmlens.viz.board import Board
    from mmlens.viz.explorer import Explorer

__all__ = [
    "DIRECT_MISSING",
    "LENS_KINDS",
    "LENS_MISSING",
    "CAPTIONS",
    "read_lenses",
    "lens_for",
    "lens_table",
    "lens_table_html",
    "lens_markdown",
    "lens_words",
    "section_panes",
]

#: Direction kinds of a lens result (`mmlens.lens`): per layer (β summed over heads), per head, per prompt token.
LENS_KINDS: tuple[str, ...] = ("layer_bias", "head_bias", "prompt_value")
LENS_MISSING = ("no text lens given: compute one with `mmlens lens ... --out lens.nc` (or `mmlens.lens(model, "
                "images)`) and open the explorer with `explore(store, lens=...)`")
CAPTIONS = {
    "direct": ("β's direct effect on the correct-class margin (logit of the image's class minus the mean of the "
               "others), per layer (rows) and head (columns), mean over {over}: what β adds to the margin through "
               "the frozen final LayerNorm (its scale frozen at the actual readout) and projection, not counting "
               "what later blocks make of it (a direct effect is not a total effect; docs/statistics.md). Red: β "
               "pushes towards the correct class. The hover gives the 95 % interval over images "
               "(mmlens.stats.bias_margin_effect) for variant full over all images, and the head's top phrases "
               "when a text lens is given. Click a cell to select its layer and head."),
    "lens": ("Text lens: the dataset-mean β of each layer (summed over heads), mapped into the joint space through "
             "the same linearised readout, against a vocabulary of text embeddings (class names, descriptive "
             "phrases, other datasets' class names). Top phrases with their cosine; control: the 95th percentile "
             "of the top-1 cosine over shuffled directions, and p the share of shuffled directions that match the "
             "observed top-1 cosine. <b>Bold</b>: a cosine above the control."),
}
_KIND_SHORT = {"injected": "inj", "carried": "car"}


# ----------------------------------------------------------------------------------------------
# the lens result (mmlens.lens): read, pick, tabulate
# ----------------------------------------------------------------------------------------------


def read_lenses(lens: Any) -> list[xr.Dataset]:
    """Lens results from a Dataset, a netCDF path, or a list / ``{name: ...}`` mapping of those.

    Parameters
    ----------
    lens
        ``None`` (no lens), an ``xarray.Dataset`` as :func:`mmlens.lens` returns it, the path of the
        ``lens.nc`` that ``mmlens lens --out`` writes, or several of them (one per dataset of a study).

    Returns
    -------
    list of xarray.Dataset

    Examples
    --------
    >>> read_lenses(None)
    []
    """
    if lens is None:
        return []
    if isinstance(lens, xr.Dataset):
        items = [lens]
    elif isinstance(lens, (str, os.PathLike)):
        items = [lens]
    elif isinstance(lens, Mapping):
        items = list(lens.values())
    elif isinstance(lens, (list, tuple)):
        items = list(lens)
    else:
        raise TypeError(f"lens: expected an xarray.Dataset, a path to lens.nc or a list/mapping of them, found "
                        f"{type(lens).__name__}; pass what mmlens.lens returns or `mmlens lens --out` writes")
    out = []
    for item in items:
        ds = item if isinstance(item, xr.Dataset) else xr.load_dataset(item)
        missing = [v for v in ("phrase", "cosine", "tower", "kind", "layer") if v not in ds.variables]
        if missing:
            raise ValueError(f"lens: expected a result of mmlens.lens with phrase, cosine and the direction coords "
                             f"tower, kind, layer; this one lacks {missing}. Re-run `mmlens lens ... --out lens.nc`")
        out.append(ds)
    return out


def lens_for(lenses: list[xr.Dataset], dataset: str, method: str | None = None) -> xr.Dataset | None:
    """The lens of ``dataset`` (root attr ``dataset``) and, when the lens names one, of ``method``."""
    for ds in lenses:
        if str(ds.attrs.get("dataset", dataset)) != str(dataset):
            continue
        if method is not None and "method" in ds.attrs and str(ds.attrs["method"]) != str(method):
            continue
        return ds
    if len(lenses) == 1 and "dataset" not in lenses[0].attrs:
        return lenses[0]
    return None


def lens_table(lens: xr.Dataset, *, kind: str = "layer_bias", tower: str | None = None,
               layer: int | None = None) -> Any:
    """One row per lens direction of ``kind``: its top phrases, their cosines and the shuffled control.

    Parameters
    ----------
    lens
        A lens result (`mmlens.lens`).
    kind
        ``layer_bias``, ``head_bias`` or ``prompt_value``.
    tower, layer
        Keep only these (``None``: all).

    Returns
    -------
    pandas.DataFrame
        Columns ``tower, layer, head, prompt_token, phrases, cosines, sources, control_cosine, control_p``
        (lists in rank order), sorted by tower (vision first) and layer.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> lens = xr.Dataset({"phrase": (("direction", "rank"), [["dark", "night"]]),
    ...                    "cosine": (("direction", "rank"), [[0.4, 0.3]])},
    ...                   coords={"tower": ("direction", ["vision"]), "kind": ("direction", ["layer_bias"]),
    ...                           "layer": ("direction", [2])})
    >>> row = lens_table(lens).iloc[0]
    >>> int(row["layer"]), row["phrases"]
    (2, ['dark', 'night'])
    """
    import pandas as pd

    if kind not in LENS_KINDS:
        raise ValueError(f"kind must be one of {list(LENS_KINDS)}, found {kind!r}")
    keep = np.asarray(lens["kind"].values).astype(str) == kind
    if tower is not None:
        keep &= np.asarray(lens["tower"].values).astype(str) == tower
    if layer is not None:
        keep &= np.asarray(lens["layer"].values).astype(int) == int(layer)
    sel = lens.isel(direction=np.flatnonzero(keep))

    def col(name: str, default: Any) -> np.ndarray:
        n = sel.sizes["direction"]
        return np.asarray(sel[name].values) if name in sel.variables else np.full(n, default)

    rank_order = np.argsort(np.asarray(sel["rank"].values)) if "rank" in sel.coords else slice(None)
    phrases = np.asarray(sel["phrase"].values)[:, rank_order]
    cosines = np.asarray(sel["cosine"].values, float)[:, rank_order]
    sources = (np.asarray(sel["source"].values)[:, rank_order] if "source" in sel.variables
               else np.full(phrases.shape, ""))
    table = pd.DataFrame({
        "tower": col("tower", "").astype(str), "layer": col("layer", -1).astype(int),
        "head": col("head", -1).astype(int), "prompt_token": col("prompt_token", -1).astype(int),
        "phrases": [[str(p) for p in row] for row in phrases], "cosines": [list(map(float, r)) for r in cosines],
        "sources": [[str(s) for s in row] for row in sources],
        "control_cosine": col("control_cosine", np.nan).astype(float),
        "control_p": col("control_p", np.nan).astype(float),
    })
    order = {"vision": 0, "text": 1}
    table["_t"] = table["tower"].map(lambda t: order.get(t, 2))
    return table.sort_values(["_t", "layer", "head", "prompt_token"]).drop(columns="_t").reset_index(drop=True)


def lens_table_html(table: Any, *, kinds: Mapping[str, Mapping[int, str]] | None = None, top: int = 3) -> str:
    """The lens table as HTML (every piece of text from data escaped).

    Cosines above the direction's shuffled control are bold.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"tower": ["vision"], "layer": [0], "head": [-1], "prompt_token": [-1],
    ...                   "phrases": [["<b>x</b>"]], "cosines": [[0.5]], "sources": [["phrase"]],
    ...                   "control_cosine": [0.2], "control_p": [0.01]})
    >>> "&lt;b&gt;x&lt;/b&gt;" in lens_table_html(t)
    True
    """
    kinds = kinds or {}
    head = ("<tr><th>tower</th><th>layer</th>" + ("<th>head</th>" if (table["head"] >= 0).any() else "")
            + ("<th>token</th>" if (table["prompt_token"] >= 0).any() else "")
            + f"<th>top {top} phrases (cosine)</th><th>control</th><th>p</th></tr>")
    rows = []
    for r in table.itertuples(index=False):
        words = []
        for phrase, cosine in list(zip(r.phrases, r.cosines))[:top]:
            above = np.isfinite(r.control_cosine) and cosine > r.control_cosine
            text = f"{esc(phrase)} ({cosine:.2f})"
            words.append(f"<b>{text}</b>" if above else text)
        kind = _KIND_SHORT.get(kinds.get(r.tower, {}).get(int(r.layer), ""), "")
        rows.append(
            f"<tr><td>{esc(r.tower)}</td><td>{int(r.layer)} {kind}</td>"
            + (f"<td>{int(r.head)}</td>" if (table["head"] >= 0).any() else "")
            + (f"<td>{int(r.prompt_token)}</td>" if (table["prompt_token"] >= 0).any() else "")
            + f"<td>{'; '.join(words)}</td><td>{_num(r.control_cosine)}</td><td>{_num(r.control_p)}</td></tr>")
    return ('<table class="mmlens-lens" style="font-size:12px;border-collapse:collapse">'
            f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>")


def lens_markdown(lens: xr.Dataset, *, kind: str = "layer_bias", top: int = 3) -> str:
    """The lens table as Markdown (phrases escaped), e.g. for the findings page's "What the prompts learn".

    Examples
    --------
    >>> import xarray as xr
    >>> lens = xr.Dataset({"phrase": (("direction", "rank"), [["seen from *above*"]]),
    ...                    "cosine": (("direction", "rank"), [[0.41]]),
    ...                    "control_cosine": ("direction", [0.2]), "control_p": ("direction", [0.0])},
    ...                   coords={"tower": ("direction", ["vision"]), "kind": ("direction", ["layer_bias"]),
    ...                           "layer": ("direction", [1])}, attrs={"dataset": "satellite"})
    >>> print(lens_markdown(lens))
    | tower | layer | top 3 phrases (cosine) | control (95th pct.) | p |
    |---|---|---|---|---|
    | vision | 1 | seen from \\*above\\* (0.41) | 0.20 | 0.00 |
    """
    table = lens_table(lens, kind=kind)
    lines = [f"| tower | layer | top {top} phrases (cosine) | control (95th pct.) | p |", "|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        words = "; ".join(f"{md(p)} ({c:.2f})" for p, c in list(zip(r.phrases, r.cosines))[:top])
        lines.append(f"| {md(r.tower)} | {int(r.layer)} | {words} | {_num(r.control_cosine)} | {_num(r.control_p)} |")
    return "\n".join(lines)


def _num(value: float) -> str:
    return f"{value:.2f}" if np.isfinite(value) else "–"


def lens_words(app: Explorer, tower: str, top: int = 3) -> dict[tuple[int, int], str]:
    """``{(layer, head): "dark (0.41); night (0.33)"}`` from the selected dataset's lens (per head; per layer
    under head -1), for the direct map's hover. Bokeh's hover shows a field as text, never as HTML."""
    out: dict[tuple[int, int], str] = {}
    for kind in ("layer_bias", "head_bias"):
        table = app.lens_data(kind)
        if table is None or table.empty:
            continue
        for r in table[table["tower"] == tower].itertuples(index=False):
            out[(int(r.layer), int(r.head) if kind == "head_bias" else -1)] = "; ".join(
                f"{p} ({c:.2f})" for p, c in list(zip(r.phrases, r.cosines))[:top])
    return out


# ----------------------------------------------------------------------------------------------
# the section, for the explorer's and the report's layout
# ----------------------------------------------------------------------------------------------


def section_panes(app: Explorer, board: Board, *, caption: Any) -> list[Any]:
    """The "What the prompts learn" section: direct-effects heatmaps and the lens table, or short notes."""
    import panel as pn

    panes: list[Any] = [pn.pane.Markdown(f"#### What the prompts learn: β's direct effect on the margin "
                                         f"(variant *{md(app.state.variant)}*) and the text lens")]
    if board.direct_figures:
        panes.append(pn.FlexBox(*[pn.pane.Bokeh(f) for f in board.direct_figures], sizing_mode="stretch_width"))
        panes.append(caption(CAPTIONS["direct"].format(over="the images selected in the sidebar ("
                                                       "“direct effects over”)")))
    if board.direct_note:  # our own words (the flag to re-trace with stays a code span); data parts escaped
        note = board.direct_note if board.direct_note == DIRECT_MISSING else md(board.direct_note)
        panes.append(pn.pane.Markdown(f"*{note}*", css_classes=["mmlens-direct-note"]))
    html, note = app.lens_html()
    if html is not None:
        panes.append(pn.pane.HTML(html, sizing_mode="stretch_width", css_classes=["mmlens-lens-table"]))
        panes.append(caption(CAPTIONS["lens"]))
    if note:
        panes.append(pn.pane.Markdown(f"*{md(note)}*"))
    return panes
