"""Stores written region by region (the store side of a distributed trace), without dask or torch.

Regions are written out of order, one with an unreadable item; readers see pending regions as pending (not
damage); the compacting pass gives the store a one-process writer makes; reading through fsspec URLs.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

import mmlens
from mmlens.store import regions
from mmlens.store.integrity import store_status, verify
from mmlens.store.io import IncompleteStoreWarning, to_zarr
from mmlens.store.synthetic import example_tree

N, PER, BAD = 10, 4, 5  # items, items per region, the unreadable item


def _groups(tree: xr.DataTree, images=None) -> dict[str, xr.Dataset]:
    out = {}
    for name, node in tree.children.items():
        ds = node.to_dataset(inherit=False)
        out[name] = ds.isel(image=images) if images is not None and "image" in ds.dims else ds
    return out


def _assert_same(a: xr.DataTree, b: xr.DataTree) -> None:
    assert set(a.children) == set(b.children)
    for name in a.children:
        x, y = a[name].to_dataset(inherit=False), b[name].to_dataset(inherit=False)
        assert set(x.variables) == set(y.variables), (name, set(x.variables) ^ set(y.variables))
        for v in x.variables:
            assert x[v].dims == y[v].dims, (name, v)
            np.testing.assert_array_equal(x[v].values, y[v].values, err_msg=f"{name}/{v}")
        assert x.attrs == y.attrs


def _expected(tree: xr.DataTree) -> xr.DataTree:
    """What a one-process trace writes: the readable images renumbered, the unreadable one in vision/failures."""
    keep = [i for i in range(N) if i != BAD]
    groups = _groups(tree, keep)
    for name, ds in groups.items():
        if "image" in ds.dims:
            groups[name] = ds.assign_coords(image=np.arange(len(keep)))
    groups["vision"] = groups["vision"].assign(
        failures=("failure", np.array(["OSError: broken"], dtype=object))).assign_coords(
        failure_path=("failure", np.array([f"img{BAD}.png"], dtype=object)))
    return xr.DataTree.from_dict({"/": xr.Dataset(attrs=dict(tree.attrs)), **groups})


def _write(path, tree, k, items):
    lo, hi = regions.shard_ranges(N, PER)[k]
    progress, _, _ = regions.read_progress(path)
    return regions.write_region(path, _groups(tree, items), lo, hi, items, progress["image_arrays"])


def test_regions_out_of_order_pending_then_compacted_equal_the_one_process_store(tmp_path):
    tree = example_tree(n_images=N, n_layers=2, n_heads=2, grid=3, n_classes=4, width=4)
    path = tmp_path / "run.zarr"
    progress = regions.create(path, _groups(tree, [0]), n_items=N, per_shard=PER, provenance=dict(tree.attrs))
    _, record, _ = regions.read_progress(path)
    status = store_status(path)
    assert (status.complete, status.n_pending, status.n_total) == (False, 3, N)
    assert "3 regions pending" in status.message

    # the last region first: a reader sees no image yet (the prefix is empty), and says why, not "damaged"
    entries = _write(path, tree, 2, [8, 9])
    regions.commit_region(path, progress, record, 2, n_images=2, failures=[], entries=entries)
    with pytest.warns(IncompleteStoreWarning, match="2 of 3 regions pending"):
        assert mmlens.open(path)["vision"].sizes["image"] == 0
    assert regions.region_status(path).pending == (0, 1)
    report = verify(path)  # pending regions hold no file at all: nothing for the deep check to flag
    assert report.ok, report.text()

    entries = _write(path, tree, 0, [0, 1, 2, 3])
    regions.commit_region(path, progress, record, 0, n_images=4, failures=[], entries=entries)
    assert _write(path, tree, 0, [0, 1, 2, 3]) == entries  # a rewrite of a region leaves the same bytes
    with pytest.warns(IncompleteStoreWarning, match="1 of 3 regions pending"):
        view = mmlens.open(path)
    _assert_same(view.isel(image=slice(0, 4)), xr.DataTree.from_dict(
        {"/": xr.Dataset(attrs=view.attrs), **_groups(tree, [0, 1, 2, 3])}))

    # the middle region holds the unreadable item: a masked slot
    entries = _write(path, tree, 1, [4, 6, 7])
    regions.commit_region(path, progress, record, 1, n_images=3, failures=[[BAD, f"img{BAD}.png", "OSError: broken"]],
                          entries=entries)
    raw = xr.open_zarr(path, group="vision", zarr_format=3, consolidated=False)
    assert int(raw["label"][BAD]) == -1 and raw["path"].values[BAD] == ""
    assert np.isnan(raw["prompt_mass"].isel(image=BAD).values).all()
    assert progress["items"] == N and progress["images"] == 4  # the prefix stops before the masked slot
    report = verify(path)  # every region committed, the store still laid out over items: nothing unrecorded
    assert report.ok, report.text()

    # the compacting pass, then the swap
    compacted = path.with_name(path.name + regions.COMPACTED_SUFFIX)
    regions.create_compacted(path, compacted, n_images=N - 1, per_shard=PER)
    c_progress, c_record, _ = regions.read_progress(compacted)
    for k, (lo, hi) in enumerate(regions.shard_ranges(N - 1, PER)):
        regions.commit_region(compacted, c_progress, c_record, k, n_images=hi - lo, failures=[],
                              entries=regions.copy_region(path, compacted, lo, hi))
    regions.finalize(compacted, c_progress, c_record, n_images=N - 1,
                     failures=progress["item_failures"], runs=[[0, 4, 0, 4], [4, 3, 4, 4], [7, 2, 8, 2]])
    regions.swap_in(path, compacted)
    assert not compacted.exists() and not path.with_name(path.name + ".items").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # complete: no warning
        got = mmlens.open(path)
    _assert_same(got, _expected(tree))
    assert store_status(path).message == f"complete: {N - 1} images, 1 skipped"
    report = verify(path)
    assert report.ok, report.text()


def test_recover_swaps_in_a_finished_copy_and_drops_an_unfinished_one(tmp_path):
    tree = example_tree(n_images=4, n_layers=2, n_heads=2, grid=3, n_classes=4, width=4)
    path = tmp_path / "run.zarr"
    copy = path.with_name(path.name + regions.COMPACTED_SUFFIX)
    regions.create(copy, _groups(tree, [0]), n_items=4, per_shard=4, provenance=dict(tree.attrs))
    regions.recover(path)  # unfinished copy: deleted
    assert not copy.exists() and not path.exists()
    to_zarr(tree, copy)  # a complete store (no _progress counts as complete for store_status, not here)
    regions.recover(path)
    assert not copy.exists() and not path.exists()  # no `complete` flag: still unfinished
    progress = regions.create(copy, _groups(tree, [0]), n_items=4, per_shard=4, provenance=dict(tree.attrs))
    _, record, _ = regions.read_progress(copy)
    regions.commit_region(copy, progress, record, 0, n_images=4, failures=[],
                          entries=regions.write_region(copy, _groups(tree), 0, 4, range(4), progress["image_arrays"]))
    regions.finalize(copy, progress, record, n_images=4, failures=[], runs=[[0, 4, 0, 4]])
    regions.recover(path)  # killed between the two renames of the swap: the finished copy moves in
    assert path.exists() and not copy.exists()
    _assert_same(mmlens.open(path), mmlens.open(to_zarr(tree, tmp_path / "ref.zarr")))


def test_shard_size_is_a_multiple_of_the_batch_size():
    ds = xr.Dataset({"x": (("image", "c"), np.zeros((2, 1024), "float32"))})
    assert regions.shard_size({"vision": ds}, 32) % 32 == 0
    assert regions.shard_size({"vision": ds}, 32, override=5) == 32  # never less than one batch
    assert regions.shard_size({"vision": ds}, 4, override=10) == 8


def test_open_reads_a_store_through_fsspec_urls(tmp_path):
    import fsspec

    tree = example_tree(n_images=6, n_layers=2, n_heads=2, grid=3, n_classes=4, width=4)
    path = to_zarr(tree, tmp_path / "run.zarr")
    local = mmlens.open(path)
    _assert_same(mmlens.open(f"file://{path}"), local)
    fs = fsspec.filesystem("memory")
    fs.put(str(path), "/copied/run.zarr", recursive=True)
    try:
        remote = mmlens.open("memory://copied/run.zarr")
        _assert_same(remote, local)
        assert remote.attrs == local.attrs and "_chunks" not in remote.attrs
    finally:
        fs.rm("/copied", recursive=True)
