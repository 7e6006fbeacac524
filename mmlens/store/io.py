"""Reading and writing trace stores: ``mmlens.open``, zarr/netCDF export and the resumable streaming writer."""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from mmlens.store import accessor as _accessor  # noqa: F401  (.mml on what open returns)
from mmlens.store import schema

__all__ = ["open", "to_zarr", "to_netcdf", "StoreWriter", "StoreIdentityError", "IncompleteStoreWarning"]

_ZARR_FORMAT = 2
_APPEND_DIMS = ("image", "failure")
_NETCDF_SUFFIXES = (".nc", ".nc4", ".h5", ".hdf5", ".netcdf")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class StoreIdentityError(RuntimeError):
    """A store on disk was written by a different experiment than the one trying to resume it."""


class IncompleteStoreWarning(UserWarning):
    """The store was opened while its writer is still running, or after the writer was interrupted."""


# ----------------------------------------------------------------------------------------------
# opening
# ----------------------------------------------------------------------------------------------


def open(path: str | os.PathLike, *, chunks: Any = None, validate: bool = True) -> xr.DataTree:  # noqa: A001
    """Open a trace store (zarr directory or netCDF file) lazily as a DataTree.

    Arrays are dask arrays (one block per stored chunk) and nothing is read until used. The
    ``ds.mml`` accessor is registered on the result. A zarr store still being written (or whose
    writer was killed) opens at its last complete chunk, with an :class:`IncompleteStoreWarning`.

    Parameters
    ----------
    path
        A zarr directory (``*.zarr``) or a netCDF/HDF5 file.
    chunks
        Passed to xarray; default ``{}`` for zarr (the stored chunks) and netCDF (whole
        variables). ``False`` loads numpy-backed lazy arrays without dask.
    validate
        Check the tree against the schema (structure only, no data read) and raise
        :class:`~mmlens.store.schema.SchemaError` if it does not match.

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
    path = Path(path)
    if chunks is None:
        chunks = {}
    elif chunks is False:
        chunks = None
    if path.is_dir():
        tree = _open_zarr(path, chunks)
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


def _open_zarr(path: Path, chunks: Any) -> xr.DataTree:
    consolidated = (path / ".zmetadata").exists() or None
    with warnings.catch_warnings():
        # zarr v3 stores without consolidated metadata: falling back to listing is fine here
        warnings.filterwarnings("ignore", message=".*consolidated metadata.*", category=RuntimeWarning)
        tree = xr.open_datatree(path, engine="zarr", chunks=chunks, consolidated=consolidated)
    tree = _map_groups(tree, _plain_strings, keep_root=True)
    raw = tree.attrs.get(schema.PROGRESS_ATTR)
    if raw is None:
        return tree
    progress = json.loads(raw)
    tree.attrs = {k: v for k, v in tree.attrs.items() if k != schema.PROGRESS_ATTR}
    tree = _trim_view(tree, progress)
    if not progress.get("complete", False):
        warnings.warn(
            f"{path} is incomplete: {progress['images']} images committed so far; its writer is still "
            "running or was interrupted (rerun the same trace_to_store call to resume it)",
            IncompleteStoreWarning,
            stacklevel=2,
        )
    return tree


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
    """Write a whole (small) tree to a zarr store (format 2, variable-length strings, consolidated).

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
    path = Path(path)
    out = _map_groups(tree, _vlen_strings)
    out.to_zarr(path, mode=mode, consolidated=True, zarr_format=_ZARR_FORMAT)
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
    out = _map_groups(tree, lambda ds: ds.drop_encoding())
    out.attrs = {k: v for k, v in tree.attrs.items() if k != schema.PROGRESS_ATTR}
    out.to_netcdf(path, engine="h5netcdf", mode="w")
    return path


def _map_groups(tree: xr.DataTree, fn: Any, keep_root: bool = False) -> xr.DataTree:
    root = tree.to_dataset(inherit=False) if keep_root else xr.Dataset()
    nodes = {"/": root.assign_attrs(dict(tree.attrs))}
    for node in tree.subtree:
        if node is tree:
            continue
        nodes[node.relative_to(tree)] = fn(node.to_dataset(inherit=False))
    return xr.DataTree.from_dict(nodes)


def _plain_strings(ds: xr.Dataset) -> xr.Dataset:
    """zarr 3 reads variable-length strings as numpy StringDType; give them back as object arrays.

    Only string variables are loaded (coordinates and ``failures``: small); numbers stay lazy.
    """
    changed = {name: var.load().astype(object) for name, var in ds.variables.items() if var.dtype.kind == "T"}
    if not changed:
        return ds
    data = {k: v for k, v in changed.items() if k in ds.data_vars}
    coords = {k: v for k, v in changed.items() if k not in ds.data_vars}
    return ds.assign(data).assign_coords(coords)


def _vlen_strings(ds: xr.Dataset) -> xr.Dataset:
    """Fixed-width numpy strings -> object arrays, which zarr v2 stores as variable-length UTF-8."""
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
# the streaming writer
# ----------------------------------------------------------------------------------------------


class StoreWriter:
    """Stream trace batches into a zarr store that survives ``kill -9`` and resumes where it stopped.

    Each :meth:`append` writes one batch: variables with an ``image`` dim are appended along
    ``image`` (one zarr chunk per batch of ``chunk_images``), ``failures`` along ``failure``;
    everything else (coordinates of other dims, ``output_bias_norm``, the ``text`` group) is
    written once, with the first batch. After the data, the committed counts are written to
    the root attr ``_progress`` (one atomic file replace), then the metadata is consolidated.
    The first batch is written into ``<path>.partial`` and renamed into place, so a store
    either exists with at least one complete batch or not at all.

    Opening an existing store resumes it: identity provenance keys must match (else
    :class:`StoreIdentityError` says which differs and what to do); anything written after the
    last commit is trimmed away; :attr:`n_done` tells the caller how many input items to skip.

    Parameters
    ----------
    path
        The zarr directory to create or resume.
    provenance
        Root attrs (see :func:`~mmlens.store.schema.provenance_attrs`; normalised through it).
    identity_keys
        Provenance keys that must match to resume (default :data:`~mmlens.store.schema.IDENTITY_KEYS`).
    chunk_images
        Images per zarr chunk; default the size of the first batch.
    overwrite
        Delete an existing store at ``path`` instead of resuming it.
    validate
        Check each batch against the schema before writing it.

    Examples
    --------
    >>> import tempfile
    >>> from mmlens.store.synthetic import example_tree
    >>> tree = example_tree(n_images=6)
    >>> path = tempfile.mkdtemp() + "/run.zarr"
    >>> with StoreWriter(path, dict(tree.attrs)) as writer:
    ...     for lo in range(writer.n_done, 6, 3):
    ...         writer.append(tree.isel(image=slice(lo, lo + 3)))
    >>> open(path)["vision"].sizes["image"]
    6
    """

    def __init__(
        self,
        path: str | os.PathLike,
        provenance: Mapping[str, Any],
        *,
        identity_keys: Iterable[str] = schema.IDENTITY_KEYS,
        chunk_images: int | None = None,
        overwrite: bool = False,
        validate: bool = True,
    ) -> None:
        self.path = Path(path)
        self.provenance = {
            k: v for k, v in schema.provenance_attrs(**dict(provenance)).items() if k != schema.PROGRESS_ATTR
        }
        self.identity_keys = tuple(identity_keys)
        self.chunk_images = chunk_images
        self.validate = validate
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._lock = self.path.with_name(self.path.name + ".lock")
        self._progress: dict[str, Any] = {
            "images": 0,
            "failures": 0,
            "items": 0,
            "batches": 0,
            "complete": False,
            "arrays": [],
        }
        self._pending: list[tuple[dict[str, xr.Dataset], int]] = []
        self._closed = False
        self._acquire_lock()
        try:
            if overwrite:
                self._remove_existing()
            shutil.rmtree(self._partial, ignore_errors=True)
            self.resumed = self._resume()
        except BaseException:
            self._release_lock()
            raise

    # -- public state ---------------------------------------------------------------------------

    @property
    def n_done(self) -> int:
        """Input items committed (stored images plus recorded failures): how many to skip on resume."""
        return self._progress["items"] + sum(n for _, n in self._pending)

    @property
    def n_images(self) -> int:
        """Images committed to the store."""
        return self._progress["images"]

    @property
    def n_failures(self) -> int:
        """Unreadable inputs committed to ``vision/failures``."""
        return self._progress["failures"]

    @property
    def complete(self) -> bool:
        """Whether :meth:`close` has been called on this store."""
        return bool(self._progress["complete"])

    # -- writing --------------------------------------------------------------------------------

    def append(self, batch: xr.DataTree | Mapping[str, xr.Dataset], *, n_items: int | None = None) -> None:
        """Write one batch and commit it.

        Parameters
        ----------
        batch
            A trace tree (groups ``vision``, ``text``, ``logits``) or a ``{group: Dataset}`` dict.
            Its ``image`` index is renumbered to continue the store's; its root attrs are ignored.
        n_items
            Input items this batch consumed; default images + failures in the batch.
        """
        if self._closed:
            raise RuntimeError(f"the writer of {self.path} is closed; open a new StoreWriter to append")
        groups = _batch_groups(batch)
        if self.validate:
            for name, ds in groups.items():
                if name in schema.VARIABLES:
                    try:
                        schema.validate(ds, group=name, require_provenance=False)
                    except schema.SchemaError as err:
                        raise schema.SchemaError(f"batch group {name!r} {err}") from None
        n_img = _count(groups, "image")
        n_fail = _count(groups, "failure")
        items = n_img + n_fail if n_items is None else int(n_items)
        if self._progress["batches"] == 0 and not self.path.exists():
            self._pending.append((groups, items))
            if n_img > 0:
                self._create_from_pending()
            return
        self._append_groups(groups, n_img, n_fail)
        self._commit(images=n_img, failures=n_fail, items=items)

    def close(self) -> None:
        """Mark the store complete, consolidate its metadata and release the lock."""
        if self._closed:
            return
        try:
            if self._pending:
                self._create_from_pending()
            if self.path.exists():
                self._commit(images=0, failures=0, items=0, batches=0, complete=True)
        finally:
            self._closed = True
            self._release_lock()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # leave the store resumable, not complete
            self._closed = True
            self._release_lock()

    # -- internals ------------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self._lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pid = _read_pid(self._lock)
                if pid is not None and pid != os.getpid() and _pid_alive(pid):
                    raise RuntimeError(
                        f"{self.path} is being written by process {pid} (lock file {self._lock}); wait for it, "
                        "or delete the lock file if no such writer is running"
                    ) from None
                self._lock.unlink(missing_ok=True)  # stale: its writer died
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return
        raise RuntimeError(f"could not take the writer lock {self._lock}; delete it and retry")

    def _release_lock(self) -> None:
        if _read_pid(self._lock) == os.getpid():
            self._lock.unlink(missing_ok=True)

    def _remove_existing(self) -> None:
        if not self.path.exists():
            return
        if self.path.is_dir() and (not any(self.path.iterdir()) or (self.path / ".zgroup").exists()):
            shutil.rmtree(self.path)
            return
        raise FileExistsError(f"overwrite=True refused: {self.path} exists and is not a zarr store; move it away")

    def _resume(self) -> bool:
        """Check an existing store, trim anything uncommitted; return whether there was one."""
        if not self.path.exists():
            return False
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()  # an empty directory (made by the user): the first batch renames into it
            return False
        if not (self.path.is_dir() and (self.path / ".zgroup").exists()):
            raise FileExistsError(f"{self.path} exists and is not a zarr store; choose another path or move it away")
        import zarr

        root = zarr.open_group(self.path, mode="r+", zarr_format=_ZARR_FORMAT, use_consolidated=False)
        attrs = dict(root.attrs)
        if schema.PROGRESS_ATTR not in attrs:
            raise FileExistsError(
                f"{self.path} holds a store that was not written by the streaming writer (no "
                f"{schema.PROGRESS_ATTR!r} attr), so it cannot be resumed; delete it, pass overwrite=True, "
                "or write to a new path"
            )
        self._check_identity(attrs)
        self._progress = json.loads(attrs[schema.PROGRESS_ATTR])
        _remove_uncommitted(self.path, set(self._progress["arrays"]))
        root = zarr.open_group(self.path, mode="r+", zarr_format=_ZARR_FORMAT, use_consolidated=False)
        _trim_arrays(root, {"image": self._progress["images"], "failure": self._progress["failures"]})
        zarr.consolidate_metadata(self.path, zarr_format=_ZARR_FORMAT)
        return True

    def _check_identity(self, stored: Mapping[str, Any]) -> None:
        if stored.get("mmlens_schema") != schema.SCHEMA_VERSION:
            raise StoreIdentityError(
                f"cannot resume {self.path}: it was written with store schema {stored.get('mmlens_schema')!r}, "
                f"this mmlens writes schema {schema.SCHEMA_VERSION}; write to a new path"
            )
        differ = [
            (key, stored.get(key), self.provenance.get(key))
            for key in self.identity_keys
            if stored.get(key) != self.provenance.get(key)
        ]
        if differ:
            lines = "; ".join(f"{k}: store has {a!r}, this run has {b!r}" for k, a, b in differ)
            keys = ", ".join(k for k, _, _ in differ)
            raise StoreIdentityError(
                f"cannot resume {self.path}: it was written by a different experiment ({lines}). "
                f"To continue that store, rerun with the same {keys}; to start over, delete it or pass "
                "overwrite=True; to keep both, write to a new path."
            )

    def _create_from_pending(self) -> None:
        """First commit: write everything pending into <path>.partial, then rename it into place."""
        import zarr

        batches = self._pending
        merged = _merge_pending([g for g, _ in batches])
        n_img, n_fail = _count(merged, "image"), _count(merged, "failure")
        items = sum(n for _, n in batches)
        chunk = self.chunk_images or max(n_img, 1)
        partial = self._partial
        shutil.rmtree(partial, ignore_errors=True)
        root = zarr.open_group(partial, mode="w", zarr_format=_ZARR_FORMAT)
        for name, ds in merged.items():
            ds = _vlen_strings(_renumber(_drop_empty(ds), 0))
            encoding = {
                var: {"chunks": _chunks(ds[var], max(n_fail, 64) if "failure" in ds[var].dims else chunk)}
                for var in ds.variables
                if any(d in ds[var].dims for d in _APPEND_DIMS)
            }
            ds.to_zarr(partial, group=name, mode="a", zarr_format=_ZARR_FORMAT, consolidated=False, encoding=encoding)
        progress = {
            "images": n_img,
            "failures": n_fail,
            "items": items,
            "batches": 1,
            "complete": False,
            "arrays": _list_arrays(partial),
        }
        root.attrs.put({**self.provenance, schema.PROGRESS_ATTR: json.dumps(progress)})
        zarr.consolidate_metadata(partial, zarr_format=_ZARR_FORMAT)
        os.replace(partial, self.path)
        self._progress = progress
        self._pending = []
        self.chunk_images = chunk

    def _append_groups(self, groups: Mapping[str, xr.Dataset], n_img: int, n_fail: int) -> None:
        import zarr

        root = zarr.open_group(self.path, mode="r", zarr_format=_ZARR_FORMAT, use_consolidated=False)
        stored = {name: group for name, group in root.groups()}
        for name, ds in groups.items():
            if name not in stored:
                if "image" in ds.dims:
                    raise ValueError(
                        f"batch has group {name!r} with images, which the store at {self.path} does not have "
                        f"(it has {sorted(stored)}); every batch must carry the same image groups"
                    )
                if "failure" not in ds.dims:
                    _vlen_strings(ds).to_zarr(
                        self.path, group=name, mode="a", zarr_format=_ZARR_FORMAT, consolidated=False
                    )
                    continue
            _check_same_variables(name, ds, stored.get(name), self.path)
            group_attrs = dict(stored[name].attrs) if name in stored else {}
            ds = _vlen_strings(_renumber(ds, self._progress["images"]))
            for dim, n in (("image", n_img), ("failure", n_fail)):
                part = _along(ds, dim)
                if part is None or n == 0:
                    continue
                part.attrs = group_attrs
                existing = name in stored and any(
                    dim in arr.attrs.get("_ARRAY_DIMENSIONS", ()) for _, arr in stored[name].arrays()
                )
                if existing:
                    part.to_zarr(
                        self.path, group=name, mode="a", append_dim=dim, zarr_format=_ZARR_FORMAT, consolidated=False
                    )
                else:  # first failures of this run: create the arrays
                    enc = {v: {"chunks": _chunks(part[v], max(n, 64))} for v in part.variables}
                    part.to_zarr(
                        self.path, group=name, mode="a", zarr_format=_ZARR_FORMAT, consolidated=False, encoding=enc
                    )

    def _commit(self, *, images: int, failures: int, items: int, batches: int = 1, complete: bool = False) -> None:
        import zarr

        progress = {
            "images": self._progress["images"] + images,
            "failures": self._progress["failures"] + failures,
            "items": self._progress["items"] + items,
            "batches": self._progress["batches"] + batches,
            "complete": complete,
            "arrays": _list_arrays(self.path),  # everything on disk now is complete
        }
        root = zarr.open_group(self.path, mode="r+", zarr_format=_ZARR_FORMAT, use_consolidated=False)
        root.attrs.update({schema.PROGRESS_ATTR: json.dumps(progress)})  # one atomic file replace
        self._progress = progress
        zarr.consolidate_metadata(self.path, zarr_format=_ZARR_FORMAT)


# ----------------------------------------------------------------------------------------------
# writer helpers
# ----------------------------------------------------------------------------------------------


def _batch_groups(batch: xr.DataTree | Mapping[str, xr.Dataset]) -> dict[str, xr.Dataset]:
    if isinstance(batch, xr.DataTree):
        groups = {name: node.to_dataset(inherit=False) for name, node in batch.children.items()}
    elif isinstance(batch, Mapping):
        groups = dict(batch)
    else:
        raise TypeError(f"append expects a DataTree or a {{group: Dataset}} dict, found {type(batch).__name__}")
    return {name: ds.load() for name, ds in groups.items()}


def _count(groups: Mapping[str, xr.Dataset], dim: str) -> int:
    sizes = {name: ds.sizes[dim] for name, ds in groups.items() if dim in ds.dims}
    if dim == "image" and len(set(sizes.values())) > 1:
        raise ValueError(f"batch groups disagree on the number of images: {sizes}; expected one size")
    return max(sizes.values(), default=0)


def _merge_pending(batches: list[dict[str, xr.Dataset]]) -> dict[str, xr.Dataset]:
    """Concatenate pending batches along image/failure (the first commit may hold several)."""
    if len(batches) == 1:
        return batches[0]
    out: dict[str, xr.Dataset] = {}
    for name in dict.fromkeys(n for b in batches for n in b):
        parts = [b[name] for b in batches if name in b]
        first = parts[0]
        pieces = []
        for dim in _APPEND_DIMS:
            along = [p for p in (_along(p, dim) for p in parts) if p is not None and p.sizes[dim] > 0]
            if along:
                pieces.append(xr.concat(along, dim=dim, data_vars="minimal", coords="minimal", compat="override"))
        static = first.drop_vars([v for v in first.variables if any(d in first[v].dims for d in _APPEND_DIMS)])
        out[name] = xr.merge([static, *pieces], compat="override", join="outer", combine_attrs="override")
    return out


def _drop_empty(ds: xr.Dataset) -> xr.Dataset:
    """Drop variables along an append dim of length 0 (zarr cannot infer a string dtype from nothing)."""
    empty = [d for d in _APPEND_DIMS if ds.sizes.get(d, None) == 0]
    if not empty:
        return ds
    return ds.drop_vars([v for v in ds.variables if any(d in ds[v].dims for d in empty)])


def _along(ds: xr.Dataset, dim: str) -> xr.Dataset | None:
    """The variables (data and coords) of ``ds`` that carry ``dim``, without the other static coords."""
    if dim not in ds.dims:
        return None
    keep = [v for v in ds.data_vars if dim in ds[v].dims]
    if not keep:
        return None
    part = ds[keep]
    return part.drop_vars([c for c in part.coords if dim not in part[c].dims])


def _renumber(ds: xr.Dataset, start: int) -> xr.Dataset:
    if "image" not in ds.dims:
        return ds
    return ds.assign_coords(image=np.arange(start, start + ds.sizes["image"]))


def _chunks(var: xr.Variable | xr.DataArray, n: int) -> tuple[int, ...]:
    return tuple(max(n, 1) if d in _APPEND_DIMS else size for d, size in zip(var.dims, var.shape))


def _check_same_variables(name: str, ds: xr.Dataset, stored: Any, path: Path) -> None:
    """Image variables of a batch must be those of the store (static ones may be omitted)."""
    if stored is None or ds.sizes.get("image", 0) == 0:
        return
    have = {k for k, arr in stored.arrays() if "image" in arr.attrs.get("_ARRAY_DIMENSIONS", ())}
    new = {str(v) for v in ds.variables if "image" in ds[v].dims}
    missing, extra = sorted(have - new), sorted(new - have)
    if missing or extra:
        raise ValueError(
            f"batch group {name!r} does not match the store at {path}: "
            f"missing {missing or 'nothing'}, unexpected {extra or 'nothing'}; every batch must carry the same "
            "variables (same trace options); write a different selection to a new store"
        )


def _list_arrays(root: Path) -> list[str]:
    """Relative paths of all zarr (v2) arrays under ``root``."""
    return sorted(
        Path(dirpath).relative_to(root).as_posix() for dirpath, _, files in os.walk(root) if ".zarray" in files
    )


def _remove_uncommitted(root: Path, committed: set[str]) -> None:
    """Delete arrays and groups created after the last commit, and zarr's leftover temporary files."""
    keep = set(committed)
    for name in committed:
        keep.update(p.as_posix() for p in Path(name).parents if p.as_posix() != ".")
    for dirpath, dirnames, filenames in os.walk(root, topdown=True):
        rel = Path(dirpath).relative_to(root)
        for f in filenames:
            if f.endswith(".partial"):  # an atomic write that never reached its rename
                (Path(dirpath) / f).unlink(missing_ok=True)
        for d in list(dirnames):
            if (rel / d).as_posix() not in keep:
                shutil.rmtree(Path(dirpath) / d)
                dirnames.remove(d)


def _trim_arrays(root: Any, limits: Mapping[str, int]) -> None:
    """Shrink every array along image/failure to the committed size (delete failure arrays cut to 0)."""
    for _, group in root.groups():
        for key, arr in list(group.arrays()):
            dims = list(arr.attrs.get("_ARRAY_DIMENSIONS", ()))
            for dim, n in limits.items():
                if dim not in dims:
                    continue
                axis = dims.index(dim)
                if dim == "failure" and n == 0:
                    del group[key]
                    break
                if arr.shape[axis] != n:
                    shape = list(arr.shape)
                    shape[axis] = n
                    arr.resize(tuple(shape))


def _read_pid(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip() or "-1")
    except (FileNotFoundError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(FileNotFoundError):
        # a zombie (killed child not yet reaped by its parent) holds no lock
        with builtins.open(f"/proc/{pid}/stat") as f:
            if f.read().split(")")[-1].split()[0] == "Z":
                return False
    return True
