"""A prompt file is checked against the hashes it records: one flipped bit anywhere is refused, naming the file."""

from __future__ import annotations

import json
import struct

import pytest

from mmlens import PromptedCLIP, load_prompts, save_prompts
from mmlens.models.checkpoints import read_prompt_file

CLASSES = ["cat", "dog", "owl"]


@pytest.fixture
def prompt_file(tmp_path, tiny_clip):
    model = PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=1)
    return save_prompts(model, tmp_path / "p.safetensors", extra={"training": {"seed": 4}})


def _flip(path, byte: int, bit: int) -> bytes:
    data = bytearray(path.read_bytes())
    original = bytes(data)
    data[byte] ^= 1 << bit
    path.write_bytes(bytes(data))
    return original


def _regions(path) -> dict[str, tuple[int, int]]:
    """Byte ranges of a safetensors file: the 8-byte header length, the JSON header, the tensor data."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return {"length": (0, 8), "header": (8, 8 + n), "data": (8 + n, len(raw))}


def test_intact_file_loads(prompt_file, tiny_clip):
    state, meta = read_prompt_file(prompt_file)
    assert meta["training"]["seed"] == 4 and len(meta["metadata_sha256"]) == 64
    assert load_prompts(prompt_file, tiny_clip).classnames == CLASSES


def test_one_flipped_bit_in_a_tensor_is_refused(prompt_file, tiny_clip):
    start, end = _regions(prompt_file)["data"]
    _flip(prompt_file, (start + end) // 2, 3)
    with pytest.raises(ValueError, match=rf"{prompt_file} is damaged: its prompt tensors hash to .* but the file "
                                         r"records prompt_sha256"):
        load_prompts(prompt_file, tiny_clip)


def test_one_flipped_bit_in_a_class_name_is_refused(prompt_file, tiny_clip):
    raw = prompt_file.read_bytes()
    at = raw.index(b"owl")
    _flip(prompt_file, at, 1)  # "owl" -> "mwl": still valid JSON, a different class
    with pytest.raises(ValueError, match=rf"{prompt_file} is damaged: its metadata .* does not match the "
                                         r"metadata_sha256"):
        load_prompts(prompt_file, tiny_clip)


def test_every_byte_with_one_flipped_bit_is_refused(prompt_file):
    """Flip one bit (a different one per byte) in every byte of the length and JSON header, where a flip can
    hit a hash's key or the format, and in every 61st byte of the tensor data: each damaged copy is refused."""
    size = prompt_file.stat().st_size
    regions = _regions(prompt_file)
    accepted = []
    for byte in [*range(regions["header"][1]), *range(regions["data"][0], size, 61)]:
        original = _flip(prompt_file, byte, byte % 8)
        try:
            read_prompt_file(prompt_file)
            accepted.append(byte)
        except ValueError as err:
            assert str(prompt_file) in str(err)
        finally:
            prompt_file.write_bytes(original)
    assert accepted == [], f"flips accepted at bytes {accepted[:10]} of {size}"


def test_format_1_files_are_checked_on_their_tensors(tmp_path, tiny_clip):
    """mmlens-prompts/1 files (written before the metadata hash) still load, their tensors checked; a /2 file
    must record both hashes."""
    from safetensors.torch import save_file

    model = PromptedCLIP(tiny_clip, CLASSES, method="coop", init_seed=2)
    path = save_prompts(model, tmp_path / "p.safetensors")
    state, meta = read_prompt_file(path)
    assert meta["format"] == "mmlens-prompts/2"
    del meta["metadata_sha256"]
    save_file(state, str(path), metadata={"mmlens": json.dumps(meta)})
    with pytest.raises(ValueError, match="lacks metadata_sha256, which every mmlens-prompts/2 file records"):
        load_prompts(path, tiny_clip)
    meta["format"] = "mmlens-prompts/1"
    save_file(state, str(path), metadata={"mmlens": json.dumps(meta)})
    assert load_prompts(path, tiny_clip).method == "coop"
    save_file({**state, "ctx": state["ctx"] + 1}, str(path), metadata={"mmlens": json.dumps(meta)})
    with pytest.raises(ValueError, match="prompt_sha256"):
        load_prompts(path, tiny_clip)
