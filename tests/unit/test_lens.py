"""The text lens (docs/lens.md): a planted β is read back in words; ranking and control against hand computations;
the linearised readout against the model's own LayerNorm; vocabulary files whose bad lines are named."""

from __future__ import annotations

import copy
from importlib import resources

import numpy as np
import pytest
import torch
import xarray as xr

import mmlens
from mmlens.cli import main
from mmlens.data import make_fake_tree
from mmlens.stats.lens import lens_markdown, rank_vocabulary
from mmlens.tracing.lens import (
    TEMPLATE,
    VocabularyError,
    build_vocabulary,
    load_vocabulary,
    readout_map,
)

CLASSES = ["cat", "dog", "red car"]
PHRASES = ["dark", "at night", "seen from above", "a sketch", "cluttered", "a bright sunny beach", "snow",
           "a close up photo", "blurry", "in the forest"]


# ----------------------------------------------------------------------------------------------- planted β
def _planted_model(tiny_clip, target: np.ndarray) -> mmlens.PromptedCLIP:
    """IVLP on a copy of the tiny CLIP whose vision block 1 is hand-built so that β at [cls] = p / N.

    Block 1: W_Q = W_K = 0 (every score 0: uniform attention, α = 1/N for every head, N tokens), W_V = I,
    b_V = 0, W_O = I, b_O = 0, ln_1 the identity on centred unit-variance inputs. The injected prompt p (one
    token, layer 1) is chosen so that the readout maps it onto ``target``: p solves
    (γ ⊙ center(p)) @ proj = target, then is centred and scaled to unit variance (which changes neither the
    direction nor, since the readout centres, its image).
    """
    clip = copy.deepcopy(tiny_clip.model)
    block = clip.visual.transformer.resblocks[1]
    width = block.attn.embed_dim
    with torch.no_grad():
        w = torch.zeros(3 * width, width)
        w[2 * width:] = torch.eye(width)
        block.attn.in_proj_weight.copy_(w)
        block.attn.in_proj_bias.zero_()
        block.attn.out_proj.weight.copy_(torch.eye(width))
        block.attn.out_proj.bias.zero_()
        block.ln_1.weight.fill_(1.0)
        block.ln_1.bias.zero_()
        # a γ of the final LayerNorm far from 1, so that a readout without γ would miss the target
        clip.visual.ln_post.weight.copy_(torch.linspace(0.2, 3.0, width))
    gamma = clip.visual.ln_post.weight.detach().double().numpy()
    proj = clip.visual.proj.detach().double().numpy()
    center = np.eye(width) - 1.0 / width
    m = center @ np.diag(gamma) @ proj  # u @ m = the readout of u
    u, *_ = np.linalg.lstsq(m.T, target, rcond=None)
    np.testing.assert_allclose(u @ m, target, atol=1e-8)  # the readout reaches the target exactly
    p = (u - u.mean()) / (u - u.mean()).std()
    model = mmlens.PromptedCLIP(clip, CLASSES, method="ivlp", n_ctx=1, depth=2, init_seed=0,
                                tokenizer=tiny_clip.tokenizer)
    with torch.no_grad():
        model.prompt_learner.compound_prompts_visual[0].copy_(torch.tensor(p, dtype=torch.float32)[None])
    return model.eval()


def _text_embeddings(tiny_clip, texts: list[str]) -> np.ndarray:
    """Unit zero-shot text features from open_clip's own encode_text (the reference the lens must match)."""
    with torch.no_grad():
        feats = tiny_clip.model.encode_text(tiny_clip.tokenizer([TEMPLATE.format(t) for t in texts]))
    feats = feats.double().numpy()
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def _row(ds: xr.Dataset, **sel) -> int:
    mask = np.ones(ds.sizes["direction"], bool)
    for k, v in sel.items():
        mask &= ds[k].values.astype(type(v)) == v
    (index,) = np.flatnonzero(mask)
    return int(index)


@pytest.mark.parametrize("center", [True, False])
def test_planted_bias_is_read_back_as_its_phrase(tiny_clip, center):
    texts = CLASSES + PHRASES
    emb = _text_embeddings(tiny_clip, texts)
    chosen = texts.index("seen from above")
    target = emb[chosen] - emb.mean(0) if center else emb[chosen]
    model = _planted_model(tiny_clip, target)
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ds = mmlens.lens(model, images, vocabulary=PHRASES, top=3, n_shuffles=300, center=center, progress=False)
    for kind, token in (("layer_bias", -1), ("prompt_value", 0)):
        i = _row(ds, tower="vision", kind=kind, layer=1, prompt_token=token)
        assert ds["phrase"].values[i, 0] == "seen from above"
        assert ds["source"].values[i, 0] == "phrase" and ds["section"].values[i, 0] == ""
        assert float(ds["cosine"].values[i, 0]) > 0.9999
        assert float(ds["control_p"].values[i]) < 0.01 and float(ds["control_cosine"].values[i]) < 0.95
        assert float(ds["readout_control_p"].values[i]) < 0.01
        # the kept mapped vector is the planted target's direction
        joint = ds["joint_direction"].values[i]
        np.testing.assert_allclose(joint / np.linalg.norm(joint), target / np.linalg.norm(target), atol=1e-4)
    # β = α p W_O with α = 1/N exactly (uniform attention over [cls], the 16 patches and the prompt)
    i = _row(ds, tower="vision", kind="layer_bias", layer=1)
    p = model.prompt_learner.compound_prompts_visual[0].detach().double()[0]
    ln_p = torch.nn.functional.layer_norm(p, p.shape)  # ln_1 as built: the identity up to its eps
    np.testing.assert_allclose(float(ds["norm"].values[i]), float(ln_p.norm()) / 18, rtol=1e-4)
    assert ds.attrs["template"] == TEMPLATE and len(ds.attrs["vocabulary_sha256"]) == 64
    assert ds.attrs["centered"] == int(center) and ds.attrs["n_images"] == 6


@pytest.mark.parametrize("half", ["bf16_autocast", "fp16_weights"])
def test_planted_bias_is_read_back_in_half_precision(tiny_clip, half):
    """The GPU paths, emulated on CPU: bfloat16 autocast, float16 weights. The lens stays float32 inside."""
    texts = CLASSES + PHRASES
    emb = _text_embeddings(tiny_clip, texts)
    chosen = texts.index("a sketch")
    model = _planted_model(tiny_clip, emb[chosen] - emb.mean(0))
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    if half == "fp16_weights":
        model = model.half()
        ds = mmlens.lens(model, images.half(), vocabulary=PHRASES, top=2, n_shuffles=50, progress=False)
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ds = mmlens.lens(model, images, vocabulary=PHRASES, top=2, n_shuffles=50, progress=False)
    i = _row(ds, tower="vision", kind="layer_bias", layer=1)
    assert ds["phrase"].values[i, 0] == "a sketch" and float(ds["cosine"].values[i, 0]) > 0.99
    assert ds["cosine"].dtype == np.float32 and ds.attrs["compute_dtype"] in ("bfloat16", "float16")


def test_an_unrelated_planted_direction_does_not_rank_the_phrase_first(tiny_clip):
    texts = CLASSES + PHRASES
    emb = _text_embeddings(tiny_clip, texts)
    centred = emb - emb.mean(0)
    chosen = centred[texts.index("seen from above")]
    # a direction orthogonal to the chosen phrase's (centred) embedding
    rng = np.random.default_rng(3)
    other = rng.normal(size=emb.shape[1])
    other -= other @ chosen / (chosen @ chosen) * chosen
    model = _planted_model(tiny_clip, other)
    ds = mmlens.lens(model, torch.zeros(2, 3, 32, 32), vocabulary=PHRASES, top=len(texts), n_shuffles=50,
                     progress=False)
    i = _row(ds, tower="vision", kind="layer_bias", layer=1)
    assert ds["phrase"].values[i, 0] != "seen from above"
    where = list(ds["phrase"].values[i]).index("seen from above")
    assert abs(float(ds["cosine"].values[i, where])) < 1e-4


# --------------------------------------------------------------------------------------- ranking and control
def _embeddings(e: np.ndarray, names: list[str]) -> xr.DataArray:
    return xr.DataArray(e, dims=("entry", "embed"),
                        coords={"phrase": ("entry", names), "source": ("entry", ["phrase"] * len(names))})


def test_ranking_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(12, 8))
    d = rng.normal(size=(4, 8))
    names = [f"w{i}" for i in range(12)]
    for center in (False, True):
        ds = rank_vocabulary(xr.DataArray(d, dims=("direction", "embed")), _embeddings(e, names), top=4,
                             n_shuffles=0, center=center)
        for i in range(4):
            unit = [row / np.sqrt(sum(x * x for x in row)) for row in e]
            if center:
                mean = [sum(r[k] for r in unit) / len(unit) for k in range(8)]
                unit = [[r[k] - mean[k] for k in range(8)] for r in unit]
            cos = [sum(a * b for a, b in zip(d[i], r, strict=True))
                   / np.sqrt(sum(a * a for a in d[i]) * sum(b * b for b in r)) for r in unit]
            best = sorted(range(12), key=lambda j: -cos[j])[:4]
            assert list(ds["phrase"].values[i]) == [names[j] for j in best]
            np.testing.assert_allclose(ds["cosine"].values[i], [cos[j] for j in best], rtol=1e-5)
        assert np.isnan(ds["control_p"].values).all()


def test_control_of_a_direction_against_a_basis():
    # vocabulary = two basis vectors of a 50-dim space. Any permutation of d has the same largest coordinate,
    # so against the full basis the shuffled top-1 always equals the observed one: p = 1.
    dim = 50
    d = np.linspace(0.1, 1.0, dim)
    full = rank_vocabulary(xr.DataArray(d[None], dims=("direction", "embed")),
                           _embeddings(np.eye(dim), [str(i) for i in range(dim)]), top=1, n_shuffles=200,
                           center=False)
    assert float(full["control_p"][0]) == 1.0
    np.testing.assert_allclose(float(full["control_cosine"][0]), 1.0 / np.linalg.norm(d), rtol=1e-6)
    # one large coordinate (index 0) among small noise, two basis vectors e0, e1: a shuffle reaches the
    # observed top-1 only when it puts the large coordinate on 0 or 1, probability 2/50
    d = np.r_[1.0, np.full(dim - 1, 1e-3)]
    two = rank_vocabulary(xr.DataArray(d[None], dims=("direction", "embed")),
                          _embeddings(np.eye(dim)[:2], ["e0", "e1"]), top=2, n_shuffles=4000, center=False)
    assert two["phrase"].values[0, 0] == "e0"
    assert 0.03 < float(two["control_p"][0]) < 0.05
    assert float(two["control_cosine"][0]) < 0.01  # 96 % of shuffles see only the noise
    again = rank_vocabulary(xr.DataArray(d[None], dims=("direction", "embed")),
                            _embeddings(np.eye(dim)[:2], ["e0", "e1"]), top=2, n_shuffles=4000, center=False)
    assert float(again["control_p"][0]) == float(two["control_p"][0])  # seeded


def test_readout_control_compares_each_direction_with_the_null_samples_of_its_tower():
    e = _embeddings(np.eye(2), ["e0", "e1"])
    d = xr.DataArray([[1.0, 0.1], [1.0, 0.1]], dims=("direction", "embed"),
                     coords={"tower": ("direction", ["vision", "text"])})
    # vision samples: top-1 cosines 1, 0.707, 0.1/|(.1, -1)|≈0.0995 (e0) -> one of three reaches 0.995;
    # text samples: 1 and 1 -> both reach it
    null = xr.DataArray([[1.0, 0.0], [1.0, 1.0], [0.1, -1.0], [0.0, 1.0], [0.0, 2.0]], dims=("sample", "embed"),
                        coords={"tower": ("sample", ["vision", "vision", "vision", "text", "text"])})
    ds = rank_vocabulary(d, e, top=1, n_shuffles=0, center=False, null=null)
    np.testing.assert_allclose(ds["readout_control_p"].values, [1 / 3, 1.0], rtol=1e-6)
    np.testing.assert_allclose(ds["readout_control_cosine"].values,
                               [np.quantile([1.0, 2 ** -0.5, 0.1 / np.hypot(0.1, 1.0)], 0.95), 1.0], rtol=1e-6)
    assert ds.attrs["n_null"] == 2  # the smaller pool


def test_rank_vocabulary_rejects_mismatched_spaces_and_keeps_direction_coords():
    e = _embeddings(np.eye(3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="same joint space"):
        rank_vocabulary(xr.DataArray(np.ones((1, 4)), dims=("direction", "embed")), e)
    d = xr.DataArray([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dims=("direction", "embed"),
                     coords={"layer": ("direction", [3, 4])})
    ds = rank_vocabulary(d, e, top=5, n_shuffles=10, center=False)
    assert ds.sizes["rank"] == 3 and ds["layer"].values.tolist() == [3, 4]
    assert np.isnan(ds["cosine"].values[0]).all() and ds["phrase"].values[1, 0] == "b"  # a zero direction


# ------------------------------------------------------------------------------------------------ readout
def test_readout_map_is_the_linearised_readout_of_the_model(tiny_clip):
    """proj(ln_post(Σ u_k)) = Σ readout_map(u_k) / σ + proj(b): the map is exact once σ is frozen."""
    model = mmlens.PromptedCLIP(tiny_clip, CLASSES, method="maple", depth=2, init_seed=0)
    visual = model.clip.visual
    with torch.no_grad():
        visual.ln_post.weight.uniform_(0.5, 1.5)  # a non-trivial γ and b (a copy is not needed: restored below)
        visual.ln_post.bias.normal_()
    try:
        parts = torch.randn(4, 32, dtype=torch.float32, generator=torch.Generator().manual_seed(1))
        x = parts.sum(0)
        with torch.no_grad():
            actual = visual.ln_post(x[None])[0] @ visual.proj
            sigma = torch.sqrt(x.var(unbiased=False) + visual.ln_post.eps)
            linear = readout_map(model, "vision", parts).sum(0) / sigma + visual.ln_post.bias @ visual.proj
        torch.testing.assert_close(linear, actual, rtol=1e-5, atol=1e-5)
    finally:
        with torch.no_grad():
            visual.ln_post.weight.fill_(1.0)
            visual.ln_post.bias.zero_()


def test_bias_tuning_is_read_as_its_learned_b(tiny_clip):
    model = mmlens.PromptedCLIP(tiny_clip, CLASSES, method="bias", depth=2, init_seed=0)
    with torch.no_grad():
        model.prompt_learner.visual_bias.normal_()
        model.prompt_learner.text_bias.normal_()
    ds = mmlens.lens(model, torch.zeros(2, 3, 32, 32), vocabulary=PHRASES, n_shuffles=10, progress=False)
    assert set(ds["kind"].values) == {"layer_bias"} and str(ds["bias_source"].values) == "learned"
    assert sorted(zip(ds["tower"].values, ds["layer"].values, strict=True)) == \
        [("text", 0), ("text", 1), ("vision", 0), ("vision", 1)]
    i = _row(ds, tower="vision", kind="layer_bias", layer=1)
    np.testing.assert_allclose(float(ds["norm"].values[i]),
                               float(model.prompt_learner.visual_bias[1].detach().norm()), rtol=1e-5)
    assert "learned b" in lens_markdown(ds)


# ----------------------------------------------------------------------------------------------- vocabulary
def test_shipped_vocabulary_ships_and_tokenises_on_the_toy_and_open_clip_tokenizers(tiny_clip):
    from mmlens.models.toy import get_tokenizer

    shipped = resources.files("mmlens") / "assets" / "lens_vocabulary.txt"
    assert shipped.is_file()
    toy = load_vocabulary(tokenizer=get_tokenizer())
    sections = {p.section for p in toy}
    assert {"lighting", "colour", "texture", "viewpoint", "style", "background", "clutter"} <= sections
    assert {"dark", "at night", "seen from above", "a sketch", "cluttered"} <= {p.text for p in toy}
    assert [p.text for p in load_vocabulary(tokenizer=tiny_clip.tokenizer)] == [p.text for p in toy]


@pytest.mark.parametrize(("text", "line", "message"), [
    ("[lighting]\ndark\n# fine\ntwilight glow\n", 4, "unknown word(s) 'twilight'"),
    ("dark\n" + "red " * 40 + "\n", 2, "more than the context length 32"),
    ("dark\n[lighting\nnight\n", 2, "malformed section header"),
    ("dark\nnight\n  Dark \n", 3, "listed already on line 1"),
    ("dark\nni\x07ght\n", 2, "control character"),
])
def test_vocabulary_errors_name_the_file_and_line(tmp_path, text, line, message):
    from mmlens.models.toy import get_tokenizer

    path = tmp_path / "words.txt"
    path.write_text(text)
    with pytest.raises(VocabularyError) as err:
        load_vocabulary(path, tokenizer=get_tokenizer())
    assert f"{path}, line {line}:" in str(err.value) and message in str(err.value)


def test_vocabulary_errors_for_bytes_empty_files_and_long_lines_on_open_clip(tmp_path, tiny_clip):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"dark\ncaf\xe9\n")
    with pytest.raises(VocabularyError, match=r"latin1.txt, line 2: not UTF-8"):
        load_vocabulary(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n[section]\n\n")
    with pytest.raises(VocabularyError, match="no phrases"):
        load_vocabulary(empty)
    long = tmp_path / "long.txt"
    long.write_text("dark\n" + "a very long phrase " * 6 + "\n")  # the tiny CLIP's context is 20 tokens
    with pytest.raises(VocabularyError, match=r"long.txt, line 2: .*more than the context length 20"):
        load_vocabulary(long, tokenizer=tiny_clip.tokenizer)
    with pytest.raises(VocabularyError, match="Cannot read"):
        load_vocabulary(tmp_path / "missing.txt")


def test_build_vocabulary_keeps_each_text_once_by_source_precedence():
    entries = build_vocabulary(["red_star", "blue ring"], ["dark", "blue  RING", "seen from above"],
                               ["red star", "green cross"])
    assert [(p.text, p.source) for p in entries] == [
        ("red star", "classname"), ("blue ring", "classname"), ("dark", "phrase"), ("seen from above", "phrase"),
        ("green cross", "other_classname")]


# ------------------------------------------------------------------------------------------------------ CLI
def test_lens_cli_writes_netcdf_and_names_bad_input(tmp_path, tiny_clip, capsys):
    make_fake_tree(tmp_path / "data", ["EuroSAT"], image_size=40, per_class={"train": 1, "val": 1, "test": 1})
    vocab = tmp_path / "v.txt"
    vocab.write_text("[style]\na sketch\nseen from above\n")
    out = tmp_path / "lens.nc"
    args = ["lens", "--model", "test-tiny", "--pretrained", "random", "--method", "maple", "--depth", "2",
            "--dataset", "EuroSAT", "--data-root", str(tmp_path / "data"), "--limit", "4", "--batch-size", "2",
            "--vocabulary", str(vocab), "--shuffles", "20", "--top", "3", "--precision", "bf16", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "initialisation" in printed and "### vision tower" in printed
    ds = xr.open_dataset(out, engine="h5netcdf")
    assert ds.sizes["rank"] == 3 and ds.attrs["dataset"] == "EuroSAT" and ds.attrs["n_images"] == 4
    assert ds.attrs["compute_dtype"] == "bfloat16" and ds["cosine"].dtype == np.float32
    assert set(ds["source"].values.ravel()) <= {"classname", "phrase", "other_classname"}
    ds.close()
    assert main([*args[:-2], "--out", str(tmp_path / "lens.zarr")]) == 2
    assert "give a file name ending in .nc" in capsys.readouterr().err
    assert main([*args[:-2], "--prompts", str(tmp_path / "none.safetensors"), "--out", str(out)]) == 2
    assert "--prompts" in capsys.readouterr().err
    vocab.write_text("a sketch\n" + "word " * 30 + "\n")
    assert main(args) == 2
    assert f"{vocab}, line 2" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ findings page
@pytest.mark.slow
def test_pipeline_lens_step_feeds_the_findings_section(tmp_path):
    """`mmlens reproduce`'s lens step writes the lens of a run, and the findings page renders it."""
    from mmlens.experiments._findings import lens_section
    from mmlens.experiments._pipeline import Config, _Runner

    cfg = Config(out=str(tmp_path), datasets=["ToySatellite"], seeds=[1], shots=1, epochs=1, max_images=8,
                 progress=False, methods=["maple"])
    runner = _Runner(cfg)
    runner.prompts("ToySatellite", 1, "maple")
    info = runner.lens("ToySatellite", 1)
    ds = xr.open_dataset(info["lens"], engine="h5netcdf").load()
    assert info["images"] == 8 and ds.attrs["dataset"] == "ToySatellite" and ds.attrs["method"] == "maple"
    assert set(ds["source"].values.ravel()) <= {"classname", "phrase", "other_classname"}
    assert (ds["layer_kind"].values.astype(str) != "none").all()
    text = "\n".join(lens_section({"ToySatellite": ds}))
    assert text.startswith("## What the prompts learn") and "### ToySatellite" in text
    assert "#### vision tower" in text and "#### text tower" in text
    top = str(ds["phrase"].where((ds.kind == "layer_bias") & (ds.tower == "vision"), drop=True).values[0, 0])
    assert top in text
    assert lens_section({}) == []
