"""How trace trees sit in zarr: format 3 with shards sized by bytes along ``image``, variable-length strings, and
the root document (attributes and consolidated metadata) replaced in one step.

Shared by :mod:`mmlens.store.io` (open, whole-tree export), :mod:`mmlens.store.writer` (streaming) and
:mod:`mmlens.store.integrity`. Stores of schema 1 and 2 are zarr format 2; they stay readable (every reader
here handles both formats), but nothing writes format 2 any more.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

#: zarr format of every store mmlens writes (schema 3); schema 1 and 2 stores are format 2 and stay readable
ZARR_FORMAT = 3
#: Target byte size of the shard of the largest per-image variable: shards come out between half and all of it.
SHARD_BYTES = 64 * 2**20
#: Target byte size of the inner chunks of a shard (the unit zarr reads and decodes): between half and all of it.
CHUNK_BYTES = 4 * 2**20
#: Most images per shard (stores of small models would otherwise put a whole dataset in one shard, which
#: every append then rewrites; see docs/store_schema.md, "Storage", for the write amplification).
MAX_IMAGES_PER_SHARD = 1024
#: Chunk keys ``c.0.3.0.0`` (zarr 3's default encoding with "." as separator): every shard is a file of its
#: array's folder, with no directory per index level, so listings stay one ``scandir`` per array.
CHUNK_KEY_ENCODING = {"name": "default", "separator": "."}
#: Bytes assumed per variable-length string when sizing shards (paths and class names).
STRING_BYTES = 64
#: The copy of the root ``zarr.json`` (attrs and consolidated metadata) that a resume restores it from.
ROOT_COPY = ".mmlens_root.json"


def map_groups(tree: xr.DataTree, fn: Any, keep_root: bool = False) -> xr.DataTree:
    root = tree.to_dataset(inherit=False) if keep_root else xr.Dataset()
    nodes = {"/": root.assign_attrs(dict(tree.attrs))}
    for node in tree.subtree:
        if node is tree:
            continue
        nodes[node.relative_to(tree)] = fn(node.to_dataset(inherit=False))
    return xr.DataTree.from_dict(nodes)


def plain_strings(ds: xr.Dataset) -> xr.Dataset:
    """zarr 3 reads variable-length strings as numpy StringDType; give them back as object arrays.

    Only string variables are loaded (coordinates and ``failures``: small); numbers stay lazy.
    """
    changed = {name: var.load().astype(object) for name, var in ds.variables.items() if var.dtype.kind == "T"}
    if not changed:
        return ds
    data = {k: v for k, v in changed.items() if k in ds.data_vars}
    coords = {k: v for k, v in changed.items() if k not in ds.data_vars}
    return ds.assign(data).assign_coords(coords)


def vlen_strings(ds: xr.Dataset) -> xr.Dataset:
    """Fixed-width numpy strings -> object arrays, which zarr stores as variable-length UTF-8 (both formats).

    In format 3 the data type is ``string`` with the ``vlen-utf8`` codec; reading gives numpy StringDType,
    which :func:`plain_strings` turns back into objects.
    """
    ds = ds.drop_encoding()
    changed = {
        name: var.astype(object)
        for name, var in ds.variables.items()
        if var.dtype.kind in "UT"  # numpy fixed-width and StringDType strings
    }
    if not changed:
        return ds
    data = {k: v for k, v in changed.items() if k in ds.data_vars}
    coords = {k: v for k, v in changed.items() if k not in ds.data_vars}
    return ds.assign(data).assign_coords(coords)


# ----------------------------------------------------------------------------------------------
# shards and chunks sized by bytes
# ----------------------------------------------------------------------------------------------


def _bytes_per_image(var: xr.Variable) -> int:
    """Uncompressed bytes one image takes in ``var`` (strings counted as :data:`STRING_BYTES`)."""
    itemsize = STRING_BYTES if var.dtype.kind in "OUTS" else var.dtype.itemsize
    return int(itemsize * np.prod([n for d, n in var.sizes.items() if d != "image"], dtype=np.int64))


def _floor_pow2(x: float) -> int:
    return 1 << int(np.floor(np.log2(x))) if x >= 1 else 1


def images_per_shard(
    batch: Mapping[str, xr.Dataset] | xr.DataTree,
    *,
    shard_bytes: int = SHARD_BYTES,
    max_images: int = MAX_IMAGES_PER_SHARD,
) -> int:
    """Images per *region* of a store: the unit of work that every variable's shards divide.

    Each variable is sharded by its own bytes (:func:`image_encoding`): a power of two of images such that
    its shard holds at most ``shard_bytes``, at most this number. This number is the shard of the smallest
    per-image variables: the largest power of two within ``shard_bytes`` for them, between 1 and
    ``max_images``. As every shard size is a power of two no larger than it, a range of whole regions is
    whole shards of every variable at once: one unit of work for a resume, a repair or a cluster task.

    Parameters
    ----------
    batch
        ``{group: Dataset}`` (or a trace tree) of at least one image: the variables to store.
    shard_bytes
        Target size of a shard; default :data:`SHARD_BYTES` (64 MiB).
    max_images
        Cap; default :data:`MAX_IMAGES_PER_SHARD`.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> tree = example_tree(n_images=2, n_layers=12, n_heads=12, grid=14)
    >>> images_per_shard(tree)  # the per-image coordinates are a few bytes: the cap
    1024
    >>> images_per_shard(tree, max_images=256)
    256
    """
    groups = _as_groups(batch)
    smallest = min(
        (_bytes_per_image(var) for ds in groups.values() for var in ds.variables.values() if "image" in var.dims),
        default=0,
    )
    if smallest == 0:
        return max_images
    return int(min(max(_floor_pow2(shard_bytes / smallest), 1), max_images))


def image_encoding(
    ds: xr.Dataset,
    images_per_shard: int,
    *,
    shard_bytes: int = SHARD_BYTES,
    chunk_bytes: int = CHUNK_BYTES,
    chunk_images: int | None = None,
) -> dict[str, dict[str, Any]]:
    """The zarr encoding of the variables of ``ds`` with an ``image`` dim: shards and chunks by bytes.

    Each variable's shard holds the whole of its other dims and the largest divisor of ``images_per_shard``
    (the store's region, :func:`images_per_shard`) of images that fits in ``shard_bytes``, at least one:
    every shard divides the region. Its inner chunks hold the largest divisor of the shard
    whose bytes stay within ``chunk_bytes``, at least one image.

    Parameters
    ----------
    ds
        One group.
    images_per_shard
        The region, from :func:`images_per_shard` (or an explicit ``shard_images=`` of the writer).
    shard_bytes
        Target size of a shard; default :data:`SHARD_BYTES` (64 MiB).
    chunk_bytes
        Target size of an inner chunk; default :data:`CHUNK_BYTES` (4 MiB).
    chunk_images
        Images per inner chunk instead of the byte rule (must divide ``images_per_shard``).

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> vision = example_tree(n_images=2, n_layers=12, n_heads=12, grid=14)["vision"].to_dataset()
    >>> enc = image_encoding(vision, 1024)
    >>> enc["cls_attention"]["shards"], enc["cls_attention"]["chunks"]  # 226 KB per image
    ((2, 256, 12, 12, 14, 14), (2, 16, 12, 12, 14, 14))
    >>> enc["prompt_mass"]["shards"], enc["prompt_mass"]["chunks"]  # 1 KB per image: the region, one chunk
    ((2, 1024, 12, 12), (2, 1024, 12, 12))
    """
    if chunk_images is not None and images_per_shard % chunk_images:
        raise ValueError(f"chunk_images={chunk_images} does not divide the {images_per_shard} images per shard; "
                         "pass a divisor (or leave chunk_images unset to size chunks by bytes)")
    out: dict[str, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        if "image" not in var.dims:
            continue
        per_image = _bytes_per_image(var)
        # the largest divisor of the region within shard_bytes (a power of two for a power-of-two region)
        shard = images_per_shard if chunk_images is not None else _inner_images(per_image, images_per_shard,
                                                                               shard_bytes)
        inner = chunk_images or _inner_images(per_image, shard, chunk_bytes)
        out[str(name)] = {
            "shards": tuple(shard if d == "image" else n for d, n in var.sizes.items()),
            "chunks": tuple(inner if d == "image" else n for d, n in var.sizes.items()),
            "chunk_key_encoding": dict(CHUNK_KEY_ENCODING),
        }
    return out


def _inner_images(per_image: int, shard: int, chunk_bytes: int) -> int:
    fit = max(chunk_bytes // max(per_image, 1), 1)
    return max(d for d in range(1, shard + 1) if shard % d == 0 and d <= fit)


def _as_groups(batch: Mapping[str, xr.Dataset] | xr.DataTree) -> dict[str, xr.Dataset]:
    if isinstance(batch, xr.DataTree):
        return {name: node.to_dataset(inherit=False) for name, node in batch.children.items()}
    return dict(batch)


# ----------------------------------------------------------------------------------------------
# the format of a store on disk, and its root document
# ----------------------------------------------------------------------------------------------


def store_format(path: str | os.PathLike) -> int | None:
    """zarr format of the store at ``path`` from its root files (3: ``zarr.json``, 2: ``.zgroup``/``.zmetadata``)."""
    path = Path(path)
    if (path / "zarr.json").is_file() or (path / ROOT_COPY).is_file():
        return 3
    if (path / ".zgroup").is_file() or (path / ".zmetadata").is_file():
        return 2
    return None


def node_documents(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Every ``zarr.json`` below the root of a format-3 store, ``{relative path: document}``."""
    path = Path(path)
    out: dict[str, dict[str, Any]] = {}
    for dirpath, dirnames, files in os.walk(path):
        rel = Path(dirpath).relative_to(path).as_posix()
        if "zarr.json" not in files or rel == ".":
            continue
        with open(Path(dirpath) / "zarr.json") as f:
            doc = json.load(f)
        out[rel] = doc
        if doc.get("node_type") == "array":
            dirnames[:] = [d for d in dirnames if d != "c"]  # nested chunk keys: no metadata below
    return out


def write_root(path: str | os.PathLike, attributes: Mapping[str, Any]) -> None:
    """Replace a format-3 store's root ``zarr.json`` with ``attributes`` and consolidated metadata, in one step.

    zarr's own ``update_attributes`` drops the consolidated metadata from the root document and
    ``consolidate_metadata`` writes it again: two replaces, between which a reader sees the new
    attributes without it. Writing the document once makes a commit one atomic file replace (the data
    is on disk before the document that announces it).

    The same document is first written to :data:`ROOT_COPY`, from which a resume restores a lost root
    document (format 2 kept the root attrs twice too, in ``.zattrs`` and ``.zmetadata``). Both replaces
    come after the data, so either copy describes data that is on disk.
    """
    path = Path(path)
    metadata = {}
    for key, doc in sorted(node_documents(path).items()):
        if doc.get("node_type") == "group":  # the shape zarr gives consolidated child groups
            doc = {**doc, "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": {}}}
        metadata[key] = doc
    root = {
        "attributes": dict(attributes),
        "zarr_format": 3,
        "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": metadata},
        "node_type": "group",
    }
    text = json.dumps(root, indent=2)
    atomic_write_text(path / ROOT_COPY, text)
    atomic_write_text(path / "zarr.json", text)


def restore_root(path: str | os.PathLike) -> bool:
    """Put back a lost root ``zarr.json`` from :data:`ROOT_COPY`; return whether it did."""
    path = Path(path)
    copy = path / ROOT_COPY
    if (path / "zarr.json").exists() or not copy.is_file():
        return False
    atomic_write_text(path / "zarr.json", copy.read_text())
    return True


def atomic_write_text(target: Path, text: str) -> None:
    """Write ``target`` through a ``.partial`` file and a rename (what zarr's LocalStore does for its files)."""
    tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def read_root_document(path: str | os.PathLike) -> dict[str, Any]:
    with open(Path(path) / "zarr.json") as f:
        return json.load(f)
