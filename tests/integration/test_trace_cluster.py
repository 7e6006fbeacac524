"""Tracing on a dask.distributed cluster (issue V): the same store as one process, through worker and client deaths.

A LocalCluster of two worker processes (one thread each) traces the shipped toy CLIP on a fake EuroSAT tree
of 30 test images in the CoOp layout, one of them truncated, into regions of a few images; the store made by
``mmlens trace`` in one process is the reference. LocalCUDACluster is only built with dask-cuda mocked: it has
not run on a GPU.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("distributed")

import mmlens  # noqa: E402
from mmlens.cli import main  # noqa: E402
from mmlens.data import build, get_manifest, make_fake_tree  # noqa: E402
from mmlens.data.fake import corrupt_file  # noqa: E402
from mmlens.store import regions  # noqa: E402
from mmlens.store.integrity import store_status, verify  # noqa: E402
from mmlens.store.schema import CLUSTER_KEYS  # noqa: E402
from mmlens.tracing.distributed import ClusterError, ClusterVersionError, cluster_client  # noqa: E402
from mmlens.tracing.spec import TraceSpec  # noqa: E402

BATCH = 4
BROKEN = 9  # the truncated test image (in region 2 of regions of 4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    make_fake_tree(root / "data", ["EuroSAT"], image_size=40, per_class={"train": 1, "val": 1, "test": 3})
    items = build(get_manifest("EuroSAT"), root / "data", "test").items
    corrupt_file(Path(items[BROKEN].path))
    return root


def _trace_args(data: Path, out: Path) -> list[str]:
    return ["trace", "--dataset", "EuroSAT", "--data-root", str(data / "data"), "--batch-size", str(BATCH),
            "--with-reference", "--direct-effects", "--out", str(out)]


@pytest.fixture(scope="module")
def reference(data):
    """The store ``mmlens trace`` writes in one process."""
    out = data / "single.zarr"
    assert main(_trace_args(data, out)) == 0
    return mmlens.open(out)


@pytest.fixture(scope="module")
def spec(data):
    return TraceSpec(dataset="EuroSAT", data_root=str(data / "data"), batch_size=BATCH, with_reference=True,
                     direct_effects="margin")


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0",
                      scheduler_kwargs={"dashboard": False}) as cluster, Client(cluster) as c:
        yield c


def assert_same_store(got: xr.DataTree, ref: xr.DataTree) -> None:
    """Every variable identical (values, dims, dtype), coordinates and attrs too apart from the cluster fields."""
    assert set(got.children) == set(ref.children)
    for name in ref.children:
        a, b = got[name].to_dataset(inherit=False), ref[name].to_dataset(inherit=False)
        assert set(a.variables) == set(b.variables), (name, set(a.variables) ^ set(b.variables))
        for v in b.variables:
            assert a[v].dims == b[v].dims and a[v].dtype == b[v].dtype, (name, v)
            np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=f"{name}/{v}")
            assert a[v].attrs == b[v].attrs, (name, v)
        assert a.attrs == b.attrs, name
    volatile = {"created", *CLUSTER_KEYS}
    assert {k: v for k, v in got.attrs.items() if k not in volatile} == \
        {k: v for k, v in ref.attrs.items() if k not in volatile}
    assert got.attrs["cluster_workers"] >= 1 and "cluster_workers" not in ref.attrs


def assert_regions_are_whole_shards(path: Path, per_region: int) -> None:
    """Format 3, sharded along image: every image variable's shard divides the region, one file per shard."""
    from mmlens.store._encoding import node_documents, store_format

    assert store_format(path) == 3
    n_arrays = 0
    for name, doc in node_documents(path).items():
        if doc.get("node_type") != "array" or "image" not in (doc.get("dimension_names") or ()):
            continue
        axis = doc["dimension_names"].index("image")
        shard = doc["chunk_grid"]["configuration"]["chunk_shape"][axis]
        assert doc["codecs"][0]["name"] == "sharding_indexed", name
        assert per_region % shard == 0, (name, shard, per_region)
        n = doc["shape"][axis]
        files = {f.name for f in (path / name).iterdir() if f.name.startswith("c.")}
        indices = {int(f.split(".")[1 + axis]) for f in files}
        assert indices <= set(range(-(-n // shard))), (name, sorted(indices))  # no file beyond the array
        n_arrays += 1
    assert n_arrays > 10


def test_cluster_store_equals_the_one_process_store(tmp_path, spec, client, reference):
    out = mmlens.trace_to_store(spec, tmp_path / "cluster.zarr", client=client, images_per_shard=2 * BATCH)
    got = mmlens.open(out)
    assert got["vision"].sizes["image"] == 29 and got["vision"].sizes["failure"] == 1  # the broken one
    assert "direct" in got.children  # --direct-effects reaches the workers through the spec
    assert_same_store(got, reference)
    assert_regions_are_whole_shards(out, 2 * BATCH)
    assert got.attrs["cluster_workers"] == 2 and got.attrs["cluster_devices"] == "2 x cpu"
    assert store_status(out).message == "complete: 29 images, 1 skipped"
    report = verify(out)
    assert report.ok, report.text()
    # statistics on the same cluster: the client is dask's default scheduler, the store's reads run on the workers
    import dask

    from mmlens.stats import bootstrap_ci

    def alpha(tree):
        return tree["vision"]["prompt_mass"].sel(variant="full").mean("head")

    on_cluster = bootstrap_ci(alpha(got), dims=("image",), n_boot=64)
    with dask.config.set(scheduler="sync"):
        here = bootstrap_ci(alpha(got), dims=("image",), n_boot=64)
        single = bootstrap_ci(alpha(reference), dims=("image",), n_boot=64)
    xr.testing.assert_equal(on_cluster, here)
    # the same data in other chunks (regions of 8 vs batches of 4): sums in another order, equal to round-off
    xr.testing.assert_allclose(on_cluster, single, rtol=1e-6)
    # rerun: complete, nothing traced again
    mmlens.trace_to_store(spec, out, client=client)
    assert_same_store(mmlens.open(out), reference)


def _regions_done(path: Path) -> int:
    try:
        progress, _, _ = regions.read_progress(path)
    except Exception:  # noqa: BLE001 - not created yet, or attrs being replaced
        return 0
    return len(progress.get("regions", {}))


def test_a_worker_killed_mid_run_the_run_completes_identical(tmp_path, spec, client, reference):
    out = tmp_path / "killed_worker.zarr"
    result: dict = {}

    def run():
        try:
            result["path"] = mmlens.trace_to_store(spec, out, client=client, images_per_shard=BATCH, progress=False)
        except BaseException as err:  # noqa: BLE001 - re-raised in the test thread
            result["error"] = err

    pids = client.run(os.getpid)
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while _regions_done(out) < 1 and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    done = _regions_done(out)
    assert thread.is_alive() and 1 <= done < 8, f"the run ended (or stalled) before the kill: {done} regions"
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=240)
    assert not thread.is_alive()
    if "error" in result:
        raise result["error"]
    assert victim not in client.run(os.getpid).values()  # the worker did die (the nanny started another)
    assert_same_store(mmlens.open(result["path"]), reference)


@pytest.mark.slow
def test_the_client_killed_mid_run_then_rerun_resumes_identical(tmp_path, data, spec, client, reference, capsys):
    out = tmp_path / "killed_client.zarr"
    args = [*_trace_args(data, out), "--workers", "2", "--images-per-shard", str(BATCH)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HF_HUB_OFFLINE": "1"}
    # its own session, so that the client, its scheduler and its worker processes die together
    proc = subprocess.Popen([sys.executable, "-m", "mmlens.cli", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while _regions_done(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        done = _regions_done(out)
        assert proc.poll() is None and 2 <= done < 8, f"the client ended (or stalled) before the kill: {done}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    status = store_status(out)
    assert not status.complete and status.n_pending > 0 and "regions pending" in status.message
    # the unfinished store reads as its complete prefix (regions before the one with the broken image)
    with pytest.warns(mmlens.store.io.IncompleteStoreWarning, match="regions pending"):
        partial = mmlens.open(out)
    n = partial["vision"].sizes["image"]
    assert n <= BROKEN and n % BATCH == 0
    for name in ("vision", "logits"):
        a = partial[name].to_dataset(inherit=False)
        ref_prefix = reference[name].to_dataset(inherit=False).isel(image=slice(0, n))
        for v in (v for v in ref_prefix.data_vars if "image" in ref_prefix[v].dims):
            np.testing.assert_array_equal(a[v].values, ref_prefix[v].values, err_msg=f"{name}/{v}")
    done = _regions_done(out)  # a region may have been committed between the check and the kill
    capsys.readouterr()
    mmlens.trace_to_store(spec, out, client=client, images_per_shard=BATCH)
    said = capsys.readouterr().err
    assert f"8 regions of {BATCH} items on 2 workers, {done} complete before (skipped)" in said
    traced = [line for line in said.splitlines() if line.startswith("region ")]
    assert len(traced) == 8 - done  # only the pending regions were traced
    assert_same_store(mmlens.open(out), reference)


def test_the_cli_traces_on_workers_the_same_store(tmp_path, data, reference):
    out = tmp_path / "cli.zarr"
    assert main([*_trace_args(data, out), "--workers", "2"]) == 0
    assert_same_store(mmlens.open(out), reference)


def test_unreachable_scheduler_is_a_clear_error(data, tmp_path, capsys):
    address = "tcp://127.0.0.1:9"  # discard port: nothing listens there
    with pytest.raises(ClusterError, match=r"could not reach the dask scheduler at tcp://127\.0\.0\.1:9 within 2 s"):
        with cluster_client(scheduler=address, timeout=2):
            pass
    started = time.monotonic()
    assert main([*_trace_args(data, tmp_path / "x.zarr"), "--scheduler", address]) == 2
    err = capsys.readouterr().err
    assert f"could not reach the dask scheduler at {address}" in err and "dask scheduler" in err
    assert time.monotonic() - started < 60


class _FakeTorchVersion:
    """A worker plugin standing in for a worker installed with another torch."""

    name = "fake-torch-version"

    def setup(self, worker):
        import torch

        self.real = torch.__version__
        torch.__version__ = "1.0.0+other"

    def teardown(self, worker):
        import torch

        torch.__version__ = self.real


def test_mismatched_package_versions_on_the_workers_are_a_clear_error(tmp_path, spec, client):
    import torch
    from distributed.diagnostics.plugin import WorkerPlugin

    plugin = type("FakeTorch", (_FakeTorchVersion, WorkerPlugin), {})()
    client.register_plugin(plugin)
    try:
        with pytest.raises(ClusterVersionError) as info:
            mmlens.trace_to_store(spec, tmp_path / "v.zarr", client=client)
    finally:
        client.unregister_worker_plugin(plugin.name)
    text = str(info.value)
    for worker in client.scheduler_info()["workers"]:
        assert f"torch: client {torch.__version__}, worker {worker} 1.0.0+other" in text
    assert "mmlens:" not in text and not (tmp_path / "v.zarr").exists()
    assert client.run(lambda: __import__("torch").__version__) == {w: torch.__version__ for w in
                                                                   client.scheduler_info()["workers"]}


def test_local_cuda_cluster_is_built_with_dask_cuda_mocked(monkeypatch):
    """Emulated: dask-cuda is mocked here; LocalCUDACluster has not run on a GPU."""
    import distributed

    built = {}

    class FakeCUDACluster:
        def __init__(self, **kwargs):
            built.update(kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            built["closed"] = True

    class FakeClient:
        def __init__(self, cluster):
            self.cluster = cluster

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setitem(sys.modules, "dask_cuda", types.SimpleNamespace(LocalCUDACluster=FakeCUDACluster))
    monkeypatch.setattr(distributed, "Client", FakeClient)
    with cluster_client(workers=1, device="cuda") as c:
        assert isinstance(c.cluster, FakeCUDACluster)
    assert built["threads_per_worker"] == 1 and built["closed"]
    assert "n_workers" not in built  # one worker per visible GPU: dask-cuda counts them

    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # not installed
    with pytest.raises(ClusterError, match="dask-cuda, which is not installed: pip install dask-cuda"):
        with cluster_client(workers=2, device="cuda"):
            pass


@pytest.mark.slow
def test_reproduce_trace_step_on_the_cluster_equals_the_one_process_step(tmp_path, client):
    """``mmlens reproduce --workers``: the trace step's spec builds what the one-process step traces."""
    import argparse

    import torch

    from mmlens.experiments import reproduce
    from mmlens.experiments._pipeline import Config, _Runner
    from mmlens.models import PromptedCLIP, save_prompts

    parser = argparse.ArgumentParser()
    reproduce.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "a"), "--datasets", "ToySketch", "--seeds", "1",
                              "--max-images", "12", "--workers", "2"])
    cfg = Config.from_args(args)
    assert cfg.workers == 2 and "workers" not in cfg.settings()  # traces the same stores: not a setting
    stores = {}
    for name, on_cluster in (("a", False), ("b", True)):
        run_cfg = Config(**{**cfg.__dict__, "out": str(tmp_path / name), "workers": None})
        runner = _Runner(run_cfg)
        train = runner.source("ToySketch").train(seed=1, shots=1, size=runner.size)
        torch.manual_seed(1)
        model = PromptedCLIP(runner.clip, train.classnames, "maple", depth=runner.depth(), init_seed=1)
        save_prompts(model, runner.prompts_path("ToySketch", 1, "maple"))
        runner.client = client if on_cluster else None
        stores[name] = runner.trace("ToySketch", 1, "base")["store"]
    got, ref = mmlens.open(stores["b"]), mmlens.open(stores["a"])
    assert list(got["vision"]["variant"].values) == ["full", "zeroshot", "bias_only", "redistribution_only",
                                                     "constant_bias", "drop_prompts"]
    assert_same_store(got, ref)
