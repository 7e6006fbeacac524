"""toyworld generator: determinism, exact masks, class lists, captions, in-memory datasets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mmlens.data import toyworld
from mmlens.data.toyworld import domains as D
from mmlens.data.toyworld import render as R
from mmlens.data.toyworld.generate import _PATTERN_NOUNS, stream
from mmlens.models import toy


@pytest.mark.parametrize("key", list(toyworld.DOMAINS))
def test_same_seed_identical_bytes_other_seed_or_split_differs(key):
    a = toyworld.generate(key, 1, seed=5, split="val")
    b = toyworld.generate(key, 1, seed=5, split="val")
    assert a.images.tobytes() == b.images.tobytes() and a.masks.tobytes() == b.masks.tobytes()
    assert a.images.dtype == np.uint8 and a.images.shape[1:] == (64, 64, 3)
    assert a.masks.dtype == bool and a.masks.shape[1:] == (64, 64)
    assert a.images.tobytes() != toyworld.generate(key, 1, seed=6, split="val").images.tobytes()
    assert a.images.tobytes() != toyworld.generate(key, 1, seed=5, split="test").images.tobytes()
    # every image shows some of its object and some background
    area = a.masks.mean(axis=(1, 2))
    assert (area > 0).all() and (area < 1).all()


def test_circle_mask_matches_an_independent_pixel_loop():
    cx, cy, r, size = 20.3, 31.7, 9.4, 64
    yy, xx = R.pixel_grid(1, size)
    u, v = R.object_coords(xx, yy, np.array([cx]), np.array([cy]), np.array([r]), np.array([0.7]))
    got = R.shape_mask("circle", u, v)[0]
    want = np.array(
        [[math.hypot(x + 0.5 - cx, y + 0.5 - cy) <= r for x in range(size)] for y in range(size)]
    )
    assert (got == want).all()
    # an axis-aligned square of half-side 0.8 r: count pixel centres by hand
    u, v = R.object_coords(xx, yy, np.array([32.0]), np.array([32.0]), np.array([10.0]), np.array([0.0]))
    sq = R.shape_mask("square", u, v)[0]
    assert sq.sum() == 16 * 16  # centres 24.5 .. 39.5 lie within 32 +- 8


def _probe(rng_seed, key, attrs, monkeypatch, shift: bool):
    """Render one batch; with ``shift`` the class object's colour is moved by 100 per channel."""
    original = D.class_colour

    def shifted(*args, **kwargs):
        c = original(*args, **kwargs)
        return np.where(c < 128, c + 100, c - 100).astype(np.float32)

    with monkeypatch.context() as m:
        if shift:
            m.setattr(D, "class_colour", shifted)
        img, mask = D.get_domain(key).renderer(stream(rng_seed, "probe"), {k: v.copy() for k, v in attrs.items()})
    return R.to_uint8(img), mask


@pytest.mark.parametrize("key", list(toyworld.DOMAINS))
def test_mask_is_exactly_the_pixels_of_the_rendered_object(key, monkeypatch):
    # Render the same scenes twice (same RNG stream), the second time with the class object painted in
    # another colour: the pixels that change are the object's pixels, and they must equal the mask.
    n = 24
    rng = np.random.default_rng(0)
    attrs = {
        "colour": np.array(D.HUES)[rng.integers(0, 8, n)],
        "shape": np.array(R.SHAPES)[rng.integers(0, 12, n)],
        "pattern": np.full(n, "plain"),
    }
    img_a, mask_a = _probe(1, key, attrs, monkeypatch, shift=False)
    img_b, mask_b = _probe(1, key, attrs, monkeypatch, shift=True)
    assert (mask_a == mask_b).all()
    changed = (img_a != img_b).any(axis=-1)
    # pixels clipped to 0/255 in every channel in both renders cannot show a difference (dark low-light
    # outlines under noise); there must be few of them
    saturated = np.isin(img_a, (0, 255)).all(-1) & np.isin(img_b, (0, 255)).all(-1)
    assert (saturated & mask_a).sum() <= 0.1 * mask_a.sum()
    assert not (changed & ~mask_a).any()  # nothing outside the mask belongs to the object
    if key == "sketch":  # line art: the pen strokes lie inside the silhouette, its inside shows paper
        assert (changed | saturated)[mask_a & ~R.erode(mask_a, 1)].all()
    else:
        assert (changed | saturated)[mask_a].all()  # every mask pixel shows the object


def test_class_lists_base_and_novel_cover_every_attribute():
    assert len(toyworld.DOWNSTREAM) >= 6
    for key, d in toyworld.DOMAINS.items():
        names = d.classnames
        assert len(set(names)) == len(names) >= 30, key
        assert d.num_classes % 2 == 0
        half = d.num_classes // 2
        for attr in ("colour", "shape", "pattern"):
            values = {getattr(c, attr) for c in d.classes}
            if len(values) > 1:
                assert {getattr(c, attr) for c in d.classes[:half]} == values, (key, attr)
                assert {getattr(c, attr) for c in d.classes[half:]} == values, (key, attr)
    assert toyworld.get_domain("photo").num_classes == 96


def test_all_class_prompts_and_captions_are_in_the_tokenizer_vocabulary():
    tok = toy.get_tokenizer()
    for d in toyworld.DOMAINS.values():
        for name in d.classnames:
            assert tok.unknown_words(f"a photo of a {name}.") == [], name
    batch = toyworld.pretraining_batch(64, seed=0, step=0)
    for cap in batch.captions:
        assert tok.unknown_words(cap) == [], cap
        ids = tok(cap)[0]
        assert ids[-1] == 0, f"caption too long for the context: {cap!r}"


def test_caption_match_marks_every_consistent_pair():
    b = toyworld.pretraining_batch(48, seed=1, step=3)
    assert b.match.diagonal().all()
    for i in range(48):
        for j in range(48):
            said = {k: b.mentioned[k][j] for k in b.mentioned if b.mentioned[k][j]}
            agrees = all(str(b.attrs[k][i]) == v for k, v in said.items())
            assert b.match[i, j] == agrees
            assert said["shape"] in b.captions[j]  # the shape is always named
            for k, v in said.items():  # every mentioned value is in the words of the caption
                words = b.captions[j].replace(".", " ").replace(",", " ").split()
                assert v in words or (k == "pattern" and _PATTERN_NOUNS[v] in words), (k, v)
    no_colour = [j for j in range(48) if not b.mentioned["colour"][j]]
    assert 0 < len(no_colour) < 48  # some captions name the shape without a colour ...
    only_shape = [j for j in no_colour if not any(b.mentioned[k][j] for k in b.mentioned if k != "shape")]
    for j in only_shape:  # ... and those match every image of that shape, whatever its colour
        assert (b.match[:, j] == (b.attrs["shape"] == b.mentioned["shape"][j])).all()


def test_in_memory_dataset_matches_generate_and_protocol():
    ds = toyworld.build_in_memory("ToyTexture", "train", size="small")
    g = toyworld.generate("texture", toyworld.SIZES["small"]["train"], seed=0, split="train")
    s = ds[37]
    assert torch.equal(s["image"], torch.from_numpy(g.images[37]).permute(2, 0, 1).float() / 255)
    assert torch.equal(s["mask"], torch.from_numpy(g.masks[37]).float())
    assert s["label"] == g.labels[37] and s["classname"] == g.classnames[g.labels[37]]
    assert s["path"].startswith("toyworld://toy_texture/images/")
    novel = toyworld.build_in_memory("ToyTexture", "train", shots=3, seed=2, subset="novel")
    assert len(novel) == 3 * 24 and novel.classnames == ds.classnames[24:]
    assert sorted({novel[i]["label"] for i in range(len(novel))}) == list(range(24))
    again = toyworld.build_in_memory("ToyTexture", "train", shots=3, seed=2, subset="novel")
    assert [novel[i]["path"] for i in range(len(novel))] == [again[i]["path"] for i in range(len(again))]


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(KeyError, match="unknown toyworld domain"):
        toyworld.get_domain("nope")
    with pytest.raises(ValueError, match="split must be one of"):
        toyworld.generate("photo", 1, split="dev")
    with pytest.raises(ValueError, match="n_per_class"):
        toyworld.generate("photo", 0)


def test_written_tree_reads_back_through_the_manifest_and_loaders(tmp_path):
    import mmlens.data as md
    from mmlens.data.toyworld.export import write_domain

    info = write_domain("finegrained", tmp_path, seed=4, per_class={"train": 2, "val": 1, "test": 1})
    assert info["split_sizes"] == {"train": 96, "val": 48, "test": 48}
    disk = md.build("ToyFineGrained", tmp_path, "train")
    mem = toyworld.ToyworldDataset("finegrained", "train", size=2, data_seed=4)
    assert disk.classnames == mem.classnames == toyworld.get_domain("finegrained").classnames
    assert len(disk) == len(mem) == 96
    for i in (0, 17, 95):
        a, b = disk[i], mem[i]
        assert a["path"].endswith(b["path"].removeprefix("toyworld://"))
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert a["label"] == b["label"] and a["classname"] == b["classname"]
    report = md.verify("ToyFineGrained", tmp_path, check_counts=False)
    assert not report.errors and not report.missing_files and not report.corrupt_files

    # a tree from another generator version reads, with a warning that says how to regenerate it
    info_file = md.get_manifest("ToyFineGrained").dataset_dir(tmp_path) / "toyworld.json"
    info_file.write_text(json.dumps({**json.loads(info_file.read_text()), "generator_version": 2}))
    with pytest.warns(UserWarning, match=r"generator version 2; this mmlens draws version \d+.*mmlens data toyworld"):
        md.load_split("ToyFineGrained", tmp_path, "test")


def test_packaged_manifests_are_current_and_valid():
    import yaml

    from mmlens.data.manifest import get_manifest, manifest_dir
    from mmlens.data.protocol import base_to_novel_datasets, cross_dataset_source, cross_dataset_targets
    from mmlens.data.toyworld.export import manifest_yaml

    for key, d in toyworld.DOMAINS.items():
        path = manifest_dir() / f"toyworld_{key}.yaml"
        assert path.read_text() == manifest_yaml(key), f"{path} is stale: run scripts/toyworld_manifests.py"
        m = get_manifest(d.name)
        assert m.kind == "toyworld" and list(m.classnames) == d.classnames
        assert m.split_file == d.split_file and m.masks["foreground_values"] == [255]
        assert yaml.safe_load(path.read_text())["expected_split_sizes"]["test"] == 40 * d.num_classes
    assert cross_dataset_source("toyworld") == "ToyPhoto"
    assert sorted(cross_dataset_targets("ToyPhoto")) == sorted(toyworld.get_domain(k).name for k in toyworld.DOWNSTREAM)
    assert len(base_to_novel_datasets("toyworld")) == 7


def test_written_files_are_byte_identical_for_the_same_seed(tmp_path):
    from mmlens.data.toyworld.export import write_domain

    for out in ("a", "b"):
        write_domain("satellite", tmp_path / out, seed=7, per_class={"train": 1, "val": 1, "test": 1})
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 2 * 96 + 2
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_cli_writes_a_domain(tmp_path, capsys):
    import json

    from mmlens.cli import main

    assert main(["data", "toyworld", "--out", str(tmp_path), "--size", "small", "--domain", "satellite"]) == 0
    split = json.loads((tmp_path / "toy_satellite" / "split_zhou_ToySatellite.json").read_text())
    assert {k: len(v) for k, v in split.items()} == {"train": 16 * 32, "val": 4 * 32, "test": 8 * 32}
    assert "ToySatellite" in capsys.readouterr().out
