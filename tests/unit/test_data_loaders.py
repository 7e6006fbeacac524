"""Loaders on fake trees in the exact layout of every dataset; base/novel counts of the eleven."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import mmlens.data as mdata
from mmlens.data.fake import make_fake_tree
from mmlens.data.loaders import SplitFileError


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("data_root")
    return root, make_fake_tree(root)  # every real dataset, all classes, 2/1/1 images per class


def test_every_dataset_loads_with_the_sizes_and_classes_written(tree):
    root, fake = tree
    assert len(fake) == 15
    for name, fd in fake.items():
        m = mdata.get_manifest(name)
        for split, n in fd.expected_split_sizes.items():
            sd = mdata.load_split(name.lower(), root, split)
            assert len(sd) == n, (name, split)
            assert sd.classnames == fd.classnames, name
            assert len(sd.classnames) == m.num_classes
            assert sorted(it.path for it in sd.items) == sorted(str(p) for p in fd.files[split])
            for it in sd.items:
                assert sd.classnames[it.label] == it.classname
                assert Path(it.path).is_file()


# independent reference: ceil(n/2) / floor(n/2) of DATASETS.md's class counts, written out by hand
B2N = {
    "ImageNet": (500, 500),
    "Caltech101": (50, 50),
    "OxfordPets": (19, 18),
    "StanfordCars": (98, 98),
    "Flowers102": (51, 51),
    "Food101": (51, 50),
    "FGVCAircraft": (50, 50),
    "SUN397": (199, 198),
    "DTD": (24, 23),
    "EuroSAT": (5, 5),
    "UCF101": (51, 50),
}


@pytest.mark.parametrize("name", sorted(B2N))
def test_base_novel_counts_of_the_eleven(tree, name):
    root, _ = tree
    sd = mdata.load_split(name, root, "test")
    base_items, base_names = mdata.base_novel(sd.items, sd.classnames, "base")
    novel_items, novel_names = mdata.base_novel(sd.items, sd.classnames, "novel")
    assert (len(base_names), len(novel_names)) == B2N[name]
    assert base_names + novel_names == sd.classnames
    # re-indexed from 0 in each half; images partitioned exactly
    assert {it.label for it in base_items} == set(range(len(base_names)))
    assert {it.label for it in novel_items} == set(range(len(novel_names)))
    assert len(base_items) + len(novel_items) == len(sd.items)
    assert all(novel_names[it.label] == it.classname for it in novel_items)


def test_eurosat_and_caltech_class_names(tree):
    root, _ = tree
    euro = mdata.load_split("EuroSAT", root, "train").classnames
    assert euro[0] == "Annual Crop Land" and "Sea or Lake" in euro and "Highway or Road" in euro
    cal = mdata.load_split("caltech101", root, "train")
    assert {"airplane", "face", "leopard", "motorbike"} <= set(cal.classnames)
    assert not any("BACKGROUND_Google" in it.path or "Faces_easy" in it.path for it in cal.items)
    # the folders are the raw names
    face = next(it for it in cal.items if it.classname == "face")
    assert Path(face.path).parent.name == "Faces"


def test_split_file_with_raw_names_is_rewritten(tmp_path):
    make_fake_tree(tmp_path, ["EuroSAT"])
    p = tmp_path / "eurosat" / "split_zhou_EuroSAT.json"
    data = json.loads(p.read_text())
    data["train"] = [[rel, lab, rel.split("/")[0]] for rel, lab, _ in data["train"]]  # raw folder names
    p.write_text(json.dumps(data))
    sd = mdata.load_split("EuroSAT", tmp_path, "train")
    assert sd.classnames[-1] == "Sea or Lake"


def test_oxford_pets_masks(tree):
    root, _ = tree
    sd = mdata.load_split("OxfordPets", root, "val")
    for it in sd.items:
        assert it.mask_path == str(root / "oxford_pets" / "annotations" / "trimaps" / (Path(it.path).stem + ".png"))
    assert mdata.load_split("DTD", root, "val").items[0].mask_path is None


def test_imagenet_val_is_the_test_set(tree):
    root, fake = tree
    val = mdata.load_split("imagenet", root, "val")
    test = mdata.load_split("imagenet", root, "test")
    assert val.items == test.items and len(test) == 1000
    assert all("/images/val/" in it.path for it in test.items)
    assert test.class_ids[0] == "n01440764"


def test_imagenet_variants(tree):
    root, _ = tree
    v2 = mdata.load_split("ImageNet-V2", root, "test")
    assert len(v2.classnames) == 1000
    it = next(i for i in v2.items if Path(i.path).parent.name == "417")
    assert it.label == 417 and it.classname == "imagenet class 0417"
    a = mdata.load_split("ImageNet-A", root, "test")
    assert len(a.classnames) == 200 and a.class_ids == sorted(a.class_ids)
    # labels re-indexed over the 200 present wnids; class_ids map back to ImageNet wnids
    imnet = mdata.load_split("ImageNet", root, "test")
    for i in a.items[:20]:
        assert Path(i.path).parent.name == a.class_ids[i.label]
        assert imnet.classnames[imnet.class_ids.index(a.class_ids[i.label])] == i.classname
    assert not any(i.path.endswith("README.txt") for i in a.items)


def test_fgvc_variant_names_with_slashes_and_spaces(tree):
    root, _ = tree
    sd = mdata.load_split("fgvc_aircraft", root, "val")
    assert sd.classnames[0] == "F/A 000"
    assert all(Path(it.path).parent.name == "images" for it in sd.items)
    assert sd.classnames == (root / "fgvc_aircraft" / "variants.txt").read_text().split("\n")[:-1]


def test_sun397_nested_class_folders(tree):
    root, _ = tree
    sd = mdata.load_split("SUN397", root, "train")
    nested = [it for it in sd.items if Path(it.path).parent.name == "outdoor"]
    assert nested and nested[0].classname.endswith("outdoor")


def test_missing_root_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="Data root .*does not exist"):
        mdata.load_split("EuroSAT", tmp_path / "nope", "train")
    with pytest.raises(FileNotFoundError, match="EuroSAT: split file not found at .*split_zhou_EuroSAT.json"):
        mdata.load_split("EuroSAT", tmp_path, "train")
    with pytest.raises(ValueError, match="EuroSAT has no split 'trian'"):
        mdata.load_split("EuroSAT", tmp_path, "trian")


def test_malformed_split_file_names_the_entry(tmp_path):
    make_fake_tree(tmp_path, ["DTD"])
    p = tmp_path / "dtd" / "split_zhou_DescribableTextures.json"
    data = json.loads(p.read_text())
    data["val"][5] = ["class_002/x.jpg", "2", "class 002"]
    p.write_text(json.dumps(data))
    with pytest.raises(SplitFileError, match=r"entry val\[5\] = \['class_002/x.jpg', '2', 'class 002'\]"):
        mdata.load_split("DTD", tmp_path, "test")
    data["val"][5] = ["class_002/x.jpg", 2, "another name"]
    p.write_text(json.dumps(data))
    with pytest.raises(SplitFileError, match=r"entry val\[5\] gives label 2 the class name 'another name'"):
        mdata.load_split("DTD", tmp_path, "test")
    p.write_text("{not json")
    with pytest.raises(SplitFileError, match="not valid JSON"):
        mdata.load_split("DTD", tmp_path, "test")


def test_class_count_mismatch_is_reported(tmp_path):
    make_fake_tree(tmp_path, ["EuroSAT"])
    p = tmp_path / "eurosat" / "split_zhou_EuroSAT.json"
    data = json.loads(p.read_text())
    data = {s: [e for e in v if e[1] < 9] for s, v in data.items()}
    p.write_text(json.dumps(data))
    with pytest.raises(SplitFileError, match="found 9 classes .* the manifest expects 10"):
        mdata.load_split("EuroSAT", tmp_path, "train")
    assert len(mdata.load_split("EuroSAT", tmp_path, "train", check_classes=False).classnames) == 9


def test_fgvc_bad_list_line(tmp_path):
    make_fake_tree(tmp_path, ["FGVCAircraft"], per_class={"train": 1, "val": 1, "test": 1})
    p = tmp_path / "fgvc_aircraft" / "images_variant_test.txt"
    p.write_text(p.read_text() + "1234567 Boeing 999\n")
    with pytest.raises(SplitFileError, match="line 101 '1234567 Boeing 999'"):
        mdata.load_split("FGVCAircraft", tmp_path, "test")


def test_variant_falls_back_to_imagenet_classnames(tmp_path):
    make_fake_tree(tmp_path, ["ImageNet", "ImageNet-R"], per_class={"train": 0, "test": 1})
    os.remove(tmp_path / "imagenet-rendition" / "classnames.txt")
    assert len(mdata.load_split("ImageNet-R", tmp_path, "test").classnames) == 200
    os.remove(tmp_path / "imagenet" / "classnames.txt")
    with pytest.raises(FileNotFoundError, match="classnames file not found at .* nor at"):
        mdata.load_split("ImageNet-R", tmp_path, "test")


def test_a_user_manifest_file_drives_loaders_verify_and_build(tmp_path):
    """Toyworld and user datasets come as manifest files: the same code reads them."""
    import yaml

    from mmlens.data.manifest import load_manifest, manifest_dir

    fake = make_fake_tree(tmp_path, ["EuroSAT"], per_class={"train": 2, "val": 1, "test": 1})
    data = yaml.safe_load((manifest_dir() / "eurosat.yaml").read_text())
    data.update(
        name="MyEuro",
        kind="toyworld",
        aliases=[],
        expected_split_sizes={"train": 20, "val": 10, "test": 10},
        classnames=fake["EuroSAT"].classnames,
    )
    p = tmp_path / "myeuro.yaml"
    p.write_text(yaml.safe_dump(data))
    m = load_manifest(p)
    assert mdata.load_split(m, tmp_path, "val").classnames == fake["EuroSAT"].classnames
    assert mdata.verify(m, tmp_path).ok
    assert len(mdata.build(m, tmp_path, "train", shots=1, subset="base")) == 5
    data["classnames"] = list(reversed(fake["EuroSAT"].classnames))
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(SplitFileError, match="differ from the manifest's `classnames`"):
        mdata.load_split(load_manifest(p), tmp_path, "val")
