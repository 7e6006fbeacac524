"""ImageDataset / collate / build: decoded pixels, masks, decode errors with paths, skip-and-record."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mmlens.data as mdata
from mmlens.data.fake import corrupt_file, make_fake_tree


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("ds_root")
    make_fake_tree(r, ["OxfordPets", "EuroSAT"], per_class={"train": 5, "val": 1, "test": 1})
    return r


def test_sample_matches_pil_decoding(root):
    sd = mdata.load_split("EuroSAT", root, "test")
    ds = mdata.ImageDataset(sd.items, sd.classnames)
    s = ds[3]
    ref = np.asarray(Image.open(sd.items[3].path).convert("RGB"), dtype=np.float32) / 255.0
    assert s["image"].shape == (3, *ref.shape[:2]) and s["image"].dtype == torch.float32
    np.testing.assert_allclose(s["image"].permute(1, 2, 0).numpy(), ref)
    assert (s["label"], s["classname"], s["path"], s["mask"]) == (
        sd.items[3].label,
        sd.items[3].classname,
        sd.items[3].path,
        None,
    )


def test_transform_and_mask(root):
    sd = mdata.load_split("OxfordPets", root, "val")
    tf = lambda im: torch.tensor(np.asarray(im.resize((8, 8)))).permute(2, 0, 1)  # noqa: E731
    mtf = lambda im: im.resize((8, 8), Image.NEAREST)  # noqa: E731
    ds = mdata.ImageDataset(sd.items, sd.classnames, transform=tf, mask_transform=mtf)
    s = ds[0]
    assert s["image"].shape == (3, 8, 8)
    trimap = np.asarray(Image.open(sd.items[0].mask_path).resize((8, 8), Image.NEAREST))
    np.testing.assert_array_equal(s["mask"].numpy(), (trimap == 1).astype(np.float32))
    assert s["mask"].dtype == torch.float32 and 0 < s["mask"].sum() < 64


def test_decode_error_names_the_path(tmp_path):
    make_fake_tree(tmp_path, ["EuroSAT"])
    sd = mdata.load_split("EuroSAT", tmp_path, "test")
    corrupt_file(sd.items[1].path)
    ds = mdata.ImageDataset(sd.items, sd.classnames)
    with pytest.raises(mdata.ImageDecodeError, match=f"Could not read image {sd.items[1].path}") as err:
        ds[1]
    assert err.value.path == sd.items[1].path and "on_error='skip'" in str(err.value)
    missing = sd.items[2]._replace(path=str(tmp_path / "gone.jpg"))
    with pytest.raises(mdata.ImageDecodeError, match="gone.jpg: FileNotFoundError"):
        mdata.ImageDataset([missing], sd.classnames)[0]


def test_skip_records_failures_and_collate_drops_them(tmp_path):
    make_fake_tree(tmp_path, ["EuroSAT"])
    sd = mdata.load_split("EuroSAT", tmp_path, "test")
    corrupt_file(sd.items[1].path)
    ds = mdata.ImageDataset(sd.items, sd.classnames, on_error="skip")
    batches = list(torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=mdata.collate))
    assert [p for p, _ in ds.failures] == [sd.items[1].path]
    assert batches[0]["failures"][0][0] == sd.items[1].path
    assert batches[0]["image"].shape[0] == 3 and batches[0]["label"].tolist() == [0, 2, 3]
    assert sum(len(b["path"]) for b in batches) == len(sd.items) - 1


def test_failures_from_worker_processes_reach_the_batch(tmp_path):
    make_fake_tree(tmp_path, ["EuroSAT"])
    sd = mdata.load_split("EuroSAT", tmp_path, "test")
    corrupt_file(sd.items[0].path)
    ds = mdata.ImageDataset(sd.items, sd.classnames, on_error="skip")
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=mdata.collate, num_workers=1)
    failures = [f for b in loader for f in b["failures"]]
    assert [p for p, _ in failures] == [sd.items[0].path]


def test_collate_with_some_masks_missing(root):
    sd = mdata.load_split("OxfordPets", root, "val")
    items = list(sd.items[:3])
    items[1] = items[1]._replace(mask_path=None)
    batch = mdata.collate([mdata.ImageDataset(items, sd.classnames)[i] for i in range(3)])
    assert batch["has_mask"].tolist() == [True, False, True]
    assert batch["mask"].shape == (3, 16, 16)
    assert torch.isnan(batch["mask"][1]).all() and not torch.isnan(batch["mask"][[0, 2]]).any()
    no_masks = mdata.collate(
        [
            mdata.ImageDataset(
                mdata.load_split("EuroSAT", root, "val").items, mdata.load_split("EuroSAT", root, "val").classnames
            )[0]
        ]
    )
    assert no_masks["mask"] is None and no_masks["has_mask"].tolist() == [False]


def test_build_shots_and_subsets(root):
    full = mdata.build("eurosat", root, "train")
    assert len(full) == 50 and len(full.classnames) == 10
    few = mdata.build("eurosat", root, "train", shots=2, seed=1)
    assert len(few) == 20
    again = mdata.build("EuroSAT", root, "train", shots=2, seed=1)
    assert [it.path for it in few.items] == [it.path for it in again.items]
    assert [it.path for it in mdata.build("eurosat", root, "train", shots=2, seed=2).items] != [
        it.path for it in few.items
    ]
    novel = mdata.build("eurosat", root, "train", shots=2, seed=1, subset="novel")
    assert novel.classnames == full.classnames[5:] and len(novel) == 10
    # few-shot first, then the class subset (CoOp order): novel draw = the novel part of the full draw
    assert [it.path for it in novel.items] == [it.path for it in few.items if it.label >= 5]
    assert {it.label for it in novel.items} == set(range(5))
    assert len(mdata.build("eurosat", root, "val", shots=16)) == 10  # min(16, 4) capped by 1 image/class
    pets = mdata.build("oxfordpets", root, "test", subset="base")
    assert len(pets.classnames) == 19 and pets[0]["mask"] is not None


def test_labels_must_fit_the_classnames(root):
    sd = mdata.load_split("EuroSAT", root, "test")
    with pytest.raises(ValueError, match="labels outside 0..4"):
        mdata.ImageDataset(sd.items, sd.classnames[:5])
    with pytest.raises(ValueError, match="on_error must be"):
        mdata.ImageDataset(sd.items, sd.classnames, on_error="ignore")


@pytest.mark.parametrize("hw", [(64, 64), (64, 48), (37, 53), (45, 60)])
def test_eval_mask_transform_gives_exact_area_fractions(hw):
    """Reference: repeat every source pixel m times per axis (m = output length), so each output pixel is an
    exact block of fine pixels; its mean is the foreground fraction of the area it covers. Then the same
    centre crop as open_clip's evaluation transform."""
    from torchvision import transforms as T

    from mmlens.data.transforms import eval_mask_transform

    size = 32
    h, w = hw
    rng = np.random.default_rng(h * w)
    mask = (rng.random((h, w)) < 0.3).astype(np.uint8) * 255
    out = eval_mask_transform(size)(Image.fromarray(mask)).numpy()

    new_w, new_h = T.Resize(size)(Image.new("L", (w, h))).size  # torchvision's own output size
    fine = np.repeat(np.repeat(mask / 255.0, new_h, axis=0), new_w, axis=1)  # [h*new_h, w*new_w]
    ref = fine.reshape(new_h, h, new_w, w).mean(axis=(1, 3))
    ref = T.CenterCrop(size)(torch.from_numpy(ref)).numpy()
    assert out.shape == (size, size) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-6)
    # the image transform's crop sees the same region: an all-foreground mask stays all foreground
    full = eval_mask_transform(size)(Image.fromarray(np.full((h, w), 255, np.uint8))).numpy()
    np.testing.assert_allclose(full, 1.0, atol=1e-6)
