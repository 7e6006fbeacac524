"""Load real open_clip CLIP models offline-safely: open_clip tags, local checkpoints, OpenAI files."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import zipfile
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["LoadedCLIP", "activation_name", "load_clip", "register_config", "state_dict_sha256"]

# Keys an OpenAI-format file carries besides the open_clip CLIP state dict.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_PRECISIONS = ("fp32", "fp16", "bf16", "amp", "amp_bf16", "pure_fp16", "pure_bf16")


@dataclass
class LoadedCLIP:
    """A loaded CLIP: the open_clip model with what is needed to feed it.

    Attributes
    ----------
    model : open_clip.CLIP
        The unmodified open_clip model, in eval mode.
    preprocess : callable
        The evaluation image transform (PIL image -> tensor).
    tokenizer : callable
        ``tokenizer(list_of_str) -> LongTensor[N, context_length]``.
    name : str
        The open_clip model name.
    pretrained : dict
        What was loaded: ``source`` (``random``, ``tag``, ``file``), ``tag`` or ``path``, ``format``
        (``open_clip``, ``openai-jit``, ``openai-state-dict``, ``safetensors``), ``quick_gelu``,
        ``sha256`` (of the file when there is one).
    """

    model: Any
    preprocess: Callable
    tokenizer: Callable
    name: str
    pretrained: dict = field(default_factory=dict)

    @property
    def weights_sha256(self) -> str:
        """sha256 of the weights: the file's hash when loaded from a file, else of the state dict."""
        if not self.pretrained.get("sha256"):
            self.pretrained["sha256"] = state_dict_sha256(self.model)
        return self.pretrained["sha256"]


def activation_name(model: torch.nn.Module) -> str:
    """The MLP activation a CLIP was built with: ``"quick_gelu"`` or ``"gelu"``.

    Read off the modules themselves (not a flag recorded beside them), so it is right whichever route
    built the model. OpenAI's CLIP and every prompt published for it (MaPLe, CoOp) use QuickGELU.
    """
    from open_clip.model import QuickGELU  # open_clip's own class: the one its blocks instantiate

    return "quick_gelu" if any(isinstance(m, QuickGELU) for m in model.modules()) else "gelu"


def state_dict_sha256(module: torch.nn.Module) -> str:
    """A content hash of a module's parameters and buffers (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def register_config(name: str, config: dict) -> None:
    """Register an open_clip model config under ``name`` (so ``load_clip(name)`` builds it).

    Examples
    --------
    >>> cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64,
    ...        "patch_size": 8}, "text_cfg": {"context_length": 16, "vocab_size": 49408,
    ...        "width": 32, "heads": 2, "layers": 2}}
    >>> register_config("my-tiny", cfg)
    >>> load_clip("my-tiny").model.visual.grid_size
    (4, 4)
    """
    from open_clip import factory

    factory._MODEL_CONFIGS[name] = dict(config)  # open_clip has no public API for in-memory configs


def _is_offline() -> bool:
    """True when weights cannot be fetched: HF_HUB_OFFLINE set, or the hub's name does not resolve."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if os.environ.get("MMLENS_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    previous = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(2.0)
        socket.getaddrinfo("huggingface.co", 443)
        return False
    except OSError:
        return True
    finally:
        socket.setdefaulttimeout(previous)


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Read a checkpoint file without executing pickled code; return (state_dict, format)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), "safetensors"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            is_jit = any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
        if is_jit:
            # A TorchScript archive holds TorchScript, not Python pickles of arbitrary classes.
            archive = torch.jit.load(str(path), map_location="cpu")
            return dict(archive.state_dict()), "openai-jit"
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError and friends
        raise ValueError(
            f"Could not read {path} as a weights-only checkpoint ({type(err).__name__}: {err}). "
            "mmlens never unpickles arbitrary objects. Re-save the file as a plain state dict "
            "(torch.save(model.state_dict(), ...)) or as safetensors."
        ) from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a state dict of tensors.")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    fmt = "openai-state-dict" if any(k in obj for k in _OPENAI_EXTRA_KEYS) else "open_clip"
    return obj, fmt


def load_clip(
    name: str,
    pretrained: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> LoadedCLIP:
    """Load an open_clip CLIP by model name, with weights from a tag or a local file.

    Parameters
    ----------
    name : str
        Any open_clip model name (``"ViT-B-16"``, ``"ViT-B-32"``, ``"ViT-L-14"``), a config
        registered with :func:`register_config`, or ``"mmlens-toy"`` (the embedded toyworld CLIP).
    pretrained : str or path, optional
        ``None``: random weights. An open_clip tag (``"openai"``, ``"laion2b_s34b_b88k"``; needs the
        network or a cached file). A local file: an open_clip checkpoint, a safetensors file, or an
        OpenAI-format ``ViT-B-16.pt`` (JIT archive or plain state dict) — OpenAI weights switch the
        config to QuickGELU, as they were trained with it. For ``"mmlens-toy"``: ``"toyworld"``.
    device : str or torch.device
        Where the model lives.
    precision : str
        ``"fp32"`` (default), ``"fp16"``, ``"bf16"`` or another open_clip precision.

    Returns
    -------
    LoadedCLIP

    Examples
    --------
    >>> clip = load_clip("ViT-B-32")            # random weights, offline
    >>> clip.pretrained["source"]
    'random'
    """
    import open_clip

    if precision not in _PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {_PRECISIONS}.")
    tokenizer = None
    pretrained_tag = None if pretrained is None else str(pretrained)
    if name == "mmlens-toy":
        from mmlens.models import toy

        toy.register()
        tokenizer = toy.get_tokenizer()
        if pretrained_tag == toy.TAG:
            if not Path(toy.WEIGHTS_FILE).is_file():
                raise FileNotFoundError(
                    f"The shipped toyworld weights are missing ({toy.WEIGHTS_FILE}). Reinstall mmlens, "
                    "or re-create them with `mmlens toy pretrain --out <file>` and pass that file."
                )
            pretrained = toy.WEIGHTS_FILE
            pretrained_tag = str(pretrained)

    if open_clip.get_model_config(name) is None:
        known = open_clip.list_models()
        import difflib

        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"Unknown open_clip model name {name!r}.{hint} See open_clip.list_models(), or register "
            "a config with mmlens.models.loading.register_config(name, config)."
        )

    info: dict[str, Any] = {"source": "random", "quick_gelu": False, "sha256": None}
    state_dict = None
    if pretrained_tag is not None:
        path = Path(pretrained_tag).expanduser()
        if path.is_file():
            state_dict, fmt = _read_state_dict(path)
            info.update(source="file", path=str(path.resolve()), format=fmt, sha256=_file_sha256(path))
            info["quick_gelu"] = fmt.startswith("openai")
        elif pretrained_tag in open_clip.list_pretrained_tags_by_model(name):
            info.update(source="tag", tag=pretrained_tag)
        elif os.sep in pretrained_tag or pretrained_tag.endswith((".pt", ".pth", ".bin", ".safetensors", ".tar")):
            raise FileNotFoundError(
                f"Weights file {pretrained_tag!r} does not exist. Pass the path of an open_clip "
                f"checkpoint or of OpenAI's {name}.pt, or pretrained=None for random weights."
            )
        else:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ValueError(
                f"{pretrained_tag!r} is neither a file nor a pretrained tag of {name!r} "
                f"(known tags: {tags or 'none'})."
            )

    if info["source"] == "tag":
        cfg = open_clip.get_pretrained_cfg(name, pretrained_tag)
        if _is_offline():
            expected = cfg.get("hf_hub") or cfg.get("url") or "(see open_clip.get_pretrained_cfg)"
            filename = "open_clip_pytorch_model.bin" if cfg.get("hf_hub") else Path(str(cfg.get("url"))).name
            raise RuntimeError(
                f"Cannot load pretrained tag {pretrained_tag!r} for {name!r}: this machine is offline "
                f"(HF_HUB_OFFLINE is set or the hub does not resolve). The tag needs the file {filename!r} "
                f"from {expected}. Download it on a connected machine and pass its local path: "
                f"load_clip({name!r}, pretrained='/path/to/{filename}')."
            )
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained_tag, device=device, precision=precision
        )
        info["quick_gelu"] = bool(cfg.get("quick_gelu", False))
    else:
        # open_clip warns "initialized randomly" when it loads nothing itself: false when we load next
        with _drop_log_records("No pretrained weights loaded") if state_dict is not None else nullcontext():
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=None, device="cpu", precision="fp32", force_quick_gelu=info["quick_gelu"]
            )
        if state_dict is not None:
            _load_into(model, state_dict, name=name, path=info.get("path"))
        model = _to_precision(model.to(device), precision)
    model.eval()
    if tokenizer is None:
        tokenizer = open_clip.get_tokenizer(name)
    return LoadedCLIP(model=model, preprocess=preprocess, tokenizer=tokenizer, name=name, pretrained=info)


@contextmanager
def _drop_log_records(prefix: str):
    """Drop root-logger records whose message starts with ``prefix`` while the block runs."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _load_into(model: torch.nn.Module, state_dict: dict, *, name: str, path: str | None) -> None:
    sd = {k: v for k, v in state_dict.items() if k not in _OPENAI_EXTRA_KEYS}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [(k, tuple(sd[k].shape), tuple(expected[k].shape)) for k in expected
             if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        lines = [f"The weights in {path} do not fit the open_clip config {name!r}:"]
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                lines.append(f"  {label} keys ({len(keys)}): {keys[:5]}{' ...' if len(keys) > 5 else ''}")
        for k, found, want in wrong[:5]:
            lines.append(f"  {k}: found shape {found}, expected {want}")
        lines.append("  Is this the checkpoint of another model (e.g. ViT-L-14 weights for ViT-B-16)? "
                     "Pass the matching model name.")
        raise ValueError("\n".join(lines))
    with torch.no_grad():
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in sd.items()}, strict=True)


def _to_precision(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    if precision in ("fp16", "pure_fp16"):
        from open_clip.model import convert_weights_to_lp

        convert_weights_to_lp(model, dtype=torch.float16)
    elif precision in ("bf16", "pure_bf16"):
        from open_clip.model import convert_weights_to_lp

        convert_weights_to_lp(model, dtype=torch.bfloat16)
    return model


#: What ``--pretrained`` takes on the command line to ask for random weights.
RANDOM_WEIGHTS = "random"


def cli_pretrained(model_name: str, pretrained: str | None) -> str | None:
    """The weights a command-line run loads: what ``--pretrained`` names, else the model's real weights.

    On the command line nobody should get random weights without asking: ``mmlens-toy`` defaults to the
    shipped ``toyworld`` weights, every other model to OpenAI's (``openai``), and random weights are asked
    for with ``--pretrained random``. (``load_clip`` itself keeps open_clip's convention: no
    ``pretrained`` means random weights.)

    Examples
    --------
    >>> cli_pretrained("mmlens-toy", None), cli_pretrained("ViT-B-16", None), cli_pretrained("ViT-B-16", "random")
    ('toyworld', 'openai', None)
    """
    if pretrained is None:
        return "toyworld" if model_name == "mmlens-toy" else "openai"
    if str(pretrained).lower() in (RANDOM_WEIGHTS, "none"):
        return None
    return str(pretrained)
