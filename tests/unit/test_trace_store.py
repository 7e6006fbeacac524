"""trace() / trace_to_store(): schema, zarr round trip, kill -9 and resume, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import mmlens
from mmlens.store.schema import validate

HERE = Path(__file__).resolve().parent

# The same model and inputs in this process and in a child process (deterministic from seeds).
SETUP = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config
    from mmlens.models import PromptedCLIP, load_clip, register_config
    register_config("trace-store-tiny", tiny_config())
    torch.manual_seed(0)
    CLIP = load_clip("trace-store-tiny")
    MODEL = PromptedCLIP(CLIP, ["cat", "dog", "owl"], method="maple", depth=2, init_seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in MODEL.prompt_learner.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    IMAGES = torch.randn(24, 3, 32, 32, generator=g)
    LABELS = torch.arange(24) % 3

    def batches(delay=0.0):
        for lo in range(0, 24, 4):
            yield {{"image": IMAGES[lo:lo + 4], "label": LABELS[lo:lo + 4],
                    "path": [f"img{{i}}.png" for i in range(lo, lo + 4)]}}
            print("yielded", lo // 4, flush=True)
            time.sleep(delay)
    """
).format(tests=str(HERE.parent))


def _setup():
    ns: dict = {}
    exec(SETUP, ns)  # noqa: S102 - the shared, deterministic test setup
    return ns


def _without_created(tree: xr.DataTree) -> xr.DataTree:
    tree = tree.copy()
    tree.attrs = {k: v for k, v in tree.attrs.items() if k != "created"}
    return tree


def test_trace_matches_schema_and_reference_alignment():
    ns = _setup()
    tree = mmlens.trace(ns["MODEL"], ns["batches"](), with_reference=True, progress=False)
    validate(tree)
    vision = tree["vision"]
    assert list(vision["variant"].values) == ["full", "zeroshot"]
    assert vision.sizes["image"] == 24 and list(vision["label"].values[:4]) == [0, 1, 2, 0]
    # without prompts there is no prompt mass: the difference is the prompts' own
    assert float(vision["prompt_mass"].sel(variant="zeroshot").max()) == 0.0
    assert float(vision["prompt_mass"].sel(variant="full").min()) > 0.0
    # â is a distribution over the originals; the patch part sums to 1 minus the cls share
    cls_share = vision["attention_by_role"].sel(key_role="cls") / (1 - vision["prompt_mass"])
    total = vision["cls_attention"].sum(("patch_row", "patch_col")) + cls_share
    np.testing.assert_allclose(total.values, 1.0, atol=1e-5)
    # logits equal the model's own forward
    with torch.no_grad():
        logits = ns["MODEL"](ns["IMAGES"])
    np.testing.assert_allclose(tree["logits"]["logits"].sel(variant="full").values, logits.numpy(), atol=1e-5)
    assert tree.attrs["method"] == "maple" and len(tree.attrs["prompt_sha256"]) == 64


def test_zarr_round_trip_is_identical(tmp_path):
    ns = _setup()
    tree = mmlens.trace(ns["MODEL"], ns["batches"](), with_reference=True, progress=False)
    path = mmlens.trace_to_store(ns["MODEL"], ns["batches"](), tmp_path / "s.zarr", with_reference=True,
                                 progress=False)
    stored = mmlens.open(path).load()
    for group in ("vision", "text", "logits"):
        a, b = tree[group].to_dataset(), stored[group].to_dataset()
        assert a.identical(b), group


def test_an_in_memory_trace_writes_to_netcdf(tmp_path):
    # provenance attrs must be plain strings: torch.__version__ is a str subclass h5netcdf refuses
    from mmlens.store.io import to_netcdf

    ns = _setup()
    tree = mmlens.trace(ns["MODEL"], ns["batches"](), progress=False)
    assert type(tree.attrs["torch_version"]) is str
    path = to_netcdf(tree, tmp_path / "run.nc")
    stored = mmlens.open(path).load()
    assert stored["vision"].to_dataset()["prompt_mass"].equals(tree["vision"].to_dataset()["prompt_mass"])


def test_kill_minus_9_then_resume_gives_the_uninterrupted_store(tmp_path):
    child = SETUP + textwrap.dedent(
        """
        import mmlens
        mmlens.trace_to_store(MODEL, batches(delay=0.4), sys.argv[1], with_reference=True, progress=False)
        print("finished", flush=True)
        """
    )
    path = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-c", child, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    for line in proc.stdout:
        if line.startswith("yielded 3"):  # mid-run: some chunks committed, one in flight
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ns = _setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the store is incomplete until resumed
        partial = mmlens.open(path)
    assert 0 < partial["vision"].sizes["image"] < 24
    mmlens.trace_to_store(ns["MODEL"], ns["batches"](), path, with_reference=True, progress=False)
    clean = mmlens.trace_to_store(ns["MODEL"], ns["batches"](), tmp_path / "clean.zarr", with_reference=True,
                                  progress=False)
    resumed, reference = _without_created(mmlens.open(path).load()), _without_created(mmlens.open(clean).load())
    for group in ("vision", "text", "logits"):
        assert resumed[group].to_dataset().identical(reference[group].to_dataset()), group


def test_resume_refuses_a_store_of_other_prompts(tmp_path):
    from mmlens.store.io import StoreIdentityError

    ns = _setup()
    path = mmlens.trace_to_store(ns["MODEL"], ns["batches"](), tmp_path / "s.zarr", progress=False)
    with torch.no_grad():
        ns["MODEL"].prompt_learner.ctx.add_(1.0)
    with pytest.raises(StoreIdentityError, match="prompt_sha256"):
        mmlens.trace_to_store(ns["MODEL"], ns["batches"](), path, progress=False)


def test_unreadable_image_is_skipped_and_recorded(tmp_path, tiny_clip, capsys):
    from PIL import Image

    from mmlens.data import ImageDataset, Item

    paths = []
    for i in range(3):
        p = tmp_path / f"ok{i}.png"
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(p)
        paths.append(p)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    items = [Item(str(p), i % 2, ["cat", "dog"][i % 2]) for i, p in enumerate([paths[0], bad, paths[1], paths[2]])]

    def to_tensor(img):
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)

    dataset = ImageDataset(items, ["cat", "dog"], transform=to_tensor, on_error="skip")
    model = mmlens.PromptedCLIP(tiny_clip, ["cat", "dog"], method="maple", depth=2, init_seed=0)
    tree = mmlens.trace(model, dataset, batch_size=2, progress=False)
    assert f"skipped {bad}: " in capsys.readouterr().err  # a line, not a warning (tests/unit/test_trace_failures.py)
    assert tree["vision"].sizes["image"] == 3
    assert list(tree["vision"]["failure_path"].values) == [str(bad)]


def test_all_queries_read_at_the_readout_are_the_readout_variables():
    ns = _setup()
    tree = mmlens.trace(ns["MODEL"], ns["IMAGES"][:4], all_queries=True, with_reference=True, progress=False)
    validate(tree)
    vision = tree["vision"].to_dataset()
    every = vision["prompt_mass_all_queries"]
    assert set(every["token_role"].values) == {"cls", "patch", "prompt"}
    np.testing.assert_array_equal(vision.mml.readout()["prompt_mass"].values, vision["prompt_mass"].values)
    at_cls = every.isel(query=int(np.flatnonzero(every["token_role"].values == "cls")[0]))
    np.testing.assert_array_equal(at_cls.values, vision["prompt_mass"].values)
    # the mean over the other original queries, from the all-query values
    others = every.isel(query=np.flatnonzero(every["token_role"].values == "patch"))
    np.testing.assert_allclose(others.mean("query").values, vision["prompt_mass_other_queries"].values, rtol=1e-5)
    assert float(every.sel(variant="zeroshot").max()) == 0.0
