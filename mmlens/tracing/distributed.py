"""Tracing on a dask.distributed cluster into one zarr store: ``mmlens.trace_to_store(spec, out, client=...)``.

The client holds the store's writer lock for the whole run and writes nothing but metadata and
bookkeeping; every worker builds the model once (:class:`TracePlugin`, from the :class:`TraceSpec`),
traces whole regions of input items and writes them straight into the store
(:mod:`mmlens.store.regions`). Design, failure handling and recipes: docs/scaling.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mmlens.tracing.spec import ClusterError, TraceSpec

__all__ = [
    "TraceSpec",
    "TracePlugin",
    "ClusterError",
    "ClusterVersionError",
    "trace_spec_to_store",
    "cluster_client",
    "package_versions",
    "CLUSTER_PACKAGES",
]

#: Packages whose versions must agree between the client and every worker (what decides the numbers
#: and the store format).
CLUSTER_PACKAGES: tuple[str, ...] = ("mmlens", "torch", "open_clip", "xarray", "zarr", "dask", "distributed")
#: Seconds to wait for a scheduler given by address before saying it cannot be reached.
CONNECT_TIMEOUT = 10
#: Attempts per region after an error in its task (a worker that dies is handled by the scheduler:
#: its tasks go to the other workers, up to ``distributed.scheduler.allowed-failures`` times).
RETRIES = 2


class ClusterVersionError(ClusterError):
    """A worker has other versions of the packages that decide the numbers than the client."""


def package_versions() -> dict[str, str]:
    """Versions of :data:`CLUSTER_PACKAGES` in this process (read now, from each package's ``__version__``).

    Examples
    --------
    >>> sorted(package_versions())[:3]
    ['dask', 'distributed', 'mmlens']
    """
    import importlib

    out = {}
    for name in CLUSTER_PACKAGES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            out[name] = "not installed"
            continue
        out[name] = str(getattr(module, "__version__", "unknown"))
    return out


def check_versions(client: Any) -> None:
    """Raise :class:`ClusterVersionError` naming each package, both versions and the worker, on any mismatch."""
    here = package_versions()
    there = client.run(package_versions)
    if not there:
        raise ClusterError(f"the dask cluster at {client.scheduler.address} has no workers: start some "
                           "(`dask worker ADDRESS`, `dask cuda worker ADDRESS`) or pass --workers N")
    lines = [f"{name}: client {here[name]}, worker {worker} {versions.get(name, 'not installed')}"
             for worker, versions in sorted(there.items()) for name in CLUSTER_PACKAGES
             if versions.get(name) != here[name]]
    if lines:
        raise ClusterVersionError(
            "the dask workers run other package versions than this client, so their numbers could differ:\n  - "
            + "\n  - ".join(lines)
            + "\nInstall the same versions on every node (one environment on a shared filesystem, or the same "
            "container image), then rerun; the store resumes.")


# ----------------------------------------------------------------------------------------------
# the worker side
# ----------------------------------------------------------------------------------------------

try:
    from distributed import WorkerPlugin as _WorkerPlugin
except ImportError:  # pragma: no cover - the `cluster` extra is not installed
    _WorkerPlugin = object  # type: ignore[assignment,misc]


class TracePlugin(_WorkerPlugin):
    """Builds the spec's model and dataset once per worker (on setup, and again on a restarted worker).

    The plugin travels to the workers as its :class:`TraceSpec` (a few hundred bytes), never as a
    model. Tasks find the built model with :func:`_built`.

    Parameters
    ----------
    spec
        The trace run.
    """

    def __init__(self, spec: TraceSpec) -> None:
        from dask.base import tokenize

        self.spec = spec
        self.name = f"mmlens-trace-{tokenize(spec)}"
        self.built: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.spec, self.name, self.built = state["spec"], state["name"], None

    def setup(self, worker: Any) -> None:
        import torch

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # one intra-op thread per dask thread: N workers of 1 thread do not fight over the cores
        torch.set_num_threads(max(1, int(getattr(worker.state, "nthreads", 1) or 1)))
        self.built = self.spec.build(quiet=True)

    def teardown(self, worker: Any) -> None:
        self.built = None


def _built(plugin: str) -> Any:
    from distributed import get_worker

    worker = get_worker()
    found = worker.plugins.get(plugin)
    if found is None or found.built is None:
        raise ClusterError(f"worker {worker.address} has no model for this trace (plugin {plugin} missing): the "
                           "worker joined after the run started; rerun to resume")
    return found.built


class _Positions:
    """Items ``lo:hi`` of a dataset, each sample carrying its position in the run as ``index``."""

    def __init__(self, dataset: Any, lo: int, hi: int) -> None:
        self.dataset, self.lo, self.hi = dataset, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, j: int) -> Any:
        sample = self.dataset[self.lo + j]
        if isinstance(sample, dict):
            return {**sample, "index": self.lo + j}
        return sample


def _trace_items(built: Any, lo: int, hi: int) -> tuple[dict[str, Any], list[int], list[tuple[str, str]]]:
    """Trace items ``lo:hi``: ``(groups, slots of the readable images, (path, error) of the others)``."""
    import numpy as np
    import torch
    import xarray as xr

    from mmlens.tracing.tracer import iter_trace_batches

    slots: list[int] = []

    def batches() -> Iterator[dict]:
        for batch in built.loader(_Positions(built.dataset, lo, hi)):
            slots.extend(int(i) for i in batch["index"])
            yield batch

    options = dict(built.options)
    parts: dict[str, list[xr.Dataset]] = {}
    failures: list = []
    text = None
    with built.precision.autocast(), torch.no_grad():
        for groups, _n in iter_trace_batches(built.model, batches(), progress=False, start=lo, **options):
            text = groups.pop("text", text)
            vision = groups["vision"]
            if "failures" in vision:
                failures += list(zip(vision["failure_path"].values.tolist(), vision["failures"].values.tolist()))
                groups["vision"] = vision.drop_vars(["failures", "failure_path"])
            for name, ds in groups.items():
                if "image" in ds.dims:
                    parts.setdefault(name, []).append(ds)
    out = {name: xr.concat(p, dim="image", data_vars="minimal", coords="minimal", compat="override")
           for name, p in parts.items()}
    if text is not None:
        out["text"] = text
    for name, ds in out.items():
        if "image" in ds.dims:
            out[name] = ds.assign_coords(image=np.asarray(slots, dtype=np.int64))
    return out, slots, failures


def _prepare(plugin: str, path: str, create: bool, per_shard: int | None, extra: Mapping[str, Any]) -> dict:
    """On one worker: the run's provenance and size; with ``create`` the store's metadata and coordinates.

    The layout comes from a trace of the first readable items (one batch): names, dims and dtypes of
    every variable, and the text group, which depends on no image.
    """
    from mmlens.store import regions
    from mmlens.tracing.tracer import _provenance

    built = _built(plugin)
    n_items = len(built.dataset)
    groups: dict[str, Any] = {}
    lo = 0
    while "vision" not in groups or "image" not in groups["vision"].dims:
        if lo >= n_items:
            raise ValueError(f"no readable item among the {n_items} of {built.spec.dataset} "
                             f"({built.spec.split}, {built.spec.subset}): every image failed to decode")
        hi = min(lo + built.spec.batch_size, n_items)
        groups, _, _ = _trace_items(built, lo, hi)
        lo = hi
    import torch

    provenance = _provenance(built.model, {**built.provenance, **dict(extra)}, torch.device(built.spec.device))
    size = regions.shard_size({k: v for k, v in groups.items() if "image" in v.dims}, built.spec.batch_size,
                              override=per_shard)
    if create:
        regions.create(path, groups, n_items=n_items, per_shard=size, provenance=provenance)
    return {"provenance": provenance, "n_items": n_items, "images_per_shard": size}


def _trace_region(plugin: str, path: str, lo: int, hi: int, image_arrays: list[str]) -> dict:
    """On a worker: trace and write one region; return its counts, unreadable items and integrity entries."""
    from distributed import get_worker

    from mmlens.store import regions

    built = _built(plugin)
    groups, slots, failures = _trace_items(built, lo, hi)
    groups.pop("text", None)
    failed = sorted(set(range(lo, hi)) - set(slots))
    if len(failed) != len(failures):
        raise RuntimeError(f"items {lo}-{hi - 1}: {len(failed)} slots without an image but {len(failures)} "
                           "failures reported; the dataset must report every unreadable item")
    entries = regions.write_region(path, groups, lo, hi, slots, image_arrays) if slots else {}
    return {"images": len(slots), "failures": [[i, p, e] for i, (p, e) in zip(failed, failures)],
            "entries": entries, "worker": get_worker().address}


# ----------------------------------------------------------------------------------------------
# the client
# ----------------------------------------------------------------------------------------------


def _worker_device(device: str) -> str:
    """What one worker traces on: ``cpu``, or the GPU's name for ``cuda``."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return str(torch.device(device))


def _cluster_fields(client: Any, spec: TraceSpec) -> dict[str, Any]:
    """The provenance's cluster fields (not identity keys): how many workers, on which devices."""
    from collections import Counter

    devices = Counter(client.run(_worker_device, spec.device).values())
    return {"cluster_workers": sum(devices.values()),
            "cluster_devices": ", ".join(f"{n} x {d}" for d, n in sorted(devices.items()))}


def trace_spec_to_store(
    spec: TraceSpec,
    path: str | os.PathLike,
    *,
    client: Any,
    overwrite: bool = False,
    images_per_shard: int | None = None,
    progress: bool = True,
    retries: int = RETRIES,
) -> Path:
    """Trace ``spec`` on the cluster of ``client`` into the store at ``path``; resumable; returns ``path``.

    Reached as ``mmlens.trace_to_store(spec, path, client=client)``. The store equals the one
    ``mmlens trace`` writes in one process (every variable, coordinate and attribute, apart from
    ``created`` and the cluster fields ``cluster_workers``, ``cluster_devices``). Rerunning resumes:
    complete regions are skipped. ``images_per_shard`` overrides the byte-sized shard policy (rounded
    down to a multiple of the batch size).

    Examples
    --------
    >>> from distributed import Client, LocalCluster                                    # doctest: +SKIP
    >>> spec = TraceSpec(dataset="EuroSAT", data_root="/data", with_reference=True)     # doctest: +SKIP
    >>> with LocalCluster(n_workers=2, threads_per_worker=1) as c, Client(c) as client:  # doctest: +SKIP
    ...     mmlens.trace_to_store(spec, "eurosat.zarr", client=client)
    """
    from distributed import as_completed

    from mmlens.store import regions, schema
    from mmlens.store.lock import WriterLock
    from mmlens.store.writer import StoreIdentityError, check_identity

    if not isinstance(spec, TraceSpec):
        raise TypeError(f"trace_to_store(..., client=) traces a TraceSpec on the cluster (workers cannot receive "
                        f"a live model); found {type(spec).__name__}. Describe the run as a "
                        "mmlens.tracing.spec.TraceSpec.")
    path = Path(path)
    started = time.perf_counter()
    check_versions(client)
    plugin = TracePlugin(spec)
    with WriterLock(path):
        regions.recover(path)
        if overwrite and path.exists():
            _remove_store(path)
        stored = regions.read_progress(path) if path.exists() else None
        if stored is not None and stored[0].get("layout") != regions.LAYOUT and not stored[0].get("complete"):
            raise StoreIdentityError(
                f"cannot resume {path} on a cluster: it was started by a single-process trace (`mmlens trace` "
                "without --workers / --scheduler). Resume it that way, or pass --overwrite (overwrite=True).")
        cluster = _cluster_fields(client, spec)
        client.register_plugin(plugin)
        try:
            info = client.submit(_prepare, plugin.name, str(path), stored is None, images_per_shard, cluster,
                                 pure=False, retries=retries).result()
            if stored is not None:
                check_identity(path, stored[2], info["provenance"], schema.IDENTITY_KEYS)
                if stored[0].get("complete"):
                    _say(progress, f"{path} is complete already")
                    return path
            store_progress, record, provenance = regions.read_progress(path)
            store_progress["run"] = int(store_progress.get("run", -1)) + 1
            per, total = store_progress["images_per_shard"], store_progress["total"]
            ranges = regions.shard_ranges(total, per)
            todo = [k for k in range(len(ranges)) if str(k) not in store_progress["regions"]]
            _say(progress, f"{path}: {len(ranges)} regions of {per} items on {cluster['cluster_workers']} workers"
                 + (f", {len(ranges) - len(todo)} complete before (skipped)" if len(todo) < len(ranges) else ""))
            arrays = store_progress["image_arrays"]
            futures = {client.submit(_trace_region, plugin.name, str(path), ranges[k][0], ranges[k][1], arrays,
                                     key=f"mmlens-region-{plugin.name[-12:]}-{store_progress['run']}-{k}",
                                     pure=False, retries=retries): k for k in todo}
            for done, future in enumerate(as_completed(futures), 1):
                k, result = futures[future], future.result()
                regions.commit_region(path, store_progress, record, k, n_images=result["images"],
                                      failures=result["failures"], entries=result["entries"])
                _say(progress, f"region {k} ({ranges[k][0]}-{ranges[k][1] - 1}): {result['images']} images"
                     + (f", {len(result['failures'])} unreadable" if result["failures"] else "")
                     + f" [{done}/{len(todo)}]")
            failures = store_progress["item_failures"]
            for _, item_path, error in failures:
                _say(True, f"skipped {item_path}: {error}")
            n_images = total - len(failures)
            runs = _runs(store_progress, n_images)
            if failures:
                _compact(client, path, n_images, per, retries)
                compacted = path.with_name(path.name + regions.COMPACTED_SUFFIX)
                compact_progress, compact_record, _ = regions.read_progress(compacted)
                regions.finalize(compacted, compact_progress, compact_record, n_images=n_images, failures=failures,
                                 runs=runs, extra_attrs=cluster)
                regions.swap_in(path, compacted)
            else:
                regions.finalize(path, store_progress, record, n_images=n_images, failures=[], runs=runs,
                                 extra_attrs=cluster)
        finally:
            with contextlib.suppress(Exception):
                client.unregister_worker_plugin(plugin.name)
    _say(progress, f"{n_images} images, {len(failures)} skipped (see vision/failures) in "
         f"{time.perf_counter() - started:.1f} s")
    return path


def _runs(progress: Mapping[str, Any], n_images: int) -> list[list[int]]:
    """``[image_lo, n_images, item_lo, n_items]`` per region (what a single-process resume repairs by)."""
    from mmlens.store import regions

    out, image = [], 0
    for k, (lo, hi) in enumerate(regions.shard_ranges(progress["total"], progress["images_per_shard"])):
        n = progress["regions"][str(k)]["images"]
        out.append([image, n, lo, hi - lo])
        image += n
    assert image == n_images, (image, n_images)
    return out


def _compact(client: Any, path: Path, n_images: int, per: int, retries: int) -> None:
    """The compacting pass, on the cluster: readable images copied into a store laid out over images."""
    from distributed import wait

    from mmlens.store import regions

    compacted = path.with_name(path.name + regions.COMPACTED_SUFFIX)
    client.submit(regions.create_compacted, str(path), str(compacted), n_images=n_images, per_shard=per,
                  pure=False, retries=retries).result()
    compact_progress, record, _ = regions.read_progress(compacted)
    ranges = regions.shard_ranges(n_images, per)
    futures = [client.submit(regions.copy_region, str(path), str(compacted), lo, hi, pure=False, retries=retries)
               for lo, hi in ranges]
    wait(futures)
    for k, future in enumerate(futures):
        regions.commit_region(compacted, compact_progress, record, k, n_images=ranges[k][1] - ranges[k][0],
                              failures=[], entries=future.result())


def _remove_store(path: Path) -> None:
    import shutil

    if path.is_dir() and (not any(path.iterdir()) or (path / ".zgroup").exists() or (path / "zarr.json").exists()):
        shutil.rmtree(path)
        return
    raise FileExistsError(f"overwrite=True refused: {path} exists and is not a zarr store; move it away")


def _say(enabled: bool, line: str) -> None:
    if enabled:
        from mmlens._progress import write_line

        write_line(line)


# ----------------------------------------------------------------------------------------------
# clusters for the command line
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def cluster_client(*, workers: int | None = None, scheduler: str | None = None, device: str = "cpu",
                   timeout: float = CONNECT_TIMEOUT) -> Iterator[Any]:
    """A dask.distributed Client: joined to ``scheduler``, or on a local cluster of ``workers`` processes.

    ``device="cuda"`` with ``workers`` starts dask-cuda's ``LocalCUDACluster`` (one worker per visible
    GPU; ``workers`` then only has to be given). Clear :class:`ClusterError` when the scheduler cannot
    be reached within ``timeout`` seconds, or when dask-cuda (or distributed) is not installed.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise ClusterError("--workers / --scheduler need dask.distributed: pip install 'mmlens[cluster]'") from err
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as err:
            raise ClusterError(
                f"could not reach the dask scheduler at {scheduler} within {timeout:.0f} s ({type(err).__name__}). "
                "Check that `dask scheduler` is running there, that the address and port are right (default "
                "tcp://HOST:8786), and that this machine can reach it (firewall, VPN, the scheduler's "
                "--host).") from None
        with client:
            yield client
        return
    if workers is None or workers < 1:
        raise ClusterError(f"--workers expects a number of worker processes >= 1, found {workers}")
    if str(device).startswith("cuda"):
        cluster = _cuda_cluster()
    else:
        # the scheduler's HTTP server on a free port and no bokeh dashboard (a second cluster on the machine
        # must not fight for 8787); the cluster's own logs only from warnings up
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               scheduler_kwargs={"dashboard": False}, silence_logs=logging.WARNING)
    with cluster, Client(cluster) as client:
        yield client


def _cuda_cluster() -> Any:
    """dask-cuda's LocalCUDACluster: one worker per visible GPU (CUDA_VISIBLE_DEVICES), one thread each."""
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as err:
        raise ClusterError(
            "--device cuda with --workers starts one worker per GPU with dask-cuda, which is not installed: "
            "pip install dask-cuda (it needs a CUDA machine), or run one process per GPU with --scheduler "
            "(docs/scaling.md).") from err
    return LocalCUDACluster(threads_per_worker=1, dashboard_address=":0", silence_logs=logging.WARNING)
