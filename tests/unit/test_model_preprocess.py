"""Trace, train and eval see the same pixels, and masks the same geometry, in every open_clip resize mode."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from conftest import tiny_config
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from mmlens.data.transforms import eval_mask_transform, input_spec, pil_to_tensor_transform, resize_batch
from mmlens.models.loading import load_clip, register_config

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def clip_with(resize_mode: str, size: int = 32):
    """A tiny CLIP whose preprocess config is set the way open_clip sets a tag's (DFN: squash)."""
    register_config("test-pp", tiny_config(image_size=size))
    clip = load_clip("test-pp")
    cfg = dict(open_clip.get_model_preprocess_cfg(clip.model), resize_mode=resize_mode, mean=MEAN, std=STD)
    open_clip.set_model_preprocess_cfg(clip.model, cfg)
    clip.preprocess = image_transform_v2(PreprocessCfg(**cfg), is_train=False)  # as create_model_and_transforms
    return clip


def scene(w: int, h: int, box: tuple[int, int, int, int]) -> tuple[Image.Image, Image.Image]:
    """A non-square image with a white box on black, and the box as its mask."""
    m = np.zeros((h, w), np.uint8)
    top, left, bottom, right = box
    m[top:bottom, left:right] = 255
    return Image.fromarray(np.stack([m] * 3, -1)), Image.fromarray(m)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("wh", [(90, 60), (45, 80)])
def test_train_eval_images_equal_trace_preprocess(mode, wh):
    clip = clip_with(mode)
    spec = input_spec(clip)
    assert spec.resize_mode == mode and spec.mean == MEAN and spec.std == STD
    image, _ = scene(*wh, (5, 3, 30, 20))
    traced = clip.preprocess(image)[None]  # what `mmlens trace` feeds the model
    ours = spec.normalize(pil_to_tensor_transform(spec)(image)[None])  # fit / evaluate / reproduce
    torch.testing.assert_close(ours, traced, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("wh,box", [((90, 60), (6, 4, 40, 30)), ((45, 80), (50, 10, 75, 40))])
def test_mask_geometry_follows_the_image(mode, wh, box):
    clip = clip_with(mode)
    spec = input_spec(clip)
    image, mask = scene(*wh, box)
    pixels = pil_to_tensor_transform(spec)(image)[0].numpy()  # the box as the image transform moved it
    frac = eval_mask_transform(spec)(mask).numpy()
    assert frac.shape == pixels.shape
    # bicubic rings at the box's edges; the covered area agrees
    assert np.abs(frac - pixels).mean() < 0.03
    assert iou(frac > 0.5, pixels > 0.5) > 0.9
    if mode != "shortest":  # the old rule (shortest side + crop) puts the box elsewhere: the test can fail
        wrong = eval_mask_transform(spec.size, resize_mode="shortest")(mask).numpy()
        assert iou(wrong > 0.5, pixels > 0.5) < 0.8


def test_squash_tag_from_cache_sets_the_geometry(tmp_path, monkeypatch):
    """A tag whose config says squash (like DFN's), loaded from a Hugging Face cache layout."""
    from safetensors.torch import save_file

    register_config("test-pp-dfn", tiny_config(quick_gelu=True))
    src = load_clip("test-pp-dfn")
    repo = tmp_path / "hub" / "models--apple--DFN-test"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    save_file(src.model.state_dict(), str(repo / "snapshots" / "abc" / "open_clip_model.safetensors"))
    cfg = dict(open_clip.get_pretrained_cfg("ViT-H-14-quickgelu", "dfn5b"), hf_hub="apple/DFN-test/")
    assert cfg["resize_mode"] == "squash"
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "test-pp-dfn", {"dfn": cfg})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = load_clip("test-pp-dfn", "dfn", cache_dir=tmp_path / "hub")
    spec = input_spec(clip)
    assert spec.resize_mode == "squash" and clip.pretrained["quick_gelu"] is True
    image, _ = scene(90, 60, (6, 4, 40, 30))
    torch.testing.assert_close(spec.normalize(pil_to_tensor_transform(spec)(image)[None]),
                               clip.preprocess(image)[None], atol=1e-6, rtol=0)


def test_resize_batch_follows_the_mode():
    x = torch.zeros(3, 20, 40)
    x[:, :, :10] = 1.0  # the left quarter is bright
    squash = resize_batch([x], input_spec_of("squash"))[0]
    crop = resize_batch([x], input_spec_of("shortest"))[0]
    pad = resize_batch([x], input_spec_of("longest"))[0]
    assert squash.shape == crop.shape == pad.shape == (3, 16, 16)
    assert abs(float(squash[0].mean()) - 0.25) < 0.02  # nothing cropped: a quarter stays bright
    assert float(crop[0].mean()) < 0.05  # the centre crop drops the left quarter
    assert abs(float(pad[0, 4:12].mean()) - 0.25) < 0.02 and float(pad[0, :3].abs().max()) == 0.0  # padded


def input_spec_of(mode: str):
    from mmlens.data.transforms import InputSpec

    return InputSpec((16, 16), resize_mode=mode)
