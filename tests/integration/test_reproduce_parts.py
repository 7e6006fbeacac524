"""The parts of `mmlens reproduce` on hand-built inputs with known answers (fast, no model)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from mmlens.experiments._findings import evaluate_claims, find_results_table
from mmlens.experiments._ledger import Ledger, SettingsMismatch
from mmlens.experiments._sources import balanced_subset, find_maple_checkpoint, resolve_datasets
from mmlens.models.checkpoints import dassl_hparams
from mmlens.store.study import combine_runs
from mmlens.store.synthetic import example_tree


# ---------------------------------------------------------------------------------------------- study
# (the pipeline stacks its stores with mmlens.store.study.combine_runs, tested in tests/unit/test_store_study.py;
# here: what the pipeline relies on beyond that)
def test_combine_runs_pads_and_keeps_the_data_of_keyed_runs():
    from mmlens.stats import bias_consistency

    a, b = example_tree(n_images=5, seed=1), example_tree(n_images=3, n_classes=4, seed=2)
    study = combine_runs({("a", 1): a, ("a", 2): a, ("b", 1): b, ("b", 2): b})
    v = study["vision"].to_dataset()
    assert v["prompt_mass"].dims[:2] == ("dataset", "seed")
    assert v["label"].dims == ("dataset", "image")
    assert v["label"].sel(dataset="b").values.tolist()[3:] == [-1, -1]  # padding
    assert np.isnan(v["prompt_mass"].sel(dataset="b", seed=1, image=4)).all()
    np.testing.assert_array_equal(v["prompt_mass"].sel(dataset="a", seed=2).values,
                                  a["vision"]["prompt_mass"].values)  # the data is carried unchanged
    np.testing.assert_array_equal(v["foreground"].sel(dataset="a").values, a["vision"]["foreground"].values)
    t = study["text"].to_dataset()
    assert t["classname"].sel(dataset="b").values.tolist()[4:] == ["", ""]
    cons = bias_consistency(study).sel(variant="full", measure="across_datasets")
    assert np.isfinite(cons.sel(dataset="a", seed=1)).all()  # two datasets: across-dataset cosines exist


def test_combine_runs_refuses_different_images_per_seed():
    a = example_tree(n_images=4)
    b = a.copy()
    paths = b["vision"].to_dataset()["path"].values.copy()
    paths[0] = "elsewhere.png"
    b["vision"] = xr.DataTree(b["vision"].to_dataset().assign_coords(path=("image", paths)))
    with pytest.raises(ValueError, match="same images"):
        combine_runs({("a", 1): a, ("a", 2): b})


def test_combine_runs_fills_missing_foreground():
    a = example_tree(n_images=3)
    b = example_tree(n_images=3, seed=3)
    b["vision"] = xr.DataTree(b["vision"].to_dataset().drop_vars("foreground"))
    v = combine_runs({("a", 1): a, ("b", 1): b})["vision"].to_dataset()
    assert np.isnan(v["foreground"].sel(dataset="b")).all()
    assert np.isfinite(v["foreground"].sel(dataset="a")).all()


def test_combine_runs_refuses_runs_of_different_methods():
    a, b = example_tree(n_images=3), example_tree(n_images=3, seed=3)
    b.attrs["method"] = "coop"
    with pytest.raises(ValueError, match="different method"):
        combine_runs({("a", 1): a, ("b", 1): b})


# ---------------------------------------------------------------------------------------------- ledger
def test_ledger_refuses_other_settings(tmp_path):
    led = Ledger(tmp_path, {"epochs": 5, "model": "m"})
    led.finish("a", seconds=1.5, outputs={"x": "y"}, inputs={"datasets": ["A"]})
    again = Ledger(tmp_path, {"epochs": 5, "model": "m"})
    assert again.done("a") and again.done("a", {"datasets": ["A"]}) and not again.done("a", {"datasets": ["B"]})
    with pytest.raises(SettingsMismatch, match="epochs: folder 5, this run 3"):
        Ledger(tmp_path, {"epochs": 3, "model": "m"})
    assert not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------------------------------------- sources
def test_resolve_datasets():
    assert resolve_datasets(None, None) == ["ToySatellite", "ToySketch", "ToyTexture", "ToyLowLight",
                                            "ToyFineGrained", "ToyClutter"]
    with pytest.raises(ValueError, match="--data-root"):
        resolve_datasets(["EuroSAT"], None)


def test_find_maple_checkpoint_layout(tmp_path):
    for epoch in (2, 5):
        p = tmp_path / "OXFORD_PETS" / "base" / "seed2" / "MultiModalPromptLearner" / f"model.pth.tar-{epoch}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    found = find_maple_checkpoint(tmp_path, "OxfordPets", 2)
    assert found.name == "model.pth.tar-5" and found.parts[-5] == "OXFORD_PETS"
    with pytest.raises(FileNotFoundError, match="seed1"):
        find_maple_checkpoint(tmp_path, "OxfordPets", 1)
    with pytest.raises(FileNotFoundError, match="eurosat"):
        find_maple_checkpoint(tmp_path, "EuroSAT", 2)


def test_maple_hparams_from_published_shapes():
    state = {"ctx": torch.zeros(2, 512), **{f"compound_prompts_text.{k}": torch.zeros(2, 512) for k in range(8)}}
    assert dassl_hparams(state, "maple") == {"n_ctx": 2, "depth": 9, "ctx_init": "a photo of a"}
    with pytest.raises(ValueError, match="ctx"):
        dassl_hparams({"visual_ctx": torch.zeros(2, 8)}, "maple")


def test_balanced_subset_takes_classes_in_turn():
    from mmlens.data.toyworld import build_in_memory

    ds = build_in_memory("satellite", "test", subset="base")  # 16 classes x 8 images
    sub = balanced_subset(ds, 20)
    labels = [sub[i]["label"] for i in range(len(sub))]
    assert len(sub) == 20 and sorted(set(labels)) == list(range(16))
    assert max(np.bincount(labels)) == 2 and sub.classnames == ds.classnames
    assert balanced_subset(ds, None) is ds


# ---------------------------------------------------------------------------------------------- claims
def _row(statistic, tower, measure, variant, layers, mean, low, high, split="base", kind=None, method="maple"):
    return {"statistic": statistic, "tower": tower, "method": method, "measure": measure, "variant": variant,
            "split": split, "dataset": "all", "layers": layers, "layer_kind": kind or layers, "mean": mean,
            "low": low, "high": high, "n_datasets": 3, "n_seeds": 3, "n_items": 100}


def _table(share=0.9, gain=(10, 8, 12), bias_mid=(3, 1, 5), redis_mid=(-3, -5, -1), bg=(0.1, 0.05, 0.15),
           shifts=((0.0, 0.0, 0.0), (0.02, 0.01, 0.03)), words=(-0.1, -0.15, -0.05), versus=(0.2, 0.1, 0.3),
           tuning=(-1.0, -1.5, -0.5), cosine=(0.6, 0.5, 0.7), other_cosine=(0.1, 0.0, 0.2)):
    both = "maple, bias"
    rows = [
        _row("bias_consistency", "vision", "dataset_mean_share", "full", "injected", share, share - 0.05,
             share + 0.05),
        _row("bias_consistency", "vision", "across_classes", "full", "injected", 0.8, 0.75, 0.85),
        _row("bias_consistency", "vision", "across_datasets", "full", "injected", 0.2, 0.1, 0.3),
        _row("bias_consistency", "vision", "dataset_mean_share", "full", "injected", 1.0, 1.0, 1.0, method="bias"),
        _row("accuracy", "logits", "top1", "full - zeroshot", "", *gain, kind=""),
        _row("accuracy", "logits", "top1", "bias_only - midpoint", "", *bias_mid, kind=""),
        _row("accuracy", "logits", "top1", "redistribution_only - midpoint", "", *redis_mid, kind=""),
        _row("prompt_background_similarity", "vision", "key_background_minus_foreground", "full", "injected", *bg),
        _row("prompt_background_similarity", "vision", "value_background_minus_foreground", "full", "injected",
             *bg),
        _row("text_reliance", "text", "classname", "full - zeroshot", "5", *words, kind="carried"),
        _row("text_reliance", "text", "prompt", "full", "5", 0.3, 0.25, 0.35, kind="carried"),  # > 0 always
        _row("text_reliance", "text", "prompt_minus_classname", "full", "5", *versus, kind="carried"),
        _row("bias_alignment", "vision", "same_dataset", "full", "injected", *cosine, method=both),
        _row("bias_alignment", "vision", "other_datasets", "full", "injected", *other_cosine, method=both),
        _row("bias_alignment", "vision", "chance", "full", "injected", 0.1, 0.1, 0.1, method=both),
    ]
    for split in ("base", "novel"):
        rows.append({**_row("accuracy", "evaluate", "top1", "bias - maple", "", *tuning, split=split, kind="",
                            method="bias - maple")})
    for layer, s in enumerate(shifts):
        rows.append(_row("foreground_attention", "vision", "share", "full - zeroshot", str(layer), *s,
                         kind="injected"))
    return pd.DataFrame(rows)


def _verdicts(table):
    acc = xr.Dataset(coords={"method": ["maple"]})
    return {c.key: c.verdict for c in evaluate_claims(table, acc, {"bias_tuning_table": None})}


def test_claims_hold_on_a_table_built_to_satisfy_them():
    assert _verdicts(_table()) == {"dataset_bias": "holds", "bias_route": "holds", "bias_tuning": "holds",
                                   "bias_direction": "holds", "foreground_shift": "holds",
                                   "background_prompts": "holds", "text_reliance": "holds"}


def test_every_claim_fails_when_the_numbers_say_so():
    v = _verdicts(_table(share=0.3, bias_mid=(-3, -5, -1), bg=(-0.1, -0.15, -0.05),
                         shifts=((0.0, 0.0, 0.0), (0.005, 0.001, 0.009)), words=(0.1, 0.05, 0.15),
                         versus=(-0.2, -0.3, -0.1), tuning=(-5.0, -7.0, -3.0), cosine=(0.2, 0.1, 0.3)))
    assert v == {"dataset_bias": "does not hold", "bias_route": "does not hold", "bias_tuning": "does not hold",
                 "bias_direction": "does not hold",  # lower end 0.1 is below 3/sqrt(C) = 0.3
                 "foreground_shift": "does not hold",  # significant but below the 0.01 minimum shift
                 "background_prompts": "does not hold",
                 "text_reliance": "does not hold"}  # attention on the prompts is > 0, which decides nothing
    assert _verdicts(_table(gain=(1, -2, 4)))["bias_route"] == "not tested here"  # no gain to apportion
    # a direction shared by all datasets (same-dataset cosine not above the other datasets') is only partly
    assert _verdicts(_table(other_cosine=(0.6, 0.5, 0.7)))["bias_direction"] == "partly holds"
    assert _verdicts(_table(versus=(-0.2, -0.3, -0.1)))["text_reliance"] == "partly holds"


def test_identities_are_checks_not_evidence():
    from mmlens.experiments._findings import findings_markdown, sanity_checks

    # a shift in the first prompted block no longer decides the claim: it fails the sanity check instead
    broken = _table(shifts=((0.03, 0.02, 0.04), (0.02, 0.01, 0.03)))
    assert _verdicts(broken)["foreground_shift"] == "holds"
    assert [k.status for k in sanity_checks(broken)] == ["FAILED", "passed"]
    assert [k.status for k in sanity_checks(_table())] == ["passed", "passed"]
    no_bias = _table()
    no_bias = no_bias[no_bias.method != "bias"]
    assert [k.status for k in sanity_checks(no_bias)] == ["passed", "not available"]
    claims = evaluate_claims(_table(), xr.Dataset(coords={"method": ["maple"]}), {})
    context = {"data": "toy", "datasets": ["A"], "model": "m", "pretrained": "p", "seeds": [1], "imported": True,
               "n_boot": 10, "mmlens_version": "0", "date": "today", "device": "cpu"}
    page = findings_markdown(claims, context, _table(), sanity_checks(broken))
    assert "## Sanity checks" in page and "**FAILED**" in page
    assert page.count("**Would have failed if**") == len(claims)
    # tables written before the method column read as MaPLe's
    assert _verdicts(_table().drop(columns="method"))["dataset_bias"] == "holds"


def test_find_results_table(tmp_path):
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "a.md").write_text("| method |\n|---|\n| bias_coupled |\n")
    assert find_results_table(tmp_path) is None
    (tmp_path / "docs" / "results" / "b.md").write_text("| method |\n|---|\n| bias | 1 |\n")
    assert find_results_table(tmp_path) == "docs/results/b.md"
