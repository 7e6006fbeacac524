"""The pre-training recipe of the toyworld CLIP: contrastive learning on captioned photo-domain scenes.

Images are generated on the fly (a fresh seeded batch every step, see
:func:`mmlens.data.toyworld.pretraining_batch`), captions come from templates, and the loss is CLIP's
symmetric InfoNCE with multiple positives: a caption such as ``"a photo of a red star."`` is a correct
match for every red star in the batch, not only for the image it was written for (soft targets spread
evenly over all matches, as in UniCL). Seeded and reproducible on a given machine and thread count.

>>> cfg = PretrainConfig(steps=2, batch_size=8, eval_every=0)
>>> cfg.steps, cfg.batch_size
(2, 8)

``model, history = pretrain(cfg)`` then trains a toy CLIP (:func:`pretrain` runs it in its example).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmlens.data.toyworld import caption_batch, generate, pretraining_batch
from mmlens.data.toyworld.domains import DOMAINS
from mmlens.models import toy
from mmlens.train.trainer import _atomic_save

_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


@dataclass
class PretrainConfig:
    """Hyper-parameters of the recipe (the defaults are the shipped weights' recipe).

    Three measures get the small model off the plateau where contrastive training from scratch
    otherwise sits for hundreds of steps (all features alike, only colour learnt):

    - ``text_warmup`` text-only steps first: caption paraphrase contrastive (captions that say the same
      thing are positives, all others negatives), which spreads the caption features apart so the images
      have distinct targets from the start (at initialisation "a photo of a star." and "a photo of a
      heart." have cosine ~0.9);
    - a low initial temperature scale ``init_logit_scale`` with a ``logit_scale_lr_mult`` times faster
      learning rate (random features at CLIP's usual 1/0.07 make the loss worse than chance, and the
      quickest fix the optimizer finds is to collapse all features);
    - a size curriculum: for the first ``curriculum`` fraction of the steps the object radius range moves
      linearly from ``warm_radius`` to the photo domain's ``radius``.

    ``eval_every`` > 0 logs held-out photo zero-shot accuracy on ``eval_per_class`` images per class
    (logged only; the recipe never selects on it).
    """

    steps: int = 4000
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup: int = 20
    weight_decay: float = 0.1
    text_warmup: int = 60
    text_warmup_batch: int = 256
    init_logit_scale: float = 2.0
    logit_scale_lr_mult: float = 30.0
    curriculum: float = 0.15
    warm_radius: tuple[float, float] = (22.0, 29.0)
    radius: tuple[float, float] = (16.0, 26.0)
    seed: int = 0
    neutral: float = 0.15
    shape_only: float = 0.5
    threads: int = 1
    eval_every: int = 250
    eval_per_class: int = 2
    log_every: int = 50


def to_model_input(images: np.ndarray | torch.Tensor, size: int | None = None) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> normalised float ``[N, 3, size, size]``, as the model's own preprocessing
    makes it: bicubic antialiased resize to the model's input size (toyworld renders 64x64, the toy
    CLIP sees 32x32), then OpenAI CLIP mean / std.

    Examples
    --------
    >>> to_model_input(np.zeros((2, 64, 64, 3), np.uint8)).shape
    torch.Size([2, 3, 32, 32])
    """
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    size = int(size or toy.TOY_MODEL_CONFIG["vision_cfg"]["image_size"])
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = resize(x, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    x = x.float() / 255.0
    return (x - _MEAN) / _STD


def multi_positive_clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, match: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE where ``match[i, j]`` marks every correct (image i, caption j) pair.

    With ``match`` the identity this is exactly CLIP's loss.

    Examples
    --------
    >>> f = F.normalize(torch.randn(4, 8), dim=-1)
    >>> eye = torch.eye(4, dtype=torch.bool)
    >>> clip = (F.cross_entropy(10 * f @ f.T, torch.arange(4)) + F.cross_entropy(10 * f @ f.T, torch.arange(4))) / 2
    >>> bool(torch.isclose(multi_positive_clip_loss(f, f, torch.tensor(10.0), eye), clip))
    True
    """
    logits = logit_scale * image_features @ text_features.T  # [N_img, N_txt]
    m = match.float()
    i2t = -(m / m.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = -(m / m.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return (i2t + t2i) / 2


def encode_text_trimmed(model, text: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(text)`` computed on the first ``L`` positions only (L = longest text + EOT).

    Exact for open_clip CLIPs with a causal text mask and argmax (EOT) pooling: no position at or
    before EOT attends to later positions, so cutting the padding changes nothing but the cost.

    Examples
    --------
    >>> m, tok = toy.create_model(pretrained=False), toy.get_tokenizer()
    >>> t = tok(["a red star.", "a photo of a blue ring."])
    >>> bool(torch.allclose(encode_text_trimmed(m, t), m.encode_text(t), atol=1e-5))
    True
    """
    length = int((text != 0).sum(1).max())
    text = text[:, :length]
    x = model.token_embedding(text) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(text.shape[0]), text.argmax(dim=-1)]
    return x @ model.text_projection


def _param_groups(model: torch.nn.Module, weight_decay: float, scale_mult: float = 1.0) -> list[dict[str, Any]]:
    decay, no_decay, scale = [], [], []
    for name, p in model.named_parameters():
        if name == "logit_scale":
            scale.append(p)
        elif p.ndim < 2 or "embedding" in name or "ln" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lr_mult": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
        {"params": scale, "weight_decay": 0.0, "lr_mult": scale_mult},
    ]


def paraphrase_loss(text_features: torch.Tensor, keys: list[tuple], scale: float = 10.0) -> torch.Tensor:
    """Text-only multi-positive InfoNCE: captions with equal ``keys`` (what they say) are positives.

    Each caption is compared with all the others (not itself); captions without a paraphrase in the
    batch only serve as negatives.

    Examples
    --------
    >>> t = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=-1)
    >>> bool(paraphrase_loss(t, [("a",), ("a",), ("b",)]) < paraphrase_loss(t, [("a",), ("b",), ("a",)]))
    True
    """
    n = len(keys)
    codes = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    ids = torch.tensor([codes[k] for k in keys])
    eye = torch.eye(n, dtype=torch.bool)
    pos = (ids[:, None] == ids[None, :]) & ~eye
    logits = (scale * text_features @ text_features.T).masked_fill(eye, float("-inf"))
    rows = pos.any(1)
    if not rows.any():
        return text_features.sum() * 0.0
    logp = F.log_softmax(logits[rows], dim=1).masked_fill(~pos[rows], 0.0)
    return -(logp.sum(1) / pos[rows].sum(1)).mean()


def radius_at(step: int, cfg: PretrainConfig) -> tuple[float, float]:
    """Object radius range of the batch at ``step`` (the curriculum).

    Examples
    --------
    >>> cfg = PretrainConfig(steps=100, curriculum=0.5)
    >>> radius_at(0, cfg), radius_at(25, cfg), radius_at(60, cfg)
    ((22.0, 29.0), (19.0, 27.5), (16.0, 26.0))
    """
    span = cfg.curriculum * cfg.steps
    t = 1.0 if span <= 0 else min(1.0, step / span)
    (a0, b0), (a1, b1) = cfg.warm_radius, cfg.radius
    return (a0 + (a1 - a0) * t, b0 + (b1 - b0) * t)


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def class_text_features(model, tokenizer, classnames: list[str], template: str = "a photo of a {}.") -> torch.Tensor:
    """Normalised text features of ``template.format(c)`` for every class name."""
    tokens = tokenizer([template.format(c) for c in classnames])
    return F.normalize(model.encode_text(tokens), dim=-1)


@torch.no_grad()
def zero_shot_accuracy(
    model,
    tokenizer,
    domain: str,
    *,
    split: str = "test",
    n_per_class: int = 40,
    seed: int = 0,
    template: str = "a photo of a {}.",
    batch_size: int = 512,
) -> float:
    """Top-1 zero-shot accuracy (%) over all classes of a toyworld domain's generated ``split``.

    Examples
    --------
    >>> m = toy.create_model(pretrained=False)
    >>> 0.0 <= zero_shot_accuracy(m, toy.get_tokenizer(), "texture", n_per_class=1) <= 100.0
    True
    """
    was_training = model.training
    model.eval()
    g = generate(domain, n_per_class, seed=seed, split=split)
    text = class_text_features(model, tokenizer, g.classnames, template)
    correct = 0
    for start in range(0, len(g.labels), batch_size):
        img = F.normalize(model.encode_image(to_model_input(g.images[start : start + batch_size])), dim=-1)
        pred = (img @ text.T).argmax(1).numpy()
        correct += int((pred == g.labels[start : start + batch_size]).sum())
    model.train(was_training)
    return 100.0 * correct / len(g.labels)


def pretrain(
    cfg: PretrainConfig | None = None,
    *,
    log: Callable[[str], None] | None = print,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 250,
) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Train the toy CLIP from scratch with the recipe ``cfg``; return the model (eval mode) and history.

    ``history`` holds one record per logged step: ``step``, ``loss`` (mean since the last record),
    ``lr``, ``logit_scale``, ``seconds`` and, at evaluation steps, ``photo_zero_shot``.

    With ``checkpoint`` (a file path) the model, optimizer and history are saved there every
    ``checkpoint_every`` steps, and a run started with an existing checkpoint of the same recipe resumes
    from it: every batch depends only on ``(seed, step)``, so an interrupted run loses at most
    ``checkpoint_every`` steps and ends where an uninterrupted one would.

    Examples
    --------
    >>> cfg = PretrainConfig(steps=2, batch_size=4, eval_every=0, log_every=1, text_warmup=0)  # no text warm-up
    >>> model, hist = pretrain(cfg, log=None)
    >>> len(hist), model.training
    (2, False)
    """
    cfg = cfg or PretrainConfig()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(cfg.seed)
    model = toy.create_model(pretrained=False)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(cfg.init_logit_scale))
    model.train()
    tokenizer = toy.get_tokenizer()
    history: list[dict[str, float]] = []
    t0, c0 = time.perf_counter(), time.process_time()
    ckpt = Path(checkpoint) if checkpoint else None
    resuming = ckpt is not None and ckpt.is_file()
    # 1. text warm-up: paraphrase contrastive on captions only (no images rendered; skipped on resume,
    #    whose checkpoint already holds its result)
    text_params = [p for n, p in model.named_parameters() if not n.startswith("visual") and n != "logit_scale"]
    topt = torch.optim.AdamW(text_params, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    for step in range(0 if resuming else cfg.text_warmup):
        captions, said = caption_batch(cfg.text_warmup_batch, cfg.seed, step, shape_only=cfg.shape_only)
        unique, first = np.unique(np.asarray(captions), return_index=True)
        keys = [tuple(said[k][i] for k in sorted(said)) for i in first]
        txt = F.normalize(encode_text_trimmed(model, tokenizer(list(unique))), dim=-1)
        loss = paraphrase_loss(txt, keys)
        topt.zero_grad(set_to_none=True)
        loss.backward()
        topt.step()
        if log is not None and cfg.log_every and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.text_warmup):
            log(f"text-warmup step={step + 1} paraphrase_loss={float(loss.detach()):.4g}")
    # 2. image-text contrastive
    opt = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay, cfg.logit_scale_lr_mult), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
    )
    start = 0
    if resuming:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)  # tensors, numbers, dicts: no code runs
        if state["recipe"] != asdict(cfg):
            raise ValueError(
                f"checkpoint {ckpt} was written by a different recipe ({state['recipe']}); "
                "delete it or pass another checkpoint path"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history, start = state["history"], state["step"]
        if log is not None:
            log(f"resumed from {ckpt} at step {start}")
    running, count = 0.0, 0
    # the next batch is generated in a thread while the model trains on this one (numpy releases the GIL);
    # each batch depends only on (seed, step), so prefetching does not change the data
    pool = ThreadPoolExecutor(max_workers=1)
    def make(step: int):
        return pretraining_batch(
            cfg.batch_size, cfg.seed, step, neutral=cfg.neutral, radius=radius_at(step, cfg),
            shape_only=cfg.shape_only,
        )

    future = pool.submit(make, step=start)
    for step in range(start, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg) * group["lr_mult"]
        batch = future.result()
        if step + 1 < cfg.steps:
            future = pool.submit(make, step=step + 1)
        unique, inverse = np.unique(np.asarray(batch.captions), return_index=True)
        match = torch.as_tensor(batch.match[:, inverse])  # images x unique captions
        img = F.normalize(model.encode_image(to_model_input(batch.images)), dim=-1)
        txt = F.normalize(encode_text_trimmed(model, tokenizer(list(unique))), dim=-1)
        loss = multi_positive_clip_loss(img, txt, model.logit_scale.exp(), match)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        running += float(loss.detach())
        count += 1
        last = step == cfg.steps - 1
        if (cfg.log_every and (step + 1) % cfg.log_every == 0) or last:
            rec = {
                "step": step + 1,
                "loss": running / count,
                "lr": opt.param_groups[0]["lr"],
                "logit_scale": float(model.logit_scale.detach().exp()),
                "seconds": time.perf_counter() - t0,
                "cpu_seconds": time.process_time() - c0,
            }
            running, count = 0.0, 0
            if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or last):
                rec["photo_zero_shot"] = zero_shot_accuracy(
                    model, tokenizer, "photo", split="val", n_per_class=cfg.eval_per_class, seed=cfg.seed
                )
            history.append(rec)
            if log is not None:
                log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
        if ckpt is not None and ((step + 1) % checkpoint_every == 0 or last):
            _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "history": history,
                          "step": step + 1, "recipe": asdict(cfg)}, ckpt)
    pool.shutdown()
    model.eval()
    return model, history


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_weights(
    model: torch.nn.Module, path: str | Path, *, recipe: PretrainConfig, history: list[dict[str, float]],
    metrics: dict[str, Any] | None = None, fp16: bool = False,
) -> dict[str, Any]:
    """Write the open_clip state dict as safetensors plus a JSON sidecar (``<path>.json`` next to it).

    The sidecar records the recipe, seed, sha256 of the weights file, metrics and versions.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> meta = save_weights(toy.create_model(pretrained=False), p, recipe=PretrainConfig(), history=[])
    >>> os.path.isfile(p) and os.path.isfile(p[:-len(".safetensors")] + ".json")
    True
    """
    import open_clip
    from safetensors.torch import save_file

    from mmlens._version import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if fp16 else torch.float32
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"model": toy.TOY_MODEL_NAME, "tag": toy.TAG})
    meta = {
        "model": toy.TOY_MODEL_NAME,
        "pretrained_tag": toy.TAG,
        "file": path.name,
        "sha256": sha256_file(path),
        "dtype": str(dtype).replace("torch.", ""),
        "model_config": toy.TOY_MODEL_CONFIG,
        "recipe": asdict(recipe),
        "seed": recipe.seed,
        "train_seconds": history[-1]["seconds"] if history else None,
        "cpu_seconds": history[-1]["cpu_seconds"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "metrics": metrics or {},
        "history": history,
        "versions": {
            "mmlens": __version__,
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "machine": {"threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine()},
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def evaluate_all(model, *, n_per_class: int = 40, seed: int = 0) -> dict[str, float]:
    """Zero-shot top-1 (%) on the ``test`` split of every toyworld domain (photo = held-out images)."""
    tok = toy.get_tokenizer()
    return {k: zero_shot_accuracy(model, tok, k, n_per_class=n_per_class, seed=seed) for k in DOMAINS}
