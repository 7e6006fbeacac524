"""Synthetic, schema-valid trace trees and studies with plausible random numbers (tests, demos)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from mmlens.store import schema
from mmlens.store.study import combine_runs

__all__ = ["example_tree", "example_study"]

_PROMPT_FREE = ("zeroshot", "drop_prompts")  # variants run without prompt tokens
_SUBPIXELS = 4  # foreground fractions are measured on a 4x4 sub-grid of every patch
_ALPHA_MEAN = {"injected": 0.25, "carried": 0.12}  # mean prompt mass by layer kind
_BIAS_COHERENCE = {"injected": (1.0, 0.15), "carried": (0.5, 0.8)}  # (dataset part, image noise)


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------


def example_tree(
    n_images: int = 8,
    n_layers: int = 4,
    n_heads: int = 2,
    grid: int = 4,
    n_classes: int = 6,
    width: int = 16,
    variants: Sequence[str] = ("full", "zeroshot"),
    seed: int = 0,
    *,
    prompt_depth: int | None = None,
    n_prompts: int = 2,
    with_vectors: bool = True,
    with_foreground: bool = True,
    n_failures: int = 0,
    dataset: str = "synthetic",
    direct_effects: bool | str = False,
) -> xr.DataTree:
    """A schema-valid trace tree of one run filled with plausible random numbers.

    The numbers follow docs/math.md's structure (so statistics have something to find): α is larger
    in injected than in carried layers and zero for prompt-free variants, ``attention_by_role``
    is consistent with α and â, β is nearly constant across images in injected layers (a
    dataset bias) and image dependent in carried layers, norms are the norms of the stored
    vectors, and prompt keys/values resemble background patches more than foreground ones.

    Parameters
    ----------
    n_images, n_layers, n_heads, grid, n_classes, width
        Sizes: images, blocks per tower, heads per block, patch grid side, classes, channels.
    variants
        Values of the ``variant`` dim (``full``, ``zeroshot``, or route ablations).
    seed
        Seed of the model's numbers; the same arguments give the same tree. The images (labels,
        foreground masks) depend only on ``dataset``, so runs of one dataset with different
        seeds share their images, as runs of a real study do.
    prompt_depth
        Number of leading layers with fresh prompts (``layer_kind="injected"``); the others are
        ``carried``. Default ``n_layers // 2``; ``0`` gives a prompt-free model (``none``).
    n_prompts
        Number of prompt tokens (only shapes the plausibility of the numbers).
    with_vectors
        Store the ``bias`` and ``original`` channel vectors (needed by ``bias_consistency``).
    with_foreground
        Store the ``foreground`` masks (needed by foreground statistics).
    n_failures
        Number of unreadable inputs to record in ``vision/failures``.
    dataset
        Name written to the ``dataset`` provenance attribute and into image paths.
    direct_effects
        Add a ``direct`` group (direct logit effects, docs/store_schema.md): ``True`` / ``"margin"``
        for the label logit and margin, ``"all"`` with every class too. Each tower's components sum
        to the ``logits`` group's numbers; β's effects are larger in injected layers and push the
        label class up in prompted variants (zero in prompt-free ones).

    Returns
    -------
    xarray.DataTree
        Groups ``vision``, ``text``, ``logits`` (and ``direct``); provenance in the root ``attrs``.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> tree = example_tree(n_images=4)
    >>> dict(tree["vision"].sizes)["image"], sorted(tree.children)
    (4, ['logits', 'text', 'vision'])
    >>> direct = example_tree(n_images=4, direct_effects=True)["direct"]
    >>> total = direct["direct_effect"].where(direct["tower"] == "vision").sum("component")
    >>> bool(abs(total - direct["direct_total"]).max() < 1e-3)
    True
    """
    cfg = _Config(
        n_layers=n_layers,
        n_heads=n_heads,
        grid=grid,
        n_classes=n_classes,
        width=width,
        variants=tuple(variants),
        prompt_depth=n_layers // 2 if prompt_depth is None else prompt_depth,
        n_prompts=n_prompts,
        with_vectors=with_vectors,
        with_foreground=with_foreground,
    )
    image_seed = zlib.crc32(dataset.encode())  # the images depend on the dataset, not on the seed
    labels = np.random.default_rng([image_seed, 0, 0]).integers(0, n_classes, n_images)
    arrays = _run_arrays(cfg, seed, 0, 0, 0, labels, image_seed=image_seed)
    text = _text_arrays(cfg, seed, 0, 0)

    vision = _vision_dataset(cfg, arrays, labels, dataset, seed)
    if n_failures:
        vision = vision.assign(
            failures=("failure", np.array([f"cannot identify image file #{k}" for k in range(n_failures)])),
        ).assign_coords(
            failure_path=("failure", np.array([f"{dataset}/broken_{k:03d}.jpg" for k in range(n_failures)]))
        )
    tree = xr.DataTree.from_dict(
        {
            "/": xr.Dataset(attrs=_example_provenance(dataset=dataset, seed=seed, cfg=cfg)),
            "vision": vision,
            "text": _text_dataset(cfg, text),
            "logits": _logits_dataset(cfg, arrays["logits"], labels, dataset),
        }
    )
    if direct_effects:
        if direct_effects not in (True, "margin", "all"):
            raise ValueError(f"direct_effects={direct_effects!r}: expected False, True, 'margin' or 'all'")
        direct = _direct_dataset(cfg, arrays["logits"], labels, seed, all_classes=direct_effects == "all")
        tree["direct"] = xr.DataTree(direct.assign_coords(_image_coords(labels, cfg.n_classes, [dataset])))
    return tree


def example_study(
    n_datasets: int = 3,
    n_images: int = 16,
    n_seeds: int = 1,
    n_layers: int = 4,
    n_heads: int = 2,
    grid: int = 4,
    n_classes: int = 6,
    width: int = 16,
    variants: Sequence[str] = ("full", "zeroshot"),
    seed: int = 0,
    *,
    chunks: int | None = None,
    prompt_depth: int | None = None,
    n_prompts: int = 2,
    with_vectors: bool = True,
    with_foreground: bool = True,
    variables: Sequence[str] | None = None,
) -> xr.DataTree:
    """A synthetic study: several datasets (and seeds) of one method, stacked on ``dataset``/``seed``.

    Every group gains leading ``dataset`` and ``seed`` dims; per-image coordinates (``label``,
    ``classname``, ``split``, ``path``) become 2-D ``(dataset, image)`` and per-class ones
    ``(dataset, class)``, since each dataset has its own images and classes. ``image`` is the
    position of an image in its dataset's traced set. β has a direction of its own per dataset,
    so consistency across datasets is lower than within one.

    Each run is built on its own and the runs are stacked by :func:`mmlens.store.study.combine_runs`,
    the builder of real studies, so the layout is the same. With ``chunks`` the arrays are dask
    arrays generated block by block (``chunks`` images per block) and nothing is computed until
    asked for: ``example_study(11, 2000, chunks=250, with_vectors=False).to_zarr(path)`` streams a
    ViT-B/16-sized study (12 layers x 12 heads, ``grid=14``; ``cls_attention`` alone is
    11 x 2 x 2000 x 144 x 196 float32 = 5 GB; pass ``variables=`` to keep only what a benchmark
    needs) to disk in bounded memory. The numbers
    depend on ``seed`` and on ``chunks``.

    Parameters
    ----------
    n_datasets, n_images, n_seeds
        Sizes of the study: datasets, images per dataset, prompt-training seeds (1, 2, ...).
    n_layers, n_heads, grid, n_classes, width, variants, prompt_depth, n_prompts
        As in :func:`example_tree`.
    seed
        Seed of the random numbers.
    chunks
        Images per dask block; ``None`` builds numpy arrays in memory.
    with_vectors, with_foreground
        As in :func:`example_tree`.
    variables
        Keep only these vision/text variables (default: all that were generated).

    Returns
    -------
    xarray.DataTree
        Groups ``vision``, ``text``, ``logits``; root attrs with ``dataset="study"`` and
        ``seed=-1`` (the per-run values are the ``dataset`` and ``seed`` coordinates).

    Examples
    --------
    >>> from mmlens.store.synthetic import example_study
    >>> study = example_study(n_datasets=2, n_images=4)
    >>> study["vision"]["bias_norm"].dims
    ('dataset', 'seed', 'variant', 'image', 'layer')
    """
    cfg = _Config(
        n_layers=n_layers,
        n_heads=n_heads,
        grid=grid,
        n_classes=n_classes,
        width=width,
        variants=tuple(variants),
        prompt_depth=n_layers // 2 if prompt_depth is None else prompt_depth,
        n_prompts=n_prompts,
        with_vectors=with_vectors,
        with_foreground=with_foreground,
    )
    names = [f"dataset_{d:02d}" for d in range(n_datasets)]
    seeds = np.arange(1, n_seeds + 1)
    labels = np.stack([np.random.default_rng([seed, d, 0]).integers(0, n_classes, n_images) for d in range(n_datasets)])
    bounds = _block_bounds(n_images, chunks)

    lazy = chunks is not None
    wanted = None if variables is None else frozenset({*variables, "logits"})
    blocks = {
        (d, s, b): _run_block(cfg, seed, d, s, b, labels[d, lo:hi], lazy, wanted)
        for d in range(n_datasets)
        for s in range(n_seeds)
        for b, (lo, hi) in enumerate(bounds)
    }
    image_coords = _image_coords(labels, n_classes, names)  # (dataset, image) values, one row per run
    classnames = _classnames(names, n_classes)
    out_bias = np.random.default_rng([seed, n_layers]).uniform(0.5, 1.5, n_layers).astype(np.float32)
    runs: dict[tuple[str, int], xr.DataTree] = {}
    for d, name in enumerate(names):
        fg = None
        if with_foreground and (variables is None or "foreground" in variables):
            fg = _concat([_foreground_block(seed, d, b, hi - lo, grid, lazy) for b, (lo, hi) in enumerate(bounds)],
                         axis=0)
        for s in range(n_seeds):
            vision_vars: dict[str, Any] = {}
            for var, (dims, dtype) in _run_shapes(cfg).items():
                if var == "foreground" or (variables is not None and var not in variables and var != "logits"):
                    continue
                parts = [_block_array(blocks[d, s, b], var, dims, dtype, cfg, hi - lo, lazy)
                         for b, (lo, hi) in enumerate(bounds)]
                vision_vars[var] = (dims, _concat(parts, axis=dims.index("image")))
            if fg is not None:
                vision_vars["foreground"] = (("image", "patch_row", "patch_col"), fg)
            logits = vision_vars.pop("logits")[1]
            if variables is None or "output_bias_norm" in variables:
                vision_vars["output_bias_norm"] = (("layer",), out_bias)
            run_images = {key: (("image",), values[d]) for key, (_, values) in image_coords.items()}
            vision = xr.Dataset(vision_vars, coords={**_shared_coords(cfg, "vision"), **run_images,
                                                     "image": np.arange(n_images)})
            text_arrays = _text_arrays(cfg, seed, d, s)
            text = xr.Dataset(
                {var: (dims, text_arrays[var]) for var, (dims, _) in _text_shapes(cfg).items()
                 if variables is None or var in variables},
                coords={**_shared_coords(cfg, "text"), "class": np.arange(n_classes),
                        "classname": ("class", classnames[d]), "split": ("class", _class_splits(n_classes))},
            )
            logits_ds = xr.Dataset(
                {"logits": (("variant", "image", "class"), logits)},
                coords={"variant": list(cfg.variants), "image": np.arange(n_images), "class": np.arange(n_classes),
                        "label": ("image", labels[d]), "classname": ("class", classnames[d])},
            )
            attrs = _example_provenance(dataset=name, seed=int(seeds[s]), cfg=cfg)
            runs[name, int(seeds[s])] = xr.DataTree.from_dict(
                {"/": xr.Dataset(attrs=attrs), "vision": vision, "text": text, "logits": logits_ds}
            )
    # the same builder as real studies (mmlens reproduce, the notebooks): one definition of the study layout
    return combine_runs(runs)


# ----------------------------------------------------------------------------------------------
# generator internals
# ----------------------------------------------------------------------------------------------


class _Config:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)
        unknown = [v for v in self.variants if v not in schema.VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; expected some of {list(schema.VARIANTS)}")
        if not 0 <= self.prompt_depth <= self.n_layers:
            raise ValueError(f"prompt_depth must be in [0, n_layers={self.n_layers}], found {self.prompt_depth}")

    @property
    def layer_kind(self) -> np.ndarray:
        if self.prompt_depth == 0:
            return np.array(["none"] * self.n_layers)
        return np.array(["injected" if ell < self.prompt_depth else "carried" for ell in range(self.n_layers)])

    @property
    def prompted(self) -> np.ndarray:
        return np.array([v not in _PROMPT_FREE for v in self.variants])


def _example_provenance(*, dataset: str, seed: int, cfg: _Config) -> dict[str, Any]:
    from mmlens.store.schema import provenance_attrs

    hparams = {"n_ctx": cfg.n_prompts, "prompt_depth": cfg.prompt_depth}
    return provenance_attrs(
        model_name="synthetic",
        pretrained="none",
        weights_sha256="0" * 64,
        method="maple" if cfg.prompt_depth else "zeroshot",
        method_hparams=hparams,
        prompt_sha256="0" * 64,
        dataset=dataset,
        manifest_version="synthetic",
        seed=seed,
        torch_version="none",
        open_clip_version="none",
        device="none",
        dtype="float32",
    )


def _block_bounds(n: int, chunks: int | None) -> list[tuple[int, int]]:
    if chunks is None:
        return [(0, n)]
    if chunks < 1:
        raise ValueError(f"chunks must be a positive number of images, found {chunks}")
    return [(lo, min(lo + chunks, n)) for lo in range(0, n, chunks)]


def _concat(blocks: list[Any], axis: int) -> Any:
    if len(blocks) == 1:
        return blocks[0]
    if _is_dask(blocks[0]):
        import dask.array as da

        return da.concatenate(blocks, axis=axis)
    return np.concatenate(blocks, axis=axis)


def _stack(arrays: list[Any]) -> Any:
    if _is_dask(arrays[0]):
        import dask.array as da

        return da.stack(arrays)
    return np.stack(arrays)


def _is_dask(x: Any) -> bool:
    return type(x).__module__.startswith("dask")


def _run_block(
    cfg: _Config, seed: int, d: int, s: int, b: int, labels: np.ndarray, lazy: bool, wanted: frozenset[str] | None
) -> Any:
    """The arrays of one block of images: computed now, or one dask.delayed call shared by all variables."""
    if not lazy:
        return _run_arrays(cfg, seed, d, s, b, labels, wanted)
    import dask

    return dask.delayed(_run_arrays)(cfg, seed, d, s, b, labels, wanted)


def _block_array(block: Any, name: str, dims: tuple[str, ...], dtype: Any, cfg: _Config, n: int, lazy: bool) -> Any:
    if not lazy:
        return block[name]
    import dask.array as da

    shape = tuple(n if dim == "image" else _dim_size(cfg, dim) for dim in dims)
    return da.from_delayed(block[name], shape=shape, dtype=dtype)


def _foreground_block(seed: int, d: int, b: int, n: int, grid: int, lazy: bool) -> Any:
    if not lazy:
        return _foreground(seed, d, b, n, grid)
    import dask
    import dask.array as da

    return da.from_delayed(dask.delayed(_foreground)(seed, d, b, n, grid), shape=(n, grid, grid), dtype=np.float32)


def _dim_size(cfg: _Config, dim: str) -> int:
    return {
        "variant": len(cfg.variants),
        "layer": cfg.n_layers,
        "head": cfg.n_heads,
        "patch_row": cfg.grid,
        "patch_col": cfg.grid,
        "channel": cfg.width,
        "class": cfg.n_classes,
        "key_role": len(schema.VISION_ROLES),
    }[dim]


def _run_shapes(cfg: _Config) -> dict[str, tuple[tuple[str, ...], Any]]:
    f = np.float32
    out = {
        name: (dims, f)
        for name, (dims, _) in schema.VISION_VARIABLES.items()
        if name not in ("failures", "output_bias_norm", "prompt_mass_all_queries")
    }
    if not cfg.with_vectors:
        out.pop("bias")
        out.pop("original")
    if not cfg.with_foreground:
        out.pop("foreground")
    out["logits"] = (("variant", "image", "class"), f)
    return out


def _text_shapes(cfg: _Config) -> dict[str, tuple[tuple[str, ...], Any]]:
    out = {name: (dims, np.float32) for name, (dims, _) in schema.TEXT_VARIABLES.items() if "query" not in dims}
    if not cfg.with_vectors:
        out.pop("bias")
        out.pop("original")
    return out


def _foreground(seed: int, d: int, b: int, n: int, grid: int) -> np.ndarray:
    """Elliptic blobs; each patch holds the exact fraction of its sub-pixels inside the blob."""
    rng = np.random.default_rng([seed, d, b, 0])
    centre = rng.uniform(0.3, 0.7, (n, 2)) * grid
    radius = rng.uniform(0.15, 0.35, (n, 2)) * grid
    sub = (np.arange(grid * _SUBPIXELS) + 0.5) / _SUBPIXELS
    dr = (sub[None, :, None] - centre[:, 0, None, None]) / radius[:, 0, None, None]
    dc = (sub[None, None, :] - centre[:, 1, None, None]) / radius[:, 1, None, None]
    inside = (dr**2 + dc**2) <= 1.0
    fg = inside.reshape(n, grid, _SUBPIXELS, grid, _SUBPIXELS).mean(axis=(2, 4))
    return fg.astype(np.float32)


def _alpha(rng: np.random.Generator, cfg: _Config, shape_after_layer: tuple[int, ...], n: int) -> np.ndarray:
    """Prompt mass (variant, n, layer, *shape_after_layer): Beta around the layer kind's mean."""
    v, L = len(cfg.variants), cfg.n_layers
    out = np.zeros((v, n, L, *shape_after_layer), dtype=np.float64)
    for ell, kind in enumerate(cfg.layer_kind):
        if kind == "none":
            continue
        m = _ALPHA_MEAN[kind] * (1.0 + 0.3 * rng.uniform(-1, 1))
        out[:, :, ell] = rng.beta(2.0, 2.0 * (1 - m) / m, (v, n, *shape_after_layer))
    return out * cfg.prompted.reshape(-1, *([1] * (out.ndim - 1)))


def _decomposition(
    rng: np.random.Generator, cfg: _Config, alpha: np.ndarray, n: int, bias_dirs: np.ndarray
) -> dict[str, np.ndarray]:
    """Original path and β per head (norms) and summed over heads (vectors), and their norms.

    β_h = 3 α_h (c V_h + σ ε_h) with V_h the dataset's prompt direction and ε_h ~ N(0, I/W); the
    head sum is drawn directly (Σ_h α_h σ ε_h ~ σ |α| ε), so no (head x channel) array is built
    and ViT-B-sized studies stay cheap. Stored norms are the norms of the stored vectors; per-head
    norms are their expected values with a little noise (heads as if orthogonal).
    """
    v, L, H, W = len(cfg.variants), cfg.n_layers, cfg.n_heads, cfg.width
    scale = np.array([4.0 + 2.0 * ell for ell in range(L)])
    coh = np.array([_BIAS_COHERENCE.get(k, (0.0, 0.0)) for k in cfg.layer_kind])  # (L, 2): c, σ
    c, sigma = coh[None, None, :, 0], coh[None, None, :, 1]
    jitter = rng.uniform(0.9, 1.1, (2, v, n, L, H))

    original_head = rng.uniform(1.0, 3.0, (v, n, L, H)) * (1 - alpha)
    g = rng.standard_normal((v, n, L, W))
    original = g / np.linalg.norm(g, axis=-1, keepdims=True) * np.sqrt((original_head**2).sum(-1))[..., None]

    dir_norm = np.linalg.norm(bias_dirs, axis=-1)  # (L, H)
    bias_head = 3.0 * alpha * np.sqrt(c[..., None] ** 2 * dir_norm**2 + sigma[..., None] ** 2) * jitter[0]
    shared = np.einsum("vnlh,lhw->vnlw", alpha, bias_dirs)
    spread = np.sqrt((alpha**2).sum(-1))[..., None] * rng.standard_normal((v, n, L, W)) / np.sqrt(W)
    bias = 3.0 * (c[..., None] * shared + sigma[..., None] * spread)

    x = rng.standard_normal((v, n, L, W)) / np.sqrt(W) * scale[None, None, :, None]
    return {
        "original_norm": original_head,
        "bias_head_norm": bias_head,
        "original_total_norm": np.linalg.norm(original, axis=-1),
        "bias_norm": np.linalg.norm(bias, axis=-1),
        "residual_norm": np.linalg.norm(x, axis=-1),
        "original": original,
        "bias": bias,
    }


def _bias_dirs(seed: int, d: int, s: int, cfg: _Config, tower: int) -> np.ndarray:
    """The direction of the prompt values: fixed per dataset, seed, layer and head (a dataset bias)."""
    rng = np.random.default_rng([seed, d, s, 4 + tower])
    return rng.standard_normal((cfg.n_layers, cfg.n_heads, cfg.width)) / np.sqrt(cfg.width)


def _run_arrays(
    cfg: _Config,
    seed: int,
    d: int,
    s: int,
    b: int,
    labels: np.ndarray,
    wanted: frozenset[str] | None = None,
    image_seed: int | None = None,
) -> dict[str, np.ndarray]:
    """The vision and logits arrays of one block of images (numpy, float32); only ``wanted`` if given.

    Every component draws from its own random stream, so asking for fewer variables gives the
    same values for those asked.
    """
    names = set(_run_shapes(cfg)) if wanted is None else set(wanted) & set(_run_shapes(cfg))

    def rng(k: int) -> np.random.Generator:
        return np.random.default_rng([seed, d, s, b, 1, k])

    n, v, L, H, G = len(labels), len(cfg.variants), cfg.n_layers, cfg.n_heads, cfg.grid
    fg = _foreground(seed if image_seed is None else image_seed, d, b, n, G)
    fg_flat = fg.reshape(n, G * G)
    out: dict[str, np.ndarray] = {"foreground": fg}

    alpha = _alpha(rng(0), cfg, (H,), n)
    out["prompt_mass"] = alpha
    if "prompt_mass_other_queries" in names:
        out["prompt_mass_other_queries"] = _alpha(rng(1), cfg, (H,), n)

    if names & {"cls_attention", "attention_by_role"}:
        # [cls] over the originals: a foreground bump that sharpens with depth (more with prompts)
        focus = np.where(cfg.prompted[:, None], 1.0 + 0.3 * np.arange(L), 1.0 + 0.1 * np.arange(L))  # (v, L)
        r = rng(2)
        scores = r.standard_normal((v, n, L, H, 1 + G * G))
        scores[..., 0] = scores[..., 0] * 0.5 + 1.0
        scores[..., 1:] += focus[:, None, :, None, None] * fg_flat[None, :, None, None]
        a_hat = np.exp(scores - scores.max(axis=-1, keepdims=True))
        a_hat /= a_hat.sum(axis=-1, keepdims=True)
        out["cls_attention"] = a_hat[..., 1:].reshape(v, n, L, H, G, G)
        out["attention_by_role"] = np.stack(
            [(1 - alpha) * a_hat[..., 0], (1 - alpha) * (1 - a_hat[..., 0]), alpha], axis=-1
        )

    if names & {"original_norm", "bias_head_norm", "original_total_norm", "bias_norm", "residual_norm", "bias"}:
        out.update(_decomposition(rng(3), cfg, alpha, n, _bias_dirs(seed, d, s, cfg, 0)))

    has_prompts = cfg.prompted[:, None, None, None, None] & (cfg.layer_kind != "none")[None, None, :, None, None]
    bg = 1.0 - fg_flat[None, :, None, None]
    for k, (name, base, fg_w, bg_w) in enumerate(
        (("prompt_key_cosine", 0.1, 0.3, 0.6), ("prompt_value_cosine", 0.05, 0.2, 0.4))
    ):
        if name in names:
            cos = np.tanh(base + bg_w * bg - fg_w * (1 - bg) + 0.25 * rng(4 + k).standard_normal((v, n, L, H, G * G)))
            out[name] = np.where(has_prompts, cos, np.nan).reshape(v, n, L, H, G, G)

    if "logits" in names:
        logits = rng(6).normal(20.0, 2.0, (v, n, cfg.n_classes))
        logits[:, np.arange(n), labels] += np.where(cfg.prompted, 6.0, 3.0)[:, None]
        out["logits"] = logits
    return {k: np.asarray(val, dtype=np.float32) for k, val in out.items() if k in names}


def _text_arrays(cfg: _Config, seed: int, d: int, s: int) -> dict[str, np.ndarray]:
    """All text arrays of one run (class prompts read at EOT)."""
    rng = np.random.default_rng([seed, d, s, 3])
    c = cfg.n_classes
    alpha = _alpha(rng, cfg, (cfg.n_heads,), c)
    alpha_other = _alpha(rng, cfg, (cfg.n_heads,), c)
    # EOT attention over the originals: sot (attention sink), template words, class name, eot;
    # pad is causally masked
    rest = rng.dirichlet([6.0, 1.5, 1.5, 1.0], alpha.shape)
    zeros = np.zeros(alpha.shape)
    sot, word, classname, eot = (rest[..., k] * (1 - alpha) for k in range(4))
    by_role = np.stack([sot, alpha, word, classname, eot, zeros], axis=-1)  # schema.TEXT_ROLES order
    dec = _decomposition(rng, cfg, alpha, c, _bias_dirs(seed, d, s, cfg, 1))
    out = {
        "prompt_mass": alpha,
        "prompt_mass_other_queries": alpha_other,
        "attention_by_role": by_role,
        "output_bias_norm": rng.uniform(0.5, 1.5, cfg.n_layers),
        **dec,
    }
    return {k: np.asarray(val, dtype=np.float32) for k, val in out.items() if k in _text_shapes(cfg)}


# ----------------------------------------------------------------------------------------------
# assembling labelled Datasets
# ----------------------------------------------------------------------------------------------


def _class_splits(n_classes: int) -> np.ndarray:
    n_base = (n_classes + 1) // 2
    return np.array(["base" if k < n_base else "novel" for k in range(n_classes)])


def _shared_coords(cfg: _Config, tower: str) -> dict[str, Any]:
    roles = schema.VISION_ROLES if tower == "vision" else schema.TEXT_ROLES
    coords: dict[str, Any] = {
        "variant": list(cfg.variants),
        "layer": np.arange(cfg.n_layers),
        "layer_kind": ("layer", cfg.layer_kind),
        "head": np.arange(cfg.n_heads),
        "key_role": list(roles),
    }
    if tower == "vision":
        coords["patch_row"] = np.arange(cfg.grid)
        coords["patch_col"] = np.arange(cfg.grid)
    if cfg.with_vectors:
        coords["channel"] = np.arange(cfg.width)
    return coords


def _classnames(names: list[str], n_classes: int) -> np.ndarray:
    """(dataset, class) class names; a single run's classes are plain ``class_k``."""
    if len(names) == 1:
        return np.array([[f"class_{k}" for k in range(n_classes)]])
    return np.array([[f"{name}_class_{k}" for k in range(n_classes)] for name in names])


def _image_coords(labels: np.ndarray, n_classes: int, names: list[str]) -> dict[str, Any]:
    """label/classname/split/path coords; 1-D for one dataset, (dataset, image) for a study."""
    splits = _class_splits(n_classes)
    classnames = _classnames(names, n_classes)
    lab = np.atleast_2d(labels)
    cn = np.stack([classnames[i][lab[i]] for i in range(len(names))])
    paths = np.array([[f"{name}/img_{i:05d}.png" for i in range(lab.shape[1])] for name in names])
    dims: tuple[str, ...] = ("dataset", "image")
    if labels.ndim == 1:
        cn, paths, dims = cn[0], paths[0], ("image",)
    return {
        "label": (dims, labels.astype(np.int64)),
        "classname": (dims, cn),
        "split": (dims, splits[labels]),
        "path": (dims, paths),
    }


def _vision_dataset(
    cfg: _Config, arrays: dict[str, np.ndarray], labels: np.ndarray, dataset: str, seed: int
) -> xr.Dataset:
    shapes = _run_shapes(cfg)
    data = {name: (shapes[name][0], arrays[name]) for name in shapes if name != "logits"}
    out_bias = np.random.default_rng([seed, cfg.n_layers]).uniform(0.5, 1.5, cfg.n_layers)
    data["output_bias_norm"] = (("layer",), out_bias.astype(np.float32))
    coords = {
        **_shared_coords(cfg, "vision"),
        "image": np.arange(len(labels)),
        **_image_coords(labels, cfg.n_classes, [dataset]),
    }
    return xr.Dataset(data, coords=coords)


def _text_dataset(cfg: _Config, arrays: dict[str, np.ndarray]) -> xr.Dataset:
    shapes = _text_shapes(cfg)
    data = {name: (shapes[name][0], arrays[name]) for name in shapes}
    coords = {
        **_shared_coords(cfg, "text"),
        "class": np.arange(cfg.n_classes),
        "classname": ("class", _classnames(["run"], cfg.n_classes)[0]),
        "split": ("class", _class_splits(cfg.n_classes)),
    }
    return xr.Dataset(data, coords=coords)


def _direct_dataset(cfg: _Config, logits: np.ndarray, labels: np.ndarray, seed: int, *,
                    all_classes: bool) -> xr.Dataset:
    """The ``direct`` group: per tower, random component effects on every class that sum to the logits.

    β components of prompted variants push the label class up, more in injected layers; prompt-free
    variants have none. The rest of each logit is spread over the other components (random
    shares), so each tower's components sum to the logit exactly (float32 round-off).
    """
    rng = np.random.default_rng([seed, 7])
    v, n, c = logits.shape
    layouts = {tower: schema.direct_layout([cfg.n_heads] * cfg.n_layers) for tower in schema.BRANCHES}
    per_tower = []
    for tower in schema.BRANCHES:
        kinds = np.array([k for k, _, _ in layouts[tower]])
        layers = np.array([layer for _, layer, _ in layouts[tower]])
        is_bias = kinds == "bias"
        kind_of_layer = np.where(layers >= 0, cfg.layer_kind[np.clip(layers, 0, None)], "none")
        push = np.where(is_bias & (kind_of_layer == "injected"), 0.8, np.where(is_bias & (kind_of_layer == "carried"),
                                                                                0.3, 0.0))
        bias = rng.normal(0.0, 0.3, (v, n, len(kinds), c)) * is_bias[None, None, :, None]
        bias[np.arange(v)[:, None], np.arange(n)[None, :], :, labels[None, :]] += push
        bias *= cfg.prompted[:, None, None, None]
        shares = rng.dirichlet(np.ones(int((~is_bias).sum())), (v, n, c))  # [v, n, c, k]: sums to one
        rest = np.zeros_like(bias)
        rest[:, :, ~is_bias] = np.moveaxis(shares, -1, 2) * (logits - bias.sum(2))[:, :, None, :]
        per_tower.append(bias + rest)
    all_classes_effect = np.concatenate(per_tower, axis=2)  # [v, n, components, classes]
    rows = np.arange(n)
    label = all_classes_effect[:, rows, :, labels]  # [n, v, components] (advanced indices first)
    label = np.moveaxis(label, 0, 1)
    others = (all_classes_effect.sum(-1) - label) / max(c - 1, 1)
    margin = label - others if c > 1 else np.full_like(label, np.nan)
    label_logit = logits[:, rows, labels]
    totals = np.stack([label_logit, label_logit - (logits.sum(-1) - label_logit) / max(c - 1, 1)], axis=-1)
    data = {
        "direct_effect": (("variant", "image", "component", "target"), np.stack([label, margin], axis=-1)),
        "direct_total": (("variant", "image", "target"), totals),
    }
    if all_classes:
        data["direct_effect_all_classes"] = (("variant", "image", "component", "class"), all_classes_effect)
    coords = {"variant": list(cfg.variants), "image": np.arange(n), "target": list(schema.DIRECT_TARGETS),
              "bias_source": "prompt", **schema.direct_component_coords(layouts)}
    if all_classes:
        coords["class"] = np.arange(c)
    ds = xr.Dataset({k: (dims, np.asarray(a, dtype=np.float32)) for k, (dims, a) in data.items()}, coords=coords)
    return ds


def _logits_dataset(cfg: _Config, logits: np.ndarray, labels: np.ndarray, dataset: str) -> xr.Dataset:
    return xr.Dataset(
        {"logits": (("variant", "image", "class"), logits)},
        coords={
            "variant": list(cfg.variants),
            "image": np.arange(len(labels)),
            "class": np.arange(cfg.n_classes),
            "label": ("image", labels.astype(np.int64)),
            "classname": ("class", _classnames([dataset], cfg.n_classes)[0]),
        },
    )
