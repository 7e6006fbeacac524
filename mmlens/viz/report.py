"""A standalone HTML report of a trace store: embedded plots and slider states, no kernel or network needed."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from mmlens.store import schema
from mmlens.viz.slices import HEAD_MEASURES, StudyView, available

__all__ = ["build_report", "write_report", "what_the_prompts_learn"]


def build_report(
    store: Any,
    *,
    images: int = 2,
    max_datasets: int = 12,
    max_classes: int = 50,
    data_root: str | os.PathLike | None = None,
    pictures: Any = None,
    fg_max_images: int | None = 256,
    lens: Any = None,
):
    """The report's Panel layout: provenance, heatmaps, curves, images, text roles, what the prompts learn, accuracy.

    The selectors work in the saved page without a kernel: every frame they can show is
    computed here and embedded (see :func:`mmlens.viz._static.frame_switcher`). Frames:
    heatmaps over (dataset, variant) for the first ``max_datasets`` datasets; attention maps over
    (layer, head) for ``images`` images of the first dataset; EOT attention over (layer, head)
    for the first ``max_classes`` classes. The page size is bounded by these numbers.

    Parameters
    ----------
    store
        A store path or ``xarray.DataTree`` (see :func:`mmlens.viz.slices.as_tree`).
    images
        Images of the first dataset whose attention maps are embedded.
    max_datasets
        Datasets embedded in the heatmap selector.
    max_classes
        Classes shown in the EOT-attention map.
    data_root
        Where relative image paths live (pictures under the maps), optional.
    pictures
        Pictures that are not files (see :class:`mmlens.viz.explorer.Explorer`), optional.
    fg_max_images
        Images averaged by the foreground-attention measures.
    lens
        Text-lens results (``mmlens.lens``; a Dataset, a ``lens.nc`` path, or a list of them, one per
        dataset): the "What the prompts learn" section shows each embedded dataset's lens table. β's
        direct effects are shown when the store has a ``direct`` group (``mmlens trace --direct-effects``).

    Returns
    -------
    panel.layout.Column
    """
    import panel as pn

    from mmlens.viz._static import frame_switcher
    from mmlens.viz._text import md
    from mmlens.viz.board import Board
    from mmlens.viz.explorer import Explorer
    from mmlens.viz.layout import main_panes

    view = store if isinstance(store, StudyView) else StudyView(store, fg_max_images=fg_max_images)
    app = Explorer({view.method: view}, data_root=data_root, pictures=pictures, lens=lens)
    state = app.state
    datasets = view.datasets[:max_datasets]
    seed = view.seeds[0]
    state.param.update(dataset=datasets[0], seed=seed)
    board = Board(app, live=False, images=view.images[:max(1, images)])
    controls = [m for m in (board.layer, board.head) if m is not None]
    summary, provenance = _provenance_markdown(view)
    parts: list[Any] = [pn.pane.Markdown(summary, sizing_mode="stretch_width")]
    parts.append(pn.Row(*[pn.pane.Bokeh(c) for c in controls]))
    parts += main_panes(app, board, report=True)[1:]  # the summary above already names the run

    # every dataset and variant of the heatmaps, switched in the page (the board shows the first run)
    if len(datasets) > 1 or len(view.variants) > 1:
        parts.append(pn.pane.Markdown("## Layer × head maps of every dataset and variant"))
        for tower in ("vision", "text"):
            if tower not in view.groups:
                continue
            measures = available(view, tower, HEAD_MEASURES)
            if not measures:
                continue
            frames = {}
            for dataset in datasets:
                for variant in view.variants:
                    state.param.update(dataset=dataset, seed=seed, variant=variant)
                    frames[(dataset, variant)] = tuple(app.plot_heatmap(tower, m) for m in measures)
            parts.append(pn.pane.Bokeh(frame_switcher(frames, ["dataset", "variant"], ncols=3)))
    parts += what_the_prompts_learn(app, datasets, seed)
    # the provenance table last: the views first, where a reader looks
    parts.append(pn.pane.Markdown(provenance, sizing_mode="stretch_width"))
    del md
    return pn.Column(*parts, name="mmlens report", sizing_mode="stretch_width", max_width=1400)


def what_the_prompts_learn(app: Any, datasets: list[str], seed: int) -> list[Any]:
    """The report's "What the prompts learn" section over every embedded dataset (the board shows the first).

    β's direct effect on the margin for every (dataset, variant), switched in the page, when the store
    has a ``direct`` group; the lens table of every dataset that has a lens. Empty when there is neither
    (the board's section already says how to get them).
    """
    import panel as pn

    from mmlens.viz._static import frame_switcher
    from mmlens.viz._text import md
    from mmlens.viz.direct import CAPTIONS, lens_for, lens_table, lens_table_html

    view, state = app.view, app.state
    parts: list[Any] = []
    several = len(datasets) > 1 or len(view.variants) > 1
    if "direct" in view.groups and several:
        frames = {}
        for dataset in datasets:
            for variant in view.variants:
                state.param.update(dataset=dataset, seed=seed, variant=variant, direct_images="all images")
                frames[(dataset, variant)] = tuple(app.plot_direct(t) for t in ("vision", "text"))
        parts.append(pn.pane.Markdown("## What the prompts learn: β's direct effect on the margin, every dataset "
                                      "and variant"))
        parts.append(pn.pane.Bokeh(frame_switcher(frames, ["dataset", "variant"], ncols=2)))
        parts.append(pn.pane.HTML(f'<div style="color:#555;font-size:12px">'
                                  f'{CAPTIONS["direct"].format(over="all images of the dataset")}</div>'))
    lenses = [(d, lens_for(app.lenses, d, view.method)) for d in datasets[1:]]
    lenses = [(d, lens) for d, lens in lenses if lens is not None]
    if lenses:  # the first dataset's table is in the board's section above
        parts.append(pn.pane.Markdown("## What the prompts learn: the text lens of every dataset"))
        kinds = {t: view.layer_kinds(t) for t in ("vision", "text")}
        for dataset, lens in lenses:
            parts.append(pn.pane.Markdown(f"**{md(dataset)}**"))
            parts.append(pn.pane.HTML(lens_table_html(lens_table(lens), kinds=kinds), sizing_mode="stretch_width"))
    return parts


def plots_role_heatmap(roles: Any, names: list[str], title: str) -> Any:
    """The class x role map of one frame (thin wrapper so the report reads as a list of sections)."""
    from mmlens.viz import plots

    return plots.role_heatmap(roles, names, title=title)


def write_report(store: Any, out: str | os.PathLike, *, title: str = "mmlens report", **kwargs: Any) -> Path:
    """Write a standalone HTML report of ``store`` to ``out`` (works offline, without a kernel).

    Parameters
    ----------
    store
        A store path or ``xarray.DataTree``.
    out
        The ``.html`` file to write.
    title
        Page title.
    **kwargs
        Passed to :func:`build_report` (``images``, ``max_datasets``, ``data_root``, ...).

    Returns
    -------
    pathlib.Path
        The written file.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> import tempfile, pathlib
    >>> path = write_report(example_tree(n_layers=2, n_images=2), pathlib.Path(tempfile.mkdtemp()) / "r.html",
    ...                     images=1)  # doctest: +SKIP
    """
    import panel as pn
    from bokeh.resources import INLINE

    from mmlens.viz.explorer import load_extensions

    load_extensions()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    layout = build_report(store, **kwargs)
    previous = pn.config.inline
    pn.config.inline = True
    try:
        layout.save(str(out), title=title, resources=INLINE)
    finally:
        pn.config.inline = previous
    html = inline_cdn_resources(out.read_text(encoding="utf-8"))
    out.write_text(html, encoding="utf-8")
    return out


_CDN = re.compile(r"https://cdn\.holoviz\.org/panel/[^/\"']+/dist/([A-Za-z0-9_./-]+\.(?:css|png|ico|svg|woff2?))")


def inline_cdn_resources(html: str) -> str:
    """Replace Panel's CDN stylesheet/icon links by ``data:`` URIs of the files shipped with Panel.

    Panel's saved pages still point component stylesheets at ``cdn.holoviz.org`` even with inline
    resources (holoviz/panel#6759); offline they fail to load. The same files ship inside the
    ``panel`` package, so they are embedded here. Unknown files are left as they are.
    """
    from mmlens.viz._static import panel_dist_data_uri

    html = re.sub(r'<link rel="apple-touch-icon" href=""\s*/?>', "", html)  # an empty link the template adds
    return _CDN.sub(lambda m: panel_dist_data_uri(m.group(1)) or m.group(0), html)


def _provenance_markdown(view: StudyView) -> tuple[str, str]:
    """The page's summary line (run, warning when incomplete) and its provenance table (escaped)."""
    from mmlens.viz._text import md
    from mmlens.viz.layout import incomplete_note, status_of

    attrs = view.attrs
    keys = [k for k in schema.PROVENANCE_KEYS if k in attrs] + sorted(k for k in attrs if k not in
                                                                       schema.PROVENANCE_KEYS and not k.startswith("_"))
    rows = "\n".join(f"| {md(k)} | {md(_cell(attrs[k]))} |" for k in keys)
    sizes = ", ".join(f"{g}: " + " × ".join(f"{d} {n}" for d, n in ds.sizes.items() if d in schema.DIMS)
                      for g, ds in view.groups.items())
    note = incomplete_note(status_of(view))
    warning = f"**{md(note)}**\n\n" if note is not None else ""
    a = view.attrs
    summary = (f"# mmlens report: {md(view.method)}\n\n{warning}model **{md(a.get('model_name', '?'))}** "
               f"({md(a.get('pretrained', '?'))}); datasets {md(', '.join(view.datasets))}; seeds "
               f"{md(view.seeds)}; variants {md(', '.join(view.variants))}; created {md(a.get('created', '?'))}. "
               "Provenance at the end of the page.")
    table = (f"## Provenance\n\nSizes: {md(sizes)}\n\n| provenance | value |\n|---|---|\n{rows}\n")
    return summary, table


def _cell(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "…"

