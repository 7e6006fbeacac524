"""Prompt checkpoints: mmlens's own (safetensors + JSON metadata) and published MaPLe (Dassl) files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_prompts", "load_prompts", "load_maple_checkpoint", "prompt_sha256"]

_METADATA_KEY = "mmlens"


def prompt_sha256(state: dict[str, torch.Tensor]) -> str:
    """Content hash of a prompt state dict (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_prompts(model, path: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Save the learned part of a :class:`PromptedCLIP` as safetensors with JSON metadata.

    The metadata records the method and its hyper-parameters, the class names, the base model's
    name and weight hash and the mmlens version, so :func:`load_prompts` can rebuild the model.

    Examples
    --------
    >>> save_prompts(model, "maple_eurosat_seed1.safetensors")  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    from mmlens._version import __version__

    path = Path(path)
    state = {k: v.contiguous() for k, v in model.prompt_state_dict().items()}
    source = model.clip_source
    meta = {
        "format": "mmlens-prompts/1",
        "hparams": model.hparams,
        "classnames": model.classnames,
        "base_model": source.get("name"),
        "base_weights_sha256": (source.get("pretrained") or {}).get("sha256"),
        "prompt_sha256": prompt_sha256(state),
        "trainable_parameters": model.trainable_parameter_count(),
        "mmlens_version": __version__,
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={_METADATA_KEY: json.dumps(meta)})
    os.replace(tmp, path)  # atomic: an interrupted save never leaves a half-written checkpoint
    return path


def read_prompt_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an mmlens prompt file: (state dict, metadata)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No prompt checkpoint at {path}.")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get(_METADATA_KEY, "{}"))
        state = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != "mmlens-prompts/1":
        raise ValueError(f"{path} is a safetensors file but not an mmlens prompt checkpoint "
                         "(no 'mmlens' metadata). For MaPLe's Dassl files use load_maple_checkpoint().")
    return state, meta


def load_prompts(path: str | os.PathLike, clip, *, classnames=None, strict_base: bool = True):
    """Rebuild a :class:`PromptedCLIP` on ``clip`` from a file written by :func:`save_prompts`.

    Parameters
    ----------
    clip : LoadedCLIP
        The base model; its weight hash must match the one the prompts were learned on
        (``strict_base=False`` only warns).
    classnames : list of str, optional
        Classes for the logits (default: the ones saved with the prompts).
    """
    from mmlens.models.prompted import PromptedCLIP

    state, meta = read_prompt_file(path)
    saved = meta.get("base_weights_sha256")
    have = getattr(clip, "weights_sha256", None)
    if saved and have and saved != have:
        msg = (f"The prompts in {path} were learned on {meta.get('base_model')} weights {saved[:12]}…, "
               f"but the given model has weights {have[:12]}…. Load the same base weights, "
               "or pass strict_base=False to use them anyway.")
        if strict_base:
            raise ValueError(msg)
        import warnings

        warnings.warn(msg, stacklevel=2)
    hp = dict(meta["hparams"])
    method = hp.pop("method")
    model = PromptedCLIP(clip, classnames or meta["classnames"], method, **hp)
    model.load_prompt_state(state, source=str(path))
    return model


def load_maple_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a published MaPLe (Dassl-format) checkpoint; return its learned prompt tensors.

    Accepts ``model.pth.tar-<epoch>`` files holding a dict with ``state_dict`` (which may hold the
    whole model and ``module.`` prefixes), or a bare state dict. Only ``prompt_learner.*`` keys are
    kept (prefix stripped); the cached ``token_prefix``/``token_suffix`` buffers are dropped.
    Tensors come back in their stored dtype (MaPLe stores some in fp16); ``load_prompt_state``
    casts them. Never executes pickled code (``weights_only=True``).

    Examples
    --------
    >>> state = load_maple_checkpoint("eurosat/base/seed1/MultiModalPromptLearner/model.pth.tar-5")  # doctest: +SKIP
    >>> model.load_prompt_state(state)  # doctest: +SKIP
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("**/MultiModalPromptLearner/model.pth.tar-*"))
        found = found or sorted(path.glob("**/model.pth.tar-*"))
        if not found:
            raise FileNotFoundError(f"No MaPLe checkpoint (model.pth.tar-<epoch>) under {path}.")
        path = found[-1]
    if not path.is_file():
        raise FileNotFoundError(
            f"No MaPLe checkpoint at {path}. Published files are laid out as "
            "<dataset>/base/seed<k>/MultiModalPromptLearner/model.pth.tar-5."
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path} cannot be read with weights_only=True ({type(err).__name__}: {err}). mmlens does not "
            "unpickle arbitrary objects. Re-save its state_dict on a trusted machine: "
            "torch.save({'state_dict': ckpt['state_dict']}, 'clean.pth')."
        ) from err
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds {type(obj).__name__}; expected a Dassl dict with 'state_dict'.")
    out = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if not key.startswith("prompt_learner."):
            continue  # frozen CLIP weights (image_encoder.*, text_encoder.*, logit_scale)
        key = key[len("prompt_learner."):]
        if key in ("token_prefix", "token_suffix"):
            continue
        out[key] = value
    if not out:
        raise ValueError(f"{path} has no 'prompt_learner.*' keys: not a MaPLe prompt checkpoint "
                         f"(found e.g. {list(state)[:3]}).")
    return out
