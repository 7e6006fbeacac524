"""The text lens's ranking (torch-free): directions in the joint space against a vocabulary of text embeddings.

The torch side (:mod:`mmlens.tracing.lens`) measures the directions — a layer's dataset-mean prompt bias β
mapped through the linearised readout, per head, and each injected prompt token's value — and embeds the
vocabulary; this module ranks the vocabulary against them and computes the shuffled-direction control
(docs/lens.md). The result is the lens Dataset read by the explorer and the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["LENS_KINDS", "LENS_SOURCES", "CONTROL_QUANTILE", "rank_vocabulary", "top1_cosine", "lens_markdown"]

#: What a direction is: a layer's dataset-mean β summed over heads, one head's, one injected prompt token's value.
LENS_KINDS = ("layer_bias", "head_bias", "prompt_value")
#: Where a vocabulary entry comes from (in this order of precedence when one text is in several).
LENS_SOURCES = ("classname", "phrase", "other_classname")
#: ``control_cosine`` is this quantile of the top-1 cosine over shuffled directions.
CONTROL_QUANTILE = 0.95


def _unit_rows(a: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, a / np.where(norms > 0, norms, 1.0), np.nan)


def _vocabulary_matrix(embeddings: xr.DataArray, center: bool) -> np.ndarray:
    """Unit rows of the vocabulary, centred on the vocabulary's mean embedding first when ``center``."""
    e = _unit_rows(np.asarray(embeddings.values, dtype=np.float64))
    if center:
        # the part every text embedding shares moves every logit alike; the ranking asks which entries a
        # direction favours over the others, so that part is removed (docs/lens.md, "Centring")
        e = _unit_rows(e - e.mean(0, keepdims=True))
    return e


def top1_cosine(vectors: np.ndarray, embeddings: xr.DataArray, *, center: bool = True) -> np.ndarray:
    """The best cosine of each row of ``vectors`` ``[n, space]`` with the vocabulary (centred as in the ranking).

    Examples
    --------
    >>> emb = xr.DataArray(np.eye(2), dims=("entry", "embed"))
    >>> top1_cosine(np.array([[1.0, 1.0], [0.0, -1.0]]), emb, center=False).round(3).tolist()
    [0.707, 0.0]
    """
    e = _vocabulary_matrix(embeddings.transpose("entry", ...), center)
    return (_unit_rows(np.asarray(vectors, dtype=np.float64)) @ e.T).max(axis=1)


def rank_vocabulary(directions: xr.DataArray, embeddings: xr.DataArray, *, top: int = 5, n_shuffles: int = 1000,
                    seed: int = 0, center: bool = True, null: xr.DataArray | None = None) -> xr.Dataset:
    """Rank a vocabulary of text embeddings by their cosine with each direction, with a shuffled control.

    Parameters
    ----------
    directions : DataArray (direction, embed)
        Directions in the joint (image-text) space; the coordinates along ``direction`` (``tower``, ``kind``,
        ``layer``, ``head``, ``prompt_token``, ...) are kept.
    embeddings : DataArray (entry, embed)
        The vocabulary's text embeddings, with coordinates ``phrase`` (the text) and ``source`` (one of
        :data:`LENS_SOURCES`) along ``entry`` (and optionally ``section``).
    top : int
        How many entries to keep per direction (``rank`` 1..top; fewer when the vocabulary is smaller).
    n_shuffles : int
        Shuffled directions per direction for the control (0: no control, NaN).
    seed : int
        Seed of the shuffles; direction ``i`` uses ``numpy.random.default_rng([seed, i])``, so a direction's
        control does not depend on which other directions are ranked with it.
    center : bool
        Subtract the vocabulary's mean (unit) embedding before the cosine (the default; docs/lens.md).
    null : DataArray (sample, embed), optional
        Directions drawn under a null hypothesis for the second control (:func:`mmlens.lens` passes random
        residual-stream vectors mapped through the same readout). With a ``tower`` coordinate along
        ``sample``, each direction is compared with the samples of its own ``tower``.

    Returns
    -------
    xarray.Dataset
        Dims ``direction``, ``rank``: ``phrase``, ``cosine``, ``source`` (and ``section``) per direction and
        rank; ``control_cosine`` (the 95th percentile of the top-1 cosine over shuffled directions) and
        ``control_p`` (the share of shuffled directions whose top-1 cosine reaches the observed top-1 cosine;
        0 means below ``1 / n_shuffles``) per direction; with ``null``, ``readout_control_cosine`` and
        ``readout_control_p``, the same two numbers over the null samples. A direction of zero length gets
        NaN cosines and empty phrases.

    Notes
    -----
    The control shuffles the coordinates of each direction in the joint space (a random permutation per
    shuffle): the shuffled direction has the same length and the same multiset of coordinates, but its
    alignment with the vocabulary is destroyed. It answers "is this top-1 cosine higher than what a direction
    with these coordinate values reaches by chance against this vocabulary?", not whether the direction
    matters for the model (docs/lens.md).

    Examples
    --------
    >>> emb = xr.DataArray(np.eye(3), dims=("entry", "embed"),
    ...                    coords={"phrase": ("entry", ["dark", "red star", "seen from above"]),
    ...                            "source": ("entry", ["phrase", "classname", "phrase"])})
    >>> d = xr.DataArray([[0.1, 0.0, 2.0]], dims=("direction", "embed"), coords={"layer": ("direction", [0])})
    >>> ds = rank_vocabulary(d, emb, top=2, n_shuffles=50, center=False)
    >>> ds["phrase"].values[0].tolist(), round(float(ds["cosine"][0, 0]), 3)
    (['seen from above', 'dark'], 0.999)
    """
    if "direction" not in directions.dims or len(directions.dims) != 2:
        raise ValueError(f"directions must be a 2-D DataArray (direction, <space>); found dims {directions.dims}.")
    if "entry" not in embeddings.dims or len(embeddings.dims) != 2:
        raise ValueError(f"embeddings must be a 2-D DataArray (entry, <space>); found dims {embeddings.dims}.")
    space = next(d for d in directions.dims if d != "direction")
    emb_space = next(d for d in embeddings.dims if d != "entry")
    d = np.asarray(directions.transpose("direction", space).values, dtype=np.float64)
    e_raw = embeddings.transpose("entry", emb_space)
    if d.shape[1] != e_raw.shape[1]:
        raise ValueError(f"directions have {d.shape[1]} coordinates but the embeddings {e_raw.shape[1]}: both must "
                         "live in the same joint space (map directions through the readout first).")
    for name in ("phrase", "source"):
        if name not in embeddings.coords:
            raise ValueError(f"embeddings need a {name!r} coordinate along 'entry' (see mmlens.tracing.lens).")
    if top < 1 or n_shuffles < 0:
        raise ValueError(f"top must be >= 1 and n_shuffles >= 0; got top={top}, n_shuffles={n_shuffles}.")
    e = _vocabulary_matrix(e_raw, center)
    n_dir, n_voc = d.shape[0], e.shape[0]
    k = min(int(top), n_voc)
    unit = _unit_rows(d)
    cos = unit @ e.T  # [direction, entry]
    phrases = np.asarray(embeddings["phrase"].values, dtype=object)
    sources = np.asarray(embeddings["source"].values, dtype=object)
    sections = np.asarray(embeddings["section"].values, dtype=object) if "section" in embeddings.coords else None
    out_cos = np.full((n_dir, k), np.nan)
    out_phrase = np.full((n_dir, k), "", dtype=object)
    out_source = np.full((n_dir, k), "", dtype=object)
    out_section = np.full((n_dir, k), "", dtype=object)
    control = np.full(n_dir, np.nan)
    p = np.full(n_dir, np.nan)
    for i in range(n_dir):
        if not np.isfinite(cos[i]).all():  # a zero direction: nothing to rank
            continue
        order = np.argsort(-cos[i], kind="stable")[:k]
        out_cos[i], out_phrase[i], out_source[i] = cos[i, order], phrases[order], sources[order]
        if sections is not None:
            out_section[i] = sections[order]
        if n_shuffles:
            rng = np.random.default_rng([int(seed), i])
            shuffled = rng.permuted(np.broadcast_to(unit[i], (n_shuffles, unit.shape[1])), axis=1)
            best = (shuffled @ e.T).max(axis=1)
            control[i] = float(np.quantile(best, CONTROL_QUANTILE))
            p[i] = float(np.mean(best >= out_cos[i, 0]))
    null_control, null_p = np.full(n_dir, np.nan), np.full(n_dir, np.nan)
    pool_sizes = []
    if null is not None:
        null_space = next(x for x in null.dims if x != "sample")
        samples = null.transpose("sample", null_space)
        best = top1_cosine(samples.values, e_raw, center=center)
        groups = np.asarray(samples["tower"].values).astype(str) if "tower" in samples.coords else None
        towers = np.asarray(directions["tower"].values).astype(str) if "tower" in directions.coords else None
        for i in range(n_dir):
            if not np.isfinite(out_cos[i, 0]):
                continue
            pool = best if groups is None or towers is None else best[groups == towers[i]]
            pool_sizes.append(len(pool))
            if len(pool):
                null_control[i] = float(np.quantile(pool, CONTROL_QUANTILE))
                null_p[i] = float(np.mean(pool >= out_cos[i, 0]))
    coords: dict[str, Any] = {"direction": np.arange(n_dir), "rank": np.arange(1, k + 1)}
    for name, c in directions.coords.items():
        if c.dims == ("direction",) and name != "direction":
            coords[name] = ("direction", c.values)
    data = {
        "phrase": (("direction", "rank"), out_phrase),
        "cosine": (("direction", "rank"), out_cos.astype(np.float32)),
        "source": (("direction", "rank"), out_source),
        "control_cosine": ("direction", control.astype(np.float32)),
        "control_p": ("direction", p.astype(np.float32)),
    }
    if null is not None:
        data["readout_control_cosine"] = ("direction", null_control.astype(np.float32))
        data["readout_control_p"] = ("direction", null_p.astype(np.float32))
    if sections is not None:
        data["section"] = (("direction", "rank"), out_section)
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update({"n_shuffles": int(n_shuffles), "shuffle_seed": int(seed), "centered": int(bool(center)),
                     # the null samples each direction was compared with (per tower when grouped)
                     "n_null": int(min(pool_sizes)) if pool_sizes else 0,
                     "n_vocabulary": int(n_voc), "control": "coordinates of the direction permuted in the joint "
                     f"space; control_cosine = {CONTROL_QUANTILE:.0%} quantile of the shuffled top-1 cosine"})
    return ds


def _fmt_p(p: float, n: int) -> str:
    if not np.isfinite(p):
        return "–"
    return f"< {1 / n:.3g}" if p == 0 and n else f"{p:.3g}"


def lens_markdown(ds: xr.Dataset, *, kinds: Sequence[str] = ("layer_bias", "prompt_value"), top: int = 3,
                  heading: str | None = "What the prompts learn", level: int = 2) -> str:
    """The lens as markdown: per tower, one row per direction with its top phrases, cosines and the control.

    Parameters
    ----------
    ds : Dataset
        A lens result (:func:`mmlens.lens`, or :func:`rank_vocabulary` with ``tower``, ``kind``, ``layer``,
        ``head``, ``prompt_token`` coordinates).
    kinds : sequence of str
        Which directions to show (``head_bias`` rows are many: left out by default).
    top : int
        Phrases per row.
    heading : str or None
        The section heading (None: no heading, e.g. inside a page that has its own).
    level : int
        Markdown heading level of ``heading``; the towers get one level more.

    Examples
    --------
    >>> emb = xr.DataArray(np.eye(2), dims=("entry", "embed"),
    ...                    coords={"phrase": ("entry", ["dark", "red star"]),
    ...                            "source": ("entry", ["phrase", "classname"])})
    >>> d = xr.DataArray([[1.0, 0.2]], dims=("direction", "embed"),
    ...                  coords={"tower": ("direction", ["vision"]), "kind": ("direction", ["layer_bias"]),
    ...                          "layer": ("direction", [0]), "head": ("direction", [-1]),
    ...                          "prompt_token": ("direction", [-1])})
    >>> print(lens_markdown(rank_vocabulary(d, emb, top=2, n_shuffles=10, center=False), heading=None))
    ... # doctest: +NORMALIZE_WHITESPACE
    ### vision tower
    <BLANKLINE>
    | layer | direction | top phrases (cosine) | control (95%) | p |
    |---|---|---|---|---|
    | 0 | β (sum of heads) | dark (0.98), *red star* (0.20) | 0.98 | 1 |
    <BLANKLINE>
    """
    lines: list[str] = []
    if heading:
        lines += [f"{'#' * level} {heading}", ""]
    n = int(ds.attrs.get("n_shuffles", 0))
    kinds_present = [str(x) for x in ds["kind"].values]
    for tower in ("vision", "text"):
        rows = [i for i in range(ds.sizes["direction"])
                if str(ds["tower"].values[i]) == tower and kinds_present[i] in kinds]
        if not rows:
            continue
        readout = "readout_control_p" in ds
        header = "| layer | direction | top phrases (cosine) | control (95%) | p |"
        if readout:
            header = ("| layer | direction | top phrases (cosine) | control (95%): shuffled / readout "
                      "| p: shuffled / readout |")
        lines += [f"{'#' * (level + 1)} {tower} tower", "", header, "|---|---|---|---|---|"]
        rows.sort(key=lambda i: (int(ds["layer"].values[i]), kinds.index(kinds_present[i]) if kinds_present[i]
                                 in kinds else 0, int(ds["head"].values[i]), int(ds["prompt_token"].values[i])))
        for i in rows:
            kind = kinds_present[i]
            what = {"layer_bias": "β (sum of heads)", "head_bias": f"β head {int(ds['head'].values[i])}",
                    "prompt_value": f"prompt token {int(ds['prompt_token'].values[i])} value"}[kind]
            if "bias_source" in ds.coords and str(ds["bias_source"].values) == "learned" and kind == "layer_bias":
                what = "learned b"
            cells = []
            for r in range(min(top, ds.sizes["rank"])):
                phrase, cos = str(ds["phrase"].values[i, r]), float(ds["cosine"].values[i, r])
                if not phrase:
                    continue
                source = str(ds["source"].values[i, r])
                # class names in italics, other datasets' class names marked: the reader sees what is a class
                shown = f"*{phrase}*" if source == "classname" else (f"{phrase}†" if source == "other_classname"
                                                                      else phrase)
                cells.append(f"{shown} ({cos:.2f})")
            layer = int(ds["layer"].values[i])
            kind_label = f" ({ds['layer_kind'].values[i]})" if "layer_kind" in ds.coords else ""
            p = _fmt_p(float(ds["control_p"].values[i]), n)
            control = f"{float(ds['control_cosine'].values[i]):.2f}"
            if readout:
                p += " / " + _fmt_p(float(ds["readout_control_p"].values[i]), int(ds.attrs.get("n_null", 0)))
                control += f" / {float(ds['readout_control_cosine'].values[i]):.2f}"
            lines.append(f"| {layer}{kind_label} | {what} | {', '.join(cells) or '–'} | {control} | {p} |")
        lines.append("")
    return "\n".join(lines)
