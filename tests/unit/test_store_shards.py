"""Schema-3 layout (issue V): shards sized by bytes, equal data to the old layout, shards repaired by resume even when
the repair itself is interrupted, and shards written but not yet recorded in a running store are pending."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import mmlens
from mmlens.store import integrity
from mmlens.store._encoding import image_encoding, images_per_shard
from mmlens.store.io import StoreIntegrityError, StoreWriter
from mmlens.store.synthetic import example_tree
from tests.unit._datasets import CountingItems


def _tree(n=10, **kw):
    return example_tree(n_images=n, n_layers=2, n_heads=2, grid=3, n_classes=4, width=4, **kw)


# ------------------------------------------------------------------------------------------------
# the sizing policy, against sizes counted by hand
# ------------------------------------------------------------------------------------------------


def test_images_per_shard_is_the_smallest_variables_shard():
    tree = example_tree(n_images=2, n_layers=12, n_heads=12, grid=14, width=8)
    # by hand: the smallest per-image variables are int64 / 64-byte-string coordinates (the `image` index: 8 bytes)
    assert images_per_shard(tree) == 1024  # 64 MiB / 8 B is far above the cap
    assert images_per_shard(tree, shard_bytes=8 * 100) == 64  # the largest power of two within 100 images
    assert images_per_shard(tree, shard_bytes=4) == 1  # one image is bigger than a shard: still one
    assert images_per_shard(tree, shard_bytes=2**40, max_images=64) == 64
    groups = {name: node.to_dataset() for name, node in tree.children.items()}
    assert images_per_shard(groups) == images_per_shard(tree)  # a {group: Dataset} batch, as the writer has


def test_image_encoding_sizes_shards_and_chunks_by_each_variables_bytes():
    vision = example_tree(n_images=2, n_layers=12, n_heads=12, grid=14, width=8)["vision"].to_dataset()
    region = 1024
    enc = image_encoding(vision, region, shard_bytes=8 * 2**20, chunk_bytes=2**20)
    per_image = {name: vision[name].nbytes // 2 for name in enc if vision[name].dtype.kind == "f"}
    assert set(enc) == {str(v) for v in vision.variables if "image" in vision[v].dims}  # coords too: path, image
    for name, e in enc.items():
        axis = vision[name].dims.index("image")
        shard, inner = e["shards"][axis], e["chunks"][axis]
        assert e["shards"][:axis] + e["shards"][axis + 1:] == vision[name].shape[:axis] + vision[name].shape[axis + 1:]
        assert region % shard == 0 and shard % inner == 0  # a region is whole shards of every variable
        if name in per_image:
            assert shard * per_image[name] <= 8 * 2**20 or shard == 1
            assert shard == region or 2 * shard * per_image[name] > 8 * 2**20  # as big as the byte target allows
            assert inner * per_image[name] <= 2**20 or inner == 1
            assert inner == shard or 2 * inner * per_image[name] > 2**20
    # by hand: cls_attention is 2 variants x 12 x 12 x 196 float32 = 225,792 B per image
    assert enc["cls_attention"]["shards"][1] == 32 and enc["cls_attention"]["chunks"][1] == 4
    assert enc["prompt_mass"]["shards"][1] == region  # 1,152 B per image: the whole region in one shard
    # a region that is not a power of two (an explicit shard_images=): shards still divide it
    odd = image_encoding(vision, 96, shard_bytes=8 * 2**20)
    assert odd["cls_attention"]["shards"][1] == 32 and odd["prompt_mass"]["shards"][1] == 96
    with pytest.raises(ValueError, match="does not divide the 256 images per shard"):
        image_encoding(vision, 256, chunk_images=3)


def test_writer_shards_every_image_variable_alike_and_records_it(tmp_path):
    tree = _tree()
    path = tmp_path / "s.zarr"
    with StoreWriter(path, dict(tree.attrs), shard_images=4) as w:
        for lo in range(0, 10, 3):  # batches of 3 across shards of 4: partly filled shards are rewritten
            w.append(tree.isel(image=slice(lo, lo + 3)))
    meta, _ = integrity.read_metadata(path)
    progress = json.loads(integrity.root_attrs(meta)["_progress"])
    assert progress["images_per_shard"] == 4
    shards = set()
    for key, doc in meta.items():
        if key.endswith("/zarr.json") and "image" in (doc.get("dimension_names") or ()):
            axis = doc["dimension_names"].index("image")
            shards.add(doc["chunk_grid"]["configuration"]["chunk_shape"][axis])
            assert doc["codecs"][0]["name"] == "sharding_indexed", key
    assert shards == {4}
    assert sorted(f.name for f in (path / "vision" / "cls_attention").iterdir()) == [
        "c.0.0.0.0.0.0", "c.0.1.0.0.0.0", "c.0.2.0.0.0.0", "zarr.json"]
    assert mmlens.open(path).load().identical(tree)
    assert integrity.verify(path).ok


# ------------------------------------------------------------------------------------------------
# the same data as the old layout
# ------------------------------------------------------------------------------------------------


def test_sharded_store_equals_the_old_layout(tmp_path):
    from test_store_integrity import write_format2

    tree = _tree(n=11, n_failures=2)
    old = write_format2(tree, tmp_path / "old.zarr", batch=3)  # format 2, one chunk per 3-image batch
    new = tmp_path / "new.zarr"
    with StoreWriter(new, dict(tree.attrs), shard_images=4, chunk_images=2) as w:
        w.append(tree.isel(image=slice(0, 5), failure=slice(0, 1)))
        w.append(tree.isel(image=slice(5, 6), failure=slice(1, 1)))
        w.append(tree.isel(image=slice(6, 11), failure=slice(1, 2)))
    assert integrity.verify(new).ok and integrity.verify(old).ok
    with pytest.warns(mmlens.store.io.OldStoreWarning):
        a = mmlens.open(old).load()
    b = mmlens.open(new).load()
    for group in ("vision", "text", "logits"):
        assert a[group].to_dataset().identical(b[group].to_dataset()), group
    assert {k: v for k, v in a.attrs.items() if k != "mmlens_schema"} == \
        {k: v for k, v in b.attrs.items() if k != "mmlens_schema"}
    # and both equal the tree they were written from, to the bit
    np.testing.assert_array_equal(b["vision"]["cls_attention"].values, tree["vision"]["cls_attention"].values)
    assert len(list((new / "vision" / "cls_attention").glob("c.*"))) == 3  # 11 images: shards of 4
    assert len(list((old / "vision" / "cls_attention").glob("0.*"))) == 4  # 11 images: chunks of 3


# ------------------------------------------------------------------------------------------------
# repairs of shards that span batches, interrupted or not
# ------------------------------------------------------------------------------------------------



@pytest.fixture(scope="module")
def model(tiny_clip):
    torch.manual_seed(0)
    return mmlens.PromptedCLIP(tiny_clip, ["cat", "dog", "owl"], method="maple", depth=2, init_seed=0)


@pytest.fixture
def shards_of_8(monkeypatch):
    from mmlens.store import writer

    monkeypatch.setattr(writer, "images_per_shard", lambda batch, **kw: 8)


def _trace(model, data, path):
    return mmlens.trace_to_store(model, data, path, batch_size=4, progress=False)


def test_an_interrupted_repair_is_not_trusted_and_the_next_resume_finishes_it(model, tmp_path, shards_of_8):
    clean = _trace(model, CountingItems(16), tmp_path / "clean.zarr")
    path = tmp_path / "run.zarr"
    shutil.copytree(clean, path)
    shard = path / "vision" / "prompt_mass" / "c.0.1.0.0"  # images 8-15: batches 8-11 and 12-15
    shard.write_bytes(shard.read_bytes()[:10])
    with pytest.raises(KeyboardInterrupt):  # the repair re-traces 8-11, then is interrupted inside 12-15
        _trace(model, CountingItems(16, stop_at=6), path)
    # half rebuilt: its images 12-15 are not written yet, so the record must not call it intact
    with pytest.raises(StoreIntegrityError, match=r"vision/prompt_mass shard c\.0\.1\.0\.0 \(images 8-15\): a repair "
                       r"of it was interrupted"):
        mmlens.open(path)
    again = CountingItems(16)
    _trace(model, again, path)
    assert sorted(again.calls) == list(range(8, 16))
    a, b = mmlens.open(path).load(), mmlens.open(clean).load()
    for group in ("vision", "logits"):
        assert a[group].to_dataset().identical(b[group].to_dataset()), group
    assert integrity.verify(path).ok


# ------------------------------------------------------------------------------------------------
# pending: written, not yet recorded, in a store still being written
# ------------------------------------------------------------------------------------------------


def test_unrecorded_shards_of_a_running_store_are_pending_not_damage(tmp_path):
    tree = _tree(n=12)
    path = tmp_path / "live.zarr"
    w = StoreWriter(path, dict(tree.attrs), shard_images=4)
    for lo in (0, 4, 8):
        w.append(tree.isel(image=slice(lo, lo + 4)))
    # another process (a cluster worker) rewrote shard images 4-7; its client has not recorded it yet
    from mmlens.store._encoding import write_root

    meta, _ = integrity.read_metadata(path)
    attrs = integrity.root_attrs(meta)
    record = json.loads(attrs["_chunks"])
    del record["vision/prompt_mass"]["c.0.1.0.0"]
    write_root(path, {**attrs, "_chunks": json.dumps(record)})
    report = integrity.verify(path)
    assert report.ok and report.pending == [(4, 8)]
    assert "Pending (written, not yet recorded by the running trace): images 4-7" in report.text()
    integrity.update_record(path, record, {"image": (4, 8)})  # the client records the region
    assert record["vision/prompt_mass"]["c.0.1.0.0"][0] > 0
    w.close()
    # in a complete store, a file nobody recorded is damage
    meta, _ = integrity.read_metadata(path)
    attrs = integrity.root_attrs(meta)
    record = json.loads(attrs["_chunks"])
    del record["vision/prompt_mass"]["c.0.1.0.0"]
    write_root(path, {**attrs, "_chunks": json.dumps(record)})
    report = integrity.verify(path)
    assert not report.ok and [(p.chunk, p.kind, p.lo, p.hi) for p in report.problems] == [
        ("c.0.1.0.0", "unrecorded", 4, 8)]


def test_checked_reads_check_a_shard_once_per_open(tmp_path, monkeypatch):
    """zarr reads byte ranges of a shard; the first one reads and checks the whole shard, later ones do not again."""
    import zarr.storage

    tree = _tree(n=8)
    path = tmp_path / "s.zarr"
    with StoreWriter(path, dict(tree.attrs), shard_images=4, chunk_images=2) as w:
        w.append(tree)
    key = "vision/cls_attention/c.0.0.0.0.0.0"  # images 0-3, inner chunks 0-1 and 2-3
    whole = []
    orig = zarr.storage.LocalStore.get

    async def get(self, k, prototype=None, byte_range=None):
        if k == key and byte_range is None:
            whole.append(k)
        return await orig(self, k, prototype, byte_range)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", get)
    opened = mmlens.open(path)["vision"]["cls_attention"]
    for lo in (0, 2, 0):
        np.testing.assert_array_equal(opened.isel(image=slice(lo, lo + 2)).values,
                                      tree["vision"]["cls_attention"].isel(image=slice(lo, lo + 2)).values)
    assert len(whole) == 1
    mmlens.open(path)["vision"]["cls_attention"].isel(image=slice(2, 4)).load()  # a new open checks again
    assert len(whole) == 2
    mmlens.open(path, check=False)["vision"]["cls_attention"].load()  # unchecked: byte ranges only
    assert len(whole) == 2
