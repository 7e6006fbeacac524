"""evaluate(): accuracies against direct model calls, variants wired to interventions, tables, HM convention."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from mmlens.models.prompted import PromptedCLIP
from mmlens.train import ablation_variants, evaluate, fit, parse_variant, summary, to_csv, to_markdown


class Items(torch.utils.data.Dataset):
    def __init__(self, classnames, per_class=3, size=32, seed=0):
        self.classnames = list(classnames)
        g = torch.Generator().manual_seed(seed)
        self.labels = [c for c in range(len(classnames)) for _ in range(per_class)]
        self.images = [torch.rand(3, size, size, generator=g) for _ in self.labels]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i], "classname": self.classnames[self.labels[i]],
                "path": f"{i}.png", "mask": None, "index": i}


def _data(seed=0):
    return {"base": Items(["cat", "dog", "bird"], seed=seed), "novel": Items(["fish", "frog"], seed=seed + 1),
            "train": Items(["cat", "dog", "bird"], per_class=2, seed=seed + 2)}


def _direct_correct(model, ds, classnames, *, prompts=True, context=None):
    """Accuracy computed without mmlens.train: the model called on hand-normalised images."""
    cfg = model.clip.visual.preprocess_cfg
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    x = (torch.stack([ds[i]["image"] for i in range(len(ds))]) - mean) / std
    y = torch.tensor([ds[i]["label"] for i in range(len(ds))])
    model.set_classnames(classnames)
    model.prompts_enabled = prompts
    try:
        with torch.no_grad(), (context or _null()):
            pred = model(x).argmax(-1)
    finally:
        model.prompts_enabled = True
    return int((pred == y).sum())


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def test_accuracy_equals_direct_model_calls(tiny_clip):
    model = PromptedCLIP(tiny_clip, ["x"], "maple", depth=2, init_seed=4)
    data = {"A": _data()}
    variants = ["full", "zeroshot", "bias_only:vision", "drop_prompts:text"]
    ds = evaluate(model, data, seeds=7, variants=variants, progress=False)
    assert dict(ds.sizes) == {"dataset": 1, "seed": 1, "method": 1, "variant": 4, "split": 2}
    assert ds.seed.values.tolist() == [7] and ds.method.values.tolist() == ["maple"]
    assert int(ds.trainable_parameters.sel({"method": "maple"})) == model.trainable_parameter_count()
    assert model.classnames == ["x"]  # restored after evaluation
    from mmlens.tracing.interventions import intervene

    for split in ("base", "novel"):
        items = data["A"][split]
        full = _direct_correct(model, items, items.classnames)
        zs = _direct_correct(model, items, items.classnames, prompts=False)
        bo = _direct_correct(model, items, items.classnames, context=intervene(model, "bias_only", branch="vision"))
        dp = _direct_correct(model, items, items.classnames, context=intervene(model, "drop_prompts", branch="text"))
        got = ds.sel({"dataset": "A", "seed": 7, "method": "maple", "split": split})
        assert got.correct.values.tolist() == [full, zs, bo, dp]
        assert got.total.values.tolist() == [len(items)] * 4
        assert np.allclose(got.accuracy.values, 100 * np.array([full, zs, bo, dp]) / len(items))


def test_same_prompts_same_accuracies(tiny_clip):
    model = PromptedCLIP(tiny_clip, ["x"], "ivlp", depth=2, init_seed=2)
    a = evaluate(model, {"A": _data()}, variants=["full", "drop_prompts"], progress=False)
    b = evaluate(model, {"A": _data()}, variants=["full", "drop_prompts"], progress=False)
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())


def test_constant_bias_uses_the_mean_bias_of_the_training_images(tiny_clip):
    from mmlens.data.transforms import input_spec
    from mmlens.tracing.interventions import intervene, measure_mean_bias

    model = PromptedCLIP(tiny_clip, ["x"], "maple", depth=2, init_seed=3)
    data = {"A": _data()}
    ds = evaluate(model, data, variants=["constant_bias", "constant_bias:text:injected"], progress=False)
    train = data["A"]["train"]
    spec = input_spec(model)
    model.set_classnames(train.classnames)
    mean_bias = measure_mean_bias(model, [spec.normalize(torch.stack([train[i]["image"] for i in range(len(train))]))])
    for label, kwargs in (("constant_bias", {}), ("constant_bias:text:injected", {"branch": "text",
                                                                                  "layers": "injected"})):
        for split in ("base", "novel"):
            items = data["A"][split]
            ctx = intervene(model, "constant_bias", mean_bias=mean_bias, **kwargs)
            expected = _direct_correct(model, items, items.classnames, context=ctx)
            got = ds.correct.sel({"dataset": "A", "method": "maple", "variant": label, "split": split})
            assert int(got.squeeze()) == expected


def test_prompt_files_are_evaluated_on_the_dataset_they_were_trained_on(tiny_clip, tmp_path):
    data = {"A": _data(0), "B": _data(10)}
    paths = {}
    for name in ("A", "B"):
        model = PromptedCLIP(tiny_clip, ["x"], "coop", depth=1, init_seed=1)
        r = fit(model, data[name]["train"], epochs=1, name=name, seed=2, progress=False,
                checkpoint_dir=tmp_path / name)
        paths[name] = r.prompts_path
    zs = PromptedCLIP(tiny_clip, ["x"], "zeroshot")
    zs_path = fit(zs, data["A"]["train"], name="A", seed=2, progress=False,
                  checkpoint_dir=tmp_path / "zs").prompts_path
    ds = evaluate([tmp_path / "A", tmp_path / "B", zs_path], data, clip=tiny_clip,
                  variants=["full", "bias_only"], progress=False)
    assert ds.method.values.tolist() == ["coop", "zeroshot"] and ds.seed.values.tolist() == [2]
    assert ds.trainable_parameters.values.tolist()[1] == 0
    from mmlens.models.checkpoints import load_prompts, read_prompt_file

    for name in ("A", "B"):
        sha = read_prompt_file(paths[name])[1]["prompt_sha256"]
        assert str(ds.prompt_sha256.sel({"dataset": name, "seed": 2, "method": "coop"}).values) == sha
        model = load_prompts(paths[name], tiny_clip)
        for split in ("base", "novel"):
            items = data[name][split]
            got = ds.correct.sel({"dataset": name, "seed": 2, "method": "coop", "variant": "full", "split": split})
            assert int(got) == _direct_correct(model, items, items.classnames)
    # the zero-shot prompts were trained on A only; route ablations do not apply to them
    zero = ds.accuracy.sel({"method": "zeroshot", "variant": "full"})
    assert zero.sel(dataset="A").notnull().all() and zero.sel(dataset="B").isnull().all()
    assert ds.accuracy.sel({"method": "zeroshot", "variant": "bias_only"}).isnull().all()
    cross = evaluate(paths["A"], data, clip=tiny_clip, protocol="cross_dataset", splits=["base"], progress=False)
    assert cross.accuracy.notnull().all() and cross.dataset.values.tolist() == ["A", "B"]


def test_datasets_by_name_read_the_test_split(tiny_clip, tmp_path):
    from mmlens.data import build
    from mmlens.data.fake import make_fake_tree

    make_fake_tree(tmp_path, ["EuroSAT"], per_class={"train": 2, "val": 1, "test": 2})
    model = PromptedCLIP(tiny_clip, ["x"], "deep_vision", depth=2, init_seed=1)
    ds = evaluate(model, "EuroSAT", root=tmp_path, progress=False)
    for split in ("base", "novel"):
        assert int(ds.total.sel(split=split).squeeze()) == len(build("EuroSAT", tmp_path, "test", subset=split))


def test_summary_average_hm_is_the_hm_of_the_mean_base_and_novel():
    acc = np.zeros((2, 2, 1, 1, 2))
    acc[0, :, 0, 0] = [[80, 60], [70, 50]]  # dataset a: seeds 1 and 2, (base, novel)
    acc[1, :, 0, 0] = [[90, 40], [90, 30]]  # dataset b
    ds = xr.Dataset({"accuracy": (("dataset", "seed", "method", "variant", "split"), acc)},
                    coords={"dataset": ["a", "b"], "seed": [1, 2], "method": ["m"], "variant": ["full"],
                            "split": ["base", "novel"]})
    s = summary(ds).sel({"method": "m", "variant": "full"})

    def hm(b, n):
        return 2 * b * n / (b + n)

    assert float(s.base.sel(dataset="a")) == 75 and float(s.novel.sel(dataset="b")) == 35
    assert math.isclose(float(s.hm.sel(dataset="a")), hm(75, 55))
    assert math.isclose(float(s.base.sel(dataset="Average")), 82.5)
    assert math.isclose(float(s.hm.sel(dataset="Average")), hm(82.5, 45))  # 58.2353, not the mean HM 56.9
    assert math.isclose(float(s.std_base.sel(dataset="a")), np.std([80, 70], ddof=0))
    table = to_markdown(ds, params=False)
    assert table.splitlines()[0] == "| method | Base | Novel | HM | a | b |"
    assert table.splitlines()[2] == "| m | 82.5 | 45.0 | 58.2 | 75.0 / 55.0 / 63.5 | 90.0 / 35.0 / 50.4 |"
    rows = to_csv(ds).splitlines()
    assert rows[0] == "dataset,seed,method,variant,split,accuracy" and len(rows) == 1 + 8


def test_variant_labels_parse_and_errors():
    assert parse_variant("bias_only").label == "bias_only"
    v = parse_variant("drop_prompts:text:carried")
    assert (v.route, v.branch, v.layers) == ("drop_prompts", "text", "carried")
    assert len(ablation_variants()) == 2 + 4 * 3 * 3
    for bad, msg in (("bias", "unknown route"), ("bias_only:left", "branch"), ("full:vision", "no branch"),
                     ("drop_prompts:both:deep", "layers"), ("a:b:c:d", "route")):
        with pytest.raises(ValueError, match=msg):
            parse_variant(bad)


def test_evaluate_errors_say_what_to_do(tiny_clip, tmp_path):
    model = PromptedCLIP(tiny_clip, ["x"], "coop", init_seed=1)
    with pytest.raises(ValueError, match="seeds=<one int>"):
        evaluate(model, {"A": _data()}, seeds=[1, 2], progress=False)
    with pytest.raises(ValueError, match="protocol"):
        evaluate(model, {"A": _data()}, protocol="other", progress=False)
    with pytest.raises(FileNotFoundError, match="No prompt file"):
        evaluate(tmp_path / "missing.safetensors", {"A": _data()}, progress=False)
    path = fit(model, _data()["train"], epochs=1, name="A", progress=False, checkpoint_dir=tmp_path).prompts_path
    with pytest.raises(ValueError, match="clip="):
        evaluate(path, {"A": _data()}, progress=False)
    with pytest.raises(ValueError, match="cross_dataset"):
        evaluate(path, {"B": _data()}, clip=tiny_clip, progress=False)


def test_reused_image_features_equal_the_ones_each_variant_computes(tiny_clip):
    """evaluate() computes image features once per key; each variant's own features must be those."""
    from mmlens.data.transforms import input_spec
    from mmlens.tracing.interventions import intervene
    from mmlens.train.evaluation import Variant, _accuracy, _vision_key

    items = _data()["base"]
    spec = input_spec(tiny_clip)
    x = spec.normalize(torch.stack([items[i]["image"] for i in range(len(items))]))
    for method in ("maple", "coop", "bias_coupled"):
        model = PromptedCLIP(tiny_clip, items.classnames, method, depth=2, init_seed=5)
        cache: dict = {}
        for label in ("full", "zeroshot", "drop_prompts:text", "bias_only:vision", "redistribution_only:both:injected"):
            variant = parse_variant(label)
            _accuracy(model, items, variant, None, cache, batch_size=4, normalize=True, num_workers=0,
                      device=torch.device("cpu"))
            with torch.no_grad(), (intervene(model, variant.route, branch=variant.branch,
                                             layers=None if variant.layers == "all" else variant.layers)
                                   if variant.route != "full" else _null()):
                own = model.encode_image(x, normalize=True)
            reused = cache[_vision_key(model, variant)]["features"]
            assert torch.allclose(reused, own, atol=1e-5), (method, label)
        assert _vision_key(model, Variant("full")) == (("frozen",) if method == "coop" else ("full",))


def test_combine_merges_separate_runs(tiny_clip):
    from mmlens.train import combine

    data = {"A": _data(), "B": _data(3)}
    m1 = PromptedCLIP(tiny_clip, ["x"], "maple", depth=2, init_seed=1)
    m2 = PromptedCLIP(tiny_clip, ["x"], "coop", init_seed=1)
    whole = evaluate([m1], data, seeds=1, variants=["full", "zeroshot"], progress=False)
    parts = [evaluate([m1], {"A": data["A"]}, seeds=1, variants=["full"], progress=False),
             evaluate([m1], {"B": data["B"]}, seeds=1, variants=["full", "zeroshot"], progress=False),
             evaluate([m1], {"A": data["A"]}, seeds=1, variants=["zeroshot"], progress=False),
             evaluate([m2], {"A": data["A"]}, seeds=2, variants=["full"], progress=False)]
    merged = combine(parts)
    assert merged.method.values.tolist() == ["maple", "coop"] and merged.seed.values.tolist() == [1, 2]
    sub = merged.sel({"method": ["maple"], "seed": [1]})
    for var in ("correct", "total", "accuracy"):
        np.testing.assert_array_equal(sub[var].transpose(*whole[var].dims).values, whole[var].values)
    assert int(merged.total.sel({"method": "coop", "seed": 1}).sum()) == 0
    assert merged.trainable_parameters.values.tolist() == [m1.trainable_parameter_count(),
                                                             m2.trainable_parameter_count()]
    clash = parts[0].copy(deep=True)
    clash["correct"][:] = clash["correct"] + 1
    with pytest.raises(ValueError, match="disagree"):
        combine([parts[0], clash])


def test_results_round_trip_through_netcdf(tiny_clip, tmp_path):
    model = PromptedCLIP(tiny_clip, ["x"], "maple", depth=2, init_seed=1)
    ds = evaluate(model, {"A": _data()}, variants=["full", "drop_prompts:vision"], progress=False)
    ds.to_netcdf(tmp_path / "r.nc", engine="h5netcdf")
    back = xr.open_dataset(tmp_path / "r.nc", engine="h5netcdf").load()
    xr.testing.assert_identical(back, ds)


def test_domain_generalisation_uses_the_targets_present_under_root(tiny_clip, tmp_path):
    from mmlens.data import build
    from mmlens.data.fake import make_fake_tree

    make_fake_tree(tmp_path, ["ImageNet-A"], per_class={"train": 0, "val": 0, "test": 1}, image_size=8)
    model = PromptedCLIP(tiny_clip, ["x"], "coop", init_seed=1)
    with pytest.warns(UserWarning, match="ImageNet-R, ImageNet-Sketch, ImageNet-V2"):
        ds = evaluate(model, root=tmp_path, protocol="domain_generalisation", progress=False)
    assert ds.dataset.values.tolist() == ["ImageNet-A"] and ds.split.values.tolist() == ["all"]
    assert int(ds.total.squeeze()) == len(build("ImageNet-A", tmp_path, "test")) == 200
    with pytest.raises(FileNotFoundError, match="cross_dataset targets"):
        evaluate(model, root=tmp_path, protocol="cross_dataset", progress=False)
