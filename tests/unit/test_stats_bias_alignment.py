"""bias_alignment: MaPLe's mean β against bias tuning's b, by hand (torch-free)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from mmlens.stats import bias_alignment


def _group(vectors, source, datasets=("A", "B")):
    """A vision group with ``bias`` (dataset, seed, variant, image, layer, channel)."""
    arr = np.asarray(vectors, dtype=np.float64)  # (dataset, image, layer, channel)
    arr = arr[:, None, None]  # seed, variant
    return xr.Dataset(
        {"bias": (("dataset", "seed", "variant", "image", "layer", "channel"), arr)},
        coords={"dataset": list(datasets), "seed": [1], "variant": ["full"], "image": np.arange(arr.shape[3]),
                "layer": [0, 1], "layer_kind": ("layer", ["injected", "carried"]), "bias_source": source},
    )


def test_cosines_by_hand():
    rng = np.random.default_rng(0)
    beta = rng.normal(size=(2, 5, 2, 4))  # MaPLe: β varies over images
    b = np.broadcast_to(rng.normal(size=(2, 1, 2, 4)), (2, 3, 2, 4))  # bias tuning: one vector per dataset
    out = bias_alignment(_group(beta, "prompt"), _group(b, "learned"))

    def cos(u, v):
        return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))

    for d in range(2):
        for layer in range(2):
            mu = beta[d, :, layer].mean(0)
            got = out.sel(dataset=["A", "B"][d], seed=1, layer=layer)
            assert float(got.sel(measure="same_dataset")) == pytest.approx(cos(mu, b[d, 0, layer]))
            assert float(got.sel(measure="other_datasets")) == pytest.approx(cos(mu, b[1 - d, 0, layer]))
            assert float(got.sel(measure="chance")) == pytest.approx(0.5)  # 1/sqrt(4 channels)
    assert list(out["layer_kind"].values) == ["injected", "carried"]


def test_same_direction_gives_one_and_swapped_stores_are_refused():
    beta = np.zeros((2, 3, 2, 4))
    beta[..., 0] = [[1.0], [2.0], [3.0]]  # β along channel 0 with varying size
    b = np.zeros((2, 3, 2, 4))
    b[..., 0] = 0.1
    out = bias_alignment(_group(beta, "prompt"), _group(b, "learned"))
    assert np.allclose(out.sel(measure="same_dataset"), 1.0)
    b[..., 0] = -0.1  # the opposite direction
    assert np.allclose(bias_alignment(_group(beta, "prompt"), _group(b, "learned")).sel(measure="same_dataset"), -1)
    with pytest.raises(ValueError, match="bias_source='prompt'"):
        bias_alignment(_group(b, "learned"), _group(beta, "prompt"))
    one = bias_alignment(_group(beta[:1], "prompt", ["A"]), _group(b[:1], "learned", ["A"]))
    assert np.isnan(one.sel(measure="other_datasets")).all()  # no other dataset to compare with
