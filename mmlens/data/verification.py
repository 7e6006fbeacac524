"""Check a local copy of a dataset against its manifest: files, decodability, class folders, split sizes."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mmlens.data.loaders import IMAGE_EXTENSIONS, SplitFileError, load_split
from mmlens.data.manifest import Manifest, get_manifest, list_manifests

__all__ = ["SplitCheck", "VerifyReport", "verify", "verify_root", "format_reports"]


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
    ``missing_files``, ``corrupt_files`` ((path, error) pairs), ``unexpected_dirs`` (image folders that
    are no class of the split files and not in the manifest's ``ignored_dirs``), ``count_mismatches``.
    ``warnings`` (e.g. images without a mask) do not make the report fail.
    """

    name: str
    dataset_dir: str
    present: bool = True
    splits: dict[str, SplitCheck] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    corrupt_files: list[tuple[str, str]] = field(default_factory=list)
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
        cap("unexpected folder", self.unexpected_dirs)
        out.extend(f"count mismatch: {c}" for c in self.count_mismatches)
        return out


def _check_image(path: str) -> str | None:
    try:
        with Image.open(path) as im:
            im.load()
        return None
    except Exception as exc:  # any decoder failure is a corrupt image
        return f"{type(exc).__name__}: {exc}"


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
) -> VerifyReport:
    """Check a local copy of one dataset against its manifest.

    Parameters
    ----------
    name
        Dataset name (case-insensitive).
    root
        Data root (must exist; raises FileNotFoundError otherwise).
    decode
        Fully decode every image (slow for ImageNet; False checks existence only).
    expected_sizes
        Override of the manifest's ``expected_split_sizes`` (e.g. for a fake or partial tree).
    check_counts
        Compare split sizes with the expected ones.
    workers
        Threads used to decode images.

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
    expected = dict(m.expected_split_sizes if expected_sizes is None else expected_sizes)
    referenced_dirs: set[str] = set()
    to_decode: list[tuple[str, str]] = []  # (path, split)
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
                to_decode.append((it.path, split))
            else:
                check.missing += 1
                report.missing_files.append(it.path)
            if m.masks and it.mask_path is None:
                no_mask += 1
        if no_mask:
            report.warnings.append(f"{split}: {no_mask} image(s) without a mask file under {m.masks['dir']}")
        if check_counts and check.expected is not None and check.listed != check.expected:
            report.count_mismatches.append(f"{split}: {check.listed} images listed, manifest expects {check.expected}")
    if decode and to_decode:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = list(pool.map(_check_image, [p for p, _ in to_decode], chunksize=64))
        for (path, split), err in zip(to_decode, results):
            if err is not None:
                report.corrupt_files.append((path, err))
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
        if probs or r.warnings:
            out.append("")
            out.append(f"{r.name} ({r.dataset_dir}):")
            out.extend(f"  PROBLEM {p}" for p in probs)
            out.extend(f"  warning {w}" for w in r.warnings)
    n_bad = sum(not r.ok for r in reports)
    out.append("")
    out.append(f"{len(reports)} dataset(s) checked, {n_bad} with problems.")
    return "\n".join(out)
