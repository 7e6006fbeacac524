"""Check a local copy of a dataset against its manifest: files, decoding, masks, class folders, split sizes."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mmlens.data.dataset import ImageDecodeError, MaskSizeError, decode_item
from mmlens.data.loaders import IMAGE_EXTENSIONS, Item, SplitFileError, load_split, toyworld_record
from mmlens.data.manifest import Manifest, get_manifest, list_manifests

__all__ = ["SplitCheck", "VerifyReport", "expected_split_sizes", "verify", "verify_root", "format_reports"]


@dataclass
class SplitCheck:
    """Counts for one split: expected (manifest), listed (split file / folders), missing, corrupt."""

    split: str
    expected: int | None
    listed: int = 0
    missing: int = 0
    corrupt: int = 0


@dataclass
class VerifyReport:
    """The result of :func:`verify` for one dataset; ``ok`` is False when anything is wrong.

    Problems: ``errors`` (unreadable split/list/classnames files, absent folder, class-count mismatch),
    ``missing_files``, ``corrupt_files`` ((path, error) pairs: images or masks the loader cannot read),
    ``mask_mismatches`` ((image, error) pairs: a mask whose size is not its image's), ``unexpected_dirs``
    (image folders that are no class of the split files and not in the manifest's ``ignored_dirs``),
    ``count_mismatches``. ``warnings`` (e.g. images without a mask) and ``conversions`` ((path, what)
    pairs: files the loader decodes by a rule a plain ``convert("RGB")`` gets wrong: EXIF orientation,
    16-bit, palette transparency, CMYK...) do not make the report fail; ``expected_from`` says where the
    expected split sizes come from.
    """

    name: str
    dataset_dir: str
    present: bool = True
    splits: dict[str, SplitCheck] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    corrupt_files: list[tuple[str, str]] = field(default_factory=list)
    mask_mismatches: list[tuple[str, str]] = field(default_factory=list)
    conversions: list[tuple[str, str]] = field(default_factory=list)
    expected_from: str = "manifest"
    unexpected_dirs: list[str] = field(default_factory=list)
    count_mismatches: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.present and not self.problems()

    def problems(self, max_listed: int = 10) -> list[str]:
        """Human-readable problem lines (each kind capped at ``max_listed`` entries)."""
        out = list(self.errors)

        def cap(prefix: str, entries: list[str]) -> None:
            out.extend(f"{prefix}: {e}" for e in entries[:max_listed])
            if len(entries) > max_listed:
                out.append(f"{prefix}: ... and {len(entries) - max_listed} more")

        cap("missing file", self.missing_files)
        cap("corrupt image", [f"{p} ({e})" for p, e in self.corrupt_files])
        cap("mask size", [e for _, e in self.mask_mismatches])
        cap("unexpected folder", self.unexpected_dirs)
        out.extend(f"count mismatch: {c}" for c in self.count_mismatches)
        return out


def _check_item(item: Item, foreground_values: tuple[int, ...]) -> tuple[str, str | None, list[str]]:
    """Decode an item as the loader does: ``(kind, error, conversions)``, kind "ok", "corrupt" or "mask size"."""
    notes: list[str] = []
    try:
        decode_item(item, foreground_values, notes=notes)
    except MaskSizeError as exc:
        return "mask size", str(exc.cause), notes
    except ImageDecodeError as exc:
        return "corrupt", f"{type(exc.cause).__name__}: {exc.cause}" + (
            "" if exc.path == item.path else f" (mask {exc.path})"), notes
    return "ok", None, notes


def expected_split_sizes(m: Manifest, root: str | Path) -> tuple[dict[str, int], str]:
    """The split sizes a copy under ``root`` should have, and where that expectation comes from.

    A toyworld copy is written at a chosen size (``small``, ``full`` or custom images per class); its
    ``toyworld.json`` says which, and the expectation follows it. Other datasets: the manifest's sizes.

    Examples
    --------
    >>> import tempfile
    >>> from mmlens.data.toyworld.export import write_domain
    >>> root = tempfile.mkdtemp()
    >>> _ = write_domain("satellite", root, size="small", per_class={"train": 1, "val": 1, "test": 2})
    >>> expected_split_sizes(get_manifest("ToySatellite"), root)
    ({'train': 32, 'val': 32, 'test': 64}, 'toyworld.json: 1/1/2 images per class')
    """
    record = toyworld_record(m, root)
    if record is None:
        return dict(m.expected_split_sizes), "manifest"
    size, per_class = record.get("size"), record.get("per_class") or {}
    if size in (m.extra.get("sizes") or {}):
        return dict(m.extra["sizes"][size]), f"toyworld --size {size}"
    counts = "/".join(str(per_class.get(s, "?")) for s in m.splits)
    return {s: int(per_class[s]) * m.num_classes for s in m.splits if s in per_class}, \
        f"toyworld.json: {counts} images per class"


def _image_dirs(top: Path) -> set[str]:
    """Folders under ``top`` (inclusive) that directly contain image files."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in filenames):
            found.add(os.path.normpath(dirpath))
    return found


def verify(
    name: str | Manifest,
    root: str | Path,
    *,
    decode: bool = True,
    expected_sizes: dict[str, int] | None = None,
    check_counts: bool = True,
    workers: int = 2,
    progress: bool = False,
) -> VerifyReport:
    """Check a local copy of one dataset against its manifest.

    Parameters
    ----------
    name
        Dataset name (case-insensitive).
    root
        Data root (must exist; raises FileNotFoundError otherwise).
    decode
        Decode every image and mask as the loader does (slow for ImageNet; False checks existence only):
        unreadable files and masks whose size is not their image's are problems; files decoded by a special
        rule (EXIF orientation, 16-bit, transparency, CMYK) are listed in ``conversions``.
    expected_sizes
        Override of the expected split sizes (default: :func:`expected_split_sizes`: the manifest's, or for
        a toyworld copy those of the size it was generated at).
    check_counts
        Compare split sizes with the expected ones.
    workers
        Threads used to decode images.
    progress
        Show a progress bar while decoding.

    Examples
    --------
    >>> import tempfile
    >>> from mmlens.data.fake import make_fake_tree
    >>> root = tempfile.mkdtemp()
    >>> tree = make_fake_tree(root, ["EuroSAT"])
    >>> verify("eurosat", root, expected_sizes=tree["EuroSAT"].expected_split_sizes).ok
    True
    >>> verify("eurosat", root).count_mismatches[0]
    'train: 20 images listed, manifest expects 13500'
    """
    m = get_manifest(name)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Data root {str(root)!r} does not exist or is not a folder.")
    report = VerifyReport(m.name, str(m.dataset_dir(root)))
    if not m.dataset_dir(root).is_dir():
        report.present = False
        report.errors.append(f"dataset folder {m.dataset_dir(root)} not found (source: {m.source.get('data')})")
        return report
    if expected_sizes is None:
        expected, report.expected_from = expected_split_sizes(m, root)
    else:
        expected, report.expected_from = dict(expected_sizes), "given"
    referenced_dirs: set[str] = set()
    to_decode: list[tuple[Item, str]] = []
    for split in m.splits:
        check = report.splits[split] = SplitCheck(split, expected.get(split))
        try:
            data = load_split(m, root, split, check_classes=False)
        except (FileNotFoundError, SplitFileError) as exc:
            report.errors.append(f"{split}: {exc}")
            continue
        msg = f"{split}: {len(data.classnames)} classes found, the manifest expects {m.num_classes}"
        if len(data.classnames) != m.num_classes:
            report.errors.append(msg)
        check.listed = len(data.items)
        no_mask = 0
        for it in data.items:
            referenced_dirs.add(os.path.normpath(os.path.dirname(it.path)))
            if os.path.isfile(it.path):
                to_decode.append((it, split))
            else:
                check.missing += 1
                report.missing_files.append(it.path)
            if m.masks and it.mask_path is None:
                no_mask += 1
        if no_mask:
            report.warnings.append(f"{split}: {no_mask} image(s) without a mask file under {m.masks['dir']}")
        if check_counts and check.expected is not None and check.listed != check.expected:
            want = f"manifest expects {check.expected}" if report.expected_from == "manifest" else \
                f"expected {check.expected} ({report.expected_from})"
            report.count_mismatches.append(f"{split}: {check.listed} images listed, {want}")
    if decode and to_decode:
        from mmlens._progress import progress_bar

        fg = tuple(m.masks["foreground_values"]) if m.masks else (1,)
        bar = progress_bar(total=len(to_decode), desc=f"verify {m.name}", unit="img", enabled=progress)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = []
            for result in pool.map(lambda job: _check_item(job[0], fg), to_decode, chunksize=64):
                results.append(result)
                bar.update(1)
        bar.close()
        for (it, split), (kind, err, notes) in zip(to_decode, results):
            report.conversions.extend((it.path, n) for n in notes)
            if kind == "corrupt":
                report.corrupt_files.append((it.path, err))
                report.splits[split].corrupt += 1
            elif kind == "mask size":
                report.mask_mismatches.append((it.path, err))
                report.splits[split].corrupt += 1
    image_root = m.image_root(root)
    if image_root.is_dir() and referenced_dirs:
        ignored = [os.path.normpath(image_root / d) for d in m.ignored_dirs]
        for d in sorted(_image_dirs(image_root) - referenced_dirs):
            if not any(d == ig or d.startswith(ig + os.sep) for ig in ignored):
                report.unexpected_dirs.append(d)
    return report


def verify_root(root: str | Path, datasets: list[str] | None = None, **kwargs) -> list[VerifyReport]:
    """Verify the given datasets, or every manifest whose folder exists under ``root``.

    Examples
    --------
    >>> import tempfile
    >>> verify_root(tempfile.mkdtemp())
    []
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Data root {str(root)!r} does not exist or is not a folder.")
    if datasets is None:
        datasets = [n for n in list_manifests() if get_manifest(n).dataset_dir(root).is_dir()]
    return [verify(d, root, **kwargs) for d in datasets]


def format_reports(reports: list[VerifyReport], max_listed: int = 10) -> str:
    """A summary table (one row per dataset and split) followed by the problems found.

    Examples
    --------
    >>> print(format_reports([VerifyReport("EuroSAT", "/d/eurosat", present=False)]))  # doctest: +ELLIPSIS
    dataset ... status
    ...
    EuroSAT  ...  absent
    ...
    """
    header = ("dataset", "split", "expected", "listed", "missing", "corrupt", "status")
    rows = []
    for r in reports:
        status = "ok" if r.ok else ("absent" if not r.present else "PROBLEMS")
        if not r.splits:
            rows.append((r.name, "-", "-", "-", "-", "-", status))
        for s in r.splits.values():
            rows.append(
                (
                    r.name,
                    s.split,
                    "-" if s.expected is None else str(s.expected),
                    str(s.listed),
                    str(s.missing),
                    str(s.corrupt),
                    status,
                )
            )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()  # noqa: E731
    out = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    for r in reports:
        probs = r.problems(max_listed)
        if probs or r.warnings or r.conversions:
            out.append("")
            out.append(f"{r.name} ({r.dataset_dir}; expected sizes: {r.expected_from}):")
            out.extend(f"  PROBLEM {p}" for p in probs)
            out.extend(f"  warning {w}" for w in r.warnings)
        if r.conversions:
            out.append(f"  note {len(r.conversions)} decoding rule(s) applied that a plain convert('RGB') misses "
                       "(the loader applies them; other tools may not):")
            out.extend(f"    {p}: {what}" for p, what in r.conversions[:max_listed])
            if len(r.conversions) > max_listed:
                out.append(f"    ... and {len(r.conversions) - max_listed} more")
    n_bad = sum(not r.ok for r in reports)
    out.append("")
    out.append(f"{len(reports)} dataset(s) checked, {n_bad} with problems.")
    return "\n".join(out)
