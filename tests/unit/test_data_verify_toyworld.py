"""`mmlens data verify` passes on freshly generated toyworld copies and flags planted files the loader would misread."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import mmlens.data as mdata
from mmlens.cli import main
from mmlens.data.toyworld.domains import DOMAINS
from mmlens.data.toyworld.export import write_domain
from mmlens.data.toyworld.generate import SIZES
from mmlens.data.verification import expected_split_sizes, format_reports


def test_fresh_small_copy_verifies_via_the_cli(tmp_path, capsys):
    root = tmp_path / "data"
    assert main(["data", "toyworld", "--out", str(root), "--size", "small", "--domain", "satellite"]) == 0
    capsys.readouterr()
    assert main(["data", "verify", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    n_classes = mdata.get_manifest("ToySatellite").num_classes
    # the table's expected column is the small size's, counted independently from the generator's constants
    for split in ("train", "val", "test"):
        n = SIZES["small"][split] * n_classes
        assert any(line.split()[:4] == ["ToySatellite", split, str(n), str(n)] for line in out.splitlines())
    assert out.strip().endswith("1 dataset(s) checked, 0 with problems.")


def test_custom_size_copy_verifies_and_a_lost_entry_is_counted(tmp_path):
    write_domain("sketch", tmp_path, size="small", per_class={"train": 2, "val": 1, "test": 1})
    m = mdata.get_manifest("ToySketch")
    assert expected_split_sizes(m, tmp_path) == ({"train": 2 * m.num_classes, "val": m.num_classes,
                                                  "test": m.num_classes}, "toyworld.json: 2/1/1 images per class")
    assert mdata.verify("ToySketch", tmp_path).ok
    split_file = tmp_path / m.folder / m.split_file
    splits = json.loads(split_file.read_text())
    splits["test"] = splits["test"][:-1]  # an entry lost from the split file
    split_file.write_text(json.dumps(splits))
    rep = mdata.verify("ToySketch", tmp_path, decode=False)
    assert rep.count_mismatches == [f"test: {m.num_classes - 1} images listed, expected {m.num_classes} "
                                    "(toyworld.json: 2/1/1 images per class)"]


@pytest.fixture
def tiny(tmp_path):
    write_domain("satellite", tmp_path, size="small", per_class={"train": 1, "val": 1, "test": 1})
    items = mdata.load_split("ToySatellite", tmp_path, "test").items
    return tmp_path, items


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def test_planted_files_are_flagged(tiny, capsys):
    root, items = tiny
    deep, turned, wrong_mask, bad_mask = items[0], items[1], items[2], items[3]
    pixels = np.asarray(Image.open(deep.path).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(pixels).save(deep.path)  # same picture, as a 16-bit PNG
    Image.open(turned.path).save(turned.path, exif=_exif(6))  # a turn in EXIF (the tile is square: sizes agree)
    Image.new("L", (32, 64)).save(wrong_mask.mask_path)
    with open(bad_mask.mask_path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n broken")
    rep = mdata.verify("ToySatellite", root)
    assert not rep.ok
    assert rep.conversions == [(deep.path, "16-bit grey (I;16) scaled from 0..65535 to 0..255"),
                               (turned.path, "EXIF orientation 6 applied")]
    assert rep.mask_mismatches == [(wrong_mask.path, f"mask {wrong_mask.mask_path} is 32x64 pixels, its image is "
                                    "64x64")]
    assert [p for p, _ in rep.corrupt_files] == [bad_mask.path]
    assert rep.corrupt_files[0][1].endswith(f"(mask {bad_mask.mask_path})")
    assert rep.splits["test"].corrupt == 2 and rep.splits["train"].corrupt == 0
    text = format_reports([rep])
    assert f"PROBLEM mask size: mask {wrong_mask.mask_path} is 32x64 pixels" in text
    assert f"{turned.path}: EXIF orientation 6 applied" in text
    assert main(["data", "verify", "--root", str(root)]) == 1
    # conversions alone do not fail the check
    Image.new("L", (64, 64)).save(wrong_mask.mask_path)
    Image.new("L", (64, 64)).save(bad_mask.mask_path)
    rep = mdata.verify("ToySatellite", root)
    assert rep.ok and len(rep.conversions) == 2


@pytest.mark.slow
@pytest.mark.parametrize("size", list(SIZES))
def test_every_fresh_toyworld_size_verifies(tmp_path, size, capsys):
    root = tmp_path / "data"
    assert main(["data", "toyworld", "--out", str(root), "--size", size]) == 0
    assert main(["data", "verify", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith(f"{len(DOMAINS)} dataset(s) checked, 0 with problems.")
