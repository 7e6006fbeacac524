"""Split loaders: read each dataset's CoOp layout into a list of labelled items (no image decoding)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from mmlens.data.manifest import Manifest, get_manifest

__all__ = ["Item", "SplitData", "SplitFileError", "IMAGE_EXTENSIONS", "load_split", "mask_path_for", "toyworld_record"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class SplitFileError(ValueError):
    """A split JSON / list file / classnames file is malformed."""


class Item(NamedTuple):
    """One labelled image: absolute ``path``, 0-based ``label``, prompt ``classname``, optional mask.

    Examples
    --------
    >>> Item("/data/x.jpg", 3, "cat").mask_path is None
    True
    """

    path: str
    label: int
    classname: str
    mask_path: str | None = None


@dataclass
class SplitData:
    """Items of one split plus the class list (``classnames[label]``) and provenance.

    ``class_ids`` holds the raw class identifiers (WordNet id, folder name or variant) in label order.

    Examples
    --------
    >>> sd = SplitData("toy", "test", [Item("a.jpg", 0, "cat")], ["cat"])
    >>> len(sd), sd.classnames[sd.items[0].label]
    (1, 'cat')
    """

    name: str
    split: str
    items: list[Item]
    classnames: list[str]
    class_ids: list[str] = field(default_factory=list)
    root: str = ""
    manifest_version: int = 1

    def __len__(self) -> int:
        return len(self.items)


def _require_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"Data root {str(root)!r} does not exist or is not a folder. Pass the folder that holds the "
            "dataset folders (e.g. eurosat/, imagenet/) as --root / root=."
        )
    return root


def _require_file(path: Path, what: str, m: Manifest) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"{m.name}: {what} not found at {path}. Expected the CoOp layout described in "
            f"{m.path.name if m.path else 'the manifest'} (see docs/datasets.md); "
            f"source: {m.source.get('data')}"
        )
    return path


def mask_path_for(m: Manifest, root: str | Path, image_path: str | Path) -> Path | None:
    """Where the mask of an image would be, per the manifest's ``masks`` entry (``None`` if no masks).

    Placeholders in ``masks.pattern``: ``{stem}`` (file name without extension), ``{name}`` (file name),
    ``{relstem}`` (path under image_dir without extension), ``{reldir}`` (folder under image_dir).

    Examples
    --------
    >>> str(mask_path_for(get_manifest("OxfordPets"), "/d", "/d/oxford_pets/images/Abyssinian_1.jpg"))
    '/d/oxford_pets/annotations/trimaps/Abyssinian_1.png'
    """
    if not m.masks:
        return None
    image_path = Path(image_path)
    try:
        rel = image_path.relative_to(m.image_root(root))
    except ValueError:
        rel = Path(image_path.name)
    rel_dir = rel.parent.as_posix()
    name = m.masks["pattern"].format(
        stem=image_path.stem,
        name=image_path.name,
        relstem=rel.with_suffix("").as_posix(),
        reldir="" if rel_dir == "." else rel_dir,
    )
    return m.dataset_dir(root) / m.masks["dir"] / name


def _with_masks(m: Manifest, root: Path, items: list[Item]) -> list[Item]:
    if not m.masks:
        return items
    out = []
    for it in items:
        mp = mask_path_for(m, root, it.path)
        out.append(it._replace(mask_path=str(mp) if mp is not None and mp.is_file() else None))
    return out


def _read_split_json(m: Manifest, root: Path, split: str) -> SplitData:
    path = _require_file(m.dataset_dir(root) / m.split_file, "split file", m)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SplitFileError(f"{path}: not valid JSON ({exc}). Re-download the split file.") from exc
    if not isinstance(data, dict):
        raise SplitFileError(f"{path}: expected an object with keys train/val/test, found {type(data).__name__}")
    missing = [s for s in m.splits if s not in data]
    if missing:
        raise SplitFileError(f"{path}: missing split(s) {missing}; found keys {sorted(data)}")
    image_root = m.image_root(root)
    lab2name: dict[int, str] = {}
    parsed: dict[str, list[Item]] = {}
    for s in m.splits:
        entries = data[s]
        if not isinstance(entries, list):
            raise SplitFileError(f"{path}: split {s!r} should be a list, found {type(entries).__name__}")
        items = []
        for i, entry in enumerate(entries):
            ok = (
                isinstance(entry, (list, tuple))
                and len(entry) == 3
                and isinstance(entry[0], str)
                and isinstance(entry[1], int)
                and not isinstance(entry[1], bool)
                and entry[1] >= 0
                and isinstance(entry[2], str)
            )
            if not ok:
                raise SplitFileError(
                    f"{path}: entry {s}[{i}] = {entry!r} is malformed; expected "
                    '["<path under the images folder>", <label: int >= 0>, "<classname>"].'
                )
            rel, label, cname = entry
            cname = m.rewrite(cname)
            prev = lab2name.setdefault(label, cname)
            if prev != cname:
                raise SplitFileError(
                    f"{path}: entry {s}[{i}] gives label {label} the class name {cname!r}, "
                    f"but an earlier entry named it {prev!r}; one label must have one class name."
                )
            items.append(Item(str(image_root / rel), label, cname))
        parsed[s] = items
    n = len(lab2name)
    if sorted(lab2name) != list(range(n)):
        gaps = sorted(set(range(max(lab2name) + 1)) - set(lab2name))[:10]
        raise SplitFileError(f"{path}: labels must be 0..{n - 1} without gaps; missing labels {gaps}")
    classnames = [lab2name[i] for i in range(n)]
    # split files carry no raw class ids: the class names stand in for them
    return SplitData(m.name, split, _with_masks(m, root, parsed[split]), classnames, list(classnames))


def _read_wnid_classnames(path: Path) -> dict[str, str]:
    names: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(" ", 1)
        if len(parts) != 2:
            raise SplitFileError(f"{path}: line {lineno} {line!r} should be '<wnid> <class name>'")
        names[parts[0]] = parts[1].strip()
    return names


def _image_files(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(
            e.name
            for e in it
            if not e.name.startswith(".") and e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
        )


def _subdirs(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _classnames_file(m: Manifest, root: Path) -> Path:
    own = m.dataset_dir(root) / m.classnames_file
    if own.is_file() or not m.classnames_fallback:
        return _require_file(own, "classnames file", m)
    fallback = root / m.classnames_fallback
    if fallback.is_file():
        return fallback
    raise FileNotFoundError(
        f"{m.name}: classnames file not found at {own} nor at {fallback}. Copy imagenet/classnames.txt "
        "(`<wnid> <name>` per line, from CoOp) there."
    )


def _read_imagenet(m: Manifest, root: Path, split: str) -> SplitData:
    wnid2name = _read_wnid_classnames(_classnames_file(m, root))
    wnids = sorted(wnid2name)
    classnames = [m.rewrite(wnid2name[w]) for w in wnids]
    if m.layout == "imagenet":
        split_dir = m.image_root(root) / m.split_dirs[split]
    else:
        split_dir = m.image_root(root) / m.split_dirs.get(split, ".")
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{m.name}: image folder {split_dir} not found (split {split!r}).")
    present = [d for d in _subdirs(split_dir) if d not in m.ignored_dirs]
    if m.folder_names == "index":
        # ImageNet-V2: folders 0..999 are ImageNet class indices; keep all classes
        idx_dirs = sorted((d for d in present if d.isdigit() and int(d) < len(wnids)), key=int)
        label_of = {d: int(d) for d in idx_dirs}
        ids, names = wnids, classnames
        folders = idx_dirs
    elif m.layout == "imagenet_variant" and m.num_classes < len(wnids):
        # ImageNet-A / -R: a subset of wnids, re-indexed 0..k-1 in sorted order (CoOp)
        folders = [d for d in present if d in wnid2name]
        ids = folders
        names = [m.rewrite(wnid2name[w]) for w in folders]
        label_of = {d: i for i, d in enumerate(folders)}
    else:
        index = {w: i for i, w in enumerate(wnids)}
        folders = [d for d in present if d in index]
        label_of = {d: index[d] for d in folders}
        ids, names = wnids, classnames
    items = []
    for d in folders:
        label = label_of[d]
        for f in _image_files(split_dir / d):
            items.append(Item(str(split_dir / d / f), label, names[label]))
    return SplitData(m.name, split, _with_masks(m, root, items), list(names), list(ids))


def _read_fgvc(m: Manifest, root: Path, split: str) -> SplitData:
    vpath = _require_file(m.dataset_dir(root) / m.classnames_file, "variants file", m)
    variants = [line.strip() for line in vpath.read_text().splitlines() if line.strip()]
    cname2lab = {c: i for i, c in enumerate(variants)}
    lpath = _require_file(m.dataset_dir(root) / m.list_files[split], f"{split} list file", m)
    image_root = m.image_root(root)
    items = []
    for lineno, line in enumerate(lpath.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(" ", 1)
        if len(parts) != 2 or parts[1].strip() not in cname2lab:
            raise SplitFileError(
                f"{lpath}: line {lineno} {line!r} should be '<image id> <variant>' with a variant listed in "
                f"{vpath.name}"
            )
        imname, cname = parts[0], parts[1].strip()
        items.append(Item(str(image_root / (imname + m.image_extension)), cname2lab[cname], m.rewrite(cname)))
    return SplitData(m.name, split, _with_masks(m, root, items), [m.rewrite(v) for v in variants], variants)


_READERS = {
    "split_json": _read_split_json,
    "imagenet": _read_imagenet,
    "imagenet_variant": _read_imagenet,
    "fgvc_aircraft": _read_fgvc,
}


def load_split(name: str | Manifest, root: str | Path, split: str, *, check_classes: bool = True) -> SplitData:
    """Read one split of a dataset in its CoOp layout under ``root`` (no images are decoded).

    Parameters
    ----------
    name
        Dataset name or alias (case-insensitive) or a :class:`~mmlens.data.Manifest`.
    root
        Data root holding the dataset folders (``root/eurosat/...``).
    split
        ``"train"``, ``"val"`` or ``"test"`` (``ImageNet``: ``val`` reads the test set, as in CoOp).
    check_classes
        Raise if the number of classes differs from the manifest's ``num_classes``.

    Returns
    -------
    SplitData
        ``.items`` (list of :class:`Item`) and ``.classnames`` (indexed by label).

    Examples
    --------
    >>> import tempfile
    >>> from mmlens.data.fake import make_fake_tree
    >>> root = tempfile.mkdtemp()
    >>> _ = make_fake_tree(root, ["EuroSAT"])
    >>> sd = load_split("eurosat", root, "train")
    >>> sd.classnames[0], len(sd.classnames)
    ('Annual Crop Land', 10)
    """
    m = get_manifest(name)
    root = _require_root(root)
    disk_split = m.resolve_split(split)
    data = _READERS[m.layout](m, root, disk_split)
    data.root = str(root)
    data.manifest_version = m.manifest_version
    if check_classes and len(data.classnames) != m.num_classes:
        raise SplitFileError(
            f"{m.name}: found {len(data.classnames)} classes under {m.dataset_dir(root)}, "
            "the manifest expects "
            f"{m.num_classes}. Check the copy with `mmlens data verify --root {root} --dataset {m.name}`."
        )
    if m.classnames is not None and list(m.classnames) != data.classnames:
        raise SplitFileError(f"{m.name}: class names on disk differ from the manifest's `classnames` list.")
    _warn_if_stale_toyworld(m, root)
    return data


def toyworld_record(m: Manifest, root: str | Path) -> dict | None:
    """The generator's own record (``toyworld.json``) of a toyworld copy under ``root``; None for other data.

    It says which generator version, seed and size (``small``, ``full`` or ``custom`` with ``per_class``)
    wrote the files: the sizes a copy should have depend on it, not on the manifest alone.

    Examples
    --------
    >>> import tempfile
    >>> toyworld_record(get_manifest("EuroSAT"), tempfile.mkdtemp()) is None
    True
    """
    info = m.dataset_dir(Path(root).expanduser()) / "toyworld.json"
    if m.kind != "toyworld" or not info.is_file():
        return None
    return json.loads(info.read_text())


def _warn_if_stale_toyworld(m: Manifest, root: Path) -> None:
    """A toyworld tree written by another generator version has other pixels than the manifest describes."""
    wanted = m.extra.get("generator_version")
    record = toyworld_record(m, root)
    if wanted is None or record is None:
        return
    found = record.get("generator_version")
    if found != wanted:
        import warnings

        warnings.warn(
            f"{m.name} under {root} was written by toyworld generator version {found}; this mmlens draws "
            f"version {wanted} (docs/toyworld.md says what changed). Results will differ from the documented "
            f"ones: regenerate with `mmlens data toyworld --out {root}`.", UserWarning, stacklevel=3)
