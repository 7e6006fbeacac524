"""Prompt checkpoints: mmlens's own (safetensors + JSON metadata) and published MaPLe, IVLP and CoOp (Dassl) files."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_prompts", "load_prompts", "read_prompt_file", "prompt_sha256", "checkpoint_seed",
           "DASSL_MODEL_FOLDERS", "DasslCheckpoint", "resolve_dassl_checkpoint", "read_dassl_checkpoint",
           "load_maple_checkpoint", "load_coop_checkpoint", "load_ivlp_checkpoint", "dassl_hparams",
           "import_prompts"]

_METADATA_KEY = "mmlens"
_META_HASH_KEY = "metadata_sha256"
# /2 files must record both hashes; /1 files (written before the metadata hash) may lack them. One flipped bit
# cannot turn "/2" into "/1" (0x32 -> 0x31 is two bits), nor drop a hash key without being noticed.
_FORMAT = "mmlens-prompts/2"
_FORMATS = ("mmlens-prompts/1", _FORMAT)


def prompt_sha256(state: dict[str, torch.Tensor]) -> str:
    """Content hash of a prompt state dict (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _metadata_sha256(meta: dict[str, Any]) -> str:
    """Hash of the metadata (all but its own hash), in a canonical JSON spelling."""
    rest = {k: v for k, v in meta.items() if k != _META_HASH_KEY}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def save_prompts(model, path: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Save the learned part of a :class:`PromptedCLIP` as safetensors with JSON metadata.

    The metadata records the method and its hyper-parameters, the class names, the base model's
    name and weight hash and the mmlens version, so :func:`load_prompts` can rebuild the model.

    Examples
    --------
    >>> import os, tempfile
    >>> path = save_prompts(model, os.path.join(tempfile.mkdtemp(), "maple_toy_seed1.safetensors"),
    ...                     extra={"training": {"seed": 1}})
    >>> path.name, read_prompt_file(path)[1]["hparams"]["method"]
    ('maple_toy_seed1.safetensors', 'maple')
    """
    from safetensors.torch import save_file

    from mmlens._version import __version__

    path = Path(path)
    state = {k: v.contiguous() for k, v in model.prompt_state_dict().items()}
    source = model.clip_source
    meta = {
        "format": _FORMAT,
        "hparams": model.hparams,
        "classnames": model.classnames,
        "base_model": source.get("name"),
        "base_weights_sha256": (source.get("pretrained") or {}).get("sha256"),
        "prompt_sha256": prompt_sha256(state),
        "trainable_parameters": model.trainable_parameter_count(),
        "mmlens_version": __version__,
        **(extra or {}),
    }
    # the tensors carry prompt_sha256; this covers the rest (class names, hyper-parameters, training seed)
    meta[_META_HASH_KEY] = _metadata_sha256(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={_METADATA_KEY: json.dumps(meta)})
    os.replace(tmp, path)  # atomic: an interrupted save never leaves a half-written checkpoint
    return path


def read_prompt_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an mmlens prompt file: (state dict, metadata), after checking it is the file that was written.

    The hashes the file records are recomputed: ``prompt_sha256`` over the tensors and
    ``metadata_sha256`` over the metadata (files written before the metadata hash existed are
    checked on their tensors only). A damaged file, down to one flipped bit, is refused with its path.

    Examples
    --------
    >>> import os, tempfile
    >>> path = save_prompts(model, os.path.join(tempfile.mkdtemp(), "prompts.safetensors"),
    ...                     extra={"training": {"seed": 1}})
    >>> state, meta = read_prompt_file(path)
    >>> meta["training"]["seed"], meta["base_model"], state["ctx"].shape
    (1, 'mmlens-toy', torch.Size([2, 64]))
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No prompt checkpoint at {path}.")
    damaged = "Copy the file again from where it was made, or retrain the prompts (mmlens.train.fit / `mmlens train`)."
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_METADATA_KEY, "{}")
            state = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(raw)
    except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise ValueError(f"{path} is not a readable prompt file ({type(err).__name__}: {err}): it is damaged or "
                         f"not a safetensors file. {damaged}") from err
    if not isinstance(meta, dict) or meta.get("format") not in _FORMATS:
        raise ValueError(f"{path} is a safetensors file but not an mmlens prompt checkpoint (its 'mmlens' metadata "
                         f"has format {meta.get('format') if isinstance(meta, dict) else None!r}, expected one of "
                         f"{list(_FORMATS)}). For published Dassl files (MaPLe, IVLP, CoOp) use import_prompts(); "
                         f"if this file was written by mmlens, it is damaged. {damaged}")
    if meta["format"] == _FORMAT:
        lacking = [k for k in ("prompt_sha256", _META_HASH_KEY) if not isinstance(meta.get(k), str)]
        if lacking:
            raise ValueError(f"{path} is damaged: it lacks {', '.join(lacking)}, which every {_FORMAT} file records. "
                             f"{damaged}")
    recorded_meta = meta.get(_META_HASH_KEY)
    if recorded_meta is not None and recorded_meta != _metadata_sha256(meta):
        raise ValueError(f"{path} is damaged: its metadata (class names, hyper-parameters, training record) does not "
                         f"match the metadata_sha256 it records. {damaged}")
    recorded = meta.get("prompt_sha256")
    if recorded is not None:
        found = prompt_sha256(state)
        if found != recorded:
            raise ValueError(f"{path} is damaged: its prompt tensors hash to {found[:12]}…, but the file records "
                             f"prompt_sha256 {str(recorded)[:12]}…. {damaged}")
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


# ---------------------------------------------------------------------------------------- published (Dassl) files
#: The folder Dassl saves each method's model in (the name its trainer registers the model under).
DASSL_MODEL_FOLDERS = {"maple": "MultiModalPromptLearner", "ivlp": "VLPromptLearner", "coop": "prompt_learner"}

_EPOCH_FILE = re.compile(r"model\.pth\.tar-(\d+)")
_BEST_FILE = "model-best.pth.tar"
_LAYOUT = ("published base-to-novel files are laid out as <dataset>/base/seed<k>/MultiModalPromptLearner/"
           "model.pth.tar-<epoch> (IVLP: VLPromptLearner/, CoOp: prompt_learner/)")


def _epoch_files(folder: Path) -> dict[int, Path]:
    found = {}
    for p in folder.iterdir() if folder.is_dir() else []:
        m = _EPOCH_FILE.fullmatch(p.name)
        if m and p.is_file():
            found[int(m.group(1))] = p
    return found


def _holds_checkpoints(folder: Path) -> bool:
    return (folder / _BEST_FILE).is_file() or bool(_epoch_files(folder))


def resolve_dassl_checkpoint(path: str | os.PathLike, *, epoch: int | None = None,
                             method: str | None = None) -> Path:
    """The checkpoint file a Dassl path stands for, by the rule of MaPLe's ``load_model``.

    A file is itself. A folder is the model folder (``MultiModalPromptLearner/``, ``VLPromptLearner/``
    or ``prompt_learner/``, see :data:`DASSL_MODEL_FOLDERS`) or a folder holding exactly one of them
    (e.g. ``eurosat/base/seed1``). In the model folder: ``model.pth.tar-<epoch>`` when ``epoch`` is
    given; else ``model-best.pth.tar`` (what ``load_model`` loads by default); else the highest epoch,
    compared as numbers (``tar-10`` after ``tar-9``), since published base-to-novel runs keep only
    their last epoch. This is the one resolver: ``mmlens reproduce --maple-weights`` uses it too.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> run = pathlib.Path(tempfile.mkdtemp()) / "eurosat" / "base" / "seed1"
    >>> (run / "MultiModalPromptLearner").mkdir(parents=True)
    >>> for epoch in (2, 5, 10):
    ...     (run / "MultiModalPromptLearner" / f"model.pth.tar-{epoch}").touch()
    >>> resolve_dassl_checkpoint(run).relative_to(run)
    PosixPath('MultiModalPromptLearner/model.pth.tar-10')
    >>> resolve_dassl_checkpoint(run, epoch=5).name
    'model.pth.tar-5'
    """
    path = Path(path).expanduser()
    if path.is_file():
        if epoch is not None and path.name != f"model.pth.tar-{epoch}":
            raise ValueError(f"epoch={epoch} was given with the file {path}: give its folder with the epoch, "
                             "or the file alone.")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"No Dassl checkpoint at {path} (no such file or folder); {_LAYOUT}.")
    if _holds_checkpoints(path):
        folder = path
    else:
        def model_folders(names: list[str]) -> list[Path]:
            return sorted({d for name in names for d in [path / name, *path.rglob(name)]
                           if d.is_dir() and _holds_checkpoints(d)})

        # the method's own folder first; any other method's next, so that the reader can say what it found
        folders = model_folders([DASSL_MODEL_FOLDERS[method]]) if method in DASSL_MODEL_FOLDERS else []
        folders = folders or model_folders(list(DASSL_MODEL_FOLDERS.values()))
        if not folders:
            raise FileNotFoundError(f"No Dassl checkpoint ({_BEST_FILE} or model.pth.tar-<epoch>) under {path}; "
                                    f"{_LAYOUT}.")
        if len(folders) > 1:
            shown = "\n  ".join(str(d) for d in folders[:12])
            raise ValueError(f"{path} holds {len(folders)} Dassl model folders; pass the one you mean:\n  {shown}")
        folder = folders[0]
    epochs = _epoch_files(folder)
    if epoch is not None:
        if int(epoch) in epochs:
            return epochs[int(epoch)]
        have = [f"model.pth.tar-{e}" for e in sorted(epochs)]
        have += [_BEST_FILE] if (folder / _BEST_FILE).is_file() else []
        raise FileNotFoundError(f"No epoch {epoch} checkpoint in {folder}: expected model.pth.tar-{epoch}, found "
                                f"{', '.join(have) or 'none'}. Pass one of those epochs, or none for {_BEST_FILE} "
                                "(else the last epoch).")
    if (folder / _BEST_FILE).is_file():
        return folder / _BEST_FILE
    return epochs[max(epochs)]


def _defaultdict_as_plain_dict(default_factory: Any = None) -> dict:
    """Stand-in for ``collections.defaultdict`` while reading a Dassl file: the same items, in a plain dict.

    The optimizer object inside a warm-up scheduler keeps its ``state`` in a ``defaultdict(dict)``;
    torch's weights-only reader fills plain dicts only. The default factory is never needed to read.
    """
    return {}


def _dassl_safe_globals() -> list:
    """What a Dassl checkpoint holds beyond tensors and plain containers, and nothing more.

    Dassl's ``build_optimizer``/``build_lr_scheduler`` make these torch optimizers and schedulers.
    A warm-up scheduler (``ConstantWarmupScheduler``, ``LinearWarmupScheduler``, MaPLe's and CoOp's
    recipe) keeps its successor scheduler object in its ``state_dict``, and through it the optimizer
    object with its parameters and ``defaultdict`` state. The warm-up class itself is never pickled.
    """
    from torch.optim import SGD, Adam, AdamW, RMSprop
    from torch.optim.lr_scheduler import CosineAnnealingLR, MultiStepLR, StepLR

    return [SGD, Adam, AdamW, RMSprop, CosineAnnealingLR, MultiStepLR, StepLR, dict,
            (_defaultdict_as_plain_dict, "collections.defaultdict")]


def _load_dassl_file(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` and the Dassl allow-list; a clear refusal otherwise."""
    advice = ("mmlens reads checkpoints with weights_only=True and does not unpickle other objects, so no code in "
              "the file runs. If you trust the file, re-save its weights on that machine: "
              "torch.save({'state_dict': ckpt['state_dict'], 'epoch': ckpt['epoch']}, 'clean.pth.tar').")
    try:
        with torch.serialization.safe_globals(_dassl_safe_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        m = re.search(r"GLOBAL ([\w.]+)", text)
        detail = re.search(r"(Can only [^\n]*|Trying to call reduce [^\n]*)", text)
        if not (m or detail):  # not a refused object: the bytes are not a pickle torch can read
            raise ValueError(f"{path} cannot be read as a torch checkpoint ({text.strip().splitlines()[-1][:200]}); "
                             "it is damaged or not a checkpoint. Download it again.") from err
        found = f"a pickled {m.group(1)}" if m else f"pickled objects ({detail.group(1)[:200]})"
        allowed = ", ".join(sorted({g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}"
                                    for g in _dassl_safe_globals()}))
        raise ValueError(f"{path} holds {found}, which a Dassl checkpoint does not contain (expected tensors, "
                         f"plain containers and {allowed}). {advice}") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path} cannot be read as a torch checkpoint ({type(err).__name__}: {str(err)[:200]}); "
                         "it is damaged or not a checkpoint. Download it again.") from err


@dataclass(frozen=True)
class DasslCheckpoint:
    """A Dassl checkpoint as read: its model state dict and what the file says about the run.

    Attributes
    ----------
    path : Path
        The resolved file.
    state_dict : dict of str to Tensor
        The saved model state, ``module.`` prefixes (``nn.DataParallel``) removed.
    epoch : int or None
        The ``epoch`` the file records.
    seed : int or None
        The training seed, from the ``seed<k>`` folder of the published layout.
    method : str or None
        ``"maple"``, ``"ivlp"`` or ``"coop"`` as told by the keys; ``None`` if none fits.
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    epoch: int | None
    seed: int | None
    method: str | None


def _seed_from_path(path: Path) -> int | None:
    for part in reversed(path.parts[:-1]):
        m = re.fullmatch(r"seed(\d+)", part)
        if m:
            return int(m.group(1))
    return None


def _method_of(keys: set[str]) -> str | None:
    if any(k.startswith(("prompt_learner.proj.", "prompt_learner.compound_prompt_projections.")) for k in keys):
        return "maple"
    if "image_encoder.VPT" in keys or any(k.endswith(".VPT_shallow") for k in keys):
        return "ivlp"
    if "ctx" in keys or "prompt_learner.ctx" in keys:
        return "coop"
    return None


def read_dassl_checkpoint(path: str | os.PathLike, *, epoch: int | None = None,
                          method: str | None = None) -> DasslCheckpoint:
    """Read a checkpoint exactly as Dassl's ``save_checkpoint`` writes it.

    Dassl saves ``{"state_dict", "epoch", "optimizer", "scheduler", "val_result"}``; the scheduler of
    MaPLe's and CoOp's recipe holds optimizer and scheduler objects. They are read with
    ``weights_only=True`` and an allow-list of exactly those torch classes (a file holding anything
    else is refused, naming what it holds), then dropped: only the model state is kept.
    ``path`` and ``epoch`` are resolved by :func:`resolve_dassl_checkpoint`.

    Examples
    --------
    >>> ckpt = read_dassl_checkpoint("weights/eurosat/base/seed1")  # doctest: +SKIP
    >>> ckpt.method, ckpt.epoch, ckpt.seed  # doctest: +SKIP
    ('maple', 5, 1)
    """
    file = resolve_dassl_checkpoint(path, epoch=epoch, method=method)
    obj = _load_dassl_file(file)
    state = obj.get("state_dict") if isinstance(obj, dict) and "state_dict" in obj else obj
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{file} holds {type(state).__name__}; expected a Dassl checkpoint (a dict whose "
                         "'state_dict' maps parameter names to tensors).")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{file}: 'state_dict' entries {bad[:5]} are not tensors; expected a model state dict "
                         "as Dassl saves it.")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    recorded = obj.get("epoch") if isinstance(obj, dict) else None
    return DasslCheckpoint(file, state, int(recorded) if isinstance(recorded, int) else None,
                           _seed_from_path(file), _method_of(set(state)))


def _floating(file: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    wrong = [f"{k} ({v.dtype})" for k, v in state.items() if not v.is_floating_point()]
    if wrong:
        raise ValueError(f"{file}: prompt tensors must be floating point, found {', '.join(wrong[:5])}; "
                         "this is not a prompt checkpoint as Dassl writes it.")
    return state


def _other_method(ckpt: DasslCheckpoint, wanted: str) -> ValueError:
    loaders = {"maple": "load_maple_checkpoint", "ivlp": "load_ivlp_checkpoint", "coop": "load_coop_checkpoint"}
    sample = sorted(ckpt.state_dict)[:4]
    if ckpt.method is None:
        what = f"no prompt keys of MaPLe, IVLP or CoOp (found e.g. {sample})"
        todo = "Check that this is a prompt-learning checkpoint."
    else:
        what = f"the keys of a {ckpt.method} checkpoint (e.g. {sample})"
        todo = f"Read it with {loaders[ckpt.method]}(), or import_prompts(), which tells them apart."
    return ValueError(f"{ckpt.path} is not a {wanted} checkpoint: it holds {what}. {todo}")


def _numbered(state: dict[str, Any], prefix: str, suffix: str = "") -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix))
    return sorted(int(m.group(1)) for k in state if (m := pat.fullmatch(k)))


def _maple_prompts(ckpt: DasslCheckpoint) -> dict[str, torch.Tensor]:
    if ckpt.method != "maple":
        raise _other_method(ckpt, "MaPLe")
    pl = {k[len("prompt_learner."):]: v for k, v in ckpt.state_dict.items() if k.startswith("prompt_learner.")}
    pl = {k: v for k, v in pl.items() if k not in ("token_prefix", "token_suffix")}  # rebuilt from class names
    deep = _numbered(pl, "compound_prompts_text.")
    expected = {"ctx", "proj.weight", "proj.bias"}
    expected |= {f"compound_prompts_text.{i}" for i in range(len(deep))}
    expected |= {f"compound_prompt_projections.{i}.{w}" for i in range(len(deep)) for w in ("weight", "bias")}
    missing, extra = sorted(expected - set(pl)), sorted(set(pl) - expected)
    if missing or extra:
        raise ValueError(f"{ckpt.path}: the MaPLe prompt learner should hold ctx, proj and, per deeper layer, "
                         f"compound_prompts_text.<i> with compound_prompt_projections.<i>; missing {missing}, "
                         f"unexpected {extra}. The file is incomplete or from another MaPLe variant.")
    ctx = pl["ctx"]
    if ctx.dim() != 2:
        raise ValueError(f"{ckpt.path}: MaPLe's ctx should be [n_ctx, text width], found shape {tuple(ctx.shape)}.")
    shapes = {k: tuple(v.shape) for k, v in pl.items()}
    odd = [k for k in pl if k.startswith("compound_prompts_text.") and shapes[k] != tuple(ctx.shape)]
    odd += [k for k in pl if k.endswith(".weight") and shapes[k] != shapes["proj.weight"]]
    if odd or shapes["proj.weight"][1:] != (ctx.shape[1],):
        raise ValueError(f"{ckpt.path}: MaPLe prompt shapes disagree with each other ({ {k: shapes[k] for k in odd} } "
                         f"vs ctx {tuple(ctx.shape)}, proj {shapes['proj.weight']}); the file is damaged or edited.")
    return _floating(ckpt.path, pl)


def _coop_prompts(ckpt: DasslCheckpoint) -> dict[str, torch.Tensor]:
    if ckpt.method != "coop":
        raise _other_method(ckpt, "CoOp")
    ctx = ckpt.state_dict.get("ctx", ckpt.state_dict.get("prompt_learner.ctx"))
    if ctx.dim() == 3:
        raise ValueError(f"{ckpt.path}: ctx has shape {tuple(ctx.shape)}, class-specific contexts (CoOp's CSC=True); "
                         "mmlens's coop learns one context shared by all classes ([n_ctx, text width]). Import a "
                         "checkpoint trained with CSC=False.")
    if ctx.dim() != 2:
        raise ValueError(f"{ckpt.path}: CoOp's ctx should be [n_ctx, text width], found shape {tuple(ctx.shape)}.")
    return _floating(ckpt.path, {"ctx": ctx})


def _ivlp_prompts(ckpt: DasslCheckpoint) -> dict[str, torch.Tensor]:
    if ckpt.method != "ivlp":
        raise _other_method(ckpt, "IVLP")
    sd = ckpt.state_dict
    text_prefix, vision_prefix = "text_encoder.transformer.resblocks.", "image_encoder.transformer.resblocks."
    text_layers = _numbered(sd, text_prefix, ".VPT_shallow")
    vision_layers = _numbered(sd, vision_prefix, ".VPT_shallow")
    if "prompt_learner.ctx" not in sd or "image_encoder.VPT" not in sd:
        raise ValueError(f"{ckpt.path}: an IVLP checkpoint holds prompt_learner.ctx (text) and image_encoder.VPT "
                         "(vision) for the first layer; one is missing. Train IVLP with prompts in both branches.")
    ctx, vpt = sd["prompt_learner.ctx"], sd["image_encoder.VPT"]
    depth_t, depth_v = 1 + len(text_layers), 1 + len(vision_layers)
    for name, layers in (("text", text_layers), ("vision", vision_layers)):
        if layers != list(range(1, len(layers) + 1)):
            raise ValueError(f"{ckpt.path}: IVLP's {name} prompts sit in blocks {layers}; expected blocks 1..J-1.")
    if depth_t != depth_v or ctx.shape[0] != vpt.shape[0]:
        raise ValueError(f"{ckpt.path}: IVLP prompts of depth {depth_t} / {depth_v} and {ctx.shape[0]} / "
                         f"{vpt.shape[0]} tokens (text / vision); mmlens's ivlp uses one depth and one n_ctx for "
                         "both branches (MaPLe's recipe: 9 and 2). Import a checkpoint trained that way.")
    out = {"ctx": ctx, "visual_ctx": vpt}
    for i in range(1, depth_t):
        out[f"compound_prompts_text.{i - 1}"] = sd[f"{text_prefix}{i}.VPT_shallow"]
        out[f"compound_prompts_visual.{i - 1}"] = sd[f"{vision_prefix}{i}.VPT_shallow"]
    return _floating(ckpt.path, out)


_PROMPTS_OF = {"maple": _maple_prompts, "coop": _coop_prompts, "ivlp": _ivlp_prompts}


def load_maple_checkpoint(path: str | os.PathLike, *, epoch: int | None = None) -> dict[str, torch.Tensor]:
    """The learned prompt tensors of a published MaPLe checkpoint, under mmlens's (MaPLe's) key names.

    Only ``prompt_learner.*`` is kept, without the prefix; the frozen CLIP rides along in the file
    and is dropped, as are the cached ``token_prefix``/``token_suffix`` embeddings (MaPLe's
    ``load_model`` ignores them too: they are rebuilt from the class names). Tensors keep their
    stored dtype (MaPLe trains ``ctx`` and ``proj`` in fp16); ``load_prompt_state`` casts them.
    See :func:`read_dassl_checkpoint` for how the file is read and :func:`resolve_dassl_checkpoint`
    for ``path`` and ``epoch``; :func:`import_prompts` builds the model too.

    Examples
    --------
    >>> state = load_maple_checkpoint("eurosat/base/seed1/MultiModalPromptLearner/model.pth.tar-5")  # doctest: +SKIP
    >>> model.load_prompt_state(state)  # doctest: +SKIP
    """
    return _maple_prompts(read_dassl_checkpoint(path, epoch=epoch, method="maple"))


def load_coop_checkpoint(path: str | os.PathLike, *, epoch: int | None = None) -> dict[str, torch.Tensor]:
    """The learned context of a CoOp checkpoint (``prompt_learner/model.pth.tar-<epoch>``): ``{"ctx": ...}``.

    CoOp saves its prompt learner alone (keys ``ctx``, ``token_prefix``, ``token_suffix``); the
    cached token embeddings are dropped. Class-specific contexts (CSC) are refused.

    Examples
    --------
    >>> load_coop_checkpoint("oxford_pets/CoOp/seed1/prompt_learner/model.pth.tar-50")["ctx"].shape  # doctest: +SKIP
    torch.Size([16, 512])
    """
    return _coop_prompts(read_dassl_checkpoint(path, epoch=epoch, method="coop"))


def load_ivlp_checkpoint(path: str | os.PathLike, *, epoch: int | None = None) -> dict[str, torch.Tensor]:
    """The prompts of an IVLP checkpoint (MaPLe's ``trainers/independentVL.py``) under mmlens's ivlp names.

    IVLP keeps its first-layer prompts in ``prompt_learner.ctx`` (text) and ``image_encoder.VPT``
    (vision), and the deeper ones inside CLIP's blocks (``*.transformer.resblocks.<i>.VPT_shallow``);
    they become ``ctx``, ``visual_ctx``, ``compound_prompts_text.<i-1>`` and ``compound_prompts_visual.<i-1>``.

    Examples
    --------
    >>> sorted(load_ivlp_checkpoint("eurosat/base/seed1"))[:2]  # doctest: +SKIP
    ['compound_prompts_text.0', 'compound_prompts_text.1']
    """
    return _ivlp_prompts(read_dassl_checkpoint(path, epoch=epoch, method="ivlp"))


def dassl_hparams(state: dict[str, torch.Tensor], method: str) -> dict[str, Any]:
    """``PromptedCLIP`` arguments that rebuild the prompts of a published method's recipe.

    ``n_ctx`` and ``depth`` come from the tensors. ``ctx_init`` is what the producer writes before the
    class name: MaPLe and IVLP use ``"a photo of a"`` (their configs' ``CTX_INIT``) and keep the init
    words after the first ``n_ctx`` in the prompt (``"a photo of a"`` with ``n_ctx=2`` leaves ``"of a"``
    before the name); CoOp makes ``n_ctx`` the number of init words, so every placeholder is learned
    and ``None`` ("X X ... {name}.") gives the same token layout.

    Examples
    --------
    >>> dassl_hparams({"ctx": torch.zeros(2, 8), "compound_prompts_text.0": torch.zeros(2, 8)}, "maple")
    {'n_ctx': 2, 'depth': 2, 'ctx_init': 'a photo of a'}
    """
    if "ctx" not in state:
        raise ValueError(f"not {method} prompts: no 'ctx' tensor (found {sorted(state)[:5]}).")
    n_ctx = int(state["ctx"].shape[0])
    if method == "coop":
        return {"n_ctx": n_ctx, "depth": 1, "ctx_init": None}
    deeper = {k.split(".")[1] for k in state if k.startswith("compound_prompts_text.")}
    return {"n_ctx": n_ctx, "depth": 1 + len(deeper), "ctx_init": "a photo of a"}


def import_prompts(path: str | os.PathLike, clip: Any, classnames, *, method: str | None = None,
                   epoch: int | None = None):
    """A :class:`PromptedCLIP` carrying the prompts of a published MaPLe, IVLP or CoOp checkpoint.

    The method is told by the file's keys (or given); ``n_ctx``, ``depth`` and the prompt text follow
    the producer's recipe (:func:`dassl_hparams`); class names are written as its PromptLearner writes
    them (``_`` becomes a space). These prompts were learned on OpenAI's CLIP, which uses QuickGELU:
    on a GELU model a warning says so. Nothing is half-loaded: any mismatch raises before a model
    is returned.

    Parameters
    ----------
    path : str or PathLike
        A Dassl file or folder (:func:`resolve_dassl_checkpoint`).
    clip : LoadedCLIP or open_clip CLIP
        The base model the prompts were learned on (OpenAI's ViT-B/16 for the published ones).
    classnames : sequence of str
        The classes for the logits (e.g. a split's base or novel classes).
    method : str, optional
        ``"maple"``, ``"ivlp"`` or ``"coop"``; checked against the keys.
    epoch : int, optional
        ``model.pth.tar-<epoch>`` in a folder.

    Examples
    --------
    >>> clip = load_clip("ViT-B-16", "openai")  # doctest: +SKIP
    >>> model = import_prompts("weights/eurosat/base/seed1", clip, base_classes)  # doctest: +SKIP
    """
    from mmlens.models.loading import activation_name
    from mmlens.models.prompted import PromptedCLIP

    ckpt = read_dassl_checkpoint(path, epoch=epoch, method=method)
    if method is not None and method not in _PROMPTS_OF:
        raise ValueError(f"method={method!r}: published Dassl checkpoints are imported for maple, ivlp or coop.")
    if ckpt.method is None or (method is not None and ckpt.method != method):
        raise _other_method(ckpt, method or "MaPLe, IVLP or CoOp")
    state = _PROMPTS_OF[ckpt.method](ckpt)
    model_module = getattr(clip, "model", clip)
    if activation_name(model_module) != "quick_gelu":
        warnings.warn(
            f"The {ckpt.method} prompts in {ckpt.path} were learned on OpenAI's CLIP, which uses QuickGELU, but this "
            "model is built with GELU, so its features differ from the ones they were learned with (about 1e-2 "
            "relative). Load OpenAI's weights as OpenAI's model: the 'openai' tag, a '-quickgelu' model name "
            "(e.g. ViT-B-16-quickgelu) or quick_gelu=True.", stacklevel=2)
    model = PromptedCLIP(clip, classnames, ckpt.method, **dassl_hparams(state, ckpt.method))
    model.load_prompt_state(state, source=str(ckpt.path))
    return model


def checkpoint_seed(path: str | os.PathLike) -> int | None:
    """The training seed a prompt file records, or ``None`` when it records none.

    mmlens prompt files (``.safetensors``) record it in their training metadata; published Dassl
    files in their folder, ``<dataset>/base/seed<k>/<model folder>/`` (a folder is resolved as by
    :func:`resolve_dassl_checkpoint`). This seed is the run's seed in every store traced from them.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> run = pathlib.Path(tempfile.mkdtemp()) / "eurosat" / "base" / "seed3" / "MultiModalPromptLearner"
    >>> run.mkdir(parents=True)
    >>> (run / "model.pth.tar-5").touch()
    >>> checkpoint_seed(run / "model.pth.tar-5")
    3
    """
    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        _, meta = read_prompt_file(path)
        seed = (meta.get("training") or {}).get("seed")
        return int(seed) if isinstance(seed, int) else None
    return _seed_from_path(resolve_dassl_checkpoint(path))
