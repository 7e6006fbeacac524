"""Load real open_clip CLIP models offline-safely: open_clip tags through the caches, local files, OpenAI's."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import socket
import warnings
import zipfile
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["LoadedCLIP", "WeightsNotFoundError", "activation_name", "add_quick_gelu_argument", "cli_pretrained",
           "load_clip", "register_config",
           "state_dict_sha256"]

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
        ``sha256`` (of the file when there is one), ``activation_from`` (what decided the activation:
        ``tag``, ``file``, ``hf_cache``, ``declared`` or ``config``), and ``hf_repo`` for a file found in
        (or identified as coming from) the Hugging Face cache.
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


class WeightsNotFoundError(FileNotFoundError, RuntimeError):
    """The weights of a pretrained tag are in none of the caches and cannot be downloaded.

    A :class:`FileNotFoundError` (the file is absent) and a :class:`RuntimeError` (what offline
    loading raised before the caches were searched), so handlers of either keep working.
    """


#: What ``pretrained`` (and ``--pretrained`` on the command line) takes to ask for random weights by name.
RANDOM_WEIGHTS = "random"
_warned_random_toy = False


def _warn_random_toy_once() -> None:
    """``load_clip("mmlens-toy")`` follows open_clip (random weights) but says so once: most callers meant toyworld."""
    global _warned_random_toy
    if not _warned_random_toy:
        _warned_random_toy = True
        warnings.warn('load_clip("mmlens-toy") without pretrained builds RANDOM weights (open_clip\'s convention). '
                      'The shipped toy CLIP is load_clip("mmlens-toy", pretrained="toyworld"); pass '
                      'pretrained="random" to ask for random weights without this warning.', UserWarning,
                      stacklevel=3)


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
    quick_gelu: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> LoadedCLIP:
    """Load an open_clip CLIP by model name, with weights from a tag or a local file.

    Every route to OpenAI's weights builds OpenAI's model, whose MLPs use QuickGELU
    (``x * sigmoid(1.702 x)``): the ``openai`` tag, OpenAI's TorchScript archive ``ViT-B-16.pt``, a
    state dict carrying OpenAI's extra keys, and the Hugging Face file of
    ``timm/vit_base_patch16_clip_224.openai`` (recognised by its place in the Hugging Face cache). A
    plain state dict elsewhere does not say whose it is: declare it with ``quick_gelu=True`` or an
    open_clip ``-quickgelu`` model name; without either, an architecture OpenAI published is loaded
    with its config's GELU and a warning names the choice. See docs/real_weights.md.

    Parameters
    ----------
    name : str
        Any open_clip model name (``"ViT-B-16"``, ``"ViT-B-16-quickgelu"``, ``"ViT-L-14"``), a config
        registered with :func:`register_config`, or ``"mmlens-toy"`` (the embedded toyworld CLIP).
    pretrained : str or path, optional
        ``None`` or ``"random"``: random weights (open_clip's convention; for ``"mmlens-toy"`` without
        ``pretrained`` a warning, once, names ``pretrained="toyworld"``, the shipped weights). An open_clip
        tag (``"openai"``, ``"laion2b_s34b_b88k"``): its file is
        taken from the Hugging Face cache or open_clip's download cache, and downloaded only when it
        is in neither and the machine is online. A local file: an open_clip checkpoint, a safetensors
        file, or OpenAI's ``ViT-B-16.pt`` (JIT archive or plain state dict). For ``"mmlens-toy"``:
        ``"toyworld"``.
    device : str or torch.device
        Where the model lives.
    precision : str
        ``"fp32"`` (default), ``"fp16"``, ``"bf16"`` or another open_clip precision.
    quick_gelu : bool, optional
        Declare the activation of a plain state dict of unknown origin (``True``: OpenAI's weights or
        weights fine-tuned from them). Contradicting what the weights are known to be raises.
    cache_dir : str or path, optional
        open_clip's ``cache_dir``: the Hugging Face hub cache root (the folder holding
        ``models--<org>--<name>``) and the folder of URL downloads. Default: Hugging Face's cache
        (``HF_HOME``/``HF_HUB_CACHE``) and ``~/.cache/clip``.

    Returns
    -------
    LoadedCLIP

    Raises
    ------
    WeightsNotFoundError
        A tag's file is in no cache and the machine is offline (the message names where it looked and
        the file to fetch).
    ValueError
        Unknown model name or tag, weights of another model, or a ``quick_gelu`` that contradicts the weights.

    Examples
    --------
    >>> clip = load_clip("ViT-B-32")            # random weights, offline
    >>> clip.pretrained["source"], activation_name(clip.model)
    ('random', 'gelu')
    >>> activation_name(load_clip("ViT-B-32", quick_gelu=True).model)
    'quick_gelu'
    """
    import open_clip

    if precision not in _PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {_PRECISIONS}.")
    tokenizer = None
    known_origin = False  # the shipped toy weights: made for their config, nothing to declare
    if pretrained is not None and str(pretrained).lower() == RANDOM_WEIGHTS:
        pretrained = None  # asked for by name: random weights, said so, no warning
    elif pretrained is None and name == "mmlens-toy":
        _warn_random_toy_once()
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
            known_origin = True

    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        known = open_clip.list_models()
        import difflib

        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"Unknown open_clip model name {name!r}.{hint} See open_clip.list_models(), or register "
            "a config with mmlens.models.loading.register_config(name, config)."
        )
    name_quick = bool(model_cfg.get("quick_gelu", False))
    declared = quick_gelu
    if name_quick:  # an open_clip `-quickgelu` name (or a QuickGELU config) is itself a declaration
        if declared is False:
            raise ValueError(f"quick_gelu=False contradicts the model name {name!r}, whose config uses "
                             "QuickGELU. Pass the plain name (without -quickgelu) for GELU.")
        declared = True

    info: dict[str, Any] = {"source": "random", "quick_gelu": False, "sha256": None}
    path: Path | None = None
    tag_cfg: dict | None = None  # the open_clip pretrained config the weights are known to come from
    if pretrained_tag is not None:
        given = Path(pretrained_tag).expanduser()
        tags = open_clip.list_pretrained_tags_by_model(name)
        if given.is_file():
            path = given
            info.update(source="file", path=str(given.resolve()))
            origin = _hf_origin(given, name)
            if origin is not None:
                info["hf_repo"], tag_cfg = origin
        elif pretrained_tag in tags:
            tag_cfg = open_clip.get_pretrained_cfg(name, pretrained_tag)
            path = _resolve_tag_file(name, pretrained_tag, tag_cfg, cache_dir)
            info.update(source="tag", tag=pretrained_tag, path=str(path))
            hub = tag_cfg.get("hf_hub") or ""
            if _hf_origin(path, name) is not None and hub:
                info["hf_repo"] = os.path.split(hub)[0]
        elif os.sep in pretrained_tag or pretrained_tag.endswith((".pt", ".pth", ".bin", ".safetensors", ".tar")):
            raise FileNotFoundError(
                f"Weights file {pretrained_tag!r} does not exist. Pass the path of an open_clip "
                f"checkpoint or of OpenAI's {name}.pt, or pretrained=None for random weights."
            )
        else:
            others = [m for m in open_clip.list_pretrained_models_by_tag(pretrained_tag) if m != name]
            elsewhere = (f" It is a tag of {', '.join(map(repr, others[:4]))}: pass one of those names."
                         if others else "")
            raise ValueError(
                f"{pretrained_tag!r} is neither a file nor a pretrained tag of {name!r} "
                f"(known tags: {tags or 'none'}).{elsewhere}"
            )

    state_dict = None
    if path is not None:
        state_dict, fmt = _read_state_dict(path)
        info.update(format=fmt, sha256=_file_sha256(path))
        _check_url_digest(path, info["sha256"], tag_cfg)

    # Which activation the weights need: known from the tag, the file format or the cache it sits in;
    # else declared by the caller (quick_gelu=, a -quickgelu name); else the config's own.
    weights_quick: bool | None = None
    if tag_cfg is not None:
        weights_quick, info["activation_from"] = bool(tag_cfg.get("quick_gelu", False)), (
            "tag" if info["source"] == "tag" else "hf_cache")
    elif state_dict is not None and info["format"].startswith("openai"):
        weights_quick, info["activation_from"] = True, "file"
    elif known_origin:
        weights_quick, info["activation_from"] = name_quick, "config"
    if weights_quick is not None:
        if declared is not None and declared != weights_quick:
            what = "QuickGELU" if weights_quick else "GELU"
            raise ValueError(
                f"The weights {info.get('tag') or info.get('path')!r} were trained with {what} "
                f"({info['activation_from']}), but quick_gelu={declared} was asked for (argument or model "
                f"name {name!r}). Drop the argument, or use the model name without/with -quickgelu to match."
            )
        use_quick = weights_quick
    elif declared is not None:
        use_quick, info["activation_from"] = declared, "declared"
    else:
        use_quick, info["activation_from"] = False, "config"
        if state_dict is not None and "openai" in open_clip.list_pretrained_tags_by_model(name):
            alt = f"{name}-quickgelu"
            by_name = f", or the model name {alt!r}" if open_clip.get_model_config(alt) is not None else ""
            warnings.warn(
                f"{info['path']} is a plain state dict whose origin mmlens cannot tell; it was loaded as "
                f"{name!r} with GELU, as that config says. If these are OpenAI's weights, or weights "
                f"fine-tuned from them (MaPLe, CoOp), the model needs QuickGELU: pass quick_gelu=True "
                f"(CLI: --quick-gelu){by_name}. Pass quick_gelu=False to confirm GELU. See docs/real_weights.md.",
                UserWarning,
                stacklevel=2,
            )
    info["quick_gelu"] = use_quick

    # The tag's preprocessing (mean/std, resize_mode: DFN and CLIPA squash) travels with its weights.
    pp_kwargs = {f"image_{k}": tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode")
                 if (tag_cfg or {}).get(k) is not None}
    # open_clip warns "initialized randomly" when it loads nothing itself: false when we load next
    with _drop_log_records("No pretrained weights loaded") if state_dict is not None else nullcontext():
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=None, device="cpu", precision="fp32", force_quick_gelu=use_quick, **pp_kwargs
        )
    if state_dict is not None:
        _load_into(model, state_dict, name=name, path=info.get("path"))
    model = _to_precision(model.to(device), precision)
    model.eval()
    if tokenizer is None:
        tokenizer = open_clip.get_tokenizer(name)
    return LoadedCLIP(model=model, preprocess=preprocess, tokenizer=tokenizer, name=name, pretrained=info)


def _hf_origin(path: Path, name: str) -> tuple[str, dict] | None:
    """(repo id, open_clip pretrained config) when ``path`` lies in a Hugging Face cache folder
    ``models--<org>--<repo>`` that an open_clip tag downloads from, else None."""
    import open_clip

    # not resolved: the cache's snapshot files are symlinks into blobs/, both under models--<org>--<repo>
    repo = next((part[len("models--"):].replace("--", "/") for part in Path(os.path.abspath(path)).parts
                 if part.startswith("models--")), None)
    if repo is None:
        return None
    matches = []
    for model_name, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(model_name, tag)
        if os.path.split(cfg.get("hf_hub") or "")[0] == repo:
            matches.append((model_name != name and model_name != name.removesuffix("-quickgelu"), cfg))
    if not matches:
        return None
    return repo, sorted(matches, key=lambda m: m[0])[0][1]  # this model's own tag first


def _resolve_tag_file(name: str, tag: str, cfg: dict, cache_dir: str | os.PathLike | None) -> Path:
    """The local file of an open_clip tag: Hugging Face cache, then open_clip's URL cache, then a download.

    Looks where and for what open_clip's ``download_pretrained`` would (its file-name order, its
    ``cache_dir`` meaning), without touching the network; downloads through open_clip only when
    nothing is cached and the machine is online.
    """
    from open_clip.constants import HF_WEIGHTS_NAME
    from open_clip.pretrained import _get_safe_alternatives, download_pretrained

    looked: list[str] = []
    fetch: list[str] = []
    hub = cfg.get("hf_hub") or ""
    if hub:
        from huggingface_hub import constants, try_to_load_from_cache

        repo, filename = os.path.split(hub)  # open_clip's convention: "org/repo/" means its default file
        filename = filename or HF_WEIGHTS_NAME
        names = [*_get_safe_alternatives(filename), filename]
        for fname in names:
            found = try_to_load_from_cache(repo, fname, cache_dir=None if cache_dir is None else str(cache_dir))
            if isinstance(found, str):
                return Path(found)
        root = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
        looked.append(f"Hugging Face cache: {root / ('models--' + repo.replace('/', '--'))}/snapshots/<revision>/"
                      f"{' or '.join(names)} (found no snapshot holding either)")
        fetch.append(f"python -c \"from huggingface_hub import hf_hub_download; print(hf_hub_download("
                     f"'{repo}', '{names[0]}'))\"  (then copy the hub cache here, or point HF_HOME / cache_dir= "
                     "at it)")
    url = cfg.get("url") or ""
    if url:
        target = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if target.is_file():
            return target
        looked.append(f"open_clip's download cache: {target}")
        fetch.append(f"{url}  (save it as {target})")
    if not _is_offline():
        try:
            return Path(download_pretrained(cfg, cache_dir=None if cache_dir is None else str(cache_dir)))
        except Exception as err:  # network or hub failure: report what was looked for, as offline
            looked.append(f"a download through open_clip, which failed ({type(err).__name__}: {err})")
        state = "the download failed"
    else:
        state = "this machine is offline (HF_HUB_OFFLINE or MMLENS_OFFLINE is set, or huggingface.co does not resolve)"
    example = names[-1] if hub else os.path.basename(url)
    raise WeightsNotFoundError(
        f"Cannot load pretrained tag {tag!r} for {name!r}: its weights are in no cache and {state}.\n"
        "Looked in:\n" + "".join(f"  - {where}\n" for where in looked)
        + "Fetch the file on a machine with internet, one of:\n" + "".join(f"  - {how}\n" for how in fetch)
        + f"or pass the file itself: load_clip({name!r}, pretrained='/path/to/{example}'"
        + (", quick_gelu=True)" if cfg.get("quick_gelu") and example != os.path.basename(url) else ")")
        + ". See docs/real_weights.md."
    )


def _check_url_digest(path: Path, sha256: str, cfg: dict | None) -> None:
    """OpenAI's download URLs carry the file's sha256: a file taken from open_clip's URL cache must match it."""
    url = (cfg or {}).get("url") or ""
    if "openaipublic" in url and path.name == os.path.basename(url):
        expected = url.split("/")[-2]
        if not sha256.startswith(expected):
            raise ValueError(f"{path} is not the file published at {url}: its sha256 is {sha256}, the URL "
                             f"names {expected}. The download is incomplete or another file; delete it and fetch "
                             "it again.")


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
    from open_clip.convert import convert_state_dict

    # open_clip's own conversions of third-party layouts (MobileCLIP) run first, as in its load_checkpoint
    sd = convert_state_dict(model, {k: v for k, v in state_dict.items() if k not in _OPENAI_EXTRA_KEYS})
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [(k, tuple(sd[k].shape), tuple(expected[k].shape)) for k in expected
             if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    wrong += [(k, sd[k].dtype, expected[k].dtype) for k in expected
              if k in sd and expected[k].is_floating_point() and not sd[k].is_floating_point()]
    if missing or unexpected or wrong:
        lines = [f"The weights in {path} do not fit the open_clip config {name!r}:"]
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                lines.append(f"  {label} keys ({len(keys)}): {keys[:5]}{' ...' if len(keys) > 5 else ''}")
        for k, found, want in wrong[:5]:
            kind = "shape" if isinstance(found, tuple) else "dtype"
            lines.append(f"  {k}: found {kind} {found}, expected {want}")
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


def add_quick_gelu_argument(parser: argparse.ArgumentParser) -> None:
    """``--quick-gelu``: declare a plain weights file as OpenAI's (or fine-tuned from it), for commands that
    load a CLIP. Absent it is ``None`` (not declared), so ``load_clip`` decides from the weights."""
    parser.add_argument("--quick-gelu", action="store_true", default=None,
                        help="build the CLIP with QuickGELU: the weights file is OpenAI's or fine-tuned from it "
                             "(tags, OpenAI's .pt and the Hugging Face cache are recognised without it; "
                             "see docs/real_weights.md)")


def cli_pretrained(model_name: str, pretrained: str | None) -> str:
    """The weights a command-line run loads: what ``--pretrained`` names, else the model's real weights.

    On the command line nobody should get random weights without asking: ``mmlens-toy`` defaults to the
    shipped ``toyworld`` weights, every other model to OpenAI's (``openai``), and random weights are asked
    for with ``--pretrained random``. (``load_clip`` itself keeps open_clip's convention: no
    ``pretrained`` means random weights.)

    Examples
    --------
    >>> cli_pretrained("mmlens-toy", None), cli_pretrained("ViT-B-16", None), cli_pretrained("ViT-B-16", "none")
    ('toyworld', 'openai', 'random')
    """
    if pretrained is None:
        return "toyworld" if model_name == "mmlens-toy" else "openai"
    if str(pretrained).lower() in (RANDOM_WEIGHTS, "none"):
        return RANDOM_WEIGHTS  # load_clip builds random weights for it, without the toy's warning
    return str(pretrained)
