"""Derived numbers defined once in mmlens.stats (HM, NaN-safe ratio, accuracy from logits, per-head bias ratio),
the arrows around them (store never imports stats) and the old public names that now point there."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr

from mmlens.stats import accuracy_table, bias_head_ratio, harmonic_mean, image_accuracy, safe_ratio
from mmlens.store.synthetic import example_tree


def test_harmonic_mean_by_hand():
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0  # the limit, as published tables print it
    assert np.isnan(harmonic_mean(float("nan"), 50.0))
    np.testing.assert_allclose(harmonic_mean(np.array([90.0, 0.0]), np.array([40.0, 0.0])), [2 * 90 * 40 / 130, 0.0])
    da = harmonic_mean(xr.DataArray([80.0, 10.0], dims="x"), xr.DataArray([60.0, 30.0], dims="x"))
    assert da.dims == ("x",) and da.values.tolist() == pytest.approx([2 * 80 * 60 / 140, 2 * 10 * 30 / 40])


def test_safe_ratio_is_nan_where_nothing_to_divide_by():
    out = safe_ratio(xr.DataArray([1.0, 2.0, 3.0]), xr.DataArray([4.0, 0.0, -1.0]))
    assert out.values[0] == 0.25 and np.isnan(out.values[1:]).all()


def _logits(values, labels, image_split, class_split):
    values = np.asarray(values, dtype=float)[None]  # one variant
    return xr.Dataset(
        {"logits": (("variant", "image", "class"), values)},
        coords={"variant": ["full"], "image": np.arange(values.shape[1]), "class": np.arange(values.shape[2]),
                "label": ("image", labels), "split": ("image", image_split),
                "classname": ("class", [f"c{k}" for k in range(values.shape[2])])},
    ), xr.Dataset(coords={"class": np.arange(values.shape[2]), "split": ("class", class_split)})


def test_accuracy_from_logits_by_hand():
    # 4 images, classes 0,1 base and 2,3 novel. image 0 (base, label 0): best overall is class 2 (novel), best among
    # base is 0 -> right among base, wrong among all. image 1 (base, label 1): best base is 0 -> wrong.
    # image 2 (novel, label 3): best novel is 3 -> right. image 3 (novel, label 2): best is 2 -> right.
    logits = [[5, 1, 9, 0], [3, 2, 0, 0], [9, 0, 1, 2], [0, 0, 7, 1]]
    logit_ds, text = _logits(logits, [0, 1, 3, 2], ["base", "base", "novel", "novel"],
                             ["base", "base", "novel", "novel"])
    table = accuracy_table({"logits": logit_ds, "text": text}, ["d"], [1])
    row = table.iloc[0]
    assert row["base"] == 50.0 and row["novel"] == 100.0
    assert row["HM"] == pytest.approx(2 * 50 * 100 / 150)
    assert row["all"] == 25.0  # argmax over all classes: 2, 0, 0, 2 -> only image 3 right
    per_image = image_accuracy(logit_ds)
    assert per_image.sel(variant="full").values.tolist() == [0.0, 0.0, 0.0, 100.0]


def test_image_accuracy_marks_padding_nan():
    logit_ds, _ = _logits([[1, 0], [0, 1]], [0, -1], ["base", ""], ["base", "base"])
    assert np.isnan(image_accuracy(logit_ds).values[0, 1]) and image_accuracy(logit_ds).values[0, 0] == 100.0


def test_bias_head_ratio_is_the_stored_norms_divided():
    vision = example_tree()["vision"].to_dataset()
    expected = vision["bias_head_norm"] / vision["original_norm"].where(vision["original_norm"] > 0)
    np.testing.assert_allclose(bias_head_ratio(vision).values, expected.values)


def test_old_public_names_point_at_the_one_definition():
    import mmlens.stats.attribution as agreement
    import mmlens.stats.tables as tables
    from mmlens import data, train
    from mmlens.attribution.agreement import rank_correlation  # the package's `agreement` is the function
    from mmlens.train import evaluate as evaluate_fn
    from mmlens.viz.slices import map_agreement

    assert train.summary is tables.accuracy_summary and train.combine is tables.combine_results
    assert train.to_markdown is tables.to_markdown and train.to_csv is tables.to_csv and callable(evaluate_fn)
    assert not hasattr(data, "harmonic_mean")  # one home: mmlens.stats (data must not import stats)
    assert rank_correlation is agreement.rank_correlation and map_agreement is agreement.map_agreement


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_store_never_imports_stats_and_mmlens_open_still_has_the_accessor(tmp_path):
    out = _run(f"""
        import sys
        import mmlens.store.io, mmlens.store.study, mmlens.store.synthetic, mmlens.store.select
        from mmlens.store.io import to_zarr
        from mmlens.store.synthetic import example_tree
        path = to_zarr(example_tree(n_images=3), {str(tmp_path / "run.zarr")!r})
        print("stats imported by store:", "mmlens.stats" in sys.modules)
        import mmlens
        tree = mmlens.open(path)
        print(tree.mml.vision.attrs["mmlens_group"], float(tree.mml.prompt_mass().max()) > 0)
    """)
    assert "stats imported by store: False" in out and "vision True" in out
