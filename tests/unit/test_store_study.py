"""combine_runs: runs of several datasets and seeds stacked into one study tree."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import mmlens
from mmlens import stats
from mmlens.store import io
from mmlens.store.study import combine_runs
from mmlens.store.synthetic import example_tree


def _runs():
    """Datasets a (4 images, 5 classes) and b (6, 6), seeds 1 and 2 (same images, other numbers)."""
    runs = []
    for k, (d, (n, c)) in enumerate({"a": (4, 5), "b": (6, 6)}.items()):
        for s in (1, 2):
            tree = example_tree(n_images=n, n_classes=c, n_layers=2, grid=3, width=4, dataset=d, seed=k, n_failures=1)
            tree["vision"]["prompt_mass"] = tree["vision"]["prompt_mass"] * s  # the seeds' own numbers
            tree.attrs["seed"] = s
            runs.append(tree)
    return runs


def test_runs_are_stacked_and_padded():
    runs = _runs()
    study = combine_runs(runs)
    v = study["vision"].to_dataset()
    assert v.dataset.values.tolist() == ["a", "b"] and v.seed.values.tolist() == [1, 2]
    assert v.prompt_mass.dims == ("dataset", "seed", "variant", "image", "layer", "head")
    assert v.foreground.dims == ("dataset", "image", "patch_row", "patch_col")
    assert "failures" not in v
    # every run's values are found at its place; padding is NaN / -1 / ""
    for tree in runs:
        d, s, n = tree.attrs["dataset"], tree.attrs["seed"], tree["vision"].sizes["image"]
        got = v.prompt_mass.sel(dataset=d, seed=s).isel(image=slice(0, n))
        np.testing.assert_array_equal(got.values, tree["vision"]["prompt_mass"].values)
        assert v.label.sel(dataset=d).values[:n].tolist() == tree["vision"]["label"].values.tolist()
    assert v.label.sel(dataset="a").values[4:].tolist() == [-1, -1]
    assert v.path.sel(dataset="a").values[4:].tolist() == ["", ""]
    assert np.isnan(v.prompt_mass.sel(dataset="a").isel(image=slice(4, None))).all()
    t = study["text"].to_dataset()
    assert t.classname.dims == ("dataset", "class") and t.classname.sel(dataset="a").values[5] == ""


def test_study_attrs():
    runs = _runs()
    runs[3].attrs["prompt_sha256"] = "f" * 64
    attrs = combine_runs(runs).attrs
    assert attrs["dataset"] == "study" and attrs["seed"] == -1
    assert attrs["method"] == "maple"
    assert json.loads(attrs["prompt_sha256"])["b/2"] == "f" * 64


def test_statistics_on_a_padded_study(tmp_path):
    study = combine_runs(_runs())
    c = stats.bias_consistency(study)
    assert c.dims == ("dataset", "seed", "variant", "layer", "measure")
    assert np.isfinite(c.sel(variant="full", measure="across_datasets")).all()
    # padding is left out: dataset a's numbers equal those of its own run alone
    alone = stats.bias_consistency(_runs()[0]).sel(variant="full").isel(dataset=0)
    got = c.sel(dataset="a", seed=1, variant="full").drop_sel(measure="across_datasets")
    np.testing.assert_allclose(got.values, alone.drop_sel(measure="across_datasets").values, rtol=1e-6)
    # a study round-trips through zarr and stays lazy
    opened = mmlens.open(io.to_zarr(study, tmp_path / "study.zarr"))
    xr.testing.assert_allclose(stats.bias_consistency(opened).compute(), c)


def test_bad_run_sets_are_refused():
    runs = _runs()
    other_images = example_tree(n_images=4, n_classes=5, n_layers=2, grid=3, width=4, dataset="elsewhere")
    other_images.attrs.update(dataset="a", seed=2)
    with pytest.raises(ValueError, match="same images for every seed"):
        combine_runs([runs[0], other_images])
    with pytest.raises(ValueError, match="one model and method; found different method_hparams"):
        combine_runs([runs[0], example_tree(n_images=4, n_classes=5, dataset="a", seed=2)])
    with pytest.raises(ValueError, match="differ in the shape of group 'vision'"):
        combine_runs([runs[0], example_tree(n_images=4, n_classes=5, n_layers=4, prompt_depth=1, grid=3, width=4,
                                            dataset="a", seed=2)])
    with pytest.raises(ValueError, match="missing runs"):
        combine_runs(runs[:3])
    with pytest.raises(ValueError, match="repeats"):
        combine_runs([runs[0], runs[0]])
    with pytest.raises(ValueError, match="at least one"):
        combine_runs([])
