"""`verify` and `mmlens data list/verify` on fake trees of every dataset, with planted problems."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import mmlens.data as mdata
from mmlens.cli import main
from mmlens.data.fake import corrupt_file, make_fake_tree
from mmlens.data.verification import format_reports, verify_root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify_root")
    return root, make_fake_tree(root)


def test_clean_fake_tree_of_every_dataset_verifies(tree):
    root, fake = tree
    for name, fd in fake.items():
        rep = mdata.verify(name, root, expected_sizes=fd.expected_split_sizes)
        assert rep.ok, (name, rep.problems())
        assert {s: c.listed for s, c in rep.splits.items()} == fd.expected_split_sizes
        assert not rep.unexpected_dirs  # Caltech BACKGROUND_Google, Cars devkit, ImageNet-A README: fine


def test_counts_are_checked_against_the_manifest(tree):
    root, _ = tree
    rep = mdata.verify("DTD", root, decode=False)
    assert not rep.ok
    assert rep.count_mismatches == [
        "train: 94 images listed, manifest expects 2820",
        "val: 47 images listed, manifest expects 1128",
        "test: 47 images listed, manifest expects 1692",
    ]
    assert mdata.verify("DTD", root, decode=False, check_counts=False).ok


@pytest.fixture()
def broken(tmp_path):
    """EuroSAT + OxfordPets + ImageNet-A with one corrupt image, one missing file, one stray folder."""
    fake = make_fake_tree(tmp_path, ["EuroSAT", "OxfordPets", "ImageNet-A"])
    bad = fake["EuroSAT"].files["val"][3]
    corrupt_file(bad)
    gone = fake["OxfordPets"].files["test"][5]
    os.remove(gone)
    stray = tmp_path / "imagenet-adversarial" / "imagenet-a" / "n99999999"
    stray.mkdir()
    shutil.copy(fake["ImageNet-A"].files["test"][0], stray / "x.jpg")
    return tmp_path, fake, bad, gone, stray


def test_verify_reports_corrupt_missing_and_unexpected(broken):
    root, fake, bad, gone, stray = broken
    e = mdata.verify("eurosat", root, expected_sizes=fake["EuroSAT"].expected_split_sizes)
    assert not e.ok and [p for p, _ in e.corrupt_files] == [str(bad)]
    assert e.splits["val"].corrupt == 1 and e.splits["train"].corrupt == 0
    assert e.problems()[0].startswith(f"corrupt image: {bad} (")
    p = mdata.verify("OxfordPets", root, expected_sizes=fake["OxfordPets"].expected_split_sizes)
    assert p.missing_files == [str(gone)] and p.splits["test"].missing == 1 and not p.corrupt_files
    a = mdata.verify("imagenet-a", root, expected_sizes=fake["ImageNet-A"].expected_split_sizes)
    assert a.unexpected_dirs == [str(stray)]
    assert mdata.verify("EuroSAT", root, decode=False, expected_sizes=fake["EuroSAT"].expected_split_sizes).ok


def test_unexpected_class_folder_in_a_split_json_dataset(tmp_path):
    fake = make_fake_tree(tmp_path, ["Caltech101"], per_class={"train": 1, "val": 1, "test": 1})
    extra = tmp_path / "caltech-101" / "101_ObjectCategories" / "Faces_hard"
    extra.mkdir()
    shutil.copy(fake["Caltech101"].files["test"][0], extra / "image_0001.jpg")
    rep = mdata.verify("Caltech101", tmp_path, expected_sizes=fake["Caltech101"].expected_split_sizes)
    assert rep.unexpected_dirs == [str(extra)]


def test_malformed_split_file_is_a_problem_not_a_crash(tmp_path):
    make_fake_tree(tmp_path, ["EuroSAT"])
    p = tmp_path / "eurosat" / "split_zhou_EuroSAT.json"
    data = json.loads(p.read_text())
    data["test"][0] = ["x.jpg", 0]
    p.write_text(json.dumps(data))
    rep = mdata.verify("EuroSAT", tmp_path)
    assert not rep.ok and any("entry test[0]" in e for e in rep.errors)


def test_absent_dataset_and_missing_root(tmp_path):
    rep = mdata.verify("UCF101", tmp_path)
    assert not rep.present and not rep.ok and "not found" in rep.errors[0]
    assert verify_root(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mdata.verify("UCF101", tmp_path / "nope")
    assert "absent" in format_reports([rep])


def test_cli_verify_table_and_exit_codes(broken, capsys):
    root, *_ = broken
    assert main(["data", "verify", "--root", str(root), "--skip-counts"]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["dataset", "split", "expected", "listed", "missing", "corrupt", "status"]
    assert ["EuroSAT", "val", "5400", "10", "0", "1", "PROBLEMS"] in [ln.split() for ln in lines]
    assert ["OxfordPets", "test", "3669", "37", "1", "0", "PROBLEMS"] in [ln.split() for ln in lines]
    assert "unexpected folder:" in out and "3 dataset(s) checked, 3 with problems." in out


def test_cli_verify_clean_dataset_and_bad_input(tmp_path, capsys):
    make_fake_tree(tmp_path, ["DTD"], per_class={"train": 1, "val": 1, "test": 1})
    assert main(["data", "verify", "--root", str(tmp_path), "--dataset", "dtd", "--skip-counts"]) == 0
    assert "1 dataset(s) checked, 0 with problems." in capsys.readouterr().out
    assert main(["data", "verify", "--root", str(tmp_path), "--dataset", "dtd"]) == 1  # counts vs manifest
    capsys.readouterr()
    assert main(["data", "verify", "--root", str(tmp_path), "--dataset", "dtdd"]) == 2
    assert "Did you mean 'DTD'" in capsys.readouterr().err
    assert main(["data", "verify", "--root", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["data", "verify", "--root", str(tmp_path), "--dataset", "EuroSAT"]) == 1
    assert "dataset folder" in capsys.readouterr().out


def test_cli_list(tmp_path, capsys):
    make_fake_tree(tmp_path, ["EuroSAT"], per_class={"train": 1, "val": 1, "test": 1})
    assert main(["data", "list", "--root", str(tmp_path)]) == 0
    rows = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines()[2:]}
    assert len(rows) == len(mdata.list_manifests())
    assert rows["EuroSAT"][-1] == "yes" and rows["DTD"][-1] == "no"
    assert rows["ImageNet-A"][2] == "200"
    assert main(["data", "list"]) == 0
    assert "present" not in capsys.readouterr().out
