"""The toy CLIP's registered open_clip config and its word-level tokenizer."""

from __future__ import annotations

import open_clip
import pytest
import torch

from mmlens.models import toy


def test_register_is_idempotent_and_creates_an_open_clip_clip():
    toy.register()
    toy.register()
    assert toy.TOY_MODEL_NAME in open_clip.list_models()
    model = open_clip.create_model(toy.TOY_MODEL_NAME, pretrained=None)
    assert isinstance(model, open_clip.CLIP)
    assert model.visual.grid_size == (8, 8)
    assert model.context_length == toy.CONTEXT_LENGTH
    assert model.vocab_size == toy.VOCAB_SIZE
    tok = toy.get_tokenizer()
    with torch.no_grad():
        img = model.encode_image(torch.zeros(2, 3, 32, 32))  # toyworld renders 64x64, preprocess halves it
        txt = model.encode_text(tok(["a photo of a red star.", "a blue ring"]))
    assert img.shape == txt.shape == (2, toy.TOY_MODEL_CONFIG["embed_dim"])


def test_register_restores_a_tampered_config():
    from open_clip import factory

    toy.register()
    factory._MODEL_CONFIGS[toy.TOY_MODEL_NAME]["embed_dim"] = 7
    toy.register()
    assert factory._MODEL_CONFIGS[toy.TOY_MODEL_NAME]["embed_dim"] == toy.TOY_MODEL_CONFIG["embed_dim"]


def test_tokenizer_layout_hand_checked():
    tok = toy.get_tokenizer()
    v = tok.vocab
    ids = tok("A photo of a Red star.", context_length=12)
    expected = [tok.sot_token_id, v["a"], v["photo"], v["of"], v["a"], v["red"], v["star"], v["."]]
    expected += [tok.eot_token_id] + [0] * 3
    assert ids.dtype == torch.long
    assert ids[0].tolist() == expected
    # EOT is the largest id of the whole vocabulary, so open_clip's argmax pooling finds it
    assert tok.eot_token_id == max(v.values()) == toy.VOCAB_SIZE - 1
    assert int(ids[0].argmax()) == 8
    assert tok.pad_token_id == 0 and tok.sot_token_id != 0


def test_tokenizer_unknown_words_truncation_and_underscores():
    tok = toy.get_tokenizer()
    ids = tok(["zebra giraffe", "x x x x blue_ring."])
    assert ids.shape == (2, toy.CONTEXT_LENGTH)
    assert ids[0, 1:3].tolist() == [tok.unk_token_id, tok.unk_token_id]
    assert tok.unknown_words("zebra red") == ["zebra"]
    assert tok.decode(ids[1].tolist()) == "x x x x blue ring ."
    long = tok(" ".join(["red"] * 100), context_length=10)[0]
    assert long[0] == tok.sot_token_id and long[-1] == tok.eot_token_id
    assert (long[1:-1] == tok.vocab["red"]).all()
    assert tok("")[0, :2].tolist() == [tok.sot_token_id, tok.eot_token_id]
    with pytest.raises(ValueError, match="context_length"):
        tok("red", context_length=1)


def test_coop_and_maple_templates_are_in_vocabulary():
    tok = toy.get_tokenizer()
    templates = [
        "a photo of a {}.", "a photo of a {}, a type of pet.", "{} texture.",
        "a centered satellite photo of {}.", "a photo of a {}, a type of aircraft.",
        "a sketch of a {}.", "a drawing of a {}.", "itap of a {}.", "a bad photo of the {}.",
        "a photo of the large {}.", "a photo of the small {}.",
    ]
    for t in templates:
        assert tok.unknown_words(t.format("red star")) == [], t


def test_shipped_weights_are_a_plain_open_clip_state_dict_with_a_true_sidecar():
    import json

    from mmlens.train.pretrain_toy import sha256_file, zero_shot_accuracy

    assert toy.WEIGHTS_FILE.is_file(), "the toy CLIP weights must ship with the package"
    assert toy.WEIGHTS_FILE.stat().st_size <= 20 * 2**20
    meta = json.loads(toy.WEIGHTS_SIDECAR.read_text())
    assert meta["sha256"] == sha256_file(toy.WEIGHTS_FILE)
    assert meta["model"] == toy.TOY_MODEL_NAME and meta["pretrained_tag"] == toy.TAG
    assert meta["model_config"] == toy.TOY_MODEL_CONFIG
    toy.register()
    model = open_clip.create_model(toy.TOY_MODEL_NAME, pretrained=str(toy.WEIGHTS_FILE))
    model.eval()
    # the weights are trained: held-out photo images are recognised far above chance (1/96)
    acc = zero_shot_accuracy(model, toy.get_tokenizer(), "photo", n_per_class=1, seed=11)
    assert acc >= 60.0, acc
