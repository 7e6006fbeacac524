"""Write toyworld domains to disk in the CoOp layout (images, masks, split JSON) and their manifests.

Layout of one domain under ``out``::

    <out>/<folder>/images/<class_dir>/<split>_<index>.png     RGB, 64x64
    <out>/<folder>/masks/<split>_<index>.png                  L, 255 = object, 0 = background
    <out>/<folder>/split_zhou_<Name>.json                     {"train": [[relpath, label, classname], ...], ...}
    <out>/<folder>/toyworld.json                              generator settings and class attributes

>>> import tempfile
>>> out = tempfile.mkdtemp()
>>> info = write_domain("texture", out, seed=0, size="small")
>>> info["split_sizes"]
{'train': 768, 'val': 192, 'test': 384}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmlens.data.toyworld.domains import DOMAINS, Domain, get_domain
from mmlens.data.toyworld.generate import SIZES, SPLITS, generate

IMAGE_DIR = "images"
MASK_DIR = "masks"
GENERATOR_VERSION = 3


def class_dir(classname: str) -> str:
    """Folder name of a class: its name with spaces as underscores (``"red star"`` -> ``"red_star"``)."""
    return classname.replace(" ", "_")


def relpath(classname: str, split: str, index: int) -> str:
    """Path of an image under the images folder, e.g. ``red_star/test_00012.png`` (stems are unique)."""
    return f"{class_dir(classname)}/{split}_{index:05d}.png"


def split_items(domain: str | Domain, split: str, n_per_class: int) -> list[list[Any]]:
    """The ``[relpath, label, classname]`` rows of a split, in generation (label-major) order."""
    d = get_domain(domain)
    labels = np.repeat(np.arange(d.num_classes), n_per_class)
    return [[relpath(d.classnames[lab], split, i), int(lab), d.classnames[lab]] for i, lab in enumerate(labels)]


def _save_png(arr: np.ndarray, path: Path, mode: str) -> None:
    Image.fromarray(arr, mode=mode).save(path, format="PNG", optimize=False, compress_level=6)


def write_domain(
    domain: str | Domain,
    out: str | Path,
    *,
    seed: int = 0,
    size: str = "full",
    per_class: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Generate every split of one domain and write it in the CoOp layout; return its ``toyworld.json``.

    Parameters
    ----------
    domain
        Domain key or dataset name.
    out
        Data root; the domain goes to ``out/<folder>``.
    seed
        Data seed (same seed -> identical files).
    size
        ``"small"`` or ``"full"`` (images per class and split: see :data:`SIZES`).
    per_class
        Images per class for each split, overriding ``size`` (e.g. tiny trees in tests).
    """
    d = get_domain(domain)
    if size not in SIZES:
        raise ValueError(f"size must be one of {list(SIZES)}, got {size!r}")
    counts = dict(SIZES[size], **(per_class or {}))
    root = Path(out) / d.folder
    (root / MASK_DIR).mkdir(parents=True, exist_ok=True)
    for name in d.classnames:
        (root / IMAGE_DIR / class_dir(name)).mkdir(parents=True, exist_ok=True)
    split_json: dict[str, list] = {}
    for split in SPLITS:
        n = counts[split]
        g = generate(d, n, seed=seed, split=split)
        rows = split_items(d, split, n)
        for (rel, _, _), img, mask in zip(rows, g.images, g.masks):
            _save_png(img, root / IMAGE_DIR / rel, "RGB")
            _save_png(mask.astype(np.uint8) * 255, root / MASK_DIR / (Path(rel).stem + ".png"), "L")
        split_json[split] = rows
    (root / d.split_file).write_text(json.dumps(split_json, indent=None, separators=(",", ":")) + "\n")
    info = {
        "name": d.name,
        "domain": d.key,
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "size": size if not per_class else "custom",
        "per_class": counts,
        "split_sizes": {s: len(split_json[s]) for s in SPLITS},
        "shift": d.shift,
        "echoes": d.echoes,
        "classes": [
            {"label": i, "classname": c.name, "colour": c.colour, "shape": c.shape, "pattern": c.pattern}
            for i, c in enumerate(d.classes)
        ],
    }
    (root / "toyworld.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def write_all(
    out: str | Path, *, seed: int = 0, size: str = "full", domains: list[str] | None = None
) -> list[dict[str, Any]]:
    """Write every toyworld domain (or ``domains``) under the data root ``out``."""
    keys = [get_domain(k).key for k in (domains or list(DOMAINS))]
    return [write_domain(k, out, seed=seed, size=size) for k in keys]


def manifest_dict(domain: str | Domain) -> dict[str, Any]:
    """The manifest of a domain (schema ``data_manifests/manifest.schema.json``), for the ``full`` size."""
    d = get_domain(domain)
    full = SIZES["full"]
    return {
        "name": d.name,
        "manifest_version": 1,
        "kind": "toyworld",
        "aliases": [d.folder, f"toyworld_{d.key}"],
        "description": f"toyworld {d.key} domain ({d.echoes} analogue): {d.shift}.",
        "folder": d.folder,
        "image_dir": IMAGE_DIR,
        "layout": "split_json",
        "split_file": d.split_file,
        "num_classes": d.num_classes,
        "classnames": d.classnames,
        "classname_rewrites": {},
        "splits": list(SPLITS),
        "expected_split_sizes": {s: full[s] * d.num_classes for s in SPLITS},
        "masks": {
            "dir": MASK_DIR,
            "pattern": "{stem}.png",
            "foreground_values": [255],
            "description": "Exact object silhouettes (no anti-aliasing): 255 = object, 0 = background.",
        },
        "source": {
            "data": "generated by `mmlens data toyworld --out DIR` (mmlens.data.toyworld)",
            "splits": "generated",
            "notes": "`--size full` matches expected_split_sizes; `--size small` writes "
            + ", ".join(f"{SIZES['small'][s]} {s}" for s in SPLITS)
            + " images per class (check with `mmlens data verify --skip-counts`).",
        },
        "licence": "generated, MIT",
        "protocol": {
            "base_to_novel": True,
            "cross_dataset_target": d.key != "photo",
            "cross_dataset_source": d.key == "photo",
            "domain_generalisation_of": None,
        },
        "extra": {
            "toyworld_domain": d.key,
            "generator_version": GENERATOR_VERSION,
            "echoes": d.echoes,
            "sizes": {k: {s: v[s] * d.num_classes for s in SPLITS} for k, v in SIZES.items()},
            "role": "pre-training domain (held-out images; cross-dataset source of toyworld)"
            if d.key == "photo"
            else "downstream domain",
        },
    }


def manifest_yaml(domain: str | Domain) -> str:
    """The manifest of a domain as YAML text with a header comment."""
    import yaml

    d = get_domain(domain)
    head = (
        f"# {d.name} — mmlens dataset manifest (schema: manifest.schema.json, docs/toyworld.md)\n"
        "# Written by scripts/toyworld_manifests.py from mmlens.data.toyworld; do not edit by hand.\n"
    )
    return head + yaml.safe_dump(manifest_dict(d), sort_keys=False, allow_unicode=True, width=110)
