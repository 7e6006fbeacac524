"""Manifests: every packaged file validates; look-ups are case-insensitive; bad files name file and field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

import mmlens.data as mdata
from mmlens.data.manifest import ManifestError, load_manifest, manifest_dir, validate_manifest

ELEVEN = [
    "ImageNet",
    "Caltech101",
    "OxfordPets",
    "StanfordCars",
    "Flowers102",
    "Food101",
    "FGVCAircraft",
    "SUN397",
    "DTD",
    "EuroSAT",
    "UCF101",
]
VARIANTS = ["ImageNet-V2", "ImageNet-Sketch", "ImageNet-A", "ImageNet-R"]


def test_manifests_ship_inside_the_package():
    d = manifest_dir()
    assert Path(mdata.__file__).parent / "manifests" == d
    assert (d / "manifest.schema.json").is_file()


def test_all_fifteen_real_manifests_present_and_valid():
    real = mdata.list_manifests("real")
    assert sorted(real) == sorted(ELEVEN + VARIANTS)
    for name in mdata.list_manifests():  # includes toyworld manifests once they exist
        m = mdata.get_manifest(name)
        assert m.manifest_version == 1
        validate_manifest(yaml.safe_load(m.path.read_text()), m.path)


@pytest.mark.parametrize(
    "name,n,sizes",
    [
        ("Caltech101", 100, {"train": 4128, "val": 1649, "test": 2465}),
        ("OxfordPets", 37, {"train": 2944, "val": 736, "test": 3669}),
        ("StanfordCars", 196, {"train": 6509, "val": 1635, "test": 8041}),
        ("Flowers102", 102, {"train": 4093, "val": 1633, "test": 2463}),
        ("Food101", 101, {"train": 50500, "val": 20200, "test": 30300}),
        ("FGVCAircraft", 100, {"train": 3334, "val": 3333, "test": 3333}),
        ("SUN397", 397, {"train": 15880, "val": 3970, "test": 19850}),
        ("DTD", 47, {"train": 2820, "val": 1128, "test": 1692}),
        ("EuroSAT", 10, {"train": 13500, "val": 5400, "test": 8100}),
        ("UCF101", 101, {"train": 7639, "val": 1898, "test": 3783}),
        ("ImageNet", 1000, {"train": 1281167, "test": 50000}),
    ],
)
def test_manifest_numbers_match_datasets_md(name, n, sizes):
    m = mdata.get_manifest(name)
    assert m.num_classes == n
    assert m.expected_split_sizes == sizes


def test_lookup_is_case_insensitive_and_accepts_aliases():
    assert mdata.get_manifest("eurosat") is mdata.get_manifest("EuroSAT") is mdata.get_manifest("EUROSAT")
    assert mdata.get_manifest("oxford_pets").name == "OxfordPets"
    assert mdata.get_manifest("imagenet-a").name == "ImageNet-A"
    assert mdata.get_manifest("describabletextures").name == "DTD"


@pytest.mark.parametrize("typo,suggestion", [("eurosta", "EuroSAT"), ("oxfordpet", "OxfordPets"), ("sun379", "SUN397")])
def test_typo_suggests_the_closest_name(typo, suggestion):
    with pytest.raises(ManifestError, match=f"Unknown dataset '{typo}'. Did you mean '{suggestion}'"):
        mdata.get_manifest(typo)


def test_rewrites_and_split_aliases():
    assert mdata.get_manifest("EuroSAT").rewrite("SeaLake") == "Sea or Lake"
    assert mdata.get_manifest("Caltech101").rewrite("Faces") == "face"
    assert mdata.get_manifest("ImageNet").resolve_split("val") == "test"
    with pytest.raises(ValueError, match="ImageNet-A has no split 'train'; available: \\['test'\\]"):
        mdata.get_manifest("ImageNet-A").resolve_split("train")


def _eurosat_data():
    return yaml.safe_load((manifest_dir() / "eurosat.yaml").read_text())


def test_validator_names_file_and_field(tmp_path):
    bad = _eurosat_data()
    bad["num_classes"] = "ten"
    del bad["split_file"]
    bad["expected_split_sizes"]["tset"] = 3
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(ManifestError) as err:
        load_manifest(p)
    msg = str(err.value)
    assert str(p) in msg
    assert "field 'num_classes': 'ten' is not of type 'integer'" in msg
    assert "'split_file' is a required property" in msg
    assert "expected_split_sizes" in msg and "tset" in msg


def test_validator_rejects_unknown_top_level_fields_and_bad_enums():
    bad = _eurosat_data()
    bad["num_clases"] = 10
    bad2 = copy.deepcopy(_eurosat_data())
    bad2["layout"] = "coco"
    with pytest.raises(ManifestError, match="num_clases"):
        validate_manifest(bad, "x.yaml")
    with pytest.raises(ManifestError, match="field 'layout': 'coco' is not one of"):
        validate_manifest(bad2, "y.yaml")


def test_semantic_checks_beyond_the_schema():
    bad = _eurosat_data()
    bad["splits"] = ["train", "test"]
    with pytest.raises(ManifestError, match="field 'expected_split_sizes.val': split 'val' is not in splits"):
        validate_manifest(bad, "x.yaml")


def test_toyworld_kind_is_accepted_by_the_schema():
    tw = _eurosat_data()
    tw.update(name="ToyShapes", kind="toyworld", extra={"generator": {"seed": 0}})
    validate_manifest(tw, "toy.yaml")


def test_protocol_roles():
    assert sorted(mdata.base_to_novel_datasets()) == sorted(ELEVEN)
    assert mdata.cross_dataset_source() == "ImageNet"
    assert sorted(mdata.cross_dataset_targets("imagenet")) == sorted(set(ELEVEN) - {"ImageNet"})
    assert sorted(mdata.domain_generalisation_targets("ImageNet")) == sorted(VARIANTS)
    assert mdata.domain_generalisation_targets("EuroSAT") == []
    with pytest.raises(ValueError, match="not a cross-dataset source"):
        mdata.cross_dataset_targets("EuroSAT")
