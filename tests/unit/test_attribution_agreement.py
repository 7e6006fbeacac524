"""Agreement metrics (torch-free) and the attribution Dataset: Spearman against scipy, foreground mass by hand."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.stats import spearmanr

from mmlens.attribution.agreement import (
    agreement,
    foreground_chance,
    foreground_mass,
    patch_foreground,
    rank_correlation,
)
from mmlens.attribution.dataset import to_dataset

GRID = ("patch_row", "patch_col")


def _map(rng, *lead: tuple[str, int], ties: bool = False, name: str = "m") -> xr.DataArray:
    shape = (*[n for _, n in lead], 3, 3)
    data = rng.integers(0, 3, shape).astype(float) if ties else rng.normal(size=shape)
    dims = (*[d for d, _ in lead], *GRID)
    return xr.DataArray(data, dims=dims, coords={d: np.arange(n) for d, n in lead}, name=name)


@pytest.mark.parametrize("ties", [False, True])
def test_rank_correlation_equals_scipy_per_layer_and_head(ties):
    rng = np.random.default_rng(0)
    attr = _map(rng, ("image", 2), ties=ties)
    cls_attention = _map(rng, ("variant", 2), ("image", 2), ("layer", 3), ("head", 2), ties=ties)
    cls_attention = cls_attention.assign_coords(variant=["full", "zeroshot"])
    rho = rank_correlation(attr.assign_coords(variant="full"), cls_attention)
    assert set(rho.dims) == {"variant", "image", "layer", "head"} and list(rho.variant.values) == ["full"]
    rho = rho.sel(variant="full")
    for i in range(2):
        for layer in range(3):
            for h in range(2):
                a = attr.sel(image=i).values.ravel()
                b = cls_attention.sel(variant="full", image=i, layer=layer, head=h).values.ravel()
                expected = spearmanr(a, b).statistic
                got = float(rho.sel(image=i, layer=layer, head=h))
                assert got == pytest.approx(expected, abs=1e-12) or (np.isnan(expected) and np.isnan(got))
    # a map with its own layer dim is compared layer by layer; with variants on both sides they pair up
    per_layer = _map(rng, ("variant", 2), ("image", 2), ("layer", 3)).assign_coords(variant=["full", "zeroshot"])
    rho2 = rank_correlation(per_layer, cls_attention)
    assert set(rho2.dims) == {"variant", "image", "layer", "head"}
    expected = spearmanr(per_layer.sel(variant="zeroshot", image=1, layer=2).values.ravel(),
                         cls_attention.sel(variant="zeroshot", image=1, layer=2, head=0).values.ravel()).statistic
    assert float(rho2.sel(variant="zeroshot", image=1, layer=2, head=0)) == pytest.approx(expected)


def test_rank_correlation_edge_cases():
    flat = xr.DataArray(np.ones((1, 2, 2)), dims=("image", *GRID))
    ref = xr.DataArray(np.arange(4.0).reshape(1, 2, 2), dims=("image", *GRID))
    assert np.isnan(float(rank_correlation(flat, ref)[0]))
    with pytest.raises(ValueError, match="patch_row"):
        rank_correlation(xr.DataArray(np.ones((1, 4)), dims=("image", "x")), ref)
    other = ref.assign_coords(image=[7])
    with pytest.raises(ValueError, match="share no labels"):
        rank_correlation(ref.assign_coords(image=[0]), other)


def test_foreground_mass_and_chance_by_hand():
    fg = xr.DataArray([[[1.0, 0.5], [0.0, 0.0]]], dims=("image", *GRID))
    m = xr.DataArray([[[2.0, -2.0], [1.0, 0.0]]], dims=("image", *GRID))
    # |m| = 2, 2, 1, 0 -> (2*1 + 2*0.5) / 5
    assert float(foreground_mass(m, fg)[0]) == pytest.approx(3 / 5)
    assert float(foreground_chance(fg)[0]) == pytest.approx(1.5 / 4)
    uniform = xr.ones_like(m)
    assert float(foreground_mass(uniform, fg)[0]) == pytest.approx(float(foreground_chance(fg)[0]))
    assert np.isnan(float(foreground_mass(xr.zeros_like(m), fg)[0]))


def test_patch_foreground_from_pixel_masks():
    masks = np.zeros((2, 4, 6))
    masks[0, :2, :2] = 1
    masks[0, 3, 5] = 1
    masks[1] = np.nan  # an image without a mask
    fg = patch_foreground(masks, 2, image=[5, 6])
    assert fg.dims == ("image", *GRID) and list(fg.image.values) == [5, 6]
    np.testing.assert_allclose(fg.sel(image=5).values, [[1.0, 0.0, 0.0], [0.0, 0.0, 0.25]])
    assert np.isnan(fg.sel(image=6).values).all()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patch_foreground(masks, 4)


def test_agreement_stacks_methods():
    rng = np.random.default_rng(1)
    maps = {"occlusion": _map(rng, ("image", 2)), "attention_gradcam": _map(rng, ("image", 2), ("layer", 3))}
    cls_attention = _map(rng, ("image", 2), ("layer", 3), ("head", 2))
    fg = xr.DataArray(rng.uniform(size=(2, 3, 3)), dims=("image", *GRID), coords={"image": [0, 1]})
    out = agreement(maps, cls_attention=cls_attention, foreground=fg)
    assert list(out.attribution.values) == ["occlusion", "attention_gradcam"]
    assert set(out.rank_correlation.dims) == {"attribution", "image", "layer", "head"}
    assert float(out.foreground_mass.sel(attribution="occlusion", image=1, layer=2)) == pytest.approx(
        float(foreground_mass(maps["occlusion"], fg).sel(image=1)))
    assert float(out.rank_correlation.sel(attribution="attention_gradcam", image=0, layer=1, head=1)) == pytest.approx(
        spearmanr(maps["attention_gradcam"].sel(image=0, layer=1).values.ravel(),
                  cls_attention.sel(image=0, layer=1, head=1).values.ravel()).statistic)
    with pytest.raises(ValueError, match="cls_attention=... and/or foreground"):
        agreement(maps)


def test_to_dataset_keeps_variants_and_per_run_coords(tmp_path):
    rng = np.random.default_rng(2)

    def result(variant: str) -> xr.DataArray:
        da = _map(rng, ("image", 2)).assign_coords(
            label=("image", [1, 0]), convergence_delta=("image", rng.normal(size=2)), variant=variant)
        da.attrs["attribution_method"] = "test"
        return da

    full, zeroshot = result("full"), result("zeroshot")
    cam = _map(rng, ("image", 2), ("layer", 3)).assign_coords(label=("image", [1, 0]), variant="full")
    ds = to_dataset({"ig_pixels": [full, zeroshot], "attention_gradcam": cam}, attrs={"note": "x"})
    assert ds.attrs["mmlens_group"] == "attribution" and ds.attrs["note"] == "x"
    assert ds.ig_pixels.dims == ("variant", "image", *GRID)
    assert list(ds.variant.values) == ["full", "zeroshot"]
    np.testing.assert_array_equal(ds.ig_pixels_convergence_delta.sel(variant="zeroshot").values,
                                  zeroshot.convergence_delta.values)
    assert "convergence_delta" not in ds.coords and list(ds.label.values) == [1, 0]
    assert np.isnan(ds.attention_gradcam.sel(variant="zeroshot")).all()  # only computed with prompts
    assert ds.ig_pixels.attrs["attribution_method"] == "test"
    # storable as the trace stores are (zarr format 2)
    ds.to_zarr(tmp_path / "attribution.zarr", zarr_format=2, consolidated=False)
    back = xr.open_zarr(tmp_path / "attribution.zarr", consolidated=False).load()
    xr.testing.assert_allclose(back.ig_pixels, ds.ig_pixels)


def test_map_agreement_hand_cases():
    from mmlens.stats import map_agreement

    a = np.array([[4.0, 3.0], [2.0, 1.0]])
    assert map_agreement(a, a, None)["spearman"] == pytest.approx(1.0)
    assert map_agreement(a, -a, None)["spearman"] == pytest.approx(-1.0)
    assert np.isnan(map_agreement(np.ones((2, 2)), a, None)["spearman"])
    fg = np.array([[1.0, 0.0], [0.0, 0.0]])
    out = map_agreement(np.array([[3.0, -1.0], [0.0, 0.0]]), a, fg)
    assert out["foreground_mass"] == pytest.approx(0.75) and out["foreground_chance"] == pytest.approx(0.25)
