"""Dataset manifests: find, validate (JSON schema) and look up the YAML files in data_manifests/."""

from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Manifest",
    "ManifestError",
    "get_manifest",
    "list_manifests",
    "load_manifest",
    "manifest_dir",
    "manifest_schema",
    "validate_manifest",
]

SPLITS = ("train", "val", "test")


class ManifestError(ValueError):
    """A manifest file is invalid, or a dataset name is unknown."""


def manifest_dir() -> Path:
    """Folder holding the packaged manifests (``mmlens/data/manifests`` -> ``data_manifests/``).

    Examples
    --------
    >>> (manifest_dir() / "manifest.schema.json").is_file()
    True
    """
    return Path(str(resources.files("mmlens.data") / "manifests"))


@functools.lru_cache(maxsize=1)
def manifest_schema() -> dict[str, Any]:
    """The JSON schema every manifest follows (``manifest.schema.json``).

    Examples
    --------
    >>> manifest_schema()["title"]
    'mmlens dataset manifest'
    """
    return json.loads((manifest_dir() / "manifest.schema.json").read_text())


@dataclass(frozen=True)
class Manifest:
    """One dataset's manifest: layout, classes, expected sizes, sources, protocol roles.

    Field meanings are documented in ``data_manifests/manifest.schema.json`` and ``docs/datasets.md``.

    Examples
    --------
    >>> m = get_manifest("eurosat")
    >>> m.name, m.num_classes, m.expected_split_sizes["test"]
    ('EuroSAT', 10, 8100)
    """

    name: str
    manifest_version: int
    kind: str
    folder: str
    image_dir: str
    layout: str
    num_classes: int
    splits: tuple[str, ...]
    expected_split_sizes: dict[str, int]
    source: dict[str, str]
    licence: str
    protocol: dict[str, Any]
    aliases: tuple[str, ...] = ()
    description: str = ""
    split_file: str | None = None
    classnames_file: str | None = None
    classnames_fallback: str | None = None
    list_files: dict[str, str] = field(default_factory=dict)
    image_extension: str = ".jpg"
    split_dirs: dict[str, str] = field(default_factory=dict)
    folder_names: str | None = None
    ignored_dirs: tuple[str, ...] = ()
    classnames: tuple[str, ...] | None = None
    classname_rewrites: dict[str, str] = field(default_factory=dict)
    split_aliases: dict[str, str] = field(default_factory=dict)
    masks: dict[str, Any] | None = None
    citation: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def resolve_split(self, split: str) -> str:
        """Map a requested split to the one stored on disk (``ImageNet``: ``val`` -> ``test``).

        Examples
        --------
        >>> get_manifest("ImageNet").resolve_split("val")
        'test'
        """
        split = str(split).lower()
        split = self.split_aliases.get(split, split)
        if split not in self.splits:
            raise ValueError(
                f"{self.name} has no split {split!r}; available: {list(self.splits)}"
                + (f" (aliases: {self.split_aliases})" if self.split_aliases else "")
            )
        return split

    def rewrite(self, classname: str) -> str:
        """Apply ``classname_rewrites`` (identity for names that are not keys).

        Examples
        --------
        >>> get_manifest("EuroSAT").rewrite("SeaLake")
        'Sea or Lake'
        """
        return self.classname_rewrites.get(classname, classname)

    def dataset_dir(self, root: str | Path) -> Path:
        """The dataset folder under a data root."""
        return Path(root) / self.folder

    def image_root(self, root: str | Path) -> Path:
        """The images folder under a data root (``folder/image_dir``)."""
        return (Path(root) / self.folder / self.image_dir) if self.image_dir != "." else Path(root) / self.folder


def _format_path(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def validate_manifest(data: Any, source: str | Path = "<manifest>") -> None:
    """Check a parsed manifest against the schema; raise :class:`ManifestError` listing every problem.

    Each message names the file and the field, says what was expected and what was found.

    Examples
    --------
    >>> validate_manifest({"name": "x"}, "x.yaml")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mmlens.data.manifest.ManifestError: x.yaml: invalid manifest ...
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(manifest_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    problems = []
    for err in errors:
        where = _format_path(err.absolute_path)
        problems.append(f"  field '{where}': {err.message}")
    if isinstance(data, dict) and not problems:
        sizes = data.get("expected_split_sizes", {})
        for split in sizes:
            if split not in data["splits"]:
                problems.append(
                    f"  field 'expected_split_sizes.{split}': split {split!r} is not in splits {data['splits']}"
                )
        for alias, target in data.get("split_aliases", {}).items():
            if target not in data["splits"]:
                problems.append(f"  field 'split_aliases.{alias}': target {target!r} is not in splits {data['splits']}")
        if data.get("classnames") is not None and len(data["classnames"]) != data["num_classes"]:
            problems.append(
                f"  field 'classnames': {len(data['classnames'])} names but num_classes is {data['num_classes']}"
            )
    if problems:
        raise ManifestError(
            f"{source}: invalid manifest ({len(problems)} problem(s)); fix the file "
            f"(schema: {manifest_dir() / 'manifest.schema.json'}):\n" + "\n".join(problems)
        )


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate one manifest file (YAML or JSON).

    Examples
    --------
    >>> load_manifest(manifest_dir() / "dtd.yaml").num_classes
    47
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML/JSON: {exc}") from exc
    validate_manifest(data, path)
    kwargs = dict(data)
    for key in ("aliases", "splits", "ignored_dirs"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    if kwargs.get("classnames") is not None:
        kwargs["classnames"] = tuple(kwargs["classnames"])
    return Manifest(**kwargs, path=path)


@functools.lru_cache(maxsize=1)
def _registry() -> tuple[dict[str, Manifest], dict[str, str]]:
    manifests: dict[str, Manifest] = {}
    lookup: dict[str, str] = {}
    files = sorted(
        p
        for p in manifest_dir().iterdir()
        if p.suffix in (".yaml", ".yml", ".json") and p.name != "manifest.schema.json"
    )
    for path in files:
        m = load_manifest(path)
        if m.name in manifests:
            raise ManifestError(f"{path}: dataset name {m.name!r} already defined in {manifests[m.name].path}")
        manifests[m.name] = m
        for key in (m.name, *m.aliases):
            k = key.lower()
            if k in lookup and lookup[k] != m.name:
                raise ManifestError(f"{path}: name/alias {key!r} already used by {lookup[k]!r}")
            lookup[k] = m.name
    return manifests, lookup


def list_manifests(kind: str | None = None) -> list[str]:
    """Canonical names of all packaged manifests (optionally only ``kind`` 'real' or 'toyworld').

    Examples
    --------
    >>> "EuroSAT" in list_manifests("real")
    True
    """
    manifests, _ = _registry()
    return [name for name, m in manifests.items() if kind is None or m.kind == kind]


def get_manifest(name: str | Manifest) -> Manifest:
    """Look a dataset up by name or alias, case-insensitively; suggest the closest name on a typo.

    Examples
    --------
    >>> get_manifest("oxford_pets").name
    'OxfordPets'
    >>> get_manifest("eurosta")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mmlens.data.manifest.ManifestError: Unknown dataset 'eurosta'. Did you mean 'EuroSAT'? ...
    """
    if isinstance(name, Manifest):
        return name
    manifests, lookup = _registry()
    key = str(name).strip().lower()
    if key in lookup:
        return manifests[lookup[key]]
    close = difflib.get_close_matches(key, list(lookup), n=1, cutoff=0.5)
    hint = f" Did you mean {lookup[close[0]]!r}?" if close else ""
    raise ManifestError(
        f"Unknown dataset {name!r}.{hint} Known datasets: {', '.join(manifests)} "
        "(names are case-insensitive; see `mmlens data list`)."
    )
