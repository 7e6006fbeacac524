"""Store integrity (issue VII): lost, truncated, swapped and rotten chunks and lost metadata are each caught and
named; resume re-traces exactly the lost images; a full disk leaves the store resumable; resume skips by index,
refuses another selection of images, refuses older schemas; every provenance key of a CLI-made store is right."""

from __future__ import annotations

import errno
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import mmlens
from mmlens.cli import main
from mmlens.store import integrity, schema
from mmlens.store.io import (
    OldStoreWarning,
    StoreFullError,
    StoreIdentityError,
    StoreIntegrityError,
    StoreWriter,
    store_status,
)
from mmlens.store.synthetic import example_tree
from tests.unit._datasets import CountingItems

N = 24  # images of the traced test store; batches of 4
SHARD = 8  # images per shard of the traced test stores: two batches each
CHUNK = "c.0.1.0.0.0.0"  # the shard of vision/cls_attention (variant, image, layer, head, row, col) of images 8-15


@pytest.fixture(scope="module", autouse=True)
def _shards_of_two_batches():
    """Shards of 8 images (the byte-sized policy would put these tiny stores in one shard): a shard spans batches."""
    from mmlens.store import writer

    with pytest.MonkeyPatch.context() as m:
        m.setattr(writer, "images_per_shard", lambda batch, **kw: SHARD)
        yield



@pytest.fixture(scope="module")
def model(tiny_clip):
    torch.manual_seed(0)
    m = mmlens.PromptedCLIP(tiny_clip, ["cat", "dog", "owl"], method="maple", depth=2, init_seed=0)
    with torch.no_grad():
        for p in m.prompt_learner.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.3)
    return m


def _trace(model, data, path, **kw):
    return mmlens.trace_to_store(model, data, path, batch_size=4, progress=False, **kw)


@pytest.fixture(scope="module")
def clean(model, tmp_path_factory):
    """One traced store, never damaged; each test damages a copy."""
    return _trace(model, CountingItems(), tmp_path_factory.mktemp("clean") / "clean.zarr")


def _copy(clean, tmp_path) -> Path:
    path = tmp_path / "run.zarr"
    shutil.copytree(clean, path)
    return path


def _same_store(a, b) -> None:
    ta, tb = mmlens.open(a).load(), mmlens.open(b).load()
    drop = ("created",)  # stores traced at different times
    assert {k: v for k, v in ta.attrs.items() if k not in drop} == {k: v for k, v in tb.attrs.items() if k not in drop}
    for group in ("vision", "text", "logits"):
        assert ta[group].to_dataset().identical(tb[group].to_dataset()), group


# ------------------------------------------------------------------------------------------------
# damage is caught and named; resume repairs lost and truncated chunks
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_lost_or_truncated_shard_is_named_and_resume_retraces_exactly_it(model, clean, tmp_path, damage):
    path = _copy(clean, tmp_path)
    chunk = path / "vision" / "cls_attention" / CHUNK
    if damage == "deleted":
        chunk.unlink()
    else:
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    with pytest.raises(StoreIntegrityError) as caught:
        mmlens.open(path)
    text = str(caught.value)
    assert f"vision/cls_attention shard {CHUNK} (images 8-15)" in text
    assert ("file is missing" if damage == "deleted" else "the writer wrote") in text
    assert "rerun the trace" in text and "re-traces exactly images 8-15" in text
    assert text.count("vision/cls_attention shard") == 1  # one error, one line for the one shard
    report = integrity.verify(path)
    assert not report.ok and [(p.array, p.chunk) for p in report.problems] == [("vision/cls_attention", CHUNK)]
    assert main(["store", "verify", str(path)]) == 1

    data = CountingItems()
    _trace(model, data, path)  # "rerun the trace"
    assert sorted(data.calls) == list(range(8, 16))  # exactly the two batches of the lost shard, nothing else
    _same_store(path, clean)
    assert integrity.verify(path).ok
    assert main(["store", "verify", str(path)]) == 0


def test_shard_copied_from_another_store_is_caught(model, clean, tmp_path):
    path = _copy(clean, tmp_path)
    other = _trace(model, CountingItems(seed=7), tmp_path / "other.zarr")  # same run layout, other images
    name = "vision/cls_attention/" + CHUNK
    shutil.copyfile(other / name, path / name)
    report = integrity.verify(path)
    assert not report.ok
    assert {(p.array, p.chunk, p.lo, p.hi) for p in report.problems} == {("vision/cls_attention", CHUNK, 8, 16)}
    assert "images 8-15" in report.text()
    # opening catches it by size, or reading by checksum: either way one error naming the shard
    with pytest.raises(StoreIntegrityError, match=r"vision/cls_attention shard c\.0\.1\.0\.0\.0\.0 \(images 8-15\)"):
        mmlens.open(path)["vision"]["cls_attention"].load()


def test_a_flipped_bit_is_caught_when_read(clean, tmp_path):
    path = _copy(clean, tmp_path)
    chunk = path / "vision" / "prompt_mass" / "c.0.1.0.0"  # images 8-15
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    tree = mmlens.open(path)  # the listing check sees the right size: opening stays cheap
    tree["vision"]["prompt_mass"].isel(image=slice(0, 8)).load()  # other shards read fine
    with pytest.raises(StoreIntegrityError, match=r"vision/prompt_mass shard c\.0\.1\.0\.0 \(images 8-15\).*not those"):
        tree["vision"]["prompt_mass"].isel(image=slice(9, 10)).load()  # one image: its whole shard is checked
    problems = integrity.verify(path).problems
    assert [(p.chunk, p.kind) for p in problems] == [("c.0.1.0.0", "checksum")]


def test_deleted_metadata_file_is_named_and_restored_on_resume(model, clean, tmp_path):
    path = _copy(clean, tmp_path)
    (path / "vision" / "cls_attention" / "zarr.json").unlink()
    with pytest.raises(StoreIntegrityError, match=r"vision/cls_attention/zarr\.json \(metadata\): metadata file is "
                       r"missing(.|\n)*restores lost metadata"):
        mmlens.open(path)
    (path / "vision" / "zarr.json").unlink()  # a group's, too
    with pytest.raises(StoreIntegrityError, match=r"vision/zarr\.json \(metadata\)"):
        mmlens.open(path)
    (path / "zarr.json").unlink()  # the root document (attrs, record and consolidated copy): named
    with pytest.raises(StoreIntegrityError, match=r"root metadata file zarr\.json is missing(.|\n)*restores it from"):
        mmlens.open(path)
    assert [p.chunk for p in integrity.verify(path).problems] == ["zarr.json"]
    assert main(["store", "verify", str(path)]) == 1
    shutil.rmtree(path)
    path = _copy(clean, tmp_path)
    (path / "vision" / "cls_attention" / "zarr.json").unlink()
    (path / "vision" / "zarr.json").unlink()
    (path / "zarr.json").unlink()  # all three: the root from its copy, then the others from the root
    data = CountingItems()
    _trace(model, data, path)
    assert data.calls == []  # nothing to re-trace: the files came back from the consolidated copy
    _same_store(path, clean)


def test_the_open_check_reads_no_file(clean, tmp_path, monkeypatch):
    """The default check of mmlens.open lists directories and compares sizes; it opens no file."""
    import builtins

    path = _copy(clean, tmp_path)
    meta, _ = integrity.read_metadata(path)  # what xarray parses anyway (.zmetadata)
    record = integrity.load_record(integrity.root_attrs(meta))
    assert sum(len(c) for c in record.values()) > 50

    def refuse(*a, **k):
        raise AssertionError(f"the listing check opened a file: {a}")

    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(Path, "read_bytes", refuse)
    assert integrity.listing_problems(path, meta, record) == []
    (path / "vision" / "cls_attention" / CHUNK).unlink()
    assert [p.chunk for p in integrity.listing_problems(path, meta, record)] == [CHUNK]


# ------------------------------------------------------------------------------------------------
# full disk
# ------------------------------------------------------------------------------------------------


def _disk_fills_after(monkeypatch, budget: int):
    """A zarr LocalStore that raises ENOSPC once ``budget`` more bytes have been written (a full disk)."""
    import zarr.storage

    orig = zarr.storage.LocalStore.set
    written = {"n": 0}

    async def set_(self, key, value, *a, **k):
        written["n"] += len(value)
        if written["n"] > budget:
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(str(self.root)) / key))
        return await orig(self, key, value, *a, **k)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set_)


@pytest.mark.parametrize("budget", [0, 600, 3000, 20000])
def test_full_disk_says_where_and_how_far_and_the_store_resumes(tmp_path, monkeypatch, budget):
    tree = example_tree(n_images=9, n_layers=2, n_heads=2, grid=3, width=4)
    path = tmp_path / "full.zarr"
    w = StoreWriter(path, dict(tree.attrs), total=9)
    w.append(tree.isel(image=slice(0, 3)))
    with monkeypatch.context() as m:
        _disk_fills_after(m, budget)
        with pytest.raises(StoreFullError) as caught:
            with w:
                for lo in (3, 6):
                    w.append(tree.isel(image=slice(lo, lo + 3)))
    assert caught.value.errno == errno.ENOSPC
    assert str(caught.value).startswith(f"no space left on {path}, ")
    assert "of 9 images committed; free space and rerun" in str(caught.value)
    committed = int(str(caught.value).split(", ")[1].split(" of ")[0])
    assert committed in (3, 6)
    with StoreWriter(path, dict(tree.attrs), total=9) as w:  # space freed: rerun
        assert w.n_done == committed
        for lo in range(w.n_done, 9, 3):
            w.append(tree.isel(image=slice(lo, lo + 3)))
    out = mmlens.open(path).load()
    tree.attrs["created"] = out.attrs["created"]
    assert out.identical(tree)
    assert integrity.verify(path).ok


# ------------------------------------------------------------------------------------------------
# resume: skip by index, the same run only, the current schema only
# ------------------------------------------------------------------------------------------------


def test_resume_reads_only_the_items_left(model, tmp_path, clean):
    path = tmp_path / "resumed.zarr"
    first = CountingItems(stop_at=13)  # interrupted while reading the 4th batch: 3 batches (12 items) committed
    with pytest.raises(KeyboardInterrupt):
        _trace(model, first, path)
    assert store_status(path).message == f"incomplete: 12 of {N} images"
    again = CountingItems()
    _trace(model, again, path)
    assert len(again.calls) == N - 12 and sorted(again.calls) == list(range(12, N))  # 12, not 24, reads
    _same_store(path, clean)
    assert store_status(path) == (True, N, N, N, 0)


def _interrupt_after_first_batch(monkeypatch):
    calls = {"n": 0}
    real = StoreWriter.append

    def append(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(self, *a, **k)

    monkeypatch.setattr(StoreWriter, "append", append)


def _cli_args(root, out, *extra):
    return ["trace", "--model", "test-tiny", "--pretrained", "random",
            "--method", "maple", "--depth", "2", "--dataset", "EuroSAT",
            "--data-root", str(root), "--batch-size", "2", "--out", str(out), *extra]


def test_resume_refuses_another_split(tmp_path, tiny_clip, monkeypatch, capsys):
    from mmlens.data import make_fake_tree

    make_fake_tree(tmp_path / "data", ["EuroSAT"], image_size=40, per_class={"train": 1, "val": 1, "test": 1})
    out = tmp_path / "test.zarr"
    with monkeypatch.context() as m:
        _interrupt_after_first_batch(m)
        assert main(_cli_args(tmp_path / "data", out, "--split", "test")) == 130  # interrupted, resumable
    assert store_status(out).n_images == 2  # half done
    capsys.readouterr()
    assert main(_cli_args(tmp_path / "data", out, "--split", "val")) == 2  # refused: one message, no traceback
    text = capsys.readouterr().err
    with pytest.raises(StoreIdentityError):  # the same refusal, as the API raises it (--debug)
        main(["--debug", *_cli_args(tmp_path / "data", out, "--split", "val")])
    assert "split: store has 'test', this run has 'val'" in text and "--overwrite" in text
    assert "file_list_sha256: store has" in text  # other files, too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mmlens.store.io.IncompleteStoreWarning)
        kept = mmlens.open(out)
    assert kept.attrs["split"] == "test" and kept["vision"].sizes["image"] == 2  # nothing appended
    assert main(_cli_args(tmp_path / "data", out, "--split", "val", "--overwrite")) == 0
    assert mmlens.open(out).attrs["split"] == "val"


def write_format2(tree, path: Path, *, batch: int = 3, schema_version: int = 2) -> Path:
    """Write ``tree`` as the schema-2 streaming writer did (zarr format 2, one chunk per batch along image and
    failure, variable-length strings, ``_progress`` and the integrity record ``_chunks`` in ``.zattrs``,
    ``.zmetadata``): the layout of every store traced before schema 3. Schema 1 lacks the record and the
    selection keys."""
    import zarr

    from mmlens.store._encoding import vlen_strings

    root = zarr.open_group(path, mode="w", zarr_format=2)
    for name, node in tree.children.items():
        ds = vlen_strings(node.to_dataset(inherit=False))
        enc = {v: {"chunks": tuple(batch if d == "image" else 64 if d == "failure" else n
                                   for d, n in ds[v].sizes.items())}
               for v in ds.variables if {"image", "failure"} & set(ds[v].dims)}
        ds.to_zarr(path, group=name, mode="a", zarr_format=2, consolidated=False, encoding=enc)
    n = tree["vision"].sizes["image"]
    f = tree["vision"].sizes.get("failure", 0)
    runs = [[lo, min(batch, n - lo), lo, min(batch, n - lo)] for lo in range(0, n, batch)]
    progress = {"images": n, "failures": f, "items": n + f, "batches": len(runs), "complete": True,
                "arrays": integrity._list_arrays(path), "total": n + f, "runs": runs}
    attrs = {**tree.attrs, "mmlens_schema": schema_version, schema.PROGRESS_ATTR: json.dumps(progress)}
    if schema_version >= 2:
        attrs[schema.CHUNKS_ATTR] = json.dumps(integrity.update_record(path, {}))
    else:
        attrs = {k: v for k, v in attrs.items() if k not in schema.SELECTION_KEYS}
    root.attrs.put(attrs)
    zarr.consolidate_metadata(path, zarr_format=2)
    return path


def test_schema_1_store_reads_with_a_note_and_refuses_writing(tmp_path):
    tree = example_tree(n_images=6)
    path = write_format2(tree, tmp_path / "old.zarr", schema_version=1)
    with pytest.warns(OldStoreWarning, match="schema 1.*lacks the integrity record.*split, subset, limit"):
        old = mmlens.open(path)
    np.testing.assert_array_equal(old["vision"]["prompt_mass"].values, tree["vision"]["prompt_mass"].values)
    with pytest.raises(StoreIdentityError, match="store schema 1.*opens for reading.*--overwrite"):
        StoreWriter(path, dict(tree.attrs))
    assert integrity.verify(path).ok  # no record: every chunk decoded instead


def _with_schema(tree, version):
    out = tree.copy()
    out.attrs = {**tree.attrs, "mmlens_schema": version}
    return out


def test_format_2_store_of_schema_2_reads_verifies_and_names_damage(tmp_path):
    """Stores traced before schema 3 (zarr format 2, one chunk per batch) open, verify and name a lost chunk."""
    tree = example_tree(n_images=8, n_layers=2, n_heads=2, grid=3, width=4, n_failures=1)
    path = write_format2(tree, tmp_path / "v2.zarr")
    assert (path / ".zmetadata").is_file() and not (path / "zarr.json").exists()
    with pytest.warns(OldStoreWarning, match="schema 2.*lacks"):
        old = mmlens.open(path)
    assert old.load().identical(_with_schema(tree, 2))  # the same data
    assert integrity.verify(path).ok and main(["store", "verify", str(path)]) == 0
    assert store_status(path) == (True, 9, 9, 8, 1)
    with pytest.raises(StoreIdentityError, match="store schema 2.*opens for reading"):
        StoreWriter(path, dict(tree.attrs))
    (path / "vision" / "cls_attention" / "0.1.0.0.0.0").unlink()  # images 3-5
    with pytest.raises(StoreIntegrityError, match=r"vision/cls_attention chunk 0\.1\.0\.0\.0\.0 \(images 3-5\)"):
        mmlens.open(path)
    report = integrity.verify(path)
    assert [(p.array, p.chunk, p.kind, p.lo, p.hi) for p in report.problems] == [
        ("vision/cls_attention", "0.1.0.0.0.0", "missing", 3, 6)]
    assert main(["store", "verify", str(path)]) == 1


# ------------------------------------------------------------------------------------------------
# provenance of a CLI-made store, key by key
# ------------------------------------------------------------------------------------------------


def test_every_provenance_key_of_a_cli_store(tmp_path, tiny_clip):
    from mmlens.data import build, get_manifest
    from mmlens.data.toyworld.export import write_domain
    from mmlens.tracing._cli import file_list_sha256

    info = write_domain("texture", tmp_path / "data", seed=0, per_class={"train": 1, "val": 1, "test": 2})
    name = info["name"]
    out = tmp_path / "cli.zarr"
    args = ["trace", "--model", "test-tiny", "--pretrained", "random",
            "--method", "maple", "--depth", "2", "--n-ctx", "2",
            "--dataset", name, "--data-root", str(tmp_path / "data"), "--split", "test", "--subset", "base",
            "--limit", "5", "--seed", "3", "--batch-size", "2", "--out", str(out)]
    assert main(args) == 0
    attrs = mmlens.open(out).attrs
    manifest = get_manifest(name)
    items = build(manifest, tmp_path / "data", "test", subset="base").items[:5]
    expected = {
        "mmlens_schema": schema.SCHEMA_VERSION, "model_name": "test-tiny", "method": "maple", "dataset": manifest.name,
        "manifest_version": str(manifest.manifest_version), "split": "test", "subset": "base", "limit": 5,
        "order": "sequential", "file_list_sha256": file_list_sha256(items, tmp_path / "data"), "device": "cpu",
        "dtype": "float32", "torch_version": torch.__version__, "mmlens_version": mmlens.__version__,
    }
    assert {k: attrs[k] for k in expected} == expected
    assert json.loads(attrs["method_hparams"])["n_ctx"] == 2 and json.loads(attrs["method_hparams"])["depth"] == 2
    assert attrs["pretrained"] not in ("", "unknown") and len(attrs["weights_sha256"]) == 64
    assert len(attrs["prompt_sha256"]) == 64
    assert set(schema.PROVENANCE_KEYS) <= set(attrs)
    assert not [k for k in schema.PROVENANCE_KEYS if attrs[k] == "unknown"]
    # fixed on branch wt-ckpt: `mmlens trace --seed 3` stored seed = -1 (issue VII, fault 5)
    assert attrs["seed"] == 3
