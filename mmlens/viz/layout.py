"""The explorer's Panel layout: run selectors and sliders beside the board's linked views, captions, notes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from mmlens.viz.slices import MissingData, StudyView

if TYPE_CHECKING:
    from mmlens.viz.explorer import Explorer

__all__ = ["build_layout", "main_panes", "status_of", "incomplete_note"]


def status_of(view: StudyView):
    """:func:`mmlens.store.store_status` of a store opened from a path (the one reader of a writer's progress).

    ``None`` for a store given in memory, or a path that is no longer readable as a store.
    """
    from mmlens.store import store_status

    source = getattr(view, "source", None)
    if not isinstance(source, (str, os.PathLike)):
        return None
    try:
        return store_status(source)
    except (OSError, ValueError, KeyError):
        return None


def incomplete_note(status: Any) -> str | None:
    """The header line of a store still being written (``incomplete: 12 of 24 images ...``), else ``None``."""
    if status is None or status.complete:
        return None
    return (f"{status.message} (the store is still being written or was interrupted; "
            "refresh to read what has been added)")


def build_layout(app: Explorer):
    """Sidebar of run selectors and the board's layer / head / image sliders; the linked views beside it."""
    import panel as pn

    from mmlens.viz._static import inline_panel_stylesheets

    state = app.state
    p = state.param
    w = {"width": 190}  # a narrow sidebar: the views keep most of a 1000 px window
    selectors = pn.Column(
        pn.widgets.Select.from_param(p.method, label="method", **w),
        pn.widgets.Select.from_param(p.dataset, label="dataset", **w),
        pn.widgets.Select.from_param(p.seed, label="seed", **w),
        pn.widgets.Select.from_param(p.variant, label="variant (heatmaps)", **w),
        pn.widgets.Select.from_param(p.class_, label="class (text tower)", **w),
        pn.widgets.Select.from_param(p.curve_measure, label="curves", **w),
        pn.widgets.Checkbox.from_param(p.minus_reference, label="subtract zeroshot", **w),
        width=200,
    )
    if any("direct" in view.groups for view in app.views.values()):  # only where the maps exist
        selectors.append(pn.widgets.Select.from_param(p.direct_images, label="direct effects over", **w))
    sliders = pn.Column(width=200)
    refresh = pn.widgets.Button(label="refresh (still being written)", width=190,
                                visible=False)
    main = pn.Column(sizing_mode="stretch_width", min_width=300)

    def rebuild(*_: Any) -> None:
        board = app.new_board()
        sliders.objects = [pn.pane.Bokeh(m) for m in (board.layer, board.head, board.image_slider) if m is not None]
        main.objects = main_panes(app, board)
        refresh.visible = incomplete_note(app.status()) is not None

    def follow(*events: Any) -> None:  # param.update(layer=4, head=2, image=3) sends the three at once
        if app._board is not None:
            for event in events:
                app._board.follow(event.name, event.new)
            # the board's Bokeh models changed from Python (a notebook cell, not a page event): a notebook
            # page only learns of such changes when they are pushed over the comm
            pn.io.push_notebook(layout)

    state.param.watch(rebuild, ["method", "dataset", "seed", "variant", "minus_reference", "curve_measure"])
    state.param.watch(follow, ["layer", "head", "image", "class_", "direct_images"])
    refresh.on_click(lambda _event: (app.refresh(), rebuild()))
    rebuild()
    layout = pn.Row(pn.Column(selectors, sliders, refresh, width=205), main, name="mmlens-explorer",
                    sizing_mode="stretch_width")
    layout._hooks = [*layout._hooks, inline_panel_stylesheets]  # works offline: no stylesheet from Panel's CDN
    return layout


def _caption(text: str) -> Any:
    import panel as pn

    return pn.pane.HTML(f'<div class="mmlens-caption" style="color:#555;font-size:12px;max-width:1100px">{text}</div>',
                        sizing_mode="stretch_width", margin=(0, 10, 12, 10))


def main_panes(app: Explorer, board: Any, *, report: bool = False) -> list[Any]:
    """The linked views of ``board`` with section titles and one-line captions (data text escaped)."""
    import panel as pn

    from mmlens.viz._text import md
    from mmlens.viz.board import CAPTIONS

    view, state = app.view, app.state
    a = view.attrs
    panes: list[Any] = []
    note = incomplete_note(app.status())
    head = (f"### mmlens {'report' if report else 'explorer'}: {md(state.method)}\n"
            f"model **{md(a.get('model_name', '?'))}** ({md(a.get('pretrained', '?'))}), dataset "
            f"**{md(state.dataset)}**, seed {md(state.seed)}, created {md(a.get('created', '?'))}.")
    if note is not None:
        head += f"\n\n**{md(note)}**"
    panes.append(pn.pane.Markdown(head, sizing_mode="stretch_width"))

    def flex(figures: list[Any]) -> Any:
        return pn.FlexBox(*[pn.pane.Bokeh(f) for f in figures], sizing_mode="stretch_width")

    items = "classes (text) and images (vision)"
    panes.append(pn.pane.Markdown(f"#### Layer × head: variant *{md(state.variant)}*"
                                  + (" minus zeroshot" if state.minus_reference else "")))
    figures = [f for tower in ("vision", "text") for f in board.heat_panes.get(tower, [])]
    if figures:
        panes.append(flex(figures))
    for note in board.heat_notes.values():
        panes.append(pn.pane.Markdown(f"*{md(note)}*"))
    panes.append(_caption(CAPTIONS["heatmaps"].format(items=items)))
    if board.curve_figures:
        panes.append(pn.pane.Markdown("#### Per layer: mean and 95 % band"))
        panes.append(flex(board.curve_figures))
        panes.append(_caption(CAPTIONS["curves"]))
    else:
        panes.append(pn.pane.Markdown(f"*no curves of {md(state.curve_measure)} in this store*"))
    if board.image_figures:
        panes.append(pn.pane.Markdown("#### The selected image: [cls] attention â with and without prompts"))
        panes.append(pn.pane.Bokeh(board.info))
        if board.image_select is not None:
            panes.append(pn.pane.Bokeh(board.image_select))
        panes.append(flex(board.image_figures))
        panes.append(_caption(CAPTIONS["images"]))
        if "mask" not in board.slots:
            panes.append(pn.pane.Markdown("*no foreground mask in this store: no mask panel, outline or FG values "
                                          "(datasets with masks: OxfordPets trimaps, toyworld)*"))
        if not any(s.startswith("attribution:") for s in board.slots):
            panes.append(pn.pane.Markdown("*no attribution group: trace with `--attribution` to compare "
                                          "captum maps with â*"))
    else:
        panes.append(pn.pane.Markdown("*this store has no cls_attention, mask or attribution maps: no image panel*"))
    if board.text_figures:
        panes.append(pn.pane.Markdown("#### Text tower: EOT attention over token roles"))
        panes.append(flex(board.text_figures))
        panes.append(_caption(CAPTIONS["text"]))
    else:
        panes.append(pn.pane.Markdown("*no text/attention_by_role in this store: no text-role panel*"))
    from mmlens.viz.direct import section_panes

    panes += section_panes(app, board, caption=_caption)
    if view.reference_variant is None:
        panes.append(pn.pane.Markdown("*no zeroshot variant (traced without `--with-reference`): no "
                                      "without-prompts maps, curves or differences*"))
    panes.append(pn.pane.Markdown("#### Accuracy and route ablations (from the stored logits)"))
    try:
        table = app.accuracy_data()
        full = view.accuracy()
        summary = full.groupby("variant", sort=False)[["base", "novel", "HM", "all"]].mean().round(2)
        n_sets = full["dataset"].nunique()
        panes.append(pn.FlexBox(  # the two tables wrap under each other in a narrow window
            pn.Column(pn.pane.Markdown(f"**top-1 (%) on {md(state.dataset)}, seed {md(state.seed)}**; "
                                       "NaN: no image of that split was traced"),
                      pn.pane.DataFrame(table.drop(columns=["dataset", "seed"]).round(2), index=False,
                                        escape=True)),
            pn.Column(pn.pane.Markdown(f"**mean over {n_sets} dataset{'s' if n_sets != 1 else ''} and their "
                                       "seeds**"), pn.pane.DataFrame(summary, escape=True)),
        ))
    except MissingData as err:
        panes.append(pn.pane.Markdown(f"*accuracy: {md(err)}*"))
    text = app.evaluation_markdown()
    if text is not None:
        panes.append(pn.pane.Markdown("**evaluation (mmlens.train.evaluate), every route ablation:**\n\n" + text))
    return panes
