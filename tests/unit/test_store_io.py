"""Store IO: round trips, the streaming writer, crash safety (kill -9) and resume identity checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import mmlens
from mmlens.store import io, schema
from mmlens.store.io import IncompleteStoreWarning, StoreIdentityError, StoreWriter
from mmlens.store.synthetic import example_study, example_tree

N, B = 8, 3  # images, batch size: batches [0:3] [3:6] [6:8]


def _tree(**kw):
    return example_tree(n_images=N, n_layers=2, n_heads=2, grid=3, n_classes=4, width=4, **kw)


def _write(path, tree, start=0, batch=B, **kw):
    with StoreWriter(path, dict(tree.attrs), **kw) as writer:
        for lo in range(max(start, writer.n_done), tree["vision"].sizes["image"], batch):
            writer.append(tree.isel(image=slice(lo, lo + batch)))
    return writer


# ------------------------------------------------------------------------------------------------
# round trips and opening
# ------------------------------------------------------------------------------------------------


def test_zarr_round_trip_is_identical_and_lazy(tmp_path):
    tree = _tree(n_failures=2)
    path = io.to_zarr(tree, tmp_path / "run.zarr")
    opened = mmlens.open(path)
    assert opened["vision"]["cls_attention"].chunks is not None  # dask, nothing read yet
    assert opened.load().identical(tree)
    # zarr format 3, sharded along image, with variable-length strings
    meta = json.loads((path / "vision" / "classname" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["data_type"] == "string"
    assert meta["codecs"][0]["name"] == "sharding_indexed"


def test_netcdf_round_trip_is_identical(tmp_path):
    tree = _tree()
    path = io.to_netcdf(tree, tmp_path / "run.nc")
    assert mmlens.open(path).load().identical(tree)
    # exporting an opened (lazy) store works too
    path2 = io.to_netcdf(mmlens.open(io.to_zarr(tree, tmp_path / "r.zarr")), tmp_path / "run2.nc")
    assert mmlens.open(path2).load().identical(tree)


def test_study_round_trip(tmp_path):
    study = example_study(n_datasets=2, n_images=5, n_seeds=2, n_layers=2, grid=3, width=4)
    opened = mmlens.open(io.to_zarr(study, tmp_path / "study.zarr"))
    assert opened["vision"]["label"].dims == ("dataset", "image")
    assert opened.load().identical(study)


def test_open_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trace store"):
        mmlens.open(tmp_path / "missing.zarr")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="expected a zarr directory or a netCDF"):
        mmlens.open(tmp_path / "notes.txt")
    bad = _tree()
    bad["vision"] = xr.DataTree(bad["vision"].to_dataset().drop_vars("label"))
    path = io.to_zarr(bad, tmp_path / "bad.zarr")
    with pytest.raises(schema.SchemaError, match="pass validate=False"):
        mmlens.open(path)
    assert "label" not in mmlens.open(path, validate=False)["vision"].coords


# ------------------------------------------------------------------------------------------------
# the streaming writer
# ------------------------------------------------------------------------------------------------


def test_streamed_store_equals_the_tree(tmp_path):
    tree = _tree()
    writer = _write(tmp_path / "s.zarr", tree)
    assert (writer.n_done, writer.n_images, writer.complete) == (N, N, True)
    opened = mmlens.open(tmp_path / "s.zarr")
    # sized by bytes: a store this small is one shard (the cap), of one inner chunk, whatever the batches
    assert opened["vision"]["prompt_mass"].chunks[1] == (8,)
    assert opened.load().identical(tree)
    assert not (tmp_path / "s.zarr.lock").exists()
    # explicit sizes (tests, benchmarks): shards of 4 images in inner chunks of 2, appended in batches of 3
    _write(tmp_path / "x.zarr", tree, shard_images=4, chunk_images=2)
    opened = mmlens.open(tmp_path / "x.zarr")
    assert opened["vision"]["prompt_mass"].chunks[1] == (2, 2, 2, 2)
    assert sorted(f.name for f in (tmp_path / "x.zarr" / "vision" / "prompt_mass").iterdir()) == [
        "c.0.0.0.0", "c.0.1.0.0", "zarr.json"]  # one file per shard
    assert opened.load().identical(tree)


def test_image_index_is_renumbered(tmp_path):
    tree = _tree()
    with StoreWriter(tmp_path / "s.zarr", dict(tree.attrs)) as w:
        for lo in (0, 4):  # batches numbered from 0 each, as a naive caller might
            part = tree.isel(image=slice(lo, lo + 4))
            w.append({g: part[g].to_dataset().assign_coords(image=np.arange(4)) for g in ("vision", "logits")})
    assert list(mmlens.open(tmp_path / "s.zarr")["vision"]["image"].values) == list(range(8))


def test_failures_are_appended_and_counted(tmp_path):
    tree = _tree(n_failures=3)
    path = tmp_path / "f.zarr"
    with StoreWriter(path, dict(tree.attrs)) as w:
        w.append(tree.isel(image=slice(0, 0), failure=slice(0, 1)))  # a batch where every image failed
        assert w.n_done == 1 and not path.exists()  # nothing to create yet
        w.append(tree.isel(image=slice(0, 4), failure=slice(1, 1)))
        w.append(tree.isel(image=slice(4, 8), failure=slice(1, 3)))
        assert (w.n_done, w.n_images, w.n_failures) == (N + 3, N, 3)
    assert mmlens.open(path).load().identical(tree)


def test_text_group_only_in_first_batch(tmp_path):
    tree = _tree()
    with StoreWriter(tmp_path / "t.zarr", dict(tree.attrs)) as w:
        w.append(tree.isel(image=slice(0, 4)))
        later = tree.isel(image=slice(4, 8))
        w.append({"vision": later["vision"].to_dataset(), "logits": later["logits"].to_dataset()})
    assert mmlens.open(tmp_path / "t.zarr").load().identical(tree)


def test_batches_must_match_the_store(tmp_path):
    tree = _tree()
    with StoreWriter(tmp_path / "m.zarr", dict(tree.attrs)) as w:
        w.append(tree.isel(image=slice(0, 4)))
        other = tree.isel(image=slice(4, 8))
        other["vision"] = xr.DataTree(other["vision"].to_dataset().drop_vars("bias"))
        with pytest.raises(ValueError, match=r"missing \['bias'\]"):
            w.append(other)
    with StoreWriter(tmp_path / "v.zarr", dict(tree.attrs)) as w:
        bad = tree.isel(image=slice(0, 4))
        bad["vision"] = xr.DataTree(bad["vision"].to_dataset().rename_dims(head="heads"))
        with pytest.raises(schema.SchemaError, match="batch group 'vision'"):
            w.append(bad)


def test_resume_refuses_another_experiment(tmp_path):
    tree = _tree()
    path = tmp_path / "r.zarr"
    with StoreWriter(path, dict(tree.attrs)) as w:
        w.append(tree.isel(image=slice(0, 3)))
    for key in ("weights_sha256", "prompt_sha256", "method", "dataset"):
        with pytest.raises(StoreIdentityError, match=f"{key}: store has .*this run has 'other'.*overwrite=True"):
            StoreWriter(path, {**tree.attrs, key: "other"})
    # versions and dates are not identity: resuming with them changed is fine, and keeps the stored ones
    w = StoreWriter(path, {**tree.attrs, "mmlens_version": "9.9", "created": "tomorrow"})
    assert w.resumed and w.n_done == 3
    w.close()
    assert mmlens.open(path).attrs["created"] == tree.attrs["created"]
    # overwrite starts afresh
    w = StoreWriter(path, {**tree.attrs, "dataset": "other"}, overwrite=True)
    assert not w.resumed and w.n_done == 0
    w.close()


def test_refuses_foreign_paths_and_live_writers(tmp_path):
    tree = _tree()
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a zarr store"):
        StoreWriter(tmp_path / "dir", dict(tree.attrs))
    with pytest.raises(FileExistsError, match="not a zarr store"):
        StoreWriter(tmp_path / "dir", dict(tree.attrs), overwrite=True)
    assert (tmp_path / "dir" / "notes.txt").exists()
    io.to_zarr(tree, tmp_path / "whole.zarr")
    with pytest.raises(FileExistsError, match="not written by the streaming writer"):
        StoreWriter(tmp_path / "whole.zarr", dict(tree.attrs))
    from mmlens.store.lock import WriterLock

    with WriterLock(tmp_path / "busy.zarr"):  # a live writer holds the OS lock (tests/unit/test_store_lock.py)
        with pytest.raises(RuntimeError, match="being written by process"):
            StoreWriter(tmp_path / "busy.zarr", dict(tree.attrs))
    (tmp_path / "empty.zarr").mkdir()  # an empty directory is fine
    _write(tmp_path / "empty.zarr", tree)
    assert mmlens.open(tmp_path / "empty.zarr").load().identical(tree)


def test_reader_sees_only_committed_images(tmp_path):
    tree = _tree()
    path = tmp_path / "live.zarr"
    w = StoreWriter(path, dict(tree.attrs))
    w.append(tree.isel(image=slice(0, 3)))
    w.append(tree.isel(image=slice(3, 6)))
    with pytest.warns(IncompleteStoreWarning, match="6 images committed"):
        live = mmlens.open(path)
    assert live["vision"].sizes["image"] == 6
    assert schema.PROGRESS_ATTR not in live.attrs
    w.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mmlens.open(path)


# ------------------------------------------------------------------------------------------------
# crash safety: simulated crashes at every kind of point, and real kill -9
# ------------------------------------------------------------------------------------------------


class _Crash(Exception):
    pass


def _count_store_writes(monkeypatch, crash_at=None):
    """Patch zarr's LocalStore writes/deletes (and the first-commit rename) to count, optionally crash."""
    import zarr.storage

    calls = {"n": 0}
    orig_set, orig_delete, orig_replace = zarr.storage.LocalStore.set, zarr.storage.LocalStore.delete, os.replace

    def step():
        calls["n"] += 1
        if crash_at is not None and calls["n"] == crash_at:
            raise _Crash(f"simulated crash before store write {crash_at}")

    async def set_(self, key, value, *a, **k):
        step()
        return await orig_set(self, key, value, *a, **k)

    async def delete(self, key):
        step()
        return await orig_delete(self, key)

    def replace(src, dst, *a, **k):
        if str(src).endswith(".partial"):
            step()
        return orig_replace(src, dst, *a, **k)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set_)
    monkeypatch.setattr(zarr.storage.LocalStore, "delete", delete)
    monkeypatch.setattr(io.os, "replace", replace)
    return calls


def _slim_tree():
    """A tree with few arrays (crash tests write it many times); strings, failures and all groups kept."""
    tree = _tree(n_failures=2)
    vision = tree["vision"].to_dataset()[["prompt_mass", "foreground", "output_bias_norm", "failures"]]
    return xr.DataTree.from_dict(
        {
            "/": xr.Dataset(attrs=dict(tree.attrs)),
            "vision": vision,
            "text": tree["text"].to_dataset()[["prompt_mass"]],
            "logits": tree["logits"].to_dataset(),
        }
    )


def _crash_points(n_writes: int, n_points: int) -> list[int]:
    return sorted({1, n_writes - 1, n_writes, *np.linspace(2, n_writes - 2, n_points).astype(int).tolist()})


def _crash_and_resume(tmp_path, monkeypatch, n_points):
    """Crash before a spread of store writes; resuming must give exactly the uninterrupted store."""
    tree = _slim_tree()

    def batches():
        yield tree.isel(image=slice(0, 3), failure=slice(0, 0))
        yield tree.isel(image=slice(3, 6), failure=slice(0, 1))
        yield tree.isel(image=slice(6, 8), failure=slice(1, 2))

    def run(path):
        with StoreWriter(path, dict(tree.attrs)) as w:
            done = w.n_done
            for batch in batches():
                size = batch["vision"].sizes["image"] + batch["vision"].sizes.get("failure", 0)
                if done >= size:  # a resuming caller skips what the store already holds
                    done -= size
                    continue
                assert done == 0, "resume point must fall on a batch boundary here"
                w.append(batch)

    with monkeypatch.context() as m:
        total = _count_store_writes(m)
        run(tmp_path / "count.zarr")
    assert mmlens.open(tmp_path / "count.zarr").load().identical(tree)
    n_writes = total["n"]
    assert n_writes > 30
    for k in _crash_points(n_writes, n_points):
        path = tmp_path / f"crash{k}.zarr"
        with monkeypatch.context() as m:
            _count_store_writes(m, crash_at=k)
            with pytest.raises(_Crash):
                run(path)
        run(path)  # resume, without crashes
        assert mmlens.open(path).load().identical(tree), f"store differs after a crash before write {k}"


def test_resume_after_a_crash_at_spread_writes(tmp_path, monkeypatch):
    _crash_and_resume(tmp_path, monkeypatch, n_points=3)


@pytest.mark.slow
def test_resume_after_a_crash_at_many_writes(tmp_path, monkeypatch):
    _crash_and_resume(tmp_path, monkeypatch, n_points=40)


_CHILD = """
import os, signal, sys
from mmlens.store.io import StoreWriter
from mmlens.store.synthetic import example_tree

path, mode, when = sys.argv[1], sys.argv[2], int(sys.argv[3])
tree = example_tree(n_images=8, n_layers=2, n_heads=2, grid=3, n_classes=4, width=4)


def kill_at_write(k):  # SIGKILL ourselves just before the k-th store write from now on
    import zarr.storage

    orig = zarr.storage.LocalStore.set
    calls = [0]

    async def set_(self, key, value, *a, **kw):
        calls[0] += 1
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return await orig(self, key, value, *a, **kw)

    zarr.storage.LocalStore.set = set_


w = StoreWriter(path, dict(tree.attrs))
if mode == "first":
    kill_at_write(when)
for i, lo in enumerate(range(w.n_done, 8, 3)):
    if mode == "batch" and i == when:
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "write" and i == 1:
        kill_at_write(when)
    w.append(tree.isel(image=slice(lo, lo + 3)))
w.close()
"""


@pytest.mark.parametrize(
    ("mode", "when"),
    [
        ("write", 20),  # inside the second batch's writes
        pytest.param("batch", 2, marks=pytest.mark.slow),  # between two appends
        pytest.param("first", 20, marks=pytest.mark.slow),  # inside the first batch: no store yet
    ],
)
def test_resume_after_kill_9(tmp_path, mode, when):
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(_CHILD))
    path = tmp_path / "killed.zarr"
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning:mmlens"}
    proc = subprocess.run([sys.executable, str(script), str(path), mode, str(when)], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert Path(str(path) + ".lock").exists()  # the dead writer could not clean up
    tree = _tree()
    if mode == "first":  # killed inside the first batch: nothing was committed, no store exists
        assert not path.exists()
        with pytest.raises(FileNotFoundError):
            mmlens.open(path)
        tree.attrs["created"] = "now"
    else:
        with pytest.warns(IncompleteStoreWarning):
            partial = mmlens.open(path)
        assert 0 < partial["vision"].sizes["image"] < N
        tree.attrs["created"] = partial.attrs["created"]  # the child made its tree a moment earlier
    # resume in this process: the stale lock is taken over, the store completed
    writer = _write(path, tree)
    assert writer.resumed == (mode != "first")
    assert mmlens.open(path).load().identical(tree)  # the same as an uninterrupted run (test above)


def test_store_and_stats_do_not_import_torch(tmp_path):
    path = io.to_zarr(_tree(), tmp_path / "t.zarr")
    code = (
        "import sys, mmlens, mmlens.store, mmlens.stats; "
        f"tree = mmlens.open({str(path)!r}); "
        "alpha = tree.mml.prompt_mass().compute(); "
        "mmlens.stats.summarize(alpha.sel(measure='readout'), n_boot=10); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
