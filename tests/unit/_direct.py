"""Test data for the direct-effects and lens views: a `direct` group built by hand (the layout of
docs/store_schema.md, "direct"), and a lens result as `mmlens.lens` returns it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

KINDS = ("embedding", "original", "bias", "output_bias", "mlp", "ln_bias")
TARGETS = ("label", "margin")


def components(n_layers: int, n_heads: int, *, learned_bias: bool = False) -> dict[str, np.ndarray]:
    """The flat `component` coords of both towers as docs/store_schema.md lists them (tower, kind, layer, head)."""
    rows: list[tuple[str, str, int, int]] = []
    for tower in ("vision", "text"):
        rows.append((tower, "embedding", -1, -1))
        for layer in range(n_layers):
            rows += [(tower, "original", layer, h) for h in range(n_heads)]
            rows += [(tower, "bias", layer, -1)] if learned_bias else [(tower, "bias", layer, h)
                                                                        for h in range(n_heads)]
            rows += [(tower, "output_bias", layer, -1), (tower, "mlp", layer, -1)]
        rows.append((tower, "ln_bias", -1, -1))
    tower, kind, layer, head = zip(*rows)
    return {"tower": np.array(tower), "kind": np.array(kind), "layer": np.array(layer, np.int64),
            "head": np.array(head, np.int64)}


def direct_group(labels: np.ndarray, *, n_layers: int, n_heads: int, variants: Sequence[str] = ("full", "zeroshot"),
                 seed: int = 0, learned_bias: bool = False, image_coords: dict | None = None) -> xr.Dataset:
    """One run's `direct` group: random components whose per-tower sums equal `direct_total` exactly.

    Both towers split the same logit and margin, so the text tower's `ln_bias` component is set to what
    makes its sum equal the vision tower's. The `bias` effects get a per-layer offset so that layers
    differ clearly (a test that mixes up layers fails). Images with label -1 are NaN.
    """
    rng = np.random.default_rng(seed)
    comp = components(n_layers, n_heads, learned_bias=learned_bias)
    n_img, n_comp = len(labels), len(comp["kind"])
    values = rng.normal(0.0, 1.0, (len(variants), n_img, n_comp, len(TARGETS))).astype(np.float64)
    bias = comp["kind"] == "bias"
    values[:, :, bias, :] += (1.0 + comp["layer"][bias])[None, None, :, None]
    if "zeroshot" in variants:  # no prompts, no β
        values[list(variants).index("zeroshot"), :, bias, :] = 0.0
    vision = comp["tower"] == "vision"
    total = values[:, :, vision, :].sum(2)
    last = np.flatnonzero((comp["tower"] == "text") & (comp["kind"] == "ln_bias"))[0]
    values[:, :, last, :] = 0.0
    values[:, :, last, :] = total - values[:, :, ~vision, :].sum(2)
    values[:, labels < 0] = np.nan
    total[:, labels < 0] = np.nan
    coords = {"variant": list(variants), "image": np.arange(n_img), "target": list(TARGETS),
              **{k: ("component", v) for k, v in comp.items()},
              "component": np.arange(n_comp), "bias_source": "learned" if learned_bias else "prompt"}
    coords.update(image_coords or {"label": ("image", labels)})
    return xr.Dataset(
        {"direct_effect": (("variant", "image", "component", "target"), values.astype(np.float32)),
         "direct_total": (("variant", "image", "target"), total.astype(np.float32))},
        coords=coords,
    )


def with_direct(tree: xr.DataTree, *, seed: int = 0, learned_bias: bool = False) -> xr.DataTree:
    """``tree`` (``example_tree`` or ``example_study``) with a hand-built `direct` group on its images."""
    vision = tree["vision"].to_dataset()
    n_layers, n_heads = vision.sizes["layer"], vision.sizes["head"]
    variants = [str(v) for v in vision["variant"].values]
    keep = [c for c in ("label", "classname", "split", "path") if c in vision.coords]
    if "dataset" not in vision.dims:
        coords = {c: ("image", vision[c].values) for c in keep}
        group = direct_group(vision["label"].values, n_layers=n_layers, n_heads=n_heads, variants=variants,
                             seed=seed, learned_bias=learned_bias, image_coords=coords)
    else:
        runs = []
        for d, dataset in enumerate(vision["dataset"].values):
            labels = vision["label"].sel(dataset=dataset).values
            per_seed = [direct_group(labels, n_layers=n_layers, n_heads=n_heads, variants=variants,
                                     seed=seed + 97 * d + s, learned_bias=learned_bias).drop_vars("label")
                        for s in range(vision.sizes["seed"])]
            runs.append(xr.concat(per_seed, dim="seed", coords="minimal", compat="override"))
        group = xr.concat(runs, dim="dataset", coords="minimal", compat="override")
        group = group.assign_coords(dataset=vision["dataset"].values, seed=vision["seed"].values,
                                    **{c: vision[c] for c in keep})
    out = tree.copy()
    out["direct"] = group
    return out


def lens_dataset(*, dataset: str, n_layers: int, n_heads: int, phrases: Sequence[str], top: int = 3,
                 seed: int = 0, method: str = "maple") -> xr.Dataset:
    """A lens result as `mmlens.lens` writes it (`mmlens.lens`): layer_bias and head_bias directions per tower."""
    rng = np.random.default_rng(seed)
    rows = [(t, "layer_bias", ell, -1) for t in ("vision", "text") for ell in range(n_layers)]
    rows += [(t, "head_bias", ell, h) for t in ("vision", "text") for ell in range(n_layers) for h in range(n_heads)]
    tower, kind, layer, head = (np.array(x) for x in zip(*rows))
    n = len(rows)
    pick = np.stack([rng.choice(len(phrases), top, replace=False) for _ in range(n)])
    cosine = -np.sort(-rng.uniform(0.05, 0.6, (n, top)), axis=1)
    return xr.Dataset(
        {"phrase": (("direction", "rank"), np.asarray(phrases, dtype=object)[pick].astype(str)),
         "cosine": (("direction", "rank"), cosine.astype(np.float32)),
         "source": (("direction", "rank"), np.full((n, top), "phrase")),
         "control_cosine": ("direction", rng.uniform(0.1, 0.3, n).astype(np.float32)),
         "control_p": ("direction", rng.uniform(0.0, 1.0, n).astype(np.float32))},
        coords={"direction": np.arange(n), "rank": np.arange(1, top + 1), "tower": ("direction", tower),
                "kind": ("direction", kind), "layer": ("direction", layer.astype(np.int64)),
                "head": ("direction", head.astype(np.int64)), "prompt_token": ("direction", np.full(n, -1))},
        attrs={"dataset": dataset, "method": method, "vocabulary_sha256": "0" * 64,
               "template": "a photo of {}."},
    )
