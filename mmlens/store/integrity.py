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
]

#: zarr (format 2) metadata documents; everything else in an array directory is a chunk.
META_FILES = frozenset({".zarray", ".zattrs", ".zgroup", ".zmetadata"})
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

    ``kind`` is ``missing`` (a recorded chunk is absent), ``size`` (its byte size differs: truncated or
    replaced), ``checksum`` (same size, other bytes: bit rot or a chunk copied from another store),
    ``metadata`` (a zarr metadata file is absent), ``unrecorded`` (a chunk file the writer never wrote),
    ``undecodable`` (a store without record whose chunk does not decode) or ``record`` (no record at all).
    ``dim``/``lo``/``hi`` give the chunk's range along ``image`` or ``failure`` (``hi`` exclusive).
    """

    array: str
    chunk: str
    kind: str
    detail: str
    dim: str | None = None
    lo: int | None = None
    hi: int | None = None

    @property
    def span(self) -> str:
        """``images 96-127``, ``failures 0-63``, or what the chunk holds when it is not along an append dim."""
        if self.dim is None or self.lo is None or self.hi is None:
            return "written once, with the first batch" if self.kind != "metadata" else "metadata"
        return f"{self.dim}s {self.lo}-{self.hi - 1}"

    @property
    def retraceable(self) -> bool:
        """Whether a resume can re-trace it (a lost or truncated chunk of images)."""
        return self.dim == "image" and self.kind in ("missing", "size")

    def describe(self) -> str:
        where = f"{self.array}/{self.chunk}" if self.kind == "metadata" else f"{self.array} chunk {self.chunk}"
        return f"{where} ({self.span}): {self.detail}"


# ----------------------------------------------------------------------------------------------
# metadata and the record
# ----------------------------------------------------------------------------------------------


def read_metadata(path: str | os.PathLike, *, consolidated: bool = True) -> tuple[dict[str, Any], bool]:
    """All zarr (format 2) metadata documents of a store, ``{key: document}``, and whether they were consolidated.

    Reads ``.zmetadata`` when present (one file: what ``mmlens.open`` reads) unless ``consolidated`` is
    False, else every ``.zarray``, ``.zattrs`` and ``.zgroup`` file.

    Examples
    --------
    >>> import tempfile
    >>> from mmlens.store.io import to_zarr
    >>> from mmlens.store.synthetic import example_tree
    >>> meta, consolidated = read_metadata(to_zarr(example_tree(), tempfile.mkdtemp() + "/run.zarr"))
    >>> consolidated, meta["vision/prompt_mass/.zattrs"]["_ARRAY_DIMENSIONS"]
    (True, ['variant', 'image', 'layer', 'head'])
    """
    path = Path(path)
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


def load_record(attrs: Mapping[str, Any]) -> dict[str, dict[str, list[int]]] | None:
    """The integrity record from root attrs, or None for a store written without one."""
    raw = attrs.get(schema.CHUNKS_ATTR)
    return None if raw is None else json.loads(raw)


class _ArrayInfo(NamedTuple):
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    sep: str


def _array_info(meta: Mapping[str, Any], array: str) -> _ArrayInfo | None:
    zarray = meta.get(f"{array}/.zarray")
    if zarray is None:
        return None
    dims = (meta.get(f"{array}/.zattrs") or {}).get("_ARRAY_DIMENSIONS", [])
    return _ArrayInfo(tuple(dims), tuple(zarray["shape"]), tuple(zarray["chunks"]),
                      zarray.get("dimension_separator") or ".")


def _span(info: _ArrayInfo | None, key: str) -> tuple[str | None, int | None, int | None]:
    """The chunk's range along its append dim, from its key (``0.3.0.0`` -> images 3*chunk..)."""
    if info is None:
        return None, None, None
    try:
        index = [int(i) for i in key.split(info.sep)]
    except ValueError:
        return None, None, None
    for dim in APPEND_DIMS:
        if dim in info.dims and len(index) == len(info.dims):
            axis = info.dims.index(dim)
            lo = index[axis] * info.chunks[axis]
            return dim, lo, min(lo + info.chunks[axis], max(info.shape[axis], lo + 1))
    return None, None, None


def _problem(meta: Mapping[str, Any], array: str, chunk: str, kind: str, detail: str) -> Problem:
    dim, lo, hi = _span(_array_info(meta, array), chunk) if kind != "metadata" else (None, None, None)
    return Problem(array, chunk, kind, detail, dim, lo, hi)


def _list_arrays(root: Path) -> list[str]:
    return sorted(
        Path(dirpath).relative_to(root).as_posix() for dirpath, _, files in os.walk(root) if ".zarray" in files
    )


def _is_chunk(name: str) -> bool:
    return name not in META_FILES and not name.endswith(".partial") and not name.startswith(".")


def update_record(
    root: str | os.PathLike,
    record: dict[str, dict[str, list[int]]],
    ranges: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, dict[str, list[int]]]:
    """Record byte size and crc32 of chunk files, in place; return ``record``.

    Arrays not yet in the record are recorded whole. Recorded arrays are re-recorded only where a
    write may have changed them: chunks overlapping ``ranges[dim]`` (``(lo, hi)``, hi exclusive)
    along their append dim. Chunk files are read right after zarr wrote them, so this costs one read
    of data that is still in the page cache.

    Examples
    --------
    >>> import tempfile
    >>> from mmlens.store.io import to_zarr
    >>> from mmlens.store.synthetic import example_tree
    >>> path = to_zarr(example_tree(n_images=4), tempfile.mkdtemp() + "/run.zarr")
    >>> rec = update_record(path, {})
    >>> sorted(rec["vision/prompt_mass"])  # one chunk: (variant, image, layer, head)
    ['0.0.0.0']
    """
    root = Path(root)
    for array in _list_arrays(root):
        folder = root / array
        new = array not in record
        info = None
        if not new:
            if not ranges:
                continue
            with builtins.open(folder / ".zarray") as f:
                zarray = json.load(f)
            with builtins.open(folder / ".zattrs") as f:
                dims = json.load(f).get("_ARRAY_DIMENSIONS", [])
            info = _ArrayInfo(tuple(dims), tuple(zarray["shape"]), tuple(zarray["chunks"]),
                              zarray.get("dimension_separator") or ".")
            if not any(d in info.dims for d in ranges):
                continue  # written once, never changed
        entries = record.setdefault(array, {})
        with os.scandir(folder) as it:
            for entry in it:
                if not (_is_chunk(entry.name) and entry.is_file()):
                    continue
                if info is not None:
                    dim, lo, hi = _span(info, entry.name)
                    if dim is None or dim not in ranges or lo is None or hi is None:
                        continue
                    a, b = ranges[dim]
                    if hi <= a or lo >= b:
                        continue
                data = Path(entry.path).read_bytes()
                entries[entry.name] = [len(data), zlib.crc32(data)]
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


def volatile_chunks(meta: Mapping[str, Any], record: Mapping[str, Mapping[str, list[int]]]) -> dict[str, set[str]]:
    """Chunks a live writer may still rewrite: the last one along image/failure, while the store is incomplete.

    The next append fills a partly filled last chunk (a batch with unreadable images leaves one), so its
    size and checksum can change after a reader took the record; the images it already holds do not.
    Such chunks are only checked for existence until the store is complete.
    """
    raw = (meta.get(".zattrs") or {}).get(schema.PROGRESS_ATTR)
    if raw is None or json.loads(raw).get("complete"):
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
                out[array] = {k for k in chunks if int(k.split(info.sep)[axis]) >= last}
    return out


def listing_problems(
    path: str | os.PathLike,
    meta: Mapping[str, Any],
    record: Mapping[str, Mapping[str, list[int]]],
) -> list[Problem]:
    """The default check of ``mmlens.open``, from directory listings alone (no chunk is read).

    Every chunk the record promises must exist with its recorded byte size (existence only for the
    :func:`volatile_chunks` of a store still being written), and every metadata file of the recorded
    arrays and their groups must exist.
    """
    path = Path(path)
    volatile = volatile_chunks(meta, record)
    problems: list[Problem] = []
    root_files = _sizes(path)
    for name in (".zgroup", ".zattrs", ".zmetadata"):  # the writers always write all three
        if name not in root_files:
            problems.append(Problem("(root)", name, "metadata", "metadata file is missing"))
    groups = sorted({Path(a).parent.as_posix() for a in record} - {"."})
    for group in groups:
        if not (path / group / ".zgroup").is_file():
            problems.append(Problem(group, ".zgroup", "metadata", "metadata file is missing"))
    for array, chunks in record.items():
        entries = _sizes(path / array)
        for name in (".zarray", ".zattrs"):
            if name not in entries:
                problems.append(Problem(array, name, "metadata", "metadata file is missing"))
        for key, (size, _crc) in chunks.items():
            got = entries.get(key)
            if got is None:
                problems.append(_problem(meta, array, key, "missing", "chunk file is missing"))
            elif got != size and key not in volatile.get(array, ()):
                problems.append(_problem(meta, array, key, "size",
                                         f"chunk file has {got} bytes, the writer wrote {size}"))
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
        advice.append(f"delete the chunk file(s) with other bytes ({files}) and rerun the trace, which then "
                      "re-traces those images")
    if any(p.kind == "metadata" for p in problems):
        advice.append("rerun the trace: a resume restores lost metadata files from the consolidated copy "
                      "(.zmetadata) when that copy survives; else re-trace with --overwrite (overwrite=True)")
    if any(not p.retraceable and p.kind not in ("checksum", "metadata") for p in problems):
        advice.append("the other chunks are written once (not per image) or are failure records: re-trace the "
                      "store with --overwrite (overwrite=True), or restore it from a backup")
    text = "Way out: " + "; ".join(advice) + "."
    if deep_hint:
        text += f" `mmlens store verify {path}` checks every chunk's checksum."
    return text


def _crc_problems(path: Path, meta: Mapping[str, Any], record: Mapping[str, Mapping[str, list[int]]]) -> list[Problem]:
    problems = []
    volatile = volatile_chunks(meta, record)
    for array, chunks in record.items():
        for key, (size, crc) in chunks.items():
            if key in volatile.get(array, ()):
                continue
            try:
                data = (path / array / key).read_bytes()
            except FileNotFoundError:
                continue  # reported by the listing check
            if len(data) == size and zlib.crc32(data) != crc:
                problems.append(_problem(meta, array, key, "checksum",
                                         "chunk has other bytes than the writer wrote (bit rot, or a chunk copied "
                                         "from another store)"))
    return problems


def _unrecorded(path: Path, meta: Mapping[str, Any], record: Mapping[str, Mapping[str, list[int]]]) -> list[Problem]:
    problems = []
    for key in meta:
        if not key.endswith("/.zarray"):
            continue
        array = key[: -len("/.zarray")]
        info = _array_info(meta, array)
        known = record.get(array)
        if known is None:
            problems.append(Problem(array, "(all)", "record", "array has no integrity record (written after the "
                                    "record, or by another program)"))
            continue
        for name in _sizes(path / array):
            if not _is_chunk(name) or name in known:
                continue
            dim, lo, hi = _span(info, name)
            inside = info is not None and all(
                int(i) * c < s for i, c, s in zip(name.split(info.sep), info.chunks, info.shape) if i.isdigit()
            )
            if inside:
                problems.append(Problem(array, name, "unrecorded", "chunk file the writer never wrote (copied "
                                        "in from another store?)", dim, lo, hi))
    return problems


def _decode_problems(path: Path) -> list[Problem]:
    """For stores without a record: decode every chunk of every array."""
    import itertools

    import zarr

    problems = []
    root = zarr.open_group(path, mode="r", zarr_format=2, use_consolidated=False)
    meta, _ = read_metadata(path)
    for array in _list_arrays(path):
        arr = root[array]
        grid = [range(-(-s // c)) for s, c in zip(arr.shape, arr.chunks)]
        for index in itertools.product(*grid):
            sel = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, arr.chunks))
            try:
                arr[sel]
            except Exception as err:  # noqa: BLE001 - any decode failure is the finding
                key = ".".join(map(str, index)) or "0"
                problems.append(_problem(meta, array, key, "undecodable", f"chunk does not decode ({err})"))
    return problems


class VerifyReport(NamedTuple):
    """Result of :func:`verify`: ``ok``, every :class:`Problem`, and whether the store had a record."""

    path: str
    ok: bool
    problems: list[Problem]
    recorded: bool
    n_chunks: int

    def text(self) -> str:
        """A report for people (and cron mails)."""
        if self.ok:
            how = "every recorded chunk has its size and checksum" if self.recorded else "every chunk decodes"
            return f"OK {self.path}: {self.n_chunks} chunks checked, {how}."
        lines = [p.describe() for p in self.problems]
        return (f"DAMAGED {self.path}: {len(self.problems)} problem(s)\n  - " + "\n  - ".join(lines) + "\n"
                + way_out(self.problems, self.path, deep_hint=False))


def verify(path: str | os.PathLike) -> VerifyReport:
    """The deep check: every recorded chunk present, of its size and checksum; no chunk the writer never wrote.

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
    if not (path / ".zgroup").is_file() and not (path / ".zmetadata").is_file():
        raise FileNotFoundError(f"no zarr store at {path}: expected a directory with .zgroup")
    meta, _ = read_metadata(path)
    record = load_record(meta.get(".zattrs", {}))
    if record is None and (path / ".zattrs").is_file():
        with builtins.open(path / ".zattrs") as f:
            record = load_record(json.load(f))
    if record is None:
        problems = _decode_problems(path)
        n = sum(1 for a in _list_arrays(path) for name in _sizes(path / a) if _is_chunk(name))
        return VerifyReport(str(path), not problems, problems, False, n)
    problems = listing_problems(path, meta, record)
    problems += _crc_problems(path, meta, record)
    problems += _unrecorded(path, meta, record)
    n = sum(len(c) for c in record.values())
    return VerifyReport(str(path), not problems, problems, True, n)


# ----------------------------------------------------------------------------------------------
# checked reads
# ----------------------------------------------------------------------------------------------


def checked_store(path: str | os.PathLike, meta: Mapping[str, Any], record: Mapping[str, Mapping[str, list[int]]]):
    """A read-only zarr store over ``path`` whose reads check each recorded chunk's size and crc32."""
    from zarr.storage import LocalStore, WrapperStore

    volatile = volatile_chunks(meta, record)
    expected = {f"{array}/{key}": (size, crc)
                for array, chunks in record.items() for key, (size, crc) in chunks.items()
                if key not in volatile.get(array, ())}
    infos = {array: _array_info(meta, array) for array in record}

    class _Checked(WrapperStore):
        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            buf = await self._store.get(key, prototype, byte_range)
            want = expected.get(key)
            if want is None or buf is None or byte_range is not None:
                return buf
            data = buf.as_numpy_array()  # crc32 reads the buffer in place: no copy
            if data.nbytes != want[0] or zlib.crc32(data) != want[1]:
                array, chunk = key.rsplit("/", 1)
                dim, lo, hi = _span(infos.get(array), chunk)
                kind = "size" if data.nbytes != want[0] else "checksum"
                detail = (f"read {data.nbytes} bytes, the writer wrote {want[0]}" if kind == "size" else
                          "the bytes read are not those the writer wrote (bit rot, or a chunk copied from another "
                          "store)")
                problem = Problem(array, chunk, kind, detail, dim, lo, hi)
                raise integrity_error(path, [problem])
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
    attrs = meta.get(".zattrs", {})
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
    for key, doc in meta.items():
        if key.startswith("vision/") and key.endswith("/.zattrs") and dim in doc.get("_ARRAY_DIMENSIONS", []):
            zarray = meta.get(key[: -len(".zattrs")] + ".zarray")
            if zarray:
                return int(zarray["shape"][doc["_ARRAY_DIMENSIONS"].index(dim)])
    return 0
