"""PNG figures of the study (matplotlib, headless Agg backend), drawn from the statistics table and the evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["all_figures", "FIGURES"]

#: File name -> what it shows (the report lists them in this order).
FIGURES = {
    "accuracy_routes.png": "Accuracy of the route ablations on the traced test images (base / novel)",
    "accuracy_grid.png": "Accuracy of every evaluated variant (route × branch × layer group), mean over datasets",
    "prompt_mass.png": "Prompt mass α at the readout query per layer",
    "bias_norm_ratio.png": "Size of the prompt bias: ‖β‖/‖(a)‖ and ‖β‖/‖x‖ per layer",
    "bias_consistency.png": "Consistency of β: cosines within class / across classes / across datasets; "
                            "dataset-mean share",
    "foreground_attention.png": "[cls] attention share on the foreground, with vs without prompts",
    "prompt_background_similarity.png": "Cosine of prompt keys/values with background vs foreground patches",
    "text_reliance.png": "EOT attention on word vs prompt tokens, with vs without prompts",
}

_KIND_COLOURS = {"injected": "#fde0c5", "carried": "#d6e6f5", "none": "#eeeeee"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _rows(table: Any, **sel: Any) -> Any:
    t = table
    for k, v in sel.items():
        t = t[t[k].astype(str) == str(v)]
    return t


def _per_layer(table: Any, **sel: Any) -> Any:
    t = _rows(table, dataset="all", **sel)
    t = t[t["layers"].astype(str).str.fullmatch(r"\d+")].copy()
    t["layer"] = t["layers"].astype(int)
    return t.sort_values("layer")


def _shade(ax: Any, rows: Any) -> None:
    """Background bands by layer kind (orange: injected, blue: carried)."""
    seen = set()
    for rec in rows[["layer", "layer_kind"]].drop_duplicates().to_dict("records"):
        kind = str(rec["layer_kind"])
        label = kind if kind not in seen else None
        seen.add(kind)
        ax.axvspan(rec["layer"] - 0.5, rec["layer"] + 0.5, color=_KIND_COLOURS.get(kind, "#ffffff"), zorder=0,
                   label=label)


def _curve(ax: Any, rows: Any, label: str, **style: Any) -> bool:
    if rows.empty or rows["mean"].isna().all():
        return False
    ax.plot(rows["layer"], rows["mean"], marker="o", ms=3, label=label, **style)
    ax.fill_between(rows["layer"], rows["low"], rows["high"], alpha=0.25, color=style.get("color"))
    return True


def _layer_panels(table: Any, path: Path, title: str, panels: Sequence[tuple[str, list[tuple[dict, str]]]],
                  ylabel: str, hline: float | None = None) -> Path | None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    drew_any = False
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (panel_title, curves) in zip(axes[0], panels):
        shaded = False
        for i, (sel, label) in enumerate(curves):
            rows = _per_layer(table, **sel)
            if not rows.empty and not shaded:
                _shade(ax, rows)
                shaded = True
            drew = _curve(ax, rows, label, color=colours[i % len(colours)],
                          linestyle="--" if sel.get("split") == "novel" else "-")
            drew_any = drew_any or drew
        if hline is not None:
            ax.axhline(hline, color="k", lw=0.8)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("layer (0-based block)")
        ax.set_ylabel(ylabel)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(title + "  (mean and 95% bootstrap band; background: layer kind)", fontsize=10)
    fig.tight_layout()
    if not drew_any:
        plt.close(fig)
        return None
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _accuracy_routes(table: Any, path: Path) -> Path | None:
    plt = _plt()
    from mmlens.store import schema

    # zero-shot first: the bars read from no prompts to full prompts, then each route ablation
    variants = [schema.REFERENCE_VARIANT, schema.PROMPTED_VARIANT, *schema.ABLATION_ROUTES]
    t = _rows(table, statistic="accuracy", tower="logits", dataset="all")
    if t.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.38
    for j, split in enumerate(("base", "novel")):
        rows = [_rows(t, split=split, variant=v) for v in variants]
        means = [float(r["mean"].iloc[0]) if len(r) else float("nan") for r in rows]
        lows = [m - float(r["low"].iloc[0]) if len(r) else 0 for m, r in zip(means, rows)]
        highs = [float(r["high"].iloc[0]) - m if len(r) else 0 for m, r in zip(means, rows)]
        xs = [i + (j - 0.5) * width for i in range(len(variants))]
        ax.bar(xs, means, width, yerr=[lows, highs], capsize=3, label=split)
    ax.set_xticks(range(len(variants)), variants, rotation=20, fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Route ablations on the traced test images (mean, 95% bootstrap interval)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _accuracy_grid(acc: Any, path: Path) -> Path | None:
    import numpy as np

    from mmlens.train import summary

    plt = _plt()
    s = summary(acc)
    methods = [str(m) for m in acc["method"].values]
    rows, labels = [], []
    for m in methods:
        cell = s.sel({"method": m, "dataset": "Average"})
        for v in [str(v) for v in acc["variant"].values]:
            vals = [float(cell[k].sel(variant=v)) for k in ("base", "novel", "hm") if k in cell]
            if all(np.isnan(vals)):
                continue
            rows.append(vals)
            labels.append(f"{m} / {v}" if len(methods) > 1 else v)
    if not rows:
        return None
    data = np.array(rows)
    fig, ax = plt.subplots(figsize=(5.5, 0.28 * len(rows) + 1.4))
    im = ax.imshow(data, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    cols = [k for k in ("base", "novel", "HM")][: data.shape[1]]
    ax.set_xticks(range(len(cols)), cols)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.1f}", ha="center", va="center", fontsize=6,
                        color="w" if data[i, j] < np.nanmean(data) else "k")
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    ax.set_title("Evaluated variants, mean over datasets and seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def all_figures(table: Any, accuracy: Any, folder: str | Path) -> list[Path]:
    """Write every figure of :data:`FIGURES` that the data allow; return the written paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from mmlens.experiments._findings import _normalised

    table = _normalised(table)  # bias tuning's rows (method "bias") sit next to MaPLe's
    out: list[Path | None] = [_accuracy_routes(table, folder / "accuracy_routes.png"),
                              _accuracy_grid(accuracy, folder / "accuracy_grid.png")]

    def sel(statistic: str, tower: str, measure: str, variant: str = "full", split: str = "base",
            method: str = "maple") -> dict:
        return {"statistic": statistic, "tower": tower, "measure": measure, "variant": variant, "split": split,
                "method": method}

    out.append(_layer_panels(table, folder / "prompt_mass.png", "Prompt mass α at the readout query", [
        (f"{tower} ({q})", [(sel("prompt_mass", tower, m, split=sp), f"{m}, {sp}")
                            for m in ("readout", "other_queries") for sp in ("base", "novel")])
        for tower, q in (("vision", "[cls]"), ("text", "EOT"))], "α"))
    out.append(_layer_panels(table, folder / "bias_norm_ratio.png", "Size of MaPLe's β and bias tuning's b", [
        (tower, [(sel("bias_norm_ratio", tower, m, split=sp), f"β: {m}, {sp}")
                 for m in ("bias_over_original", "bias_over_residual") for sp in ("base", "novel")]
         + [(sel("bias_norm_ratio", tower, m, method="bias"), f"b (bias tuning): {m}, base")
            for m in ("bias_over_original", "bias_over_residual")])
        for tower in ("vision", "text")], "ratio"))
    out.append(_layer_panels(table, folder / "bias_consistency.png", "Consistency of β (base classes)", [
        (tower, [(sel("bias_consistency", tower, m), m)
                 for m in ("within_class", "across_classes", "across_datasets", "dataset_mean_share")])
        for tower in ("vision", "text")], "cosine / share", hline=0.0))
    out.append(_layer_panels(table, folder / "foreground_attention.png", "[cls] attention on the foreground", [
        ("share of patch attention on foreground", [
            (sel("foreground_attention", "vision", "share", v, sp), f"{v}, {sp}")
            for v in ("full", "zeroshot") for sp in ("base", "novel")] + [
            (sel("foreground_attention", "vision", "area"), "foreground area (chance)")]),
        ("with − without prompts", [(sel("foreground_attention", "vision", "share", "full - zeroshot", sp), sp)
                                    for sp in ("base", "novel")]),
    ], "share", hline=None))
    out.append(_layer_panels(table, folder / "prompt_background_similarity.png",
                             "Do vision prompts resemble background? (full prompts, base classes)", [
        ("cosine with the mean prompt key / value", [
            (sel("prompt_background_similarity", "vision", m), m)
            for m in ("key_background", "key_foreground", "value_background", "value_foreground")]),
        ("background − foreground", [
            (sel("prompt_background_similarity", "vision", f"{k}_background_minus_foreground"), k)
            for k in ("key", "value")]),
    ], "cosine", hline=0.0))
    out.append(_layer_panels(table, folder / "text_reliance.png", "Where EOT looks (class prompts, base classes)", [
        ("attention at EOT", [(sel("text_reliance", "text", m, v), f"{m}, {v}")
                              for m in ("classname", "word", "prompt") for v in ("full", "zeroshot")]),
        ("with − without prompts", [(sel("text_reliance", "text", m, "full - zeroshot"), m)
                                    for m in ("classname", "word", "prompt", "other")]),
    ], "attention", hline=0.0))
    return [p for p in out if p is not None]
