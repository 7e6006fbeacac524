"""The resumable, locked streaming writer of trace stores (:class:`StoreWriter`) and its repairs.

A store is written batch by batch into zarr and committed atomically after each batch, so that it
survives ``kill -9`` and resumes where it stopped; one writer at a time holds ``<path>.lock``.
Opening and whole-tree export are in :mod:`mmlens.store.io`; the integrity record in
:mod:`mmlens.store.integrity`; the lock in :mod:`mmlens.store.lock`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from mmlens.store import integrity, schema
from mmlens.store._encoding import (
    CHUNK_KEY_ENCODING,
    ZARR_FORMAT,
    image_encoding,
    images_per_shard,
    read_root_document,
    restore_root,
    store_format,
    vlen_strings,
    write_root,
)
from mmlens.store.lock import WriterLock

__all__ = ["StoreFullError", "StoreIdentityError", "StoreWriter", "check_identity"]

_APPEND_DIMS = ("image", "failure")


class StoreIdentityError(RuntimeError):
    """A store on disk was written by a different experiment than the one trying to resume it."""


class StoreFullError(OSError):
    """The disk filled up while writing; the store is left resumable at its last commit."""


# ----------------------------------------------------------------------------------------------
# the streaming writer
# ----------------------------------------------------------------------------------------------


class StoreWriter:
    """Stream trace batches into a zarr store that survives ``kill -9`` and resumes where it stopped.

    Each :meth:`append` writes one batch: variables with an ``image`` dim are appended along
    ``image`` into zarr 3 shards of ``images_per_shard`` images (one number for the store, sized by
    bytes from the first batch: :func:`~mmlens.store._encoding.images_per_shard`; a partly filled last
    shard is rewritten by the next append), ``failures`` along ``failure``;
    everything else (coordinates of other dims, ``output_bias_norm``, the ``text`` group) is
    written once, with the first batch. After the data, the committed counts (``_progress``) and
    the integrity record (``_chunks``: byte size and crc32 of every shard written) and the consolidated
    metadata go into the root ``zarr.json`` in one atomic file replace. The first batch is written
    into ``<path>.partial`` and renamed into place, so a store either exists with at least one
    complete batch or not at all. One writer at a time: ``<path>.lock`` is held with an
    operating-system lock (:class:`~mmlens.store.lock.WriterLock`); a second writer gets
    :class:`~mmlens.store.lock.StoreLockedError` naming the holder.

    Opening an existing store resumes it: identity provenance keys must match (else
    :class:`StoreIdentityError` says which differs and what to do); anything written after the
    last commit is trimmed away; :attr:`n_done` tells the caller how many input items to skip.
    Chunks of images that were lost or truncated since are listed in :attr:`damaged`, and
    :meth:`repairs` / :meth:`rewrite` put them back (``trace_to_store`` re-traces exactly them).
    Running out of disk space raises :class:`StoreFullError` and leaves the store resumable.

    Parameters
    ----------
    path
        The zarr directory to create or resume.
    provenance
        Root attrs (see :func:`~mmlens.store.schema.provenance_attrs`; normalised through it).
    identity_keys
        Provenance keys that must match to resume (default :data:`~mmlens.store.schema.IDENTITY_KEYS`).
    chunk_images
        Images per inner zarr chunk (must divide the shard); default by bytes
        (:func:`~mmlens.store._encoding.image_encoding`). Given without ``shard_images``, shards hold one
        chunk each (the layout of format-2 stores, one file per chunk).
    shard_images
        Images per shard; default by bytes (:func:`~mmlens.store._encoding.images_per_shard`).
    overwrite
        Delete an existing store at ``path`` instead of resuming it.
    validate
        Check each batch against the schema before writing it.
    total
        Input items the run will write (for ``store_status`` and messages); optional.

    Examples
    --------
    >>> import tempfile
    >>> from mmlens.store.io import open
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
        shard_images: int | None = None,
        overwrite: bool = False,
        validate: bool = True,
        total: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.provenance = {
            k: v
            for k, v in schema.provenance_attrs(**dict(provenance)).items()
            if k not in schema.BOOKKEEPING_ATTRS
        }
        self.identity_keys = tuple(identity_keys)
        self.chunk_images = chunk_images
        self.shard_images = shard_images if shard_images is not None else chunk_images
        self.validate = validate
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._progress: dict[str, Any] = {
            "images": 0,
            "failures": 0,
            "items": 0,
            "batches": 0,
            "complete": False,
            "arrays": [],
            "total": total,
            "runs": [],
        }
        self._record: dict[str, dict[str, list[int]]] = {}
        self._attrs: dict[str, Any] = dict(self.provenance)  # the stored root attrs, bookkeeping apart
        self._rewritten: list[tuple[int, int]] = []  # image ranges rewritten by repairs since opening
        #: Lost or truncated chunks of images found on resume, not yet re-traced (see :meth:`repairs`).
        self.damaged: list[integrity.Problem] = []
        self._pending: list[tuple[dict[str, xr.Dataset], int]] = []
        self._closed = False
        self._lock = WriterLock(self.path).acquire()
        try:
            if overwrite:
                self._remove_existing()
            shutil.rmtree(self._partial, ignore_errors=True)
            self.resumed = self._resume()
            if total is not None:
                self._progress["total"] = total
        except BaseException:
            self._lock.release()
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
        with self._disk_full_is_clear():
            if self._progress["batches"] == 0 and not self.path.exists():
                self._pending.append((groups, items))
                if n_img > 0:
                    self._create_from_pending()
                return
            self._append_groups(groups, n_img, n_fail)
            self._commit(images=n_img, failures=n_fail, items=items)

    def repairs(self) -> list[tuple[int, int, int, int]]:
        """What to re-trace to mend :attr:`damaged`: ``(image_lo, image_hi, item_lo, item_hi)`` per range.

        Each range is the whole committed batches holding a damaged chunk (the store records which
        input items every batch consumed), so re-tracing items ``item_lo:item_hi`` gives back images
        ``image_lo:image_hi`` exactly; pass them to :meth:`rewrite`.
        """
        out: list[tuple[int, int, int, int]] = []
        runs = [r for r in self._progress.get("runs", []) if r[1] > 0]
        for lo, hi in integrity.image_ranges(self.damaged):
            cover = [r for r in runs if r[0] < hi and r[0] + r[1] > lo]
            if not cover or cover[0][0] > lo or cover[-1][0] + cover[-1][1] < hi:
                raise integrity.integrity_error(self.path, [p for p in self.damaged if p.lo == lo] or self.damaged)
            span = (cover[0][0], cover[-1][0] + cover[-1][1], cover[0][2], cover[-1][2] + cover[-1][3])
            if out and span[0] < out[-1][1]:
                prev = out.pop()
                span = (prev[0], max(prev[1], span[1]), prev[2], max(prev[3], span[3]))
            out.append(span)
        return out

    def rewrite(self, batch: xr.DataTree | Mapping[str, xr.Dataset], image_lo: int) -> None:
        """Write re-traced images over the store's images ``image_lo:image_lo + n`` (repairing lost chunks).

        Only variables along ``image`` are written; static variables and failure records are kept.
        The batch must hold exactly the images of whole committed batches (:meth:`repairs`).
        """
        import zarr

        groups = _batch_groups(batch)
        n = _count(groups, "image")
        hi = image_lo + n
        if hi > self.n_images:
            raise ValueError(f"rewrite of images {image_lo}-{hi - 1} goes past the {self.n_images} committed images "
                             f"of {self.path}; re-trace the ranges that repairs() gives")
        with self._disk_full_is_clear():
            for p in self.damaged:
                # a damaged shard must not be read back by a partial-shard write: it is deleted before its first
                # images are rewritten (a shard spans several batches), and rebuilt by the rewrites that follow
                if p.lo is not None and p.hi is not None and p.lo < hi and image_lo < p.hi and not any(
                        a < p.hi and p.lo < b for a, b in self._rewritten):
                    (self.path / p.array / p.chunk).unlink(missing_ok=True)
            root = zarr.open_group(self.path, mode="r", zarr_format=ZARR_FORMAT, use_consolidated=False)
            stored = {name for name, _ in _groups(root)}
            for name, ds in groups.items():
                part = _along(ds, "image")
                if part is None or name not in stored:
                    continue
                part = vlen_strings(_renumber(part, image_lo))
                part.attrs = {}
                part.to_zarr(self.path, group=name, mode="r+", region={"image": slice(image_lo, hi)},
                             zarr_format=ZARR_FORMAT, consolidated=False)
            integrity.update_record(self.path, self._record, {"image": (image_lo, hi)})
            self._rewritten.append((image_lo, hi))
            self.damaged = [p for p in self.damaged if not _covered(p, self._rewritten)]
            for p in self.damaged:  # partly rebuilt: a resume must rebuild it again, not trust it
                if p.lo is not None and p.hi is not None and p.lo < hi and image_lo < p.hi:
                    self._record.setdefault(p.array, {})[p.chunk] = [integrity.REPAIRING, 0]
            self._commit(images=0, failures=0, items=0, batches=0, complete=self.complete)

    def close(self) -> None:
        """Mark the store complete, consolidate its metadata and release the lock."""
        if self._closed:
            return
        try:
            if self.damaged:
                raise integrity.integrity_error(self.path, self.damaged)
            with self._disk_full_is_clear():
                if self._pending:
                    self._create_from_pending()
                if self.path.exists():
                    self._commit(images=0, failures=0, items=0, batches=0, complete=True)
        finally:
            self._closed = True
            self._lock.release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # leave the store resumable, not complete
            self._closed = True
            self._lock.release()

    # -- internals ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _disk_full_is_clear(self) -> Iterator[None]:
        """Turn zarr's raw ENOSPC into one error saying where, how far, and what to do."""
        try:
            yield
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT) or isinstance(err, StoreFullError):
                raise
            total = self._progress.get("total")
            full = StoreFullError(
                f"no space left on {self.path}, {self._committed_items()} of {total if total is not None else '?'} "
                "images committed; free space and rerun (the store resumes from there)"
            )
            full.errno = errno.ENOSPC
            raise full from err

    def _committed_items(self) -> int:
        """Items committed on disk (a failed write may have landed the counts yet failed after them)."""
        try:
            attrs = read_root_document(self.path)["attributes"]
            return int(json.loads(attrs[schema.PROGRESS_ATTR])["items"])
        except (OSError, ValueError, KeyError):
            return int(self._progress["items"])

    def _remove_existing(self) -> None:
        if not self.path.exists():
            return
        if self.path.is_dir() and (not any(self.path.iterdir()) or store_format(self.path) is not None):
            shutil.rmtree(self.path)
            return
        raise FileExistsError(f"overwrite=True refused: {self.path} exists and is not a zarr store; move it away")

    def _resume(self) -> bool:
        """Check an existing store, trim anything uncommitted, find lost chunks; return whether there was one."""
        if not self.path.exists():
            return False
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()  # an empty directory (made by the user): the first batch renames into it
            return False
        if self.path.is_dir():
            restore_root(self.path)  # a lost root zarr.json comes back from its copy
        fmt = store_format(self.path) if self.path.is_dir() else None
        if fmt is None:
            if self.path.is_dir() and any(self.path.glob("*/zarr.json")):
                raise FileExistsError(
                    f"{self.path} has lost its root metadata file zarr.json (the provenance, progress and integrity "
                    "record): it cannot be resumed; re-trace it with --overwrite (overwrite=True)")
            raise FileExistsError(f"{self.path} exists and is not a zarr store; choose another path or move it away")
        import zarr

        meta, _ = integrity.read_metadata(self.path)
        attrs = integrity.root_attrs(meta)
        if fmt != ZARR_FORMAT:  # schema 1 and 2 stores: refused by the schema check, with what they lack
            self._check_identity(attrs)
        _restore_metadata(self.path)
        if schema.PROGRESS_ATTR not in attrs:
            raise FileExistsError(
                f"{self.path} holds a store that was not written by the streaming writer (no "
                f"{schema.PROGRESS_ATTR!r} attr), so it cannot be resumed; delete it, pass overwrite=True, "
                "or write to a new path"
            )
        self._check_identity(attrs)
        stored = json.loads(attrs[schema.PROGRESS_ATTR])
        if stored.get("layout") == "regions" and not stored.get("complete"):  # mmlens.store.regions.LAYOUT
            raise StoreIdentityError(
                f"cannot resume {self.path} in one process: a distributed trace (--workers / --scheduler) "
                "started it, region by region. Resume it with the same cluster command, or pass --overwrite "
                "(overwrite=True)."
            )
        self._progress = {**self._progress, **stored}
        self._record = integrity.load_record(attrs) or {}
        self._attrs = {k: v for k, v in attrs.items() if k not in schema.BOOKKEEPING_ATTRS}
        self.shard_images = self._progress.get("images_per_shard", self.shard_images)
        _remove_uncommitted(self.path, set(self._progress["arrays"]))
        root = zarr.open_group(self.path, mode="r+", zarr_format=ZARR_FORMAT, use_consolidated=False)
        _trim_arrays(root, {"image": self._progress["images"], "failure": self._progress["failures"]})
        meta, _ = integrity.read_metadata(self.path, consolidated=False)
        integrity.forget_beyond(self._record, meta)
        self._record_rewritten_boundaries(root, meta)
        problems = [
            p for p in integrity.listing_problems(self.path, meta, self._record)
            if p.chunk != ".zmetadata"  # consolidated again below
        ]
        if any(not p.retraceable for p in problems):
            raise integrity.integrity_error(self.path, problems)
        self.damaged = problems
        write_root(self.path, {**self._attrs, schema.PROGRESS_ATTR: _dumps(self._progress),
                               schema.CHUNKS_ATTR: _dumps(self._record)})
        return True

    def _record_rewritten_boundaries(self, root: Any, meta: Mapping[str, Any]) -> None:
        """Re-record the last chunk along image/failure where an uncommitted append rewrote it.

        An append that was interrupted before its commit may have rewritten the committed last chunk
        (a partly filled chunk gets the new images). The committed images in it are unchanged; if the
        chunk still decodes, its new bytes are recorded. One that does not decode stays a problem.
        """
        import zlib

        for array, chunks in self._record.items():
            info = integrity._array_info(meta, array)
            if info is None:
                continue
            dim = next((d for d in _APPEND_DIMS if d in info.dims), None)
            if dim is None:
                continue
            axis = info.dims.index(dim)
            n = info.shape[axis]
            if n == 0:
                continue
            last = (n - 1) // info.chunks[axis]
            for key, (size, crc) in list(chunks.items()):
                index = info.index(key)
                if index is None or len(index) <= axis or index[axis] != last or size == integrity.REPAIRING:
                    continue
                try:
                    data = (self.path / array / key).read_bytes()
                except FileNotFoundError:
                    continue
                if len(data) == size and zlib.crc32(data) == crc:
                    continue
                region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, info.chunks, info.shape))
                try:
                    root[array][region]
                except Exception:  # noqa: BLE001 - a chunk that does not decode is damage, reported by the caller
                    continue
                chunks[key] = [len(data), zlib.crc32(data)]

    def _check_identity(self, stored: Mapping[str, Any]) -> None:
        check_identity(self.path, stored, self.provenance, self.identity_keys)

    def _create_from_pending(self) -> None:
        """First commit: write everything pending into <path>.partial, then rename it into place."""
        import zarr

        batches = self._pending
        merged = _merge_pending([g for g, _ in batches])
        n_img, n_fail = _count(merged, "image"), _count(merged, "failure")
        items = sum(n for _, n in batches)
        shard = self.shard_images or images_per_shard(merged)
        partial = self._partial
        shutil.rmtree(partial, ignore_errors=True)
        zarr.open_group(partial, mode="w", zarr_format=ZARR_FORMAT)
        for name, ds in merged.items():
            ds = vlen_strings(_renumber(_drop_empty(ds), 0))
            encoding = _static_encoding(ds)
            encoding.update(image_encoding(ds, shard, chunk_images=self.chunk_images))
            for var in ds.variables:
                if "failure" in ds[var].dims:
                    encoding[str(var)]["chunks"] = _chunks(ds[var], max(n_fail, 64))
            ds.to_zarr(partial, group=name, mode="a", zarr_format=ZARR_FORMAT, consolidated=False, encoding=encoding)
        runs, image, item = [], 0, 0
        for groups, n_items in batches:
            n = _count(groups, "image")
            runs.append([image, n, item, n_items])
            image, item = image + n, item + n_items
        progress = {
            **self._progress,
            "images": n_img,
            "failures": n_fail,
            "items": items,
            "batches": 1,
            "complete": False,
            "arrays": _list_arrays(partial),
            "runs": runs,
            "images_per_shard": shard,
        }
        record = integrity.update_record(partial, {})
        write_root(partial, {**self._attrs, schema.PROGRESS_ATTR: _dumps(progress), schema.CHUNKS_ATTR: _dumps(record)})
        os.replace(partial, self.path)
        self._progress = progress
        self._record = record
        self._pending = []
        self.shard_images = shard

    def _append_groups(self, groups: Mapping[str, xr.Dataset], n_img: int, n_fail: int) -> None:
        import zarr

        root = zarr.open_group(self.path, mode="r", zarr_format=ZARR_FORMAT, use_consolidated=False)
        stored = {name: group for name, group in _groups(root)}
        for name, ds in groups.items():
            if name not in stored:
                if "image" in ds.dims:
                    raise ValueError(
                        f"batch has group {name!r} with images, which the store at {self.path} does not have "
                        f"(it has {sorted(stored)}); every batch must carry the same image groups"
                    )
                if "failure" not in ds.dims:
                    ds = vlen_strings(ds)
                    ds.to_zarr(self.path, group=name, mode="a", zarr_format=ZARR_FORMAT, consolidated=False,
                               encoding=_static_encoding(ds))
                    continue
            _check_same_variables(name, ds, stored.get(name), self.path)
            group_attrs = dict(stored[name].attrs) if name in stored else {}
            ds = vlen_strings(_renumber(ds, self._progress["images"]))
            for dim, n in (("image", n_img), ("failure", n_fail)):
                part = _along(ds, dim)
                if part is None or n == 0:
                    continue
                part.attrs = group_attrs
                existing = name in stored and any(dim in _dims(arr) for _, arr in stored[name].arrays())
                if existing:  # zarr fills the partly filled last shard: it reads and rewrites that shard
                    part.to_zarr(
                        self.path, group=name, mode="a", append_dim=dim, zarr_format=ZARR_FORMAT, consolidated=False
                    )
                else:  # first failures of this run: create the arrays
                    enc = {v: {"chunks": _chunks(part[v], max(n, 64)), "chunk_key_encoding": dict(CHUNK_KEY_ENCODING)}
                           for v in part.variables}
                    part.to_zarr(
                        self.path, group=name, mode="a", zarr_format=ZARR_FORMAT, consolidated=False, encoding=enc
                    )

    def _commit(self, *, images: int, failures: int, items: int, batches: int = 1, complete: bool = False) -> None:
        """Record the new shards, then write counts, record and consolidated metadata in one root replace.

        The order keeps every reader consistent: the data is on disk before the counts that announce it,
        and the root ``zarr.json`` (attributes and the consolidated metadata that ``mmlens.open`` and
        ``store_status`` read) is replaced in one step.
        """
        old = self._progress
        changed = {"image": (old["images"], old["images"] + images),
                   "failure": (old["failures"], old["failures"] + failures)}
        integrity.update_record(self.path, self._record, changed)
        runs = list(old.get("runs", []))
        if batches and (images or items):
            runs.append([old["images"], images, old["items"], items])
        progress = {
            **old,
            "images": old["images"] + images,
            "failures": old["failures"] + failures,
            "items": old["items"] + items,
            "batches": old["batches"] + batches,
            "complete": complete,
            "arrays": _list_arrays(self.path),  # everything on disk now is complete
            "runs": runs,
        }
        write_root(self.path, {**self._attrs, schema.PROGRESS_ATTR: _dumps(progress),
                               schema.CHUNKS_ATTR: _dumps(self._record)})
        self._progress = progress


def check_identity(path: str | os.PathLike, stored: Mapping[str, Any], provenance: Mapping[str, Any],
                   identity_keys: Iterable[str] = schema.IDENTITY_KEYS) -> None:
    """Refuse (:class:`StoreIdentityError`) to resume a store written by another run, naming each differing key.

    Shared by the streaming writer and the distributed trace (:mod:`mmlens.tracing.distributed`).
    """
    version = stored.get("mmlens_schema")
    if version != schema.SCHEMA_VERSION:
        lacking = schema.lacks(version)
        raise StoreIdentityError(
            f"cannot resume {path}: it was written with store schema {version!r}, this mmlens writes "
            f"schema {schema.SCHEMA_VERSION}"
            + (f" (it lacks {'; '.join(lacking)})" if lacking else "")
            + ". It still opens for reading. To re-trace it, rerun with --overwrite (overwrite=True), or "
            "write to a new path."
        )
    differ = [
        (key, stored.get(key), provenance.get(key))
        for key in identity_keys
        if stored.get(key) != provenance.get(key)
    ]
    if differ:
        lines = "; ".join(f"{k}: store has {a!r}, this run has {b!r}" for k, a, b in differ)
        keys = ", ".join(k for k, _, _ in differ)
        raise StoreIdentityError(
            f"cannot resume {path}: it was written by a different run ({lines}). "
            f"To continue that store, rerun with the same {keys}; to start over, delete it or pass "
            "--overwrite (overwrite=True); to keep both, write to a new path."
        )


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


def _groups(root: Any) -> list[tuple[str, Any]]:
    """The groups of the store's root, listed without zarr's warning about the root document's copy."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*mmlens_root\.json is not recognized")
        return list(root.groups())


def _dims(arr: Any) -> tuple[str, ...]:
    """Dimension names of a zarr array (format 3 metadata; format 2 keeps them in an attribute)."""
    names = getattr(arr.metadata, "dimension_names", None)
    if names is not None:
        return tuple(names)
    return tuple(arr.attrs.get("_ARRAY_DIMENSIONS", ()))


def _static_encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """Flat chunk keys (``c.0.0``) for every variable, so that every file of an array sits in its folder."""
    return {str(v): {"chunk_key_encoding": dict(CHUNK_KEY_ENCODING)} for v in ds.variables}


def _covered(p: integrity.Problem, ranges: list[tuple[int, int]]) -> bool:
    """Whether the image ranges rewritten so far cover the whole of a damaged file's images."""
    if p.lo is None or p.hi is None:
        return False
    at = p.lo
    for a, b in sorted(ranges):
        if a <= at < b:
            at = b
    return at >= p.hi


def _chunks(var: xr.Variable | xr.DataArray, n: int) -> tuple[int, ...]:
    return tuple(max(n, 1) if d in _APPEND_DIMS else size for d, size in zip(var.dims, var.shape))


def _check_same_variables(name: str, ds: xr.Dataset, stored: Any, path: Path) -> None:
    """Image variables of a batch must be those of the store (static ones may be omitted)."""
    if stored is None or ds.sizes.get("image", 0) == 0:
        return
    have = {k for k, arr in stored.arrays() if "image" in _dims(arr)}
    new = {str(v) for v in ds.variables if "image" in ds[v].dims}
    missing, extra = sorted(have - new), sorted(new - have)
    if missing or extra:
        raise ValueError(
            f"batch group {name!r} does not match the store at {path}: "
            f"missing {missing or 'nothing'}, unexpected {extra or 'nothing'}; every batch must carry the same "
            "variables (same trace options); write a different selection to a new store"
        )


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _restore_metadata(path: Path) -> None:
    """Write back metadata files that were lost, from the consolidated copy, if it survives.

    Format 3: the consolidated metadata in the root ``zarr.json`` holds every other ``zarr.json`` (the
    root document itself comes back from its copy first: :func:`~mmlens.store._encoding.restore_root`).
    Format 2: ``.zmetadata`` holds every ``.zarray``, ``.zattrs`` and ``.zgroup``.
    """
    meta, consolidated = integrity.read_metadata(path)
    if not consolidated:
        return
    for key, doc in meta.items():
        target = path / key
        if key in ("zarr.json", ".zmetadata") or target.exists():
            continue
        if key.endswith("zarr.json") and doc.get("node_type") == "group":
            doc = {k: v for k, v in doc.items() if k != "consolidated_metadata"}
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(doc, indent=4))


def _list_arrays(root: Path) -> list[str]:
    """Relative paths of all zarr arrays under ``root``."""
    return integrity._list_arrays(root)


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
        if rel.as_posix() in committed or any(p.as_posix() in committed for p in rel.parents):
            continue  # inside a committed array: its nested chunk folders (c/0/...) stay
        for d in list(dirnames):
            if (rel / d).as_posix() not in keep:
                shutil.rmtree(Path(dirpath) / d)
                dirnames.remove(d)


def _trim_arrays(root: Any, limits: Mapping[str, int]) -> None:
    """Shrink every array along image/failure to the committed size (delete failure arrays cut to 0)."""
    for _, group in _groups(root):
        for key, arr in list(group.arrays()):
            dims = list(_dims(arr))
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
