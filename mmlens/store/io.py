"""Reading and exporting trace stores: ``mmlens.open``, whole-tree zarr/netCDF export.

The resumable streaming writer is :mod:`mmlens.store.writer` (its names are importable from here too).
"""

from __future__ import annotations

import builtins
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import xarray as xr

from mmlens.store import integrity, schema
from mmlens.store._encoding import (
    ROOT_COPY,
    ZARR_FORMAT,
    image_encoding,
    images_per_shard,
    map_groups,
    plain_strings,
    store_format,
    vlen_strings,
    write_root,
)
from mmlens.store.integrity import StoreIntegrityError, store_status
from mmlens.store.lock import StoreLockedError
from mmlens.store.regions import pending_note
from mmlens.store.writer import StoreFullError, StoreIdentityError, StoreWriter

__all__ = [
    "open",
    "to_zarr",
    "to_netcdf",
    "StoreWriter",
    "StoreIdentityError",
    "StoreIntegrityError",
    "StoreLockedError",
    "StoreFullError",
    "IncompleteStoreWarning",
    "OldStoreWarning",
    "store_status",
]

_NETCDF_SUFFIXES = (".nc", ".nc4", ".h5", ".hdf5", ".netcdf")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class IncompleteStoreWarning(UserWarning):
    """The store was opened while its writer is still running, or after the writer was interrupted."""


class OldStoreWarning(UserWarning):
    """The store was written with an older schema: it reads, but lacks what later schemas record."""


# ----------------------------------------------------------------------------------------------
# opening
# ----------------------------------------------------------------------------------------------


def open(  # noqa: A001
    path: str | os.PathLike, *, chunks: Any = None, validate: bool = True, check: bool = True
) -> xr.DataTree:
    """Open a trace store (zarr directory or netCDF file) lazily as a DataTree.

    Arrays are dask arrays (one block per stored chunk: the inner chunks of a shard in schema-3 stores)
    and nothing is read until used. Reached as ``mmlens.open``, the ``ds.mml`` accessor
    (:mod:`mmlens.stats.accessor`) is registered too. A zarr store still being written (or whose writer
    was killed) opens at its last committed batch, with an :class:`IncompleteStoreWarning`. Both zarr
    formats open: 3 (schema 3, sharded) and 2 (schemas 1 and 2).

    By default (``check=True``) a zarr store is checked against its writer's integrity record from
    directory listings alone (no chunk is read): every recorded chunk or shard file must exist with its
    recorded byte size, every metadata file must exist. Reads then check each file's size and crc32
    (a shard once per ``open``, on its first read; docs/store_schema.md, "Integrity"). Either failure is
    one :class:`~mmlens.store.integrity.StoreIntegrityError` naming the variable, the shard or chunk (its
    image range) and the way out. A store of an older schema opens with an :class:`OldStoreWarning`
    saying what it lacks.

    Parameters
    ----------
    path
        A zarr directory (``*.zarr``) or a netCDF/HDF5 file; or an fsspec URL of a zarr store
        (``file://``, ``s3://``, ``memory://`` ...: read through fsspec, integrity record not checked).
    chunks
        Passed to xarray; default ``{}`` for zarr (the stored chunks) and netCDF (whole
        variables). ``False`` loads numpy-backed lazy arrays without dask.
    validate
        Check the tree against the schema (structure only, no data read) and raise
        :class:`~mmlens.store.schema.SchemaError` if it does not match.
    check
        Check the integrity record on opening and every chunk as it is read (zarr stores). Turn off
        only to look into a damaged store; ``mmlens store verify`` is the deep check.

    Returns
    -------
    xarray.DataTree
        Groups ``vision``, ``text``, ``logits`` (as stored); provenance in ``attrs``.

    Examples
    --------
    >>> import tempfile, mmlens
    >>> from mmlens.store.synthetic import example_tree
    >>> path = to_zarr(example_tree(), tempfile.mkdtemp() + "/run.zarr")
    >>> tree = mmlens.open(path)
    >>> tree["vision"]["prompt_mass"].dims
    ('variant', 'image', 'layer', 'head')
    """
    if chunks is None:
        chunks = {}
    elif chunks is False:
        chunks = None
    if isinstance(path, str) and "://" in path:
        if not path.startswith("file://"):
            tree = _open_url(path, chunks)
            if validate:
                schema.validate(tree)
            return tree
        path = path[len("file://"):]
    path = Path(path)
    if path.is_dir():
        tree = _open_zarr(path, chunks, check)
    elif path.is_file():
        if not _is_netcdf(path):
            raise ValueError(
                f"cannot open {path}: expected a zarr directory or a netCDF/HDF5 file "
                f"({', '.join(_NETCDF_SUFFIXES)}), found a file of another kind"
            )
        tree = xr.open_datatree(path, engine="h5netcdf", chunks=chunks)
    else:
        raise FileNotFoundError(f"no trace store at {path}: expected a zarr directory or a netCDF file there")
    if validate:
        try:
            schema.validate(tree)
        except schema.SchemaError as err:
            raise schema.SchemaError(f"{path} {err}\n(pass validate=False to open it anyway)") from None
    return tree


def _is_netcdf(path: Path) -> bool:
    if path.suffix.lower() in _NETCDF_SUFFIXES:
        return True
    with builtins.open(path, "rb") as f:
        head = f.read(8)
    return head == _HDF5_MAGIC or head[:3] == b"CDF"


def _open_zarr(path: Path, chunks: Any, check: bool) -> xr.DataTree:
    if not (path / "zarr.json").is_file() and (path / ROOT_COPY).is_file():
        raise integrity.StoreIntegrityError(
            f"{path} is damaged: its root metadata file zarr.json is missing (it holds the provenance, the writer's "
            "progress and the integrity record). Way out: rerun the trace that wrote it (the same `mmlens trace` "
            f"command or trace_to_store call): a resume restores it from its copy {ROOT_COPY}.",
            [integrity.Problem("(root)", "zarr.json", "metadata", "metadata file is missing")])
    if store_format(path) is None:
        if any(path.glob("*/zarr.json")):
            raise integrity.StoreIntegrityError(
                f"{path} is damaged: its root metadata file zarr.json is missing (it holds the provenance, the "
                "writer's progress and the integrity record, and has no copy). Way out: re-trace the store with "
                "--overwrite (overwrite=True), or restore it from a backup.",
                [integrity.Problem("(root)", "zarr.json", "metadata", "metadata file is missing")])
        raise FileNotFoundError(
            f"{path} is a folder but not a trace store (no zarr group metadata, zarr.json or .zgroup, in it): pass "
            "the folder that `mmlens trace` or `mmlens.trace_to_store` wrote (usually named *.zarr)")
    meta, consolidated = integrity.read_metadata(path)
    attrs = integrity.root_attrs(meta)
    record = integrity.load_record(attrs)
    store: Any = path
    if check and record is not None:
        problems = integrity.listing_problems(path, meta, record)
        if problems:
            raise integrity.integrity_error(path, problems)
        store = integrity.checked_store(path, meta, record)
    version = attrs.get("mmlens_schema")
    if integrity_lacks := schema.lacks(version):
        warnings.warn(
            f"{path} was written with store schema {version} (this mmlens writes {schema.SCHEMA_VERSION}); it opens "
            f"for reading, but it lacks {'; '.join(integrity_lacks)}. Re-trace it to get them; writing or resuming "
            "into it is refused.",
            OldStoreWarning,
            stacklevel=2,
        )
    with warnings.catch_warnings():
        # zarr v3 stores without consolidated metadata: falling back to listing is fine here
        warnings.filterwarnings("ignore", message=".*consolidated metadata.*", category=RuntimeWarning)
        tree = xr.open_datatree(store, engine="zarr", chunks=chunks, consolidated=consolidated or None)
    tree, progress = _committed_view(tree)
    if progress is None:
        return tree
    if not progress.get("complete", False):
        total = progress.get("total")
        of = f" of {total}" if total is not None else ""
        warnings.warn(
            f"{path} is incomplete: {progress['images']} images committed so far ({progress['items']}{of} input "
            f"items{pending_note(progress)}); its writer is still running or was interrupted (rerun the same "
            "trace to resume it)",
            IncompleteStoreWarning,
            stacklevel=2,
        )
    return tree


def _open_url(url: str, chunks: Any) -> xr.DataTree:
    """A zarr store behind an fsspec URL (``s3://``, ``gs://``, ``memory://`` ...), read-only, lazily.

    Its consolidated metadata is read in one request. The writer's integrity record is not checked
    here (it is checked from file listings, which object stores make slow): run ``mmlens store verify``
    on the copy that was written (docs/scaling.md, "Where the store lives").
    """
    from zarr.storage import FsspecStore

    store = FsspecStore.from_url(url, read_only=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*consolidated metadata.*", category=RuntimeWarning)
        tree = xr.open_datatree(store, engine="zarr", chunks=chunks, consolidated=True, zarr_format=ZARR_FORMAT)
    tree, progress = _committed_view(tree)
    if progress is not None and not progress.get("complete", False):
        warnings.warn(f"{url} is incomplete: {progress['images']} images committed so far{pending_note(progress)}",
                      IncompleteStoreWarning, stacklevel=3)
    return tree


def _committed_view(tree: xr.DataTree) -> tuple[xr.DataTree, dict[str, Any] | None]:
    """A freshly opened store as readers see it: plain strings, no bookkeeping attrs, committed images only.

    Returns the view and the writer's ``_progress`` (None for a store not written by the streaming writer).
    """
    tree = map_groups(tree, plain_strings, keep_root=True)
    raw = tree.attrs.get(schema.PROGRESS_ATTR)
    tree.attrs = {k: v for k, v in tree.attrs.items() if k not in schema.BOOKKEEPING_ATTRS}
    if raw is None:
        return tree, None
    progress = json.loads(raw)
    return _trim_view(tree, progress), progress


def _trim_view(tree: xr.DataTree, progress: Mapping[str, int]) -> xr.DataTree:
    """Hide anything beyond the committed image/failure counts (a writer may be mid-append)."""
    limits = {"image": progress["images"], "failure": progress["failures"]}
    out = tree.copy()
    for name, node in tree.children.items():
        ds = node.to_dataset()
        cut = {dim: slice(0, n) for dim, n in limits.items() if dim in ds.dims and ds.sizes[dim] > n}
        if cut:
            out[name] = xr.DataTree(ds.isel(cut))
    return out


# ----------------------------------------------------------------------------------------------
# whole-tree export
# ----------------------------------------------------------------------------------------------


def to_zarr(tree: xr.DataTree, path: str | os.PathLike, *, mode: str = "w-") -> Path:
    """Write a whole (small) tree to a zarr store (format 3, sharded by bytes along ``image``, consolidated).

    For large runs use :class:`StoreWriter` (via ``mmlens.trace_to_store``), which streams.

    Parameters
    ----------
    tree
        A trace tree.
    path
        Target directory.
    mode
        ``"w-"`` refuses to overwrite, ``"w"`` replaces.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> from mmlens.store.synthetic import example_tree
    >>> to_zarr(example_tree(), tempfile.mkdtemp() + "/run.zarr").name
    'run.zarr'
    """
    import zarr

    from mmlens.store.writer import _static_encoding

    path = Path(path)
    out = map_groups(tree, vlen_strings)
    attrs = {k: v for k, v in out.attrs.items() if k not in schema.BOOKKEEPING_ATTRS}
    out.attrs = attrs
    groups = {node.path: node.to_dataset(inherit=False) for node in out.subtree if node is not out}
    shard = images_per_shard(groups)
    encoding = {name: {**_static_encoding(ds), **image_encoding(ds, shard)} for name, ds in groups.items()}
    if mode == "w" and store_format(path) is not None:
        zarr.open_group(path, mode="w", zarr_format=ZARR_FORMAT)  # replace: remove the old store's files
    out.to_zarr(path, mode=mode, consolidated=False, zarr_format=ZARR_FORMAT, encoding=encoding)
    record = integrity.update_record(path, {})
    write_root(path, {**attrs, schema.CHUNKS_ATTR: json.dumps(record, separators=(",", ":"))})
    return path


def to_netcdf(tree: xr.DataTree, path: str | os.PathLike) -> Path:
    """Write a tree to one netCDF-4 file (h5netcdf engine), for small results and sharing.

    Lazy (dask) data is computed while writing. Writer bookkeeping attrs are not exported.

    Parameters
    ----------
    tree
        A trace tree (in memory or opened lazily).
    path
        Target file (``*.nc``), replaced if it exists.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> from mmlens.store.synthetic import example_tree
    >>> path = to_netcdf(example_tree(), tempfile.mkdtemp() + "/run.nc")
    >>> open(path)["text"]["prompt_mass"].dims
    ('variant', 'class', 'layer', 'head')
    """
    path = Path(path)
    out = map_groups(tree, lambda ds: ds.drop_encoding())
    out.attrs = {k: v for k, v in tree.attrs.items() if k not in schema.BOOKKEEPING_ATTRS}
    out.to_netcdf(path, engine="h5netcdf", mode="w")
    return path
