"""Side-by-side timing for the benchmarks: interleaved repeats, median seconds per call."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(fns: dict[str, Callable[[], object]], *, repeats: int = 7, warmup: int = 1) -> dict[str, float]:
    """Run every function once per round (so load on the machine hits all alike); median per name."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}
