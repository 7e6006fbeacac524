"""Cost of bootstrap_ci on a study-sized statistic (11 datasets x 3 seeds x 2000 images x 12 layers x 12 heads,
dask-backed) relative to one pass over the data (its mean): the auto method (variance components, 3 seeds) and
the design-following percentile bootstrap with 1000 replicates; also the peak memory of each.

Run: python benchmarks/bootstrap_ci.py [--scale 1.0] [--n-boot 1000] [--repeats 3]
(--scale < 1 shrinks the images, e.g. 0.25 for 500 images per dataset, if memory is short; one thread.)
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # a shared machine: one core
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tracemalloc  # noqa: E402

import dask  # noqa: E402
import dask.array as dsa  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved_medians  # noqa: E402

from mmlens.stats import bootstrap_ci  # noqa: E402
from mmlens.stats.intervals import BOOTSTRAP  # noqa: E402


def study_statistic(n_images: int) -> xr.DataArray:
    """A float32 statistic (dataset, seed, image, layer, head) as a study store holds it: one chunk per dataset
    and seed (runs are written separately), the last dataset padded with NaN images."""
    shape = (11, 3, n_images, 12, 12)
    chunks = (1, 1, n_images, 12, 12)
    x = dsa.random.default_rng(0).standard_normal(shape, chunks=chunks, dtype=np.float32)
    pad = np.arange(n_images) >= int(0.7 * n_images)
    x = dsa.where(dsa.from_array((np.arange(11)[:, None] == 10) & pad[None, :], chunks=(1, n_images))[
        :, None, :, None, None], np.nan, x)
    da = xr.DataArray(x, dims=("dataset", "seed", "image", "layer", "head"), name="prompt_mass")
    return da.persist()  # the timed calls read from memory, like a store opened from a local disk cache


def peak_mib(fn) -> float:
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the 2000 images per dataset")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n_images = int(round(2000 * args.scale))
    dims = ("image", "seed", "dataset")
    with dask.config.set(scheduler="synchronous"):
        da = study_statistic(n_images)
        fns = {
            "one pass (mean)": lambda: da.mean(dims).compute(),
            "bootstrap_ci auto": lambda: bootstrap_ci(da, dims, n_boot=args.n_boot).compute(),
            f"bootstrap_ci percentile x{args.n_boot}": lambda: bootstrap_ci(
                da, dims, n_boot=args.n_boot, method=BOOTSTRAP).compute(),
        }
        auto = bootstrap_ci(da, dims, n_boot=args.n_boot)
        print(f"study: 11 datasets x 3 seeds x {n_images} images x 12 layers x 12 heads "
              f"({da.size / 1e6:.1f} M float32 cells, {da.nbytes / 2**20:.0f} MiB), dask chunks of one run; "
              f"auto method: {auto.attrs['interval_method']}")
        times = interleaved_medians(fns, repeats=args.repeats, warmup=0)
        memory = {name: peak_mib(fn) for name, fn in fns.items()}
    base = times["one pass (mean)"]
    print(f"{'':40s} {'median s':>9s} {'x one pass':>11s} {'peak MiB (python allocs)':>25s}")
    for name, t in times.items():
        print(f"{name:40s} {t:9.3f} {t / base:11.1f} {memory[name]:25.0f}")
    print(f"max RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")


if __name__ == "__main__":
    main()
