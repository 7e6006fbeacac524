"""One writer per store (issue VII): an OS lock, not a pid file. Pairs of real processes race for one store,
with and without a stale lock file; exactly one writes, the other is refused by name, every image is stored once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import mmlens
from mmlens.store import lock as lock_module
from mmlens.store.io import StoreWriter
from mmlens.store.lock import StoreLockedError, WriterLock
from mmlens.store.synthetic import example_tree

_CHILD = """
import os, sys, time
from mmlens.store.io import StoreWriter, StoreLockedError
from mmlens.store.synthetic import example_tree

path, start_at = sys.argv[1], float(sys.argv[2])
tree = example_tree(n_images=8, n_layers=2, n_heads=2, grid=3, n_classes=4, width=4)
while time.time() < start_at:  # both processes of a pair try at the same moment
    time.sleep(0.001)
try:
    writer = StoreWriter(path, dict(tree.attrs))
except StoreLockedError as err:
    print("REFUSED", err, flush=True)
    sys.exit(3)
with writer:
    time.sleep(1.0)  # a trace takes time: the other process arrives while this one holds the lock
    for lo in range(writer.n_done, 8, 4):
        writer.append(tree.isel(image=slice(lo, lo + 4)))
print("WROTE", os.getpid(), flush=True)
"""


def _tree():
    return example_tree(n_images=8, n_layers=2, n_heads=2, grid=3, n_classes=4, width=4)


def _race(tmp_path, k: int, stale: str | None) -> None:
    script = tmp_path / "child.py"
    path = tmp_path / f"pair{k}.zarr"
    lock = tmp_path / f"pair{k}.zarr.lock"
    if stale == "dead pid":
        lock.write_text("pid=999999999 host=gone\n")  # what a killed writer leaves
    elif stale == "empty":
        lock.write_bytes(b"")  # what a full disk leaves
    start_at = time.time() + 4.0
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, str(script), str(path), str(start_at)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    wrote = [o for o in outs if o[0] == 0]
    refused = [o for o in outs if o[0] == 3]
    assert len(wrote) == 1 and len(refused) == 1, f"pair {k} ({stale}): {outs}"
    winner = wrote[0][1].split()[1]
    message = refused[0][1]
    assert f"is being written by process {winner} on host " in message, message
    assert "no stale lock to delete" in message
    tree = mmlens.open(path).load()
    np.testing.assert_array_equal(tree["vision"]["path"].values, _tree()["vision"]["path"].values)  # once each
    assert not lock.exists()


def _pairs(tmp_path, n: int) -> None:
    (tmp_path / "child.py").write_text(textwrap.dedent(_CHILD))
    cases = [(k, (None, "dead pid", "empty")[k % 3]) for k in range(n)]
    with ThreadPoolExecutor(max_workers=2) as pool:  # two pairs at a time: 4 processes on a shared machine
        list(pool.map(lambda case: _race(tmp_path, *case), cases))


def test_two_processes_one_writer(tmp_path):
    _pairs(tmp_path, 3)


@pytest.mark.slow
def test_twenty_pairs_one_writer_each(tmp_path):
    _pairs(tmp_path, 20)


def test_an_empty_or_stale_lock_file_does_not_block(tmp_path):
    tree = _tree()
    for content in (b"", b"12345", b"pid=-1 host=x\n"):  # full disk, mmlens < schema 2, nonsense
        path = tmp_path / f"s{len(content)}.zarr"
        (tmp_path / f"s{len(content)}.zarr.lock").write_bytes(content)
        with StoreWriter(path, dict(tree.attrs)) as w:
            w.append(tree)
        assert mmlens.open(path)["vision"].sizes["image"] == 8


def test_refusal_names_the_holder_and_release_frees(tmp_path):
    import socket

    path = tmp_path / "run.zarr"
    with WriterLock(path) as held:
        assert held.held and f"pid={os.getpid()}" in held.path.read_text()
        with pytest.raises(StoreLockedError, match=f"process {os.getpid()} on host {socket.gethostname()}"):
            WriterLock(path).acquire()
    WriterLock(path).acquire().release()  # free again, file removed
    assert not held.path.exists()


def test_a_lock_file_unlinked_under_a_waiting_process_is_not_shared(tmp_path, monkeypatch):
    """B opens the lock file, A releases (unlinks it), C locks a new file, then B locks the old one: B must see
    that its file is gone from the path and be refused by C, not hold a second lock."""
    path = tmp_path / "run.zarr"
    a = WriterLock(path).acquire()
    c = WriterLock(path)
    real = lock_module._lock
    steps = []

    def racing_lock(fd):
        if not steps:
            steps.append("A releases, C takes")
            a.release()
            c.acquire()
        return real(fd)

    monkeypatch.setattr(lock_module, "_lock", racing_lock)
    with pytest.raises(StoreLockedError, match=f"process {os.getpid()}"):
        WriterLock(path).acquire()
    assert steps and c.held
    c.release()
