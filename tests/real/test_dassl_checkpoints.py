"""Published prompt checkpoints (MaPLe, CoOp, IVLP) read exactly as Dassl writes them, and refused clearly otherwise.

The files come from Dassl's save path (``maple_reference.save_model``): a real ``torch.optim.SGD`` and real
torch schedulers inside Dassl's constant warm-up wrapper, after real training steps, so the pickles hold
what published files hold (the successor scheduler object and, through it, the optimizer object).
"""

from __future__ import annotations

import pickletools
import shutil
import zipfile

import pytest
import torch
from maple_reference import (
    CoOpPromptLearner,
    CustomCLIP,
    OpenAICLIP,
    build_optim_and_sched,
    openai_state_dict,
    prompted_logits,
    save_checkpoint,
    save_model,
    train_maple,
)

from mmlens.experiments._sources import find_maple_checkpoint
from mmlens.models import (
    PromptedCLIP,
    import_prompts,
    load_clip,
    load_coop_checkpoint,
    load_ivlp_checkpoint,
    load_maple_checkpoint,
    register_config,
)
from mmlens.models.checkpoints import checkpoint_seed, read_dassl_checkpoint, resolve_dassl_checkpoint

pytestmark = pytest.mark.real

CFG = {"embed_dim": 32, "quick_gelu": True,
       "vision_cfg": {"image_size": 32, "layers": 4, "width": 128, "patch_size": 8, "head_width": 64},
       "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 4}}
CLASSES = ["apple_pie", "american_bulldog", "owl", "sea_lion"]
DEPTH = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """OpenAI-layout weights, mmlens's QuickGELU and GELU models on them, and a trained MaPLe run saved by Dassl."""
    root = tmp_path_factory.mktemp("dassl")
    sd = openai_state_dict(CFG, seed=0)
    torch.save(sd, root / "openai.pt")
    register_config("real-dassl-tiny", CFG)
    register_config("real-dassl-tiny-gelu", {**CFG, "quick_gelu": False})
    producer = CustomCLIP(CLASSES, OpenAICLIP(sd), n_ctx=2, depth=DEPTH)
    torch.manual_seed(1)
    images = torch.randn(4, 3, 32, 32)
    optim, sched = train_maple(producer, images, torch.arange(4), epochs=3, lr=0.5)
    run = root / "weights" / "food101" / "base" / "seed3"
    path = save_model(producer, optim, sched, epoch=2, directory=run, name="MultiModalPromptLearner")
    return {"root": root, "sd": sd, "producer": producer, "run": run, "file": path, "images": images,
            "clip": load_clip("real-dassl-tiny", pretrained=str(root / "openai.pt"))}


def pickled_globals(path) -> set[str]:
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    return {str(arg) for op, arg, _ in pickletools.genops(data) if op.name in ("GLOBAL", "STACK_GLOBAL")}


def test_the_file_holds_what_published_dassl_files_hold(world):
    # what Dassl's scheduler state_dict pickles: the successor scheduler and the optimizer, with its defaultdict
    found = pickled_globals(world["file"])
    objects = {g for g in found if not g.endswith("Storage")}  # FloatStorage, HalfStorage: tensor data
    assert objects == {"collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch._utils _rebuild_parameter",
                       "torch.optim.lr_scheduler CosineAnnealingLR", "torch.optim.sgd SGD", "collections defaultdict",
                       "__builtin__ dict"}
    with pytest.raises(Exception, match="Weights only load failed"):  # why an allow-list is needed at all
        torch.load(world["file"], weights_only=True)


def test_read_dassl_checkpoint_is_bit_exact(world):
    ckpt = read_dassl_checkpoint(world["run"])
    assert ckpt.path == world["file"] and ckpt.epoch == 3 and ckpt.seed == 3 and ckpt.method == "maple"
    expected = world["producer"].state_dict()
    assert set(ckpt.state_dict) == set(expected)
    for k, v in expected.items():
        assert ckpt.state_dict[k].dtype == v.dtype and torch.equal(ckpt.state_dict[k], v), k
    state = load_maple_checkpoint(world["file"])
    assert state["ctx"].dtype == torch.float16 and state["proj.weight"].dtype == torch.float16  # as MaPLe stores them
    assert sorted(state) == sorted(k[len("prompt_learner."):] for k in expected
                                   if k.startswith("prompt_learner.") and "token_" not in k)


def test_import_matches_the_producer(world):
    model = import_prompts(world["run"], world["clip"], CLASSES)
    assert (model.method, model.n_ctx, model.depth) == ("maple", 2, DEPTH)
    with torch.no_grad():
        ours, ref = model(world["images"]), world["producer"](world["images"])
    assert float((ours - ref).abs().max() / ref.abs().max()) <= 1e-5


def test_gelu_model_warns(world):
    gelu = load_clip("real-dassl-tiny-gelu")
    with pytest.warns(UserWarning, match="learned on OpenAI's CLIP, which uses QuickGELU"):
        import_prompts(world["run"], gelu, CLASSES)


def test_checkpoint_seed(world):
    assert checkpoint_seed(world["run"]) == 3
    assert checkpoint_seed(world["file"]) == 3
    assert checkpoint_seed(world["root"] / "openai.pt") is None


# ------------------------------------------------------------------------------------------- the resolver
def _epochs(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")
    return folder


def test_resolver_follows_maple_load_model(tmp_path):
    d = _epochs(tmp_path / "eurosat/base/seed1/MultiModalPromptLearner", "model.pth.tar-9", "model.pth.tar-10")
    assert resolve_dassl_checkpoint(d).name == "model.pth.tar-10"  # by number, not as text
    assert resolve_dassl_checkpoint(tmp_path / "eurosat/base/seed1").name == "model.pth.tar-10"
    assert resolve_dassl_checkpoint(d, epoch=9).name == "model.pth.tar-9"
    assert find_maple_checkpoint(tmp_path, "EuroSAT", 1).name == "model.pth.tar-10"  # reproduce: the same rule
    _epochs(d, "model-best.pth.tar")
    assert resolve_dassl_checkpoint(d).name == "model-best.pth.tar"
    assert find_maple_checkpoint(tmp_path, "EuroSAT", 1).name == "model-best.pth.tar"
    with pytest.raises(FileNotFoundError, match=r"expected model.pth.tar-7, found model.pth.tar-9, "
                                                r"model.pth.tar-10, model-best.pth.tar"):
        resolve_dassl_checkpoint(d, epoch=7)
    _epochs(tmp_path / "eurosat/base/seed2/MultiModalPromptLearner", "model.pth.tar-5")
    with pytest.raises(ValueError, match="holds 2 Dassl model folders"):
        resolve_dassl_checkpoint(tmp_path / "eurosat")
    with pytest.raises(FileNotFoundError, match=r"seed<k>/MultiModalPromptLearner/model.pth.tar-<epoch>"):
        resolve_dassl_checkpoint(tmp_path / "missing")


# ------------------------------------------------------------------------------------------- CoOp and IVLP
def test_coop_checkpoint(world, tmp_path):
    clip_ref = OpenAICLIP(world["sd"])
    learner = CoOpPromptLearner(CLASSES, clip_ref, n_ctx=16)
    optim, sched = build_optim_and_sched(learner, lr=0.002)  # CoOp gives the optimizer its prompt learner only
    for _ in range(2):
        logits = prompted_logits(clip_ref, CLASSES, world["images"], prefix_text=learner.prefix_text, ctx=learner.ctx)
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(4))
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
    run = tmp_path / "oxford_pets" / "seed1"
    save_model(learner, optim, sched, epoch=49, directory=run, name="prompt_learner")
    assert set(load_coop_checkpoint(run)) == {"ctx"}
    model = import_prompts(run, world["clip"], CLASSES)
    assert (model.method, model.n_ctx) == ("coop", 16)
    with torch.no_grad():
        ref = prompted_logits(clip_ref, CLASSES, world["images"], prefix_text=learner.prefix_text, ctx=learner.ctx)
        ours = model(world["images"])
    assert float((ours - ref).abs().max() / ref.abs().max()) <= 1e-5
    with pytest.raises(ValueError, match="is not a MaPLe checkpoint: it holds the keys of a coop checkpoint"):
        load_maple_checkpoint(run)
    with pytest.raises(ValueError, match="is not a CoOp checkpoint: it holds the keys of a maple checkpoint"):
        load_coop_checkpoint(world["run"])
    csc = {"state_dict": {"ctx": torch.zeros(4, 16, 64, dtype=torch.float16)}, "epoch": 50}
    save_checkpoint(csc, tmp_path / "csc" / "prompt_learner")
    with pytest.raises(ValueError, match="CSC=True"):
        import_prompts(tmp_path / "csc", world["clip"], CLASSES)


def test_ivlp_checkpoint(world, tmp_path):
    """IVLP's keys as its modules name them: first-layer prompts in prompt_learner.ctx / image_encoder.VPT,
    deeper ones inside CLIP's blocks (VPT_shallow); the frozen CLIP rides along."""
    g = torch.Generator().manual_seed(5)
    clip_ref = OpenAICLIP(world["sd"])
    ctx = (torch.randn(2, 64, generator=g) * 0.2).half()
    vpt = torch.randn(2, 128, generator=g) * 0.2
    deep_t = [torch.randn(2, 64, generator=g) * 0.2 for _ in range(DEPTH - 1)]
    deep_v = [torch.randn(2, 128, generator=g) * 0.2 for _ in range(DEPTH - 1)]
    sd = {f"image_encoder.{k}": v for k, v in clip_ref.visual.state_dict().items()}
    sd.update({"prompt_learner.ctx": ctx, "prompt_learner.token_prefix": torch.zeros(4, 1, 64),
               "prompt_learner.token_suffix": torch.zeros(4, 74, 64), "image_encoder.VPT": vpt,
               "logit_scale": clip_ref.logit_scale.detach()})
    for i in range(1, DEPTH):
        sd[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = deep_t[i - 1]
        sd[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = deep_v[i - 1]
    holder = torch.nn.Linear(2, 2)
    optim, sched = build_optim_and_sched(holder)
    save_checkpoint({"state_dict": sd, "epoch": 5, "optimizer": optim.state_dict(), "scheduler": sched.state_dict(),
                     "val_result": None}, tmp_path / "eurosat/base/seed1/VLPromptLearner")
    state = load_ivlp_checkpoint(tmp_path / "eurosat")
    assert sorted(state) == sorted(["ctx", "visual_ctx", *[f"compound_prompts_{b}.{i}" for b in ("text", "visual")
                                                           for i in range(DEPTH - 1)]])
    model = import_prompts(tmp_path / "eurosat", world["clip"], CLASSES)
    assert (model.method, model.depth) == ("ivlp", DEPTH)
    with torch.no_grad():
        ref = prompted_logits(clip_ref, CLASSES, world["images"], prefix_text="a photo of a", ctx=ctx,
                              deep_text=deep_t, visual_ctx=vpt, deep_vision=deep_v)
        ours = model(world["images"])
    assert float((ours - ref).abs().max() / ref.abs().max()) <= 1e-5
    del sd["image_encoder.transformer.resblocks.2.VPT_shallow"]  # vision depth 2, text depth 3
    save_checkpoint({"state_dict": sd, "epoch": 5}, tmp_path / "uneven/VLPromptLearner")
    with pytest.raises(ValueError, match="one depth and one n_ctx for both branches"):
        load_ivlp_checkpoint(tmp_path / "uneven")


# ------------------------------------------------------------------------------------------- bad input
def _maple_variant(world, tmp_path, change):
    ckpt = read_dassl_checkpoint(world["file"])
    state = dict(ckpt.state_dict)
    change(state)
    folder = tmp_path / "variant" / "MultiModalPromptLearner"
    shutil.rmtree(folder, ignore_errors=True)
    save_checkpoint({"state_dict": state, "epoch": 2}, folder)
    return folder


@pytest.mark.parametrize(("change", "pattern"), [
    (lambda s: s.pop("prompt_learner.proj.bias"), r"missing \['proj.bias'\]"),
    (lambda s: s.__setitem__("prompt_learner.ctx", torch.zeros(2, 64, dtype=torch.int64)),
     r"must be floating point, found ctx \(torch.int64\)"),
    (lambda s: s.__setitem__("prompt_learner.ctx", torch.zeros(2, 2, 64)), r"ctx should be \[n_ctx, text width\]"),
])
def test_damaged_maple_files_are_named(world, tmp_path, change, pattern):
    folder = _maple_variant(world, tmp_path, change)
    with pytest.raises(ValueError, match=pattern):
        import_prompts(folder, world["clip"], CLASSES)


def test_another_model_is_refused_and_nothing_is_half_loaded(world, tmp_path):
    # ViT-B/16-width prompts (512 / 768) for this 64 / 128-wide model
    def widen(s):
        for k in list(s):
            if k.startswith("prompt_learner.") and "token_" not in k:
                s[k] = torch.zeros(*(768 if n == 128 else 512 if n == 64 else n for n in s[k].shape))
    folder = _maple_variant(world, tmp_path, widen)
    with pytest.raises(ValueError, match="widths differ"):
        import_prompts(folder, world["clip"], CLASSES)
    model = PromptedCLIP(world["clip"], CLASSES, "maple", depth=DEPTH, init_seed=4)
    before = model.prompt_state_dict()
    state = load_maple_checkpoint(folder)
    state["ctx"] = load_maple_checkpoint(world["file"])["ctx"]  # one fitting tensor among misfits
    with pytest.raises(ValueError, match="do not fit"):
        model.load_prompt_state(state)
    after = model.prompt_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_other_pickled_classes_are_refused_and_never_run(world, tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("code from the file ran",))

    state = read_dassl_checkpoint(world["file"]).state_dict
    for name, extra, pattern in [("module", torch.nn.Linear(2, 2), "torch.nn.modules.linear.Linear"),
                                 ("evil", Evil(), "print")]:
        folder = tmp_path / name / "MultiModalPromptLearner"
        save_checkpoint({"state_dict": state, "epoch": 2, "extra": extra}, folder)
        with pytest.raises(ValueError, match=rf"holds a pickled [\w.]*{pattern}, which a Dassl checkpoint does not "
                                             r"contain[\s\S]*weights_only=True"):
            load_maple_checkpoint(folder)
    assert "code from the file ran" not in capsys.readouterr().out
    (tmp_path / "text" / "MultiModalPromptLearner").mkdir(parents=True)
    (tmp_path / "text" / "MultiModalPromptLearner" / "model.pth.tar-1").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read as a torch checkpoint"):
        load_maple_checkpoint(tmp_path / "text")
