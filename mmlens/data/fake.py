"""Fake data roots in the exact on-disk layout of every dataset (tiny real images), for tests and demos."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mmlens.data.manifest import Manifest, get_manifest

__all__ = ["FakeDataset", "make_fake_tree", "corrupt_file", "fake_wnids", "DEFAULT_PER_CLASS"]

DEFAULT_PER_CLASS = {"train": 2, "val": 1, "test": 1}

_EUROSAT = [
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
]
_CALTECH_RENAMED = ["airplanes", "Faces", "Leopards", "Motorbikes"]


@dataclass
class FakeDataset:
    """What :func:`make_fake_tree` wrote for one dataset: its folder, classes and split sizes.

    ``expected_split_sizes`` is what ``verify`` should find (pass it as ``expected_sizes=``).
    """

    name: str
    folder: Path
    classnames: list[str]
    expected_split_sizes: dict[str, int]
    files: dict[str, list[Path]] = field(default_factory=dict)


def fake_wnids(n: int = 1000) -> list[str]:
    """Sorted, WordNet-id-shaped fake ids (``n01440764``, ...).

    Examples
    --------
    >>> fake_wnids(2)
    ['n01440764', 'n01440801']
    """
    return [f"n{1440764 + 37 * i:08d}" for i in range(n)]


def corrupt_file(path: str | Path) -> None:
    """Overwrite an image with bytes no decoder accepts (a truncated JPEG header plus junk).

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.jpg"); corrupt_file(p); os.path.getsize(p) > 0
    True
    """
    Path(path).write_bytes(b"\xff\xd8\xff\xe0" + b"not an image" * 8)


class _Writer:
    def __init__(self, size: int, fmt_seed: int):
        self.size = size
        self.rng = np.random.default_rng(fmt_seed)
        self.cache: dict[tuple[int, str], bytes] = {}

    def image(self, path: Path, label: int, fmt: str = "JPEG") -> Path:
        key = (label, fmt)
        if key not in self.cache:
            base = np.array([(label * 67) % 256, (label * 131) % 256, (label * 29) % 256], dtype=np.uint8)
            noise = self.rng.integers(0, 40, size=(self.size, self.size, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(base + noise).save(buf, format=fmt)
            self.cache[key] = buf.getvalue()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.cache[key])
        return path

    def trimap(self, path: Path) -> Path:
        s = self.size
        arr = np.full((s, s), 2, dtype=np.uint8)  # background
        arr[s // 4 : 3 * s // 4, s // 4 : 3 * s // 4] = 1  # pet
        arr[s // 4, s // 4 : 3 * s // 4] = 3  # boundary
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
        return path


def _split_json_classes(m: Manifest) -> list[tuple[str, str]]:
    """(raw folder/id, class name used in prompts) per label, in the dataset's own style."""
    n = m.num_classes
    if m.name == "EuroSAT":
        return [(r, m.rewrite(r)) for r in _EUROSAT]
    if m.name == "Caltech101":
        raws = _CALTECH_RENAMED + [f"class_{i:03d}" for i in range(n - len(_CALTECH_RENAMED))]
        raws = sorted(raws, key=str.lower)
        return [(r, m.rewrite(r)) for r in raws]
    if m.name == "OxfordPets":  # cats capitalised, dogs lower case, as in the real file names
        raws = [f"Cat_breed{i:02d}" if i < 12 else f"dog_breed_{i:02d}" for i in range(n)]
        return [(r, r.lower().replace("_", " ")) for r in raws]
    if m.name == "StanfordCars":
        return [(f"car{i:03d}", f"2012 Make{i:03d} Model Sedan") for i in range(n)]
    if m.name == "Flowers102":
        return [(str(i + 1), f"flower species {i:03d}") for i in range(n)]
    if m.name == "SUN397":
        out = []
        for i in range(n):
            letter = "abcdefghijklmnopqrstuvwxyz"[i % 26]
            raw = f"{letter}/scene_{i:03d}" + ("/outdoor" if i % 7 == 0 else "")
            out.append((raw, " ".join(raw[2:].replace("/", " ").split("_"))))
        return sorted(out)
    if m.name == "UCF101":
        # folder Apply_Eye_Makeup, frame v_ApplyEyeMakeup_g01_c01.jpg, class name = folder name
        return [(f"Apply_Action{i:03d}_Now", f"Apply_Action{i:03d}_Now") for i in range(n)]
    return [(f"class_{i:03d}", f"class {i:03d}") for i in range(n)]


def _split_json_relpath(m: Manifest, raw: str, label: int, split: str, j: int, counter: int) -> str:
    if m.name == "OxfordPets":
        return f"{raw}_{counter}.jpg"
    if m.name == "StanfordCars":
        return f"{'cars_test' if split == 'test' else 'cars_train'}/{counter:05d}.jpg"
    if m.name == "Flowers102":
        return f"image_{counter:05d}.jpg"
    if m.name == "SUN397":
        return f"{raw}/sun_{counter:08d}.jpg"
    if m.name == "UCF101":
        return f"{raw}/v_{raw.replace('_', '')}_g{j + 1:02d}_c{counter:05d}.jpg"
    if m.name == "EuroSAT":
        return f"{raw}/{raw}_{counter}.jpg"
    if m.name == "Caltech101":
        return f"{raw}/image_{counter:04d}.jpg"
    return f"{raw}/{raw}_{counter:05d}.jpg"


def _make_split_json(m: Manifest, root: Path, per_class: dict[str, int], w: _Writer) -> FakeDataset:
    ds_dir = m.dataset_dir(root)
    image_root = m.image_root(root)
    classes = _split_json_classes(m)
    splits: dict[str, list] = {s: [] for s in m.splits}
    files: dict[str, list[Path]] = {s: [] for s in m.splits}
    counter = 0
    for label, (raw, cname) in enumerate(classes):
        for split in m.splits:
            for j in range(per_class.get(split, 0)):
                counter += 1
                rel = _split_json_relpath(m, raw, label, split, j, counter)
                p = w.image(image_root / rel, label)
                files[split].append(p)
                splits[split].append([rel, label, cname])
                if m.masks:
                    stem = Path(rel).stem
                    w.trimap(
                        ds_dir
                        / m.masks["dir"]
                        / m.masks["pattern"].format(
                            stem=stem,
                            name=Path(rel).name,
                            relstem=str(Path(rel).with_suffix("")),
                            reldir=str(Path(rel).parent),
                        )
                    )
    for ignored in m.ignored_dirs:  # e.g. Caltech101 BACKGROUND_Google: on disk, not a class
        w.image(image_root / ignored / "image_0001.jpg", 0)
    (ds_dir / m.split_file).write_text(json.dumps(splits))
    if m.name == "Flowers102":
        (ds_dir / "cat_to_name.json").write_text(json.dumps({raw: c for raw, c in classes}))
    if m.name == "StanfordCars":
        (ds_dir / "devkit").mkdir(parents=True, exist_ok=True)
        (ds_dir / "devkit" / "cars_meta.mat").write_bytes(b"MATLAB 5.0 fake")
    if m.name == "OxfordPets":
        (ds_dir / "annotations" / "list.txt").write_text("#Image CLASS-ID SPECIES BREED ID\n")
    return FakeDataset(m.name, ds_dir, [c for _, c in classes], {s: len(v) for s, v in splits.items()}, files)


def _write_classnames(path: Path, wnids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} imagenet class {i:04d}\n" for i, w in enumerate(wnids)))


def _make_imagenet(m: Manifest, root: Path, per_class: dict[str, int], w: _Writer) -> FakeDataset:
    wnids = fake_wnids(m.num_classes)
    _write_classnames(m.dataset_dir(root) / m.classnames_file, wnids)
    files: dict[str, list[Path]] = {}
    for split in m.splits:
        split_dir = m.image_root(root) / m.split_dirs[split]
        files[split] = []
        for label, wnid in enumerate(wnids):
            for j in range(per_class.get(split, 0)):
                name = f"{wnid}_{j}.JPEG" if split == "train" else f"ILSVRC2012_val_{label * 100 + j:08d}.JPEG"
                files[split].append(w.image(split_dir / wnid / name, label))
    return FakeDataset(
        m.name,
        m.dataset_dir(root),
        [f"imagenet class {i:04d}" for i in range(len(wnids))],
        {s: len(v) for s, v in files.items()},
        files,
    )


def _make_variant(m: Manifest, root: Path, per_class: dict[str, int], w: _Writer) -> FakeDataset:
    wnids = fake_wnids(1000)
    _write_classnames(m.dataset_dir(root) / m.classnames_file, wnids)
    n = per_class.get("test", 0)
    image_root = m.image_root(root)
    files: list[Path] = []
    if m.folder_names == "index":
        names = [f"imagenet class {i:04d}" for i in range(1000)]
        for label in range(1000):
            files += [w.image(image_root / str(label) / f"{label:04d}{j:02d}.jpeg", label) for j in range(n)]
    else:
        chosen = wnids if m.num_classes == 1000 else wnids[:: 1000 // m.num_classes][: m.num_classes]
        names = [f"imagenet class {wnids.index(c):04d}" for c in chosen]
        for label, wnid in enumerate(chosen):
            files += [w.image(image_root / wnid / f"{wnid}_{j}.jpg", label) for j in range(n)]
        if m.name == "ImageNet-A":
            (image_root / "README.txt").write_text("ImageNet-A fake copy\n")
    return FakeDataset(m.name, m.dataset_dir(root), names, {"test": len(files)}, {"test": files})


def _make_fgvc(m: Manifest, root: Path, per_class: dict[str, int], w: _Writer) -> FakeDataset:
    ds_dir = m.dataset_dir(root)
    # real variant names contain spaces, slashes and dashes ("F/A-18", "Cessna 172")
    variants = [f"Model-{i:03d}" if i % 3 else f"F/A {i:03d}" for i in range(m.num_classes)]
    ds_dir.mkdir(parents=True, exist_ok=True)
    (ds_dir / m.classnames_file).write_text("".join(v + "\n" for v in variants))
    files: dict[str, list[Path]] = {}
    counter = 1000000
    for split in m.splits:
        lines, files[split] = [], []
        for label, v in enumerate(variants):
            for _ in range(per_class.get(split, 0)):
                counter += 1
                files[split].append(w.image(m.image_root(root) / f"{counter}{m.image_extension}", label))
                lines.append(f"{counter} {v}\n")
        (ds_dir / m.list_files[split]).write_text("".join(lines))
    return FakeDataset(m.name, ds_dir, variants, {s: len(v) for s, v in files.items()}, files)


_MAKERS = {
    "split_json": _make_split_json,
    "imagenet": _make_imagenet,
    "imagenet_variant": _make_variant,
    "fgvc_aircraft": _make_fgvc,
}


def make_fake_tree(
    root: str | Path,
    datasets: Iterable[str] | None = None,
    *,
    per_class: dict[str, int] | None = None,
    image_size: int = 16,
    seed: int = 0,
) -> dict[str, FakeDataset]:
    """Write tiny copies of datasets under ``root`` in their exact CoOp layout, all classes included.

    Real JPEG files (and PNG trimaps for OxfordPets), real split JSON / list / classnames files, the
    full class count of each manifest, ``per_class[split]`` images per class and split, plus the
    dataset's non-class extras (Caltech101 ``BACKGROUND_Google``, ImageNet-A ``README.txt`` ...).

    Parameters
    ----------
    root
        Data root to write into (created if needed).
    datasets
        Names (any case / alias); default: every real (non-toyworld) manifest, i.e. the eleven plus
        the four ImageNet variants.
    per_class
        Images per class for each split; default ``{"train": 2, "val": 1, "test": 1}``.
    image_size
        Side of the square images, in pixels.
    seed
        Seed of the pixel noise.

    Returns
    -------
    dict
        Canonical name -> :class:`FakeDataset` (folder, classnames, expected split sizes, files).

    Examples
    --------
    >>> import tempfile
    >>> tree = make_fake_tree(tempfile.mkdtemp(), ["dtd"], per_class={"train": 1, "val": 1, "test": 2})
    >>> tree["DTD"].expected_split_sizes
    {'train': 47, 'val': 47, 'test': 94}
    """
    from mmlens.data.manifest import list_manifests

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    per_class = dict(DEFAULT_PER_CLASS if per_class is None else per_class)
    names = list_manifests("real") if datasets is None else [get_manifest(d).name for d in datasets]
    w = _Writer(image_size, seed)
    out = {}
    for name in names:
        m = get_manifest(name)
        out[m.name] = _MAKERS[m.layout](m, root, per_class, w)
    return out
