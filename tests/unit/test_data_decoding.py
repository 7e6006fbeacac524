"""Image decoding by each file's real range and orientation, files made the way cameras and libraries make them.

Every expectation is computed with numpy from the array the file was written from (not from the loader).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mmlens.data as mdata
from mmlens.data import ImageDataset, Item, MaskSizeError, decode_image, decode_item

RNG = np.random.default_rng(0)


def _rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img).astype(np.int64)


def _grey_as_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey.astype(np.int64)[..., None], 3, axis=-1)


def test_16bit_grey_png_is_scaled_by_its_range_not_clipped_white(tmp_path):
    deep = RNG.integers(0, 65536, size=(24, 40), dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(deep).save(path)  # Pillow writes a 16-bit greyscale PNG (as e.g. microscopes do)
    notes: list[str] = []
    got = _rgb(decode_image(path, notes=notes))
    expected = np.rint(deep / 257.0)  # 65535 -> 255
    np.testing.assert_array_equal(got, _grey_as_rgb(expected))
    assert (got == 255).mean() < 0.01  # the old decode: 99 % white
    assert notes == ["16-bit grey (I;16) scaled from 0..65535 to 0..255"]


def test_16bit_big_endian_tiff_and_16bit_pgm(tmp_path):
    deep = RNG.integers(0, 65536, size=(16, 12), dtype=np.uint16)
    expected = _grey_as_rgb(np.rint(deep / 257.0))
    tif = tmp_path / "scan.tif"  # big-endian 16-bit TIFF, as scanners write
    Image.frombytes("I;16B", (12, 16), deep.astype(">u2").tobytes()).save(tif)
    assert Image.open(tif).mode == "I;16B"
    np.testing.assert_array_equal(_rgb(decode_image(tif)), expected)
    pgm = tmp_path / "raw.pgm"  # netpbm P5 with maxval 65535: big-endian samples (Pillow reads it as mode I)
    pgm.write_bytes(b"P5\n12 16\n65535\n" + deep.astype(">u2").tobytes())
    assert Image.open(pgm).mode == "I"
    np.testing.assert_array_equal(_rgb(decode_image(pgm)), expected)


def test_float_tiff_in_unit_range_and_refusal_outside_known_ranges(tmp_path):
    f = RNG.random((8, 10), dtype=np.float32)
    path = tmp_path / "f.tif"
    Image.fromarray(f).save(path)
    np.testing.assert_array_equal(_rgb(decode_image(path)), _grey_as_rgb(np.rint(f.astype(np.float64) * 255)))
    signed = tmp_path / "signed.tif"
    Image.fromarray(np.array([[-5, 70000]], dtype=np.int32)).save(signed)
    with pytest.raises(mdata.ImageDecodeError, match=r"signed\.tif.*32-bit integer pixels \(mode I\) in \[-5, 70000\]"):
        decode_image(signed)


def test_palette_png_with_and_without_transparency(tmp_path):
    colours = np.array([[200, 30, 10], [0, 120, 250], [90, 90, 90], [255, 255, 0]], dtype=np.uint8)
    index = RNG.integers(0, 4, size=(20, 30))
    rgb = colours[index]
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)  # exact: 4 colours
    path = tmp_path / "pal.png"
    pal.save(path)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(_rgb(decode_image(path)), rgb)
    # transparency on one palette entry (as GIF/PNG icons are saved): that colour reads as black
    clear = int(np.asarray(pal)[index == 1][0])
    path = tmp_path / "pal_t.png"
    pal.save(path, transparency=clear)
    expected = rgb.astype(np.int64)
    expected[index == 1] = 0
    notes: list[str] = []
    np.testing.assert_array_equal(_rgb(decode_image(path, notes=notes)), expected)
    assert notes == ["transparent pixels (RGBA) composited over black"]


def test_cmyk_jpeg(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:8] = [100, 0, 40, 50]  # flat blocks survive JPEG almost exactly
    cmyk[8:] = [0, 200, 0, 10]
    path = tmp_path / "print.jpg"
    Image.fromarray(cmyk, "CMYK").save(path, quality=100)  # Pillow writes Adobe (inverted) CMYK JPEG
    assert Image.open(path).mode == "CMYK"
    c = cmyk.astype(np.float64)
    # device CMYK -> RGB: channel = (255 - C)(255 - K) / 255
    expected = (255 - c[..., :3]) * (255 - c[..., 3:]) / 255
    notes: list[str] = []
    np.testing.assert_allclose(_rgb(decode_image(path, notes=notes)), expected, atol=3)
    assert notes == ["CMYK converted to RGB without colour management"]


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_is_composited_over_black(tmp_path, mode):
    channels = 2 if mode == "LA" else 4
    arr = RNG.integers(0, 256, size=(12, 14, channels), dtype=np.uint8)
    arr[0, 0, -1] = 0  # a transparent pixel whose hidden colour is not black
    arr[0, 0, :-1] = 250
    path = tmp_path / f"a_{mode}.png"
    Image.fromarray(arr, mode).save(path)
    colour = arr[..., :-1].astype(np.float64)
    if mode == "LA":
        colour = np.repeat(colour, 3, axis=-1)
    expected = np.rint(colour * arr[..., -1:].astype(np.float64) / 255)
    got = _rgb(decode_image(path))
    np.testing.assert_array_equal(got, expected)
    assert got[0, 0].tolist() == [0, 0, 0]
    opaque = arr.copy()
    opaque[..., -1] = 255
    Image.fromarray(opaque, mode).save(path)
    np.testing.assert_array_equal(_rgb(decode_image(path)), np.rint(colour) if mode == "RGBA" else colour)


def test_one_bit_png(tmp_path):
    bits = RNG.random((9, 11)) > 0.5
    path = tmp_path / "bits.png"
    Image.fromarray(bits).save(path)
    assert Image.open(path).mode == "1"
    np.testing.assert_array_equal(_rgb(decode_image(path)), _grey_as_rgb(bits * 255))


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


# EXIF 2.3: how the stored pixels are turned for display (independent of Pillow's table)
_DISPLAY = {
    2: lambda a: a[:, ::-1],
    3: lambda a: np.rot90(a, 2),
    6: lambda a: np.rot90(a, -1),  # 90 degrees clockwise: the usual portrait photo
    8: lambda a: np.rot90(a, 1),
}


def _blocks(h: int, w: int) -> np.ndarray:
    """An asymmetric picture of flat 8x8 blocks (exact through JPEG at quality 100 up to a few levels)."""
    small = RNG.integers(0, 256, size=(h // 8, w // 8, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), np.uint8))


@pytest.mark.parametrize("orientation", sorted(_DISPLAY))
def test_exif_orientation_turns_the_image_and_its_mask_alike(tmp_path, orientation):
    raw = _blocks(24, 40)  # stored as the sensor read it: 40 wide, 24 high
    img = tmp_path / "photo.jpg"
    Image.fromarray(raw).save(img, quality=100, subsampling=0, exif=_exif(orientation))
    upright = _DISPLAY[orientation](raw)
    got = _rgb(decode_image(img))
    assert got.shape == upright.shape
    assert np.abs(got - upright.astype(np.int64)).max() <= 6
    # a mask drawn on the upright picture (as annotators see it) fits; so does one stored raw with the same tag
    shape = (raw[..., 0] > 128).astype(np.uint8)
    upright_mask, raw_tagged = tmp_path / "upright.png", tmp_path / "raw_tagged.png"
    Image.fromarray(_DISPLAY[orientation](shape)).save(upright_mask)
    Image.fromarray(shape).save(raw_tagged, exif=_exif(orientation))
    for mask_path in (upright_mask, raw_tagged):
        image, mask = decode_item(Item(str(img), 0, "cat", str(mask_path)))
        assert image.size == mask.size
        np.testing.assert_array_equal(np.asarray(mask), _DISPLAY[orientation](shape) * 255)
    # a mask drawn on the raw pixels without the tag does not fit a turned picture: refused, both files named
    if orientation in (6, 8):
        untagged = tmp_path / "raw.png"
        Image.fromarray(shape).save(untagged)
        with pytest.raises(MaskSizeError, match=r"Mask .*raw\.png is 40x24 pixels but its image .*photo\.jpg is 24x40"):
            decode_item(Item(str(img), 0, "cat", str(untagged)))


def test_mask_size_mismatch_is_refused_or_skipped_and_recorded(tmp_path):
    img, mask = tmp_path / "a.png", tmp_path / "a_mask.png"
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(img)
    Image.fromarray(np.ones((10, 10), np.uint8)).save(mask)
    items = [Item(str(img), 0, "cat", str(mask))]
    with pytest.raises(MaskSizeError, match=r"a_mask\.png is 10x10 pixels but its image .*a\.png is 12x10") as err:
        ImageDataset(items, ["cat"])[0]
    assert err.value.path == str(img) and err.value.mask_path == str(mask)
    ds = ImageDataset(items, ["cat"], on_error="skip")
    sample = ds[0]
    assert sample["failed"] and sample["path"] == str(img) and "a_mask.png is 10x10" in sample["error"]
    assert ds.failures == [(str(img), sample["error"])]


def test_dataset_tensor_of_a_16bit_png(tmp_path):
    deep = RNG.integers(0, 65536, size=(8, 8), dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(deep).save(path)
    image = ImageDataset([Item(str(path), 0, "cat")], ["cat"])[0]["image"]
    expected = torch.from_numpy(np.rint(deep / 257.0).astype(np.float32) / 255)
    for channel in image:
        torch.testing.assert_close(channel, expected)


def test_decompression_bomb_warning_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 - 1)  # just over the limit: a warning, not an error
    with pytest.warns(Image.DecompressionBombWarning, match=r"huge\.png: Image size \(4096 pixels\) exceeds"):
        decode_image(path)
