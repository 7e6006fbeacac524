"""Store integrity: the writer's per-chunk record (bytes, crc32), the open-time listing check, checked reads,
the deep ``verify``, and the torch-free ``store_status``.

The record lives in the root attribute ``_chunks`` (docs/store_schema.md, "Integrity"): for every array,
``{chunk key: [bytes, crc32]}`` of each chunk file the writer wrote. It is written in the same root-attrs
file replace as ``_progress``, so it always describes the committed arrays. No torch here.
"""

from __future__ import annotations

import builtins
import json
import os
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from mmlens.store import schema
from mmlens.store._encoding import node_documents, store_format

__all__ = [
    "StoreIntegrityError",
    "Problem",
    "StoreStatus",
    "store_status",
    "verify",
    "VerifyReport",
    "read_metadata",
    "listing_problems",
    "update_record",
    "root_attrs",
]

#: zarr metadata documents (format 2: ``.z*``; format 3: ``zarr.json``); everything else in an array folder is a
#: chunk (format 2) or a chunk/shard file ``c.<i>.<j>...`` (format 3).
META_FILES = frozenset({".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"})
#: Dims along which the writer appends, i.e. whose chunks a resume can re-trace (``image``) or not.
APPEND_DIMS = ("image", "failure")
#: Lines of a message before "... and k more".
MAX_LINES = 12


class StoreIntegrityError(RuntimeError):
    """A store's files are not those its writer recorded; the message names each array, chunk and the way out.

    Attributes
    ----------
    problems : list of Problem
        Every problem found.
    """

    def __init__(self, message: str, problems: Iterable[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


@dataclass(frozen=True)
class Problem:
    """One damaged file of a store.

    ``kind`` is ``missing`` (a recorded chunk or shard is absent), ``size`` (its byte size differs: truncated
    or replaced; or a repair of it was interrupted), ``checksum`` (same size, other bytes: bit rot or a file
    copied from another store), ``metadata`` (a zarr metadata file is absent), ``unrecorded`` (a chunk file
    the writer never wrote), ``undecodable`` (a store without record whose chunk does not decode) or
    ``record`` (no record at all). ``dim``/``lo``/``hi`` give the file's range along ``image`` or ``failure``
    (``hi`` exclusive); ``unit`` is ``shard`` for the shard files of format-3 stores, else ``chunk``.
    """

    array: str
    chunk: str
    kind: str
    detail: str
    dim: str | None = None
    lo: int | None = None
    hi: int | None = None
    unit: str = "chunk"

    @property
    def span(self) -> str:
        """``images 96-127``, ``failures 0-63``, or what the chunk holds when it is not along an append dim."""
        if self.dim is None or self.lo is None or self.hi is None:
            return "written once, with the first batch" if self.kind != "metadata" else "metadata"
        return f"{self.dim}s {self.lo}-{self.hi - 1}"

    @property
    def retraceable(self) -> bool:
        """Whether a resume can re-trace it (a lost or truncated chunk or shard of images)."""
        return self.dim == "image" and self.kind in ("missing", "size")

    def describe(self) -> str:
        where = f"{self.array}/{self.chunk}" if self.kind == "metadata" else f"{self.array} {self.unit} {self.chunk}"
        return f"{where} ({self.span}): {self.detail}"


#: Record entry of a shard whose repair has begun but not ended (``[REPAIRING, 0]``): never matches a file, so
#: a resume re-traces the whole shard again instead of trusting a half-rewritten one.
REPAIRING = -1


# ----------------------------------------------------------------------------------------------
# metadata and the record
# ----------------------------------------------------------------------------------------------


def read_metadata(path: str | os.PathLike, *, consolidated: bool = True) -> tuple[dict[str, Any], bool]:
    """All zarr metadata documents of a store, ``{key: document}``, and whether they were consolidated.

    Format 3 (schema 3): keys ``zarr.json`` (the root: attributes) and ``<node>/zarr.json``, from the
    root document's consolidated metadata (one file: what ``mmlens.open`` reads) unless ``consolidated``
    is False, else from every ``zarr.json``. Format 2 (schemas 1 and 2): ``.zmetadata`` when present,
    else every ``.zarray``, ``.zattrs`` and ``.zgroup`` file.

    Examples
    --------
    >>> import tempfile
    >>> from mmlens.store.io import to_zarr
    >>> from mmlens.store.synthetic import example_tree
    >>> meta, consolidated = read_metadata(to_zarr(example_tree(), tempfile.mkdtemp() + "/run.zarr"))
    >>> consolidated, meta["vision/prompt_mass/zarr.json"]["dimension_names"]
    (True, ['variant', 'image', 'layer', 'head'])
    """
    path = Path(path)
    if (path / "zarr.json").is_file():
        with builtins.open(path / "zarr.json") as f:
            root = json.load(f)
        inline = root.pop("consolidated_metadata", None) or {}
        if consolidated and inline.get("metadata"):
            return {"zarr.json": root, **{f"{k}/zarr.json": v for k, v in inline["metadata"].items()}}, True
        return {"zarr.json": root, **{f"{k}/zarr.json": v for k, v in node_documents(path).items()}}, False
    if consolidated and (path / ".zmetadata").is_file():
        with builtins.open(path / ".zmetadata") as f:
            return dict(json.load(f)["metadata"]), True
    meta: dict[str, Any] = {}
    for dirpath, _, files in os.walk(path):
        rel = Path(dirpath).relative_to(path)
        for name in files:
            if name in (".zarray", ".zattrs", ".zgroup"):
                with builtins.open(Path(dirpath) / name) as f:
                    meta[(rel / name).as_posix()] = json.load(f)
    return meta, False


def root_attrs(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The root attributes (provenance, ``_progress``, ``_chunks``) from :func:`read_metadata`'s documents."""
    if "zarr.json" in meta:
        return dict(meta["zarr.json"].get("attributes") or {})
    return dict(meta.get(".zattrs") or {})


def load_record(attrs: Mapping[str, Any]) -> dict[str, dict[str, list[int]]] | None:
    """The integrity record from root attrs, or None for a store written without one."""
    raw = attrs.get(schema.CHUNKS_ATTR)
    return None if raw is None else json.loads(raw)


class _ArrayInfo(NamedTuple):
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    #: the shape of one file: the chunk (format 2, unsharded format 3) or the shard (sharded format 3)
    chunks: tuple[int, ...]
    sep: str
    zarr_format: int = 2
    sharded: bool = False

    @property
    def unit(self) -> str:
        return "shard" if self.sharded else "chunk"

    def index(self, key: str) -> list[int] | None:
        """Grid index of a chunk key (``0.3.0`` in format 2, ``c.0.3.0`` or ``c/0/3/0`` in format 3)."""
        if self.zarr_format == 3:
            if key == "c":
                return []
            if not key.startswith("c" + self.sep):
                return None
            key = key[2:]
        try:
            return [int(i) for i in key.split(self.sep)]
        except ValueError:
            return None


def _info_from_documents(zarray: Mapping[str, Any] | None, zattrs: Mapping[str, Any] | None,
                         v3: Mapping[str, Any] | None) -> _ArrayInfo | None:
    if v3 is not None:
        if v3.get("node_type") != "array":
            return None
        encoding = v3.get("chunk_key_encoding") or {}
        sep = (encoding.get("configuration") or {}).get("separator") or ("/" if encoding.get("name") != "v2" else ".")
        sharded = any(c.get("name") == "sharding_indexed" for c in v3.get("codecs", []))
        return _ArrayInfo(tuple(v3.get("dimension_names") or ()), tuple(v3["shape"]),
                          tuple(v3["chunk_grid"]["configuration"]["chunk_shape"]), sep, 3, sharded)
    if zarray is None:
        return None
    dims = (zattrs or {}).get("_ARRAY_DIMENSIONS", [])
    return _ArrayInfo(tuple(dims), tuple(zarray["shape"]), tuple(zarray["chunks"]),
                      zarray.get("dimension_separator") or ".")


def _array_info(meta: Mapping[str, Any], array: str) -> _ArrayInfo | None:
    return _info_from_documents(meta.get(f"{array}/.zarray"), meta.get(f"{array}/.zattrs"),
                                meta.get(f"{array}/zarr.json"))


def _read_array_info(folder: Path) -> _ArrayInfo | None:
    """The array's layout from its own metadata file(s) on disk."""
    docs = {}
    for name in ("zarr.json", ".zarray", ".zattrs"):
        try:
            with builtins.open(folder / name) as f:
                docs[name] = json.load(f)
        except FileNotFoundError:
            continue
    return _info_from_documents(docs.get(".zarray"), docs.get(".zattrs"), docs.get("zarr.json"))


def _meta_arrays(meta: Mapping[str, Any]) -> list[str]:
    """The arrays the metadata documents describe."""
    out = []
    for key, doc in meta.items():
        if key.endswith("/.zarray"):
            out.append(key[: -len("/.zarray")])
        elif key.endswith("/zarr.json") and doc.get("node_type") == "array":
            out.append(key[: -len("/zarr.json")])
    return sorted(out)


def _span(info: _ArrayInfo | None, key: str) -> tuple[str | None, int | None, int | None]:
    """The chunk's range along its append dim, from its key (``0.3.0.0`` -> images 3*chunk..)."""
    if info is None:
        return None, None, None
    index = info.index(key)
    if index is None:
        return None, None, None
    for dim in APPEND_DIMS:
        if dim in info.dims and len(index) == len(info.dims):
            axis = info.dims.index(dim)
            lo = index[axis] * info.chunks[axis]
            return dim, lo, min(lo + info.chunks[axis], max(info.shape[axis], lo + 1))
    return None, None, None


def _problem(meta: Mapping[str, Any], array: str, chunk: str, kind: str, detail: str) -> Problem:
    info = _array_info(meta, array)
    dim, lo, hi = _span(info, chunk) if kind != "metadata" else (None, None, None)
    return Problem(array, chunk, kind, detail, dim, lo, hi, info.unit if info is not None else "chunk")


def _list_arrays(root: Path) -> list[str]:
    """Relative paths of every array on disk under ``root`` (either format)."""
    if store_format(root) == 3:
        return sorted(k for k, doc in node_documents(root).items() if doc.get("node_type") == "array")
    return sorted(
        Path(dirpath).relative_to(root).as_posix() for dirpath, _, files in os.walk(root) if ".zarray" in files
    )


def _is_chunk(name: str) -> bool:
    return name not in META_FILES and not name.endswith(".partial") and not name.startswith(".")


def _chunk_files(folder: Path) -> dict[str, os.DirEntry]:
    """The chunk (or shard) files of one array folder, by key: flat keys, plus nested ``c/...`` keys if any."""
    out: dict[str, os.DirEntry] = {}
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except (FileNotFoundError, NotADirectoryError):
        return out
    for entry in entries:
        if not _is_chunk(entry.name):
            continue
        if entry.is_file():
            out[entry.name] = entry
        elif entry.name == "c" and entry.is_dir():  # format 3 with "/" keys: c/0/3/0
            stack = [(entry.path, "c")]
            while stack:
                where, prefix = stack.pop()
                with os.scandir(where) as it:
                    for sub in it:
                        key = f"{prefix}/{sub.name}"
                        if sub.is_dir():
                            stack.append((sub.path, key))
                        elif _is_chunk(sub.name):
                            out[key] = sub
    return out


def update_record(
    root: str | os.PathLike,
    record: dict[str, dict[str, list[int]]],
    ranges: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, dict[str, list[int]]]:
    """Record byte size and crc32 of chunk (format 3: shard) files, in place; return ``record``.

    Arrays not yet in the record are recorded whole. Recorded arrays are re-recorded only where a
    write may have changed them: files overlapping ``ranges[dim]`` (``(lo, hi)``, hi exclusive)
    along their append dim. Files are read right after zarr wrote them, so this costs one read
    of data that is still in the page cache. A process that wrote a region of whole shards of a
    store whose arrays exist already (a cluster worker) is recorded with ``{"image": (lo, hi)}``.

    Examples
    --------
    >>> import tempfile
    >>> from mmlens.store.io import to_zarr
    >>> from mmlens.store.synthetic import example_tree
    >>> path = to_zarr(example_tree(n_images=4), tempfile.mkdtemp() + "/run.zarr")
    >>> rec = update_record(path, {})
    >>> sorted(rec["vision/prompt_mass"])  # one shard: (variant, image, layer, head)
    ['c.0.0.0.0']
    """
    root = Path(root)
    for array in _list_arrays(root):
        folder = root / array
        new = array not in record
        info = None
        if not new:
            if not ranges:
                continue
            info = _read_array_info(folder)
            if info is None or not any(d in info.dims for d in ranges):
                continue  # written once, never changed
        entries = record.setdefault(array, {})
        for key, entry in _chunk_files(folder).items():
            if info is not None:
                dim, lo, hi = _span(info, key)
                if dim is None or dim not in ranges or lo is None or hi is None:
                    continue
                a, b = ranges[dim]
                if hi <= a or lo >= b:
                    continue
            data = Path(entry.path).read_bytes()
            entries[key] = [len(data), zlib.crc32(data)]
    return record


def forget_beyond(record: dict[str, dict[str, list[int]]], meta: Mapping[str, Any]) -> None:
    """Drop record entries of chunks outside their array's shape (after a resume trimmed the arrays)."""
    for array in list(record):
        info = _array_info(meta, array)
        if info is None:
            continue
        for key in list(record[array]):
            dim, lo, _ = _span(info, key)
            if dim is not None and lo is not None and lo >= info.shape[info.dims.index(dim)]:
                del record[array][key]


# ----------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------


def _sizes(folder: Path) -> dict[str, int]:
    try:
        with os.scandir(folder) as it:
            return {e.name: e.stat().st_size for e in it}
    except (FileNotFoundError, NotADirectoryError):
        return {}


def _progress(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    raw = root_attrs(meta).get(schema.PROGRESS_ATTR)
    return None if raw is None else json.loads(raw)


def volatile_chunks(meta: Mapping[str, Any], record: Mapping[str, Mapping[str, list[int]]]) -> dict[str, set[str]]:
    """Files a live writer may still rewrite: the last chunk or shard along image/failure of an incomplete store.

    The next append fills a partly filled last chunk or shard (a batch with unreadable images leaves a
    chunk partly filled; a shard fills over several batches), so its size and checksum can change after a
    reader took the record; the images it already holds do not. Such files are only checked for existence
    until the store is complete.
    """
    progress = _progress(meta)
    if progress is None or progress.get("complete"):
        return {}
    out: dict[str, set[str]] = {}
    for array, chunks in record.items():
        info = _array_info(meta, array)
        if info is None:
            continue
        for dim in APPEND_DIMS:
            if dim in info.dims:
                axis = info.dims.index(dim)
                last = max(info.shape[axis] - 1, 0) // info.chunks[axis]
                out[array] = {k for k in chunks if (i := info.index(k)) is not None and len(i) > axis
                              and i[axis] >= last}
    return out


def _root_metadata_files(meta: Mapping[str, Any]) -> tuple[str, ...]:
    return ("zarr.json",) if "zarr.json" in meta else (".zgroup", ".zattrs", ".zmetadata")


def listing_problems(
    path: str | os.PathLike,
    meta: Mapping[str, Any],
    record: Mapping[str, Mapping[str, list[int]]],
) -> list[Problem]:
    """The default check of ``mmlens.open``, from directory listings alone (no chunk is read).

    Every chunk or shard the record promises must exist with its recorded byte size (existence only
    for the :func:`volatile_chunks` of a store still being written), and every metadata file of the
    recorded arrays and their groups must exist (``zarr.json`` in format 3; ``.zgroup``, ``.zattrs``,
    ``.zarray``, ``.zmetadata`` in format 2).
    """
    path = Path(path)
    v3 = "zarr.json" in meta
    volatile = volatile_chunks(meta, record)
    problems: list[Problem] = []
    root_files = _sizes(path)
    for name in _root_metadata_files(meta):  # the writers always write all of them
        if name not in root_files:
            problems.append(Problem("(root)", name, "metadata", "metadata file is missing"))
    groups = sorted({Path(a).parent.as_posix() for a in record} - {"."})
    for group in groups:
        name = "zarr.json" if v3 else ".zgroup"
        if not (path / group / name).is_file():
            problems.append(Problem(group, name, "metadata", "metadata file is missing"))
    for array, chunks in record.items():
        folder = path / array
        entries = _sizes(folder)
        for name in ("zarr.json",) if v3 else (".zarray", ".zattrs"):
            if name not in entries:
                problems.append(Problem(array, name, "metadata", "metadata file is missing"))
        if v3 and "c" in entries:  # nested keys (c/0/3/0): a walk; mmlens writes flat keys (c.0.3.0)
            entries = {k: e.stat().st_size for k, e in _chunk_files(folder).items()}
        for key, (size, _crc) in chunks.items():
            got = entries.get(key)
            if got is None:
                problems.append(_problem(meta, array, key, "missing", "file is missing"))
            elif size == REPAIRING:
                problems.append(_problem(meta, array, key, "size", "a repair of it was interrupted"))
            elif got != size and key not in volatile.get(array, ()):
                problems.append(_problem(meta, array, key, "size",
                                         f"file has {got} bytes, the writer wrote {size}"))
    return problems


def integrity_error(path: str | os.PathLike, problems: list[Problem], *, deep_hint: bool = True) -> StoreIntegrityError:
    """One :class:`StoreIntegrityError` for all ``problems``: each array and chunk named, then the way out."""
    lines = [p.describe() for p in problems[:MAX_LINES]]
    if len(problems) > MAX_LINES:
        lines.append(f"... and {len(problems) - MAX_LINES} more")
    return StoreIntegrityError(
        f"{path} is damaged: {len(problems)} file(s) differ from what its writer recorded:\n  - "
        + "\n  - ".join(lines) + "\n" + way_out(problems, path, deep_hint=deep_hint),
        problems,
    )


def image_ranges(problems: Iterable[Problem]) -> list[tuple[int, int]]:
    """Merged ``(lo, hi)`` image ranges of the re-traceable problems."""
    spans = sorted({(p.lo, p.hi) for p in problems if p.retraceable and p.lo is not None and p.hi is not None})
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def way_out(problems: list[Problem], path: str | os.PathLike, *, deep_hint: bool = True) -> str:
    """What to do about ``problems``, in the words of the fix that applies to each kind."""
    advice = []
    ranges = image_ranges(problems)
    if ranges:
        spans = ", ".join(f"{lo}-{hi - 1}" for lo, hi in ranges)
        advice.append(f"rerun the trace that wrote it (the same `mmlens trace` command or trace_to_store call): "
                      f"it re-traces exactly images {spans} and keeps the rest")
    if any(p.kind == "checksum" for p in problems):
        files = ", ".join(f"{p.array}/{p.chunk}" for p in problems if p.kind == "checksum")
        advice.append(f"delete the file(s) with other bytes ({files}) and rerun the trace, which then "
                      "re-traces those images")
    if any(p.kind == "metadata" for p in problems):
        advice.append("rerun the trace: a resume restores lost metadata files from the consolidated copy "
                      "(the root zarr.json, or .zmetadata in older stores) when that copy survives; else re-trace "
                      "with --overwrite (overwrite=True)")
    if any(not p.retraceable and p.kind not in ("checksum", "metadata") for p in problems):
        advice.append("the other chunks are written once (not per image) or are failure records: re-trace the "
                      "store with --overwrite (overwrite=True), or restore it from a backup")
    text = "Way out: " + "; ".join(advice) + "."
    if deep_hint:
        text += f" `mmlens store verify {path}` checks every file's checksum."
    return text


def _read_file(folder: Path, key: str) -> bytes | None:
    try:
        return (folder / key).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None


def _crc_problems(path: Path, meta: Mapping[str, Any], record: Mapping[str, Mapping[str, list[int]]]) -> list[Problem]:
    problems = []
    volatile = volatile_chunks(meta, record)
    for array, chunks in record.items():
        for key, (size, crc) in chunks.items():
            if key in volatile.get(array, ()):
                continue
            data = _read_file(path / array, key)
            if data is None:
                continue  # reported by the listing check
            if len(data) == size and zlib.crc32(data) != crc:
                problems.append(_problem(meta, array, key, "checksum",
                                         "file has other bytes than the writer wrote (bit rot, or a file copied "
                                         "from another store)"))
    return problems


def _unrecorded(
    path: Path, meta: Mapping[str, Any], record: Mapping[str, Mapping[str, list[int]]]
) -> tuple[list[Problem], list[tuple[int, int]]]:
    """Files the writer never recorded: problems, and the image ranges ``pending`` in a store still being written.

    In an incomplete store, a shard along ``image`` that exists but is not recorded yet is a region whose
    writer (a cluster worker) has written it and whose client has not recorded it yet, or one written after
    the last commit: pending, not damage. Regions not written at all are absent from the record and are
    not checked either.
    """
    progress = _progress(meta)
    incomplete = progress is not None and not progress.get("complete")
    problems, pending = [], []
    for array in _meta_arrays(meta):
        info = _array_info(meta, array)
        known = record.get(array)
        if known is None:
            if incomplete:
                continue  # created but not yet committed
            problems.append(Problem(array, "(all)", "record", "array has no integrity record (written after the "
                                    "record, or by another program)"))
            continue
        for name in _chunk_files(path / array):
            if name in known:
                continue
            index = info.index(name) if info is not None else None
            inside = index is not None and info is not None and all(
                i * c < s for i, c, s in zip(index, info.chunks, info.shape))
            if not inside:
                continue
            dim, lo, hi = _span(info, name)
            if incomplete and dim == "image" and lo is not None and hi is not None:
                pending.append((lo, hi))
                continue
            problems.append(Problem(array, name, "unrecorded", "file the writer never wrote (copied in from "
                                    "another store?)", dim, lo, hi, info.unit if info is not None else "chunk"))
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(set(pending)):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return problems, merged


def _decode_problems(path: Path) -> list[Problem]:
    """For stores without a record: decode every chunk of every array."""
    import itertools

    import zarr

    problems = []
    meta, _ = read_metadata(path)
    root = zarr.open_group(path, mode="r", zarr_format=store_format(path), use_consolidated=False)
    for array in _list_arrays(path):
        arr = root[array]
        info = _array_info(meta, array)
        shape = info.chunks if info is not None else arr.chunks
        grid = [range(-(-s // c)) for s, c in zip(arr.shape, shape)]
        for index in itertools.product(*grid):
            sel = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, shape))
            try:
                arr[sel]
            except Exception as err:  # noqa: BLE001 - any decode failure is the finding
                sep = info.sep if info is not None else "."
                key = sep.join(map(str, index)) or "0"
                if info is not None and info.zarr_format == 3:
                    key = "c" + (sep + key if index else "")
                problems.append(_problem(meta, array, key, "undecodable", f"does not decode ({err})"))
    return problems


class VerifyReport(NamedTuple):
    """Result of :func:`verify`: ``ok``, every :class:`Problem`, and whether the store had a record.

    ``pending`` lists the image ranges of a store still being written whose shards exist but are not
    recorded yet (a region a cluster worker wrote, not yet recorded by the run's client): not damage.
    """

    path: str
    ok: bool
    problems: list[Problem]
    recorded: bool
    n_chunks: int
    pending: list[tuple[int, int]] = []

    def text(self) -> str:
        """A report for people (and cron mails)."""
        wait = ""
        if self.pending:
            wait = (" Pending (written, not yet recorded by the running trace): images "
                    + ", ".join(f"{lo}-{hi - 1}" for lo, hi in self.pending) + ".")
        if self.ok:
            how = "every recorded file has its size and checksum" if self.recorded else "every chunk decodes"
            return f"OK {self.path}: {self.n_chunks} files checked, {how}.{wait}"
        lines = [p.describe() for p in self.problems]
        return (f"DAMAGED {self.path}: {len(self.problems)} problem(s)\n  - " + "\n  - ".join(lines) + "\n"
                + way_out(self.problems, self.path, deep_hint=False) + wait)


def verify(path: str | os.PathLike) -> VerifyReport:
    """The deep check: every recorded chunk or shard present, of its size and checksum; no file the writer never wrote.

    For stores without a record (schema 1, or written by another program) every chunk is decoded
    instead, which finds truncated chunks but not swapped ones.

    Examples
    --------
    >>> import tempfile
    >>> from mmlens.store.io import to_zarr
    >>> from mmlens.store.synthetic import example_tree
    >>> verify(to_zarr(example_tree(), tempfile.mkdtemp() + "/run.zarr")).ok
    True
    """
    path = Path(path)
    if store_format(path) is None:
        raise FileNotFoundError(f"no zarr store at {path}: expected a directory with zarr.json (or .zgroup)")
    if store_format(path) == 3 and not (path / "zarr.json").is_file():  # only its copy is left
        problem = Problem("(root)", "zarr.json", "metadata", "metadata file is missing")
        return VerifyReport(str(path), False, [problem], True, 0)
    meta, _ = read_metadata(path)
    record = load_record(root_attrs(meta))
    if record is None and (path / ".zattrs").is_file():
        with builtins.open(path / ".zattrs") as f:
            record = load_record(json.load(f))
    if record is None:
        problems = _decode_problems(path)
        n = sum(len(_chunk_files(path / a)) for a in _list_arrays(path))
        return VerifyReport(str(path), not problems, problems, False, n)
    problems = listing_problems(path, meta, record)
    problems += _crc_problems(path, meta, record)
    unrecorded, pending = _unrecorded(path, meta, record)
    problems += unrecorded
    n = sum(len(c) for c in record.values())
    return VerifyReport(str(path), not problems, problems, True, n, pending)


# ----------------------------------------------------------------------------------------------
# checked reads
# ----------------------------------------------------------------------------------------------


def checked_store(path: str | os.PathLike, meta: Mapping[str, Any], record: Mapping[str, Mapping[str, list[int]]]):
    """A read-only zarr store over ``path`` whose reads check each recorded file's size and crc32.

    A whole-file read (a chunk of format 2, an unsharded array) is checked as it is read. zarr reads a
    shard by byte ranges (its index, then the inner chunks asked for): the first range read of a shard
    reads the whole shard once and checks it; later reads of that shard through this store (one
    ``mmlens.open``) are served without checking again. A statistic over a whole variable reads every
    shard anyway, so the check costs one more pass over bytes in the page cache; reading a few images
    reads their whole shards once.
    """
    import asyncio

    from zarr.storage import LocalStore, WrapperStore

    volatile = volatile_chunks(meta, record)
    expected = {f"{array}/{key}": (size, crc)
                for array, chunks in record.items() for key, (size, crc) in chunks.items()
                if key not in volatile.get(array, ())}
    infos = {array: _array_info(meta, array) for array in record}
    verified: set[str] = set()
    locks: dict[str, asyncio.Lock] = {}

    def fail(key: str, nbytes: int, want: tuple[int, int]) -> StoreIntegrityError:
        array, chunk = key.rsplit("/", 1)
        info = infos.get(array)
        dim, lo, hi = _span(info, chunk)
        kind = "size" if nbytes != want[0] else "checksum"
        detail = (f"read {nbytes} bytes, the writer wrote {want[0]}" if kind == "size" else
                  "the bytes read are not those the writer wrote (bit rot, or a file copied from another store)")
        return integrity_error(path, [Problem(array, chunk, kind, detail, dim, lo, hi,
                                              info.unit if info is not None else "chunk")])

    def check(key: str, buf: Any, want: tuple[int, int]) -> None:
        data = buf.as_numpy_array()  # crc32 reads the buffer in place: no copy
        if data.nbytes != want[0] or zlib.crc32(data) != want[1]:
            raise fail(key, data.nbytes, want)

    class _Checked(WrapperStore):
        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            want = expected.get(key)
            if want is not None and byte_range is not None and key not in verified:
                # the first piece of a shard: check the whole file once (one lock per key: concurrent reads of
                # one shard, on zarr's event loop, wait for the first one's check instead of repeating it)
                lock = locks.setdefault(key, asyncio.Lock())
                async with lock:
                    if key not in verified:
                        whole = await self._store.get(key, prototype)
                        if whole is not None:
                            check(key, whole, want)
                            verified.add(key)
            buf = await self._store.get(key, prototype, byte_range)
            if want is None or buf is None or byte_range is not None:
                return buf
            check(key, buf, want)
            verified.add(key)
            return buf

        def __reduce__(self) -> tuple[Any, ...]:  # a local class: pickle (dask workers) rebuilds it from its inputs
            return checked_store, (path, meta, record)

    return _Checked(LocalStore(path, read_only=True))


# ----------------------------------------------------------------------------------------------
# status
# ----------------------------------------------------------------------------------------------


class _Counts(NamedTuple):
    complete: bool
    #: input items committed (images + unreadable ones)
    n_done: int
    #: input items the run will trace, when the writer was told (else None)
    n_total: int | None
    n_images: int
    n_failures: int


class StoreStatus(_Counts):
    """How far a store's writer got: what the report and the explorer show.

    A 5-tuple ``(complete, n_done, n_total, n_images, n_failures)``; ``n_pending`` (not part of the
    tuple, so that comparisons with 5-tuples keep working) counts the regions not written yet of a store
    a distributed trace is writing (:mod:`mmlens.store.regions`), else 0.
    """

    def __new__(cls, complete: bool, n_done: int, n_total: int | None, n_images: int, n_failures: int,
                n_pending: int = 0) -> StoreStatus:
        self = super().__new__(cls, complete, n_done, n_total, n_images, n_failures)
        self.n_pending = int(n_pending)
        return self

    @property
    def message(self) -> str:
        """``complete: 192 images``, ``incomplete: 64 of 192 images`` (``; 4 regions pending`` on a cluster)."""
        if self.complete:
            return f"complete: {self.n_images} images" + (f", {self.n_failures} skipped" if self.n_failures else "")
        of = f" of {self.n_total}" if self.n_total is not None else ""
        pending = f"; {self.n_pending} regions pending" if self.n_pending else ""
        return f"incomplete: {self.n_done}{of} images{pending}"


def store_status(path: str | os.PathLike) -> StoreStatus:
    """Whether a store is complete, and how many of its images are committed; torch-free, reads one small file.

    The counts come from the same metadata ``mmlens.open`` reads (``.zmetadata``), so they agree
    with the arrays a report made now would see. Stores not made by the streaming writer (whole-tree
    ``to_zarr``, netCDF) are complete.

    Examples
    --------
    >>> import tempfile
    >>> from mmlens.store.io import StoreWriter
    >>> from mmlens.store.synthetic import example_tree
    >>> tree, path = example_tree(n_images=6), tempfile.mkdtemp() + "/run.zarr"
    >>> w = StoreWriter(path, dict(tree.attrs), total=6)
    >>> w.append(tree.isel(image=slice(0, 3)))
    >>> store_status(path).message
    'incomplete: 3 of 6 images'
    >>> w.append(tree.isel(image=slice(3, 6))); w.close()
    >>> store_status(path).message
    'complete: 6 images'
    """
    path = Path(path)
    if path.is_file():  # netCDF: written whole
        import xarray as xr

        tree = xr.open_datatree(path, engine="h5netcdf")
        n = tree["vision"].sizes.get("image", 0) if "vision" in tree.children else 0
        f = tree["vision"].sizes.get("failure", 0) if "vision" in tree.children else 0
        return StoreStatus(True, n + f, n + f, n, f)
    meta, _ = read_metadata(path)
    attrs = root_attrs(meta)
    raw = attrs.get(schema.PROGRESS_ATTR)
    if raw is None:
        n = _dim_size(meta, "image")
        f = _dim_size(meta, "failure")
        return StoreStatus(True, n + f, n + f, n, f)
    progress = json.loads(raw)
    pending = 0
    if progress.get("layout") == "regions" and not progress.get("complete"):  # mmlens.store.regions.LAYOUT
        per, total = progress["images_per_shard"], progress["total"]
        pending = -(-total // per) - len(progress.get("regions", {}))
    return StoreStatus(bool(progress.get("complete")), int(progress["items"]), progress.get("total"),
                       int(progress["images"]), int(progress["failures"]), pending)


def _dim_size(meta: Mapping[str, Any], dim: str) -> int:
    for array in _meta_arrays(meta):
        info = _array_info(meta, array)
        if array.startswith("vision/") and info is not None and dim in info.dims:
            return int(info.shape[info.dims.index(dim)])
    return 0
