"""scripts/toyworld_base_to_novel.py's gain table, on a hand-made result with known gains."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytestmark = pytest.mark.unit


def _script():
    path = Path(__file__).resolve().parents[2] / "scripts" / "toyworld_base_to_novel.py"
    spec = importlib.util.spec_from_file_location("toyworld_base_to_novel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gain_table_counts_datasets_from_the_seed_means():
    # accuracy[dataset, seed, method, variant, split]; zero-shot is 20 everywhere
    acc = np.full((2, 2, 2, 1, 2), 20.0)
    acc[0, :, 1, 0, 0] = [31.0, 29.0]  # A base: +11 / +9 -> mean +10.0 (counts), range [+9, +11]
    acc[0, :, 1, 0, 1] = [19.0, 19.0]  # A novel: -1 (not raised)
    acc[1, :, 1, 0, 0] = [25.0, 28.0]  # B base: +6.5 (does not count)
    acc[1, :, 1, 0, 1] = [21.0, 20.0]  # B novel: +0.5 (raised)
    ds = xr.Dataset({"accuracy": (("dataset", "seed", "method", "variant", "split"), acc)},
                    coords={"dataset": ["A", "B"], "seed": [1, 2], "method": ["zeroshot", "maple"],
                            "variant": ["full"], "split": ["base", "novel"]})
    lines = _script().gain_table(ds)
    row = next(line for line in lines if line.startswith("| maple |"))
    assert row == ("| maple | +10.0 [+9.0, +11.0] / -1.0 [-1.0, -1.0] | +6.5 [+5.0, +8.0] / +0.5 [+0.0, +1.0] "
                   "| 1 of 2 | 1 of 2 |")
    assert _script().gain_table(ds.sel({"method": ["maple"]})) == []  # nothing to compare with
