"""Augmentation, input batching and MaPLe's (Dassl's) learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from mmlens.data.transforms import InputSpec, input_spec, resize_batch
from mmlens.train.schedule import WarmupCosine
from mmlens.train.transforms import random_resized_crop_flip, sample_crop


# ------------------------------------------------------------------------------------- schedule
class _DasslConstantWarmup(torch.optim.lr_scheduler.LRScheduler):
    """Dassl's ConstantWarmupScheduler (dassl/optim/lr_scheduler.py), re-typed as the reference."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        self.cons_lr = cons_lr
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step()
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step()


@pytest.mark.parametrize("epochs,warmup", [(5, 1), (10, 2), (3, 0)])
def test_schedule_matches_dassl_cosine_with_constant_warmup(epochs, warmup):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.0035)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    sched = _DasslConstantWarmup(opt, cosine, warmup, 1e-5) if warmup else cosine
    reference = []
    for _ in range(epochs):
        reference.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = WarmupCosine(0.0035, epochs, warmup, 1e-5)
    got = []
    for _ in range(epochs):
        got.append(ours.apply(opt))
        ours.step()
    assert got == pytest.approx(reference, rel=1e-12, abs=1e-15)


def test_schedule_state_roundtrip_and_mismatch():
    s = WarmupCosine(0.01, 4)
    s.step()
    s.step()
    t = WarmupCosine(0.01, 4)
    t.load_state_dict(s.state_dict())
    assert t.epoch == 2 and t.lr_at(t.epoch) == s.lr_at(2)
    with pytest.raises(ValueError, match="epochs"):
        WarmupCosine(0.01, 5).load_state_dict(s.state_dict())


# ------------------------------------------------------------------------------------- crops
def test_sample_crop_respects_scale_and_ratio_and_is_seeded():
    g = torch.Generator().manual_seed(3)
    boxes = [sample_crop(40, 60, g, scale=(0.2, 0.5), ratio=(0.75, 4 / 3)) for _ in range(200)]
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
        # rounding of w and h moves the area and ratio a little
        assert 0.2 * 2400 * 0.85 <= h * w <= 0.5 * 2400 * 1.15
        assert 0.75 * 0.85 <= w / h <= 4 / 3 * 1.15
    g2 = torch.Generator().manual_seed(3)
    assert boxes == [sample_crop(40, 60, g2, scale=(0.2, 0.5), ratio=(0.75, 4 / 3)) for _ in range(200)]


def test_sample_crop_falls_back_to_the_central_crop():
    # no box of area >= 100% with ratio 2 fits a square image: the central crop with ratio 2 is returned
    from torchvision.transforms import RandomResizedCrop

    g = torch.Generator().manual_seed(0)
    for shape, ratio in (((10, 10), (2.0, 2.0)), ((10, 10), (0.5, 0.5)), ((12, 7), (1.0, 1.0))):
        reference = RandomResizedCrop.get_params(torch.zeros(3, *shape), [1.0, 1.0], list(ratio))
        assert sample_crop(*shape, g, scale=(1.0, 1.0), ratio=ratio) == tuple(reference)


def test_full_crop_is_identity_or_flip_and_flips_half_the_time():
    x = torch.rand(1, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    flipped = 0
    for _ in range(200):
        y = random_resized_crop_flip(x, (8, 8), generator=g, scale=(1, 1), ratio=(1, 1))
        assert torch.equal(y, x) or torch.equal(y, x.flip(-1))
        flipped += int(torch.equal(y, x.flip(-1)))
    assert 70 <= flipped <= 130  # Binomial(200, 1/2): > 4 sigma margin


def test_crop_output_size_and_content():
    # a crop of a constant image is constant; the output has the requested size
    x = torch.full((2, 3, 20, 30), 0.25)
    y = random_resized_crop_flip(x, (16, 16), generator=torch.Generator().manual_seed(1))
    assert y.shape == (2, 3, 16, 16)
    assert torch.allclose(y, torch.full_like(y, 0.25), atol=1e-6)


def test_augmentation_is_reproducible_from_the_generator_seed():
    x = torch.rand(4, 3, 16, 16)
    a = random_resized_crop_flip(x, (16, 16), generator=torch.Generator().manual_seed(7))
    b = random_resized_crop_flip(x, (16, 16), generator=torch.Generator().manual_seed(7))
    c = random_resized_crop_flip(x, (16, 16), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------------------------- batching
def test_resize_batch_keeps_right_sized_batches_and_centre_crops_others():
    x = torch.rand(2, 3, 16, 16)
    assert resize_batch(x, (16, 16)) is x
    wide = torch.zeros(3, 16, 32)
    wide[:, :, 8:24] = 1.0  # the centre 16 columns are white
    out = resize_batch([wide, torch.rand(1, 8, 8)], (16, 16))
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out[0], torch.ones(3, 16, 16), atol=1e-6)


def test_input_spec_reads_the_model_and_normalises(tiny_clip):
    spec = input_spec(tiny_clip)
    assert spec.size == (32, 32)
    cfg = tiny_clip.model.visual.preprocess_cfg
    x = torch.rand(2, 3, 4, 4)
    expected = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    assert torch.allclose(spec.normalize(x), expected)
    assert InputSpec((4, 4)).normalize(x).shape == x.shape
    assert math.isclose(spec.mean[0], cfg["mean"][0])
