"""Few-shot prompt learning and bias tuning with MaPLe's recipe, seeded, with resumable per-epoch checkpoints."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmlens.data.transforms import input_spec, resize_batch
from mmlens.models.precision import resolve_precision
from mmlens.train._data import batches, build_split, classnames_of, dataset_identity
from mmlens.train.schedule import WarmupCosine
from mmlens.train.transforms import random_resized_crop_flip

__all__ = ["FitResult", "fit", "latest_checkpoint", "CHECKPOINT_FORMAT", "PROMPTS_FILENAME"]

CHECKPOINT_FORMAT = "mmlens-train-checkpoint/1"
PROMPTS_FILENAME = "prompts.safetensors"
_CKPT_RE = re.compile(r"^epoch-(\d+)\.pt$")


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    history : list of dict
        One entry per trained epoch: ``epoch`` (1-based), ``lr``, ``loss`` (mean cross-entropy),
        ``accuracy`` (training accuracy in %, on the augmented images), ``images``, ``seconds``.
    prompts_path : Path or None
        The final prompts (:func:`mmlens.save_prompts` format), ``None`` without ``checkpoint_dir``.
    checkpoint_dir : Path or None
    method : str
    seed : int
    trainable_parameters : int
    resumed_from_epoch : int
        Completed epochs found in ``checkpoint_dir`` at the start (0 for a fresh run).
    """

    history: list[dict[str, float]]
    prompts_path: Path | None
    checkpoint_dir: Path | None
    method: str
    seed: int
    trainable_parameters: int
    resumed_from_epoch: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def loss(self) -> list[float]:
        """Mean training loss per epoch."""
        return [h["loss"] for h in self.history]

    @property
    def accuracy(self) -> list[float]:
        """Training accuracy (%) per epoch."""
        return [h["accuracy"] for h in self.history]

    def __repr__(self) -> str:
        last = self.history[-1] if self.history else {}
        tail = f", last loss {last['loss']:.4f}, acc {last['accuracy']:.1f}%" if last else ""
        return (f"FitResult(method={self.method!r}, seed={self.seed}, epochs={len(self.history)}{tail}, "
                f"prompts={str(self.prompts_path) if self.prompts_path else None})")


# ---------------------------------------------------------------------------------------------- helpers
def _derived_seed(seed: int, epoch: int, stream: str) -> int:
    """An independent 63-bit seed per (run seed, epoch, purpose): resume needs no RNG replay."""
    digest = hashlib.sha256(f"mmlens-train|{int(seed)}|{int(epoch)}|{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002 (the legacy global RNG is what user code may use)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name,  # noqa: NPY002
                          keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The checkpoint of the last completed epoch in ``checkpoint_dir`` (``epoch-NNN.pt``), or None."""
    d = Path(checkpoint_dir)
    if not d.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT_RE.match(p.name))]
    return max(found)[1] if found else None


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # an interruption never leaves a half-written checkpoint under the real name


def _resolve_dataset(dataset: Any, root: Any, shots: int | None, seed: int, subset: str,
                     size: tuple[int, int]) -> tuple[Any, str | None]:
    if isinstance(dataset, (str, os.PathLike)) and not isinstance(dataset, torch.utils.data.Dataset):
        return build_split(str(dataset), root, "train", size, shots=shots, seed=seed, subset=subset), str(dataset)
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TypeError("dataset must be a torch Dataset of item dicts or a dataset name; "
                        f"got {type(dataset).__name__}.")
    return dataset, getattr(dataset, "name", None)


def _fingerprint(model: Any, ds: Any, classnames: list[str], cfg: dict[str, Any]) -> dict[str, Any]:
    return {
        "method": model.method,
        "hparams": json.loads(json.dumps(model.hparams)),
        "base_weights_sha256": (model.clip_source.get("pretrained") or {}).get("sha256"),
        "classnames_sha256": hashlib.sha256("\n".join(classnames).encode()).hexdigest()[:16],
        "data": dataset_identity(ds),
        "images": len(ds),
        **cfg,
    }


# ---------------------------------------------------------------------------------------------- fit
def fit(
    model: Any,
    dataset: Any,
    *,
    root: str | os.PathLike | None = None,
    shots: int | None = 16,
    seed: int = 1,
    subset: str = "base",
    epochs: int = 5,
    lr: float = 0.0035,
    batch_size: int = 4,
    warmup_epochs: int = 1,
    warmup_lr: float = 1e-5,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    keep_checkpoints: int = 1,
    augment: bool = True,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    normalize: bool = True,
    num_workers: int = 0,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
    name: str | None = None,
) -> FitResult:
    """Train the prompts (or biases) of a :class:`~mmlens.PromptedCLIP` with MaPLe's few-shot recipe.

    The defaults are MaPLe's base-to-novel recipe: SGD (momentum 0.9, weight decay 5e-4), batch 4,
    5 epochs, lr 0.0035 on a cosine schedule after one constant warm-up epoch at 1e-5 (see
    :class:`~mmlens.train.schedule.WarmupCosine`), random-resized-crop (scale 0.08-1) + horizontal
    flip, cross-entropy on CLIP's scaled cosine logits, the last epoch's prompts kept. Only the
    prompt learner is trained; the CLIP stays frozen. Works for every method of
    :data:`mmlens.models.prompted.METHODS` (``zeroshot`` has nothing to train: its "prompts" are
    saved as they are).

    Reproducibility: the prompt initialisation is fixed when the model is built
    (``PromptedCLIP(..., init_seed=seed)``); everything random in training (the order of the images,
    the crops and flips) is drawn from generators seeded by ``(seed, epoch)``. After every epoch a
    checkpoint (prompts, optimizer, schedule, grad scaler, global RNG states, history) is written
    atomically to ``checkpoint_dir/epoch-NNN.pt``; a later call with the same arguments resumes after
    the last completed epoch and ends with bit-identical prompts to an uninterrupted run (on the
    same device and thread count). A finished run is not repeated: calling again just loads its
    prompts.

    Parameters
    ----------
    model : PromptedCLIP
        Modified in place: its classes are set to the training classes, its prompts trained.
    dataset : torch Dataset or str
        A Dataset of item dicts (``image`` float tensor in [0, 1] of any size, ``label``) with a
        ``.classnames`` list, e.g. an :class:`mmlens.data.ImageDataset`; used as given. Or a dataset
        name (``"EuroSAT"``) with ``root``: then the protocol applies — ``shots`` images per class of
        the ``train`` split drawn with ``seed`` (:func:`mmlens.data.few_shot`), classes of ``subset``
        (``"base"``: the base half, :func:`mmlens.data.base_novel`; ``"all"`` for cross-dataset).
    root : path, optional
        Data root for a dataset given by name.
    shots, subset
        Few-shot size and class subset, for a dataset given by name only.
    seed : int
        Protocol seed (1, 2, 3 in the papers): few-shot draw, image order, augmentation.
    epochs, lr, batch_size, warmup_epochs, warmup_lr, momentum, weight_decay
        The optimisation recipe. The last batch of an epoch is dropped when it is incomplete (Dassl).
    device : str
        ``"cpu"`` or ``"cuda"``; the model is moved there.
    precision : str
        ``"auto"``: mixed precision (autocast float16 + gradient scaling) on CUDA, float32 elsewhere;
        ``"fp32"``: float32 everywhere; ``"amp"``: autocast float16 + gradient scaling
        (``torch.amp.GradScaler`` of the device) on any device, CPU included; ``"bf16"``: autocast
        bfloat16, no scaling (:mod:`mmlens.models.precision`). The prompts, their gradients and the
        optimizer state stay float32; the loss is taken on float32 logits.
    checkpoint_dir : path, optional
        Where per-epoch checkpoints and the final ``prompts.safetensors`` go. ``None``: no files.
    resume : bool
        Continue from the last checkpoint in ``checkpoint_dir`` (its settings must match this call).
        ``False`` starts afresh and deletes the old checkpoints.
    keep_checkpoints : int
        How many per-epoch checkpoints to keep (older ones are deleted after a new one is written).
    augment, crop_scale : bool, (float, float)
        Random-resized-crop (area fraction ``crop_scale``) + flip; ``False``: centre images only.
    normalize : bool
        Apply the model's mean/std (after augmentation). Pass ``False`` if the dataset's own transform
        already normalises (e.g. ``clip.preprocess``).
    num_workers : int
        DataLoader worker processes for image decoding.
    progress : bool
        tqdm progress bar with the running loss and accuracy.
    callback : callable, optional
        Called as ``callback(info)`` after each epoch's checkpoint is written; ``info`` holds the
        history entry plus ``checkpoint`` and ``model``. An exception raised here stops training.
    name : str, optional
        Dataset name recorded with the prompts (default: the name given, or ``dataset.name``).

    Returns
    -------
    FitResult

    Examples
    --------
    >>> import mmlens
    >>> from mmlens.data.toyworld import build_in_memory
    >>> from mmlens.train import fit
    >>> clip = mmlens.load_clip("mmlens-toy", pretrained="toyworld")
    >>> model = mmlens.PromptedCLIP(clip, ["x"], method="maple", depth=3, init_seed=1)
    >>> shots = build_in_memory("satellite", "train", shots=1, subset="base", seed=1)  # 1 image per base class
    >>> result = fit(model, shots, seed=1, epochs=1, batch_size=8, progress=False)
    >>> len(result.history), model.classnames == shots.classnames, result.prompts_path
    (1, True, None)

    With a data root the protocol applies, and ``checkpoint_dir`` makes the run resumable:
    ``fit(model, "EuroSAT", root="~/data", seed=1, checkpoint_dir="runs/eurosat/maple/seed1")``.
    """
    from mmlens.models.checkpoints import prompt_sha256, save_prompts

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    device = torch.device(device)
    # fp16 is a choice of frozen weights (load_clip), not of training: the model comes as it was loaded
    amp = resolve_precision(precision, device, allowed=("auto", "fp32", "amp", "bf16"))
    spec = input_spec(model)
    ds, ds_name = _resolve_dataset(dataset, root, shots, seed, subset, spec)
    ds_name = name or ds_name
    n = len(ds)
    if n == 0:
        raise ValueError("The training dataset is empty: check the data root, split and class subset.")
    classnames = classnames_of(ds, fallback=model.classnames)
    if classnames != list(model.classnames):
        model.set_classnames(classnames)
    model.to(device)
    was_training = model.training
    model.eval()  # the frozen CLIP has no dropout/BN in use; eval() keeps it deterministic

    params = [p for p in model.prompt_learner.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    cfg = {"seed": int(seed), "epochs": int(epochs), "lr": float(lr), "batch_size": int(batch_size),
           "warmup_epochs": int(warmup_epochs), "warmup_lr": float(warmup_lr), "momentum": float(momentum),
           "weight_decay": float(weight_decay), "augment": bool(augment), "crop_scale": list(map(float, crop_scale)),
           "normalize": bool(normalize), "amp": amp.autocast_dtype is not None,
           # "amp" alone meant float16 autocast before bf16 existed: only bf16 adds a key, so older
           # checkpoints still resume
           **({"amp_dtype": "bfloat16"} if amp.autocast_dtype == torch.bfloat16 else {})}
    fingerprint = _fingerprint(model, ds, classnames, cfg)
    training_meta = {"dataset": ds_name, "seed": int(seed), "shots": shots if isinstance(dataset, str) else None,
                     "subset": subset if isinstance(dataset, str) else None, "images": n, **cfg}
    ckpt_dir = Path(checkpoint_dir).expanduser() if checkpoint_dir is not None else None
    prompts_path = ckpt_dir / PROMPTS_FILENAME if ckpt_dir is not None else None

    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay) if params else None
    schedule = WarmupCosine(lr, epochs, warmup_epochs, warmup_lr)
    scaler = amp.grad_scaler()
    history: list[dict[str, float]] = []
    start_epoch = 0

    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        last = latest_checkpoint(ckpt_dir)
        if last is not None and not resume:
            for p in ckpt_dir.glob("epoch-*.pt"):
                p.unlink()
            last = None
        if last is not None:
            state = torch.load(last, map_location="cpu", weights_only=True)
            _check_resumable(state, fingerprint, last)
            model.load_prompt_state(state["prompts"], source=str(last))
            if optimizer is not None:
                optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            _set_rng_state(state["rng"])
            history = list(state["history"])
            start_epoch = int(state["epoch"])

    result_info = {"fingerprint": fingerprint}
    if optimizer is None:  # zeroshot: nothing to learn
        epochs_to_run = range(0)
    else:
        epochs_to_run = range(start_epoch, epochs)

    text_cache = _static_text_features(model)
    for epoch in epochs_to_run:
        entry = _train_epoch(model, ds, optimizer, schedule, scaler, epoch=epoch, epochs=epochs, seed=seed,
                             batch_size=batch_size, spec=spec, augment=augment, crop_scale=crop_scale,
                             normalize=normalize, device=device, amp=amp, num_workers=num_workers,
                             progress=progress, text_cache=text_cache)
        schedule.step()
        history.append(entry)
        ckpt_path = None
        if ckpt_dir is not None:
            ckpt_path = ckpt_dir / f"epoch-{epoch + 1:03d}.pt"
            _atomic_save({
                "format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "prompts": model.prompt_state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {}, "rng": _rng_state(),
                "history": history, "fingerprint": fingerprint,
            }, ckpt_path)
            old = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _CKPT_RE.match(p.name)))
            for _, p in old[: max(0, len(old) - max(1, keep_checkpoints))]:
                p.unlink()
        if callback is not None:
            callback({**entry, "checkpoint": ckpt_path, "model": model})

    if prompts_path is not None:
        state = model.prompt_state_dict()
        done = prompts_path.is_file() and _prompt_file_sha(prompts_path) == prompt_sha256(state)
        if not done:
            save_prompts(model, prompts_path, extra={"training": {**training_meta, "history": history}})
    model.train(was_training)
    return FitResult(history=history, prompts_path=prompts_path, checkpoint_dir=ckpt_dir, method=model.method,
                     seed=int(seed), trainable_parameters=n_params, resumed_from_epoch=start_epoch,
                     info=result_info)


def _prompt_file_sha(path: Path) -> str | None:
    from mmlens.models.checkpoints import read_prompt_file

    try:
        return read_prompt_file(path)[1].get("prompt_sha256")
    except (ValueError, OSError):
        return None


def _check_resumable(state: dict[str, Any], fingerprint: dict[str, Any], path: Path) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an mmlens training checkpoint (format {state.get('format')!r}, "
                         f"expected {CHECKPOINT_FORMAT!r}).")
    saved = state.get("fingerprint", {})
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, this call {v!r}" for k, v in fingerprint.items()
             if json.dumps(saved.get(k), sort_keys=True) != json.dumps(v, sort_keys=True)]
    if diffs:
        raise ValueError(
            f"Cannot resume from {path}: it was written by a different training run.\n  " + "\n  ".join(diffs)
            + "\nUse another checkpoint_dir, or resume=False to start afresh (deletes these checkpoints)."
        )


def _static_text_features(model: Any) -> torch.Tensor | None:
    """Text features computed once when no trained parameter reaches the text tower (e.g. deep_vision)."""
    with torch.enable_grad():
        feats = model.text_features()
    return None if feats.requires_grad else feats.detach()


def _train_epoch(model, ds, optimizer, schedule, scaler, *, epoch, epochs, seed, batch_size, spec, augment,
                 crop_scale, normalize, device, amp, num_workers, progress, text_cache) -> dict[str, float]:
    from mmlens._progress import progress_bar

    lr = schedule.apply(optimizer)
    n = len(ds)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_derived_seed(seed, epoch, "order")))
    aug_gen = torch.Generator().manual_seed(_derived_seed(seed, epoch, "augment"))
    drop_last = n >= batch_size
    n_batches = n // batch_size if drop_last else math.ceil(n / batch_size)
    total_loss, correct, seen = 0.0, 0, 0
    started = time.perf_counter()
    bar = progress_bar(total=n_batches, desc=f"{model.method} epoch {epoch + 1}/{epochs}", enabled=progress,
                       leave=False, unit="batch")
    try:
        for batch in batches(ds, batch_size, order=order.tolist(), drop_last=drop_last, num_workers=num_workers):
            images = resize_batch(batch["image"], spec)
            if augment:
                images = random_resized_crop_flip(images, spec.size, generator=aug_gen, scale=tuple(crop_scale))
            if normalize:
                images = spec.normalize(images)
            images = images.to(device, non_blocking=True)
            labels = batch["label"].to(device)
            with amp.autocast():
                logits = model(images, text_cache)
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            k = len(labels)
            total_loss += float(loss.detach()) * k
            correct += int((logits.detach().argmax(-1) == labels).sum())
            seen += k
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{100 * correct / seen:.1f}", lr=f"{lr:.2e}")
    finally:
        bar.close()
    if seen == 0:
        raise ValueError("No training batch was produced (every image failed to decode?).")
    return {"epoch": epoch + 1, "lr": lr, "loss": total_loss / seen, "accuracy": 100.0 * correct / seen,
            "images": seen, "seconds": time.perf_counter() - started}
