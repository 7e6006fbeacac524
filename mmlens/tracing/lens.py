"""``mmlens.lens``: the text lens on the prompt bias — what direction each layer's β pushes, in words.

For every prompted block of both towers the lens measures, over a dataset's images (text: over the class
prompts):

- ``layer_bias``: the dataset-mean prompt bias β at the readout token (``[cls]``; EOT, averaged over classes),
  summed over heads (bias tuning: the learned b^ℓ);
- ``head_bias``: the same per head (β_h = α_h Σ ã v W_O^h);
- ``prompt_value``: each injected prompt token's value through W_O, summed over heads (Σ_h v_m^h W_O^h) — the
  vectors β is a mixture of in an injected block (docs/math.md, consequence 2).

Each residual-stream vector u is mapped into the joint space through the linearised readout of docs/math.md,
``u ↦ proj(γ ⊙ center(u))`` (the final LayerNorm's scale γ and centering, then the projection). The frozen
LayerNorm σ and the feature norm ‖f‖ only rescale this vector (by a positive number), so for a cosine ranking
they drop out. The directions are then ranked against a vocabulary of zero-shot text embeddings by
:func:`mmlens.stats.lens.rank_vocabulary` (docs/lens.md).
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from mmlens.models.prompted import ROLE_CODES, BlockCall
from mmlens.store import schema
from mmlens.tracing.decompose import AttentionSplit, float32_region, head_outputs

__all__ = ["lens", "load_vocabulary", "build_vocabulary", "embed_texts", "readout_map", "measure_directions",
           "tokenisation_problem", "vocabulary_sha256",
           "other_classnames", "Phrase", "VocabularyError", "VOCABULARY_FILE", "TEMPLATE"]

#: The shipped, editable phrase list (docs/lens.md).
VOCABULARY_FILE = Path(__file__).resolve().parent.parent / "assets" / "lens_vocabulary.txt"
#: The one template every vocabulary entry is embedded with. The bare phrase as a sentence: descriptive phrases
#: ("at night", "seen from above") do not fit "a photo of a {}.", and one template for every entry keeps the
#: entries comparable (class names included). It is one of the toy CLIP's pre-training caption templates.
TEMPLATE = "{}."

_SECTION = re.compile(r"^\[([^\[\]]+)\]$")


class VocabularyError(ValueError):
    """A vocabulary file line that cannot be used (names the file and the line)."""


@dataclass(frozen=True)
class Phrase:
    """One vocabulary entry: its text, the ``[section]`` it was listed under, and where it came from.

    ``source`` is one of :data:`mmlens.stats.lens.LENS_SOURCES`; ``line`` is the 1-based line in the file
    (0 for entries that did not come from a file).
    """

    text: str
    section: str = ""
    source: str = "phrase"
    line: int = 0


def _token_count(tokenizer: Any, text: str, context_length: int) -> int:
    """Tokens of ``text`` with SOT and EOT, untruncated (the row is tokenised with room to spare)."""
    ids = tokenizer([text], context_length=max(4 * context_length, 256))[0]
    return int((ids != 0).sum())


def tokenisation_problem(tokenizer: Any, text: str, *, template: str = TEMPLATE,
                         context_length: int | None = None) -> str | None:
    """Why ``template.format(text)`` cannot be embedded faithfully by ``tokenizer``, or None when it can.

    Too long for the context (open_clip would cut it, EOT included, and the embedding would be of another
    text), or words the tokenizer does not know (the toy CLIP's word-level tokenizer maps them to ``<unk>``:
    every such phrase would embed alike).

    Examples
    --------
    >>> from mmlens.models.toy import get_tokenizer
    >>> tokenisation_problem(get_tokenizer(), "seen from above") is None
    True
    >>> tokenisation_problem(get_tokenizer(), "twilight")
    "unknown word(s) 'twilight' (the tokenizer maps them to <unk>)"
    """
    full = template.format(text)
    unknown = getattr(tokenizer, "unknown_words", None)
    if unknown is not None:
        missing = unknown(full)
        if missing:
            return f"unknown word(s) {', '.join(map(repr, missing))} (the tokenizer maps them to <unk>)"
    length = int(context_length or getattr(tokenizer, "context_length", 77))
    n = _token_count(tokenizer, full, length)
    if n > length:
        return f"{n} tokens with SOT and EOT (template {template!r}), more than the context length {length}"
    return None


def load_vocabulary(path: str | os.PathLike | None = None, *, tokenizer: Any = None, template: str = TEMPLATE,
                    context_length: int | None = None) -> list[Phrase]:
    """Read a lens vocabulary file: one phrase per line, ``#`` comments, ``[section]`` headers.

    Parameters
    ----------
    path : path, optional
        The file (default: the shipped :data:`VOCABULARY_FILE`).
    tokenizer : callable, optional
        The text encoder's tokenizer; when given, every phrase is checked to tokenise faithfully with
        ``template`` (:func:`tokenisation_problem`).
    template, context_length
        As the lens embeds the phrases (the context length defaults to the tokenizer's).

    Returns
    -------
    list of Phrase
        In file order, ``source="phrase"``.

    Raises
    ------
    VocabularyError
        Naming the file and the line: bytes that are not UTF-8, a control character, a malformed or empty
        ``[section]`` header, a phrase listed twice, or a phrase that does not tokenise faithfully.

    Examples
    --------
    >>> phrases = load_vocabulary()
    >>> [p.text for p in phrases if p.section == "viewpoint"][:2]
    ['seen from above', 'from above']
    """
    path = Path(path) if path is not None else VOCABULARY_FILE
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise VocabularyError(f"Cannot read the lens vocabulary {path}: {err}") from None
    phrases: list[Phrase] = []
    seen: dict[str, int] = {}
    section = ""
    for number, line_bytes in enumerate(raw.splitlines(), 1):
        where = f"{path}, line {number}"
        try:
            line = line_bytes.decode("utf-8").strip()
        except UnicodeDecodeError as err:
            raise VocabularyError(f"{where}: not UTF-8 text ({err.reason} at byte {err.start}); save the file "
                                  "as UTF-8.") from None
        if not line or line.startswith("#"):
            continue
        bad = [c for c in line if unicodedata.category(c).startswith("C")]
        if bad:
            raise VocabularyError(f"{where}: control character {bad[0]!r} in {line!r}; expected printable text.")
        if line.startswith("["):
            match = _SECTION.match(line)
            if match is None or not match.group(1).strip():
                raise VocabularyError(f"{where}: malformed section header {line!r}; expected '[name]' alone on "
                                      "its line.")
            section = match.group(1).strip()
            continue
        key = " ".join(line.lower().split())
        if key in seen:
            raise VocabularyError(f"{where}: {line!r} is listed already on line {seen[key]}; keep one.")
        seen[key] = number
        if tokenizer is not None:
            problem = tokenisation_problem(tokenizer, line, template=template, context_length=context_length)
            if problem:
                raise VocabularyError(f"{where}: the phrase {line!r} cannot be tokenised faithfully: {problem}. "
                                      "Shorten or reword it, or delete the line.")
        phrases.append(Phrase(line, section, "phrase", number))
    if not phrases:
        raise VocabularyError(f"{path}: no phrases (only comments, headers or blank lines).")
    return phrases


def other_classnames(dataset: str) -> list[str]:
    """Class names of the other datasets of ``dataset``'s kind (``toyworld`` / ``real``) that list them.

    Examples
    --------
    >>> names = other_classnames("ToyLowLight")
    >>> "red circle" in names, len(names) > 100
    (True, True)
    """
    from mmlens.data import get_manifest, list_manifests

    own = get_manifest(dataset)
    out: list[str] = []
    for name in list_manifests(own.kind):
        m = get_manifest(name)
        if m.name != own.name and m.classnames:
            out += [m.rewrite(c) for c in m.classnames]
    return list(dict.fromkeys(out))


def build_vocabulary(classnames: Sequence[str], phrases: Sequence[Phrase] | Sequence[str] | str | os.PathLike | None,
                     others: Sequence[str] = (), *, tokenizer: Any = None, template: str = TEMPLATE,
                     context_length: int | None = None) -> list[Phrase]:
    """The lens vocabulary: the dataset's class names, the phrases, the other datasets' class names.

    A text listed by more than one source is kept once, by the first of ``classname``, ``phrase``,
    ``other_classname`` (compared case- and space-insensitively; class names are written as in prompts,
    ``_`` as a space). Class names that do not tokenise faithfully raise a ``VocabularyError``.

    Examples
    --------
    >>> [(p.text, p.source) for p in build_vocabulary(["red star"], ["dark", "Red  star"], ["red star", "blue ring"])]
    [('red star', 'classname'), ('dark', 'phrase'), ('blue ring', 'other_classname')]
    """
    from mmlens.models.prompted import classname_in_prompt

    if phrases is None or isinstance(phrases, (str, os.PathLike)):
        listed = load_vocabulary(phrases, tokenizer=tokenizer, template=template, context_length=context_length)
    else:
        listed = [p if isinstance(p, Phrase) else Phrase(str(p)) for p in phrases]
    entries = [Phrase(classname_in_prompt(c), "", "classname") for c in classnames] + listed + \
        [Phrase(classname_in_prompt(c), "", "other_classname") for c in others]
    out, seen = [], set()
    for p in entries:
        key = " ".join(p.text.lower().split())
        if key in seen:
            continue
        seen.add(key)
        checked = p.source == "phrase" and p.line > 0  # load_vocabulary checked the file's lines already
        if tokenizer is not None and not checked:
            problem = tokenisation_problem(tokenizer, p.text, template=template, context_length=context_length)
            if problem:
                raise VocabularyError(f"The {p.source.replace('_', ' ')} {p.text!r} cannot be tokenised "
                                      f"faithfully: {problem}.")
        out.append(p)
    return out


@torch.no_grad()
def embed_texts(model: Any, texts: Sequence[str], *, template: str = TEMPLATE, batch_size: int = 256) -> np.ndarray:
    """Zero-shot text embeddings (unit length, float32) of ``template.format(t)`` for each text.

    Uses the frozen CLIP's own ``encode_text`` (open_clip), never the learned prompts.

    Examples
    --------
    >>> embed_texts(model, ["dark", "red star"]).shape
    (2, 64)
    """
    clip = model.clip
    device = clip.token_embedding.weight.device
    out = []
    for lo in range(0, len(texts), batch_size):
        tokens = model.tokenizer([template.format(t) for t in texts[lo:lo + batch_size]]).to(device)
        out.append(torch.nn.functional.normalize(clip.encode_text(tokens).float(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, clip.text_projection.shape[-1]), np.float32)


def _readout_parts(model: Any, tower: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(γ of the final LayerNorm, projection [width, embed] or None) of a tower, float32."""
    clip = model.clip
    if tower == "vision":
        v = clip.visual
        if getattr(v, "attn_pool", None) is not None:
            raise TypeError("The lens maps through a [cls] readout; this vision tower pools with attention.")
        ln, proj = v.ln_post, v.proj
    else:
        ln, proj = clip.ln_final, clip.text_projection
    width = ln.normalized_shape[0]
    gamma = ln.weight.detach().float() if ln.weight is not None else torch.ones(width)
    if isinstance(proj, torch.nn.Linear):
        proj = proj.weight.detach().float().T
    elif proj is not None:
        proj = proj.detach().float()
    return gamma, proj


def readout_map(model: Any, tower: str, vectors: torch.Tensor) -> torch.Tensor:
    """Map residual-stream vectors ``[..., width]`` into the joint space: ``proj(γ ⊙ center(u))``.

    The linearised readout of docs/math.md without the frozen 1/σ and 1/‖f‖ (positive scalars that do not
    change a direction). A bias of the final LayerNorm or of a linear projection is a constant of the model,
    not part of any vector's contribution, and is left out.

    Examples
    --------
    >>> u = torch.randn(3, 64)
    >>> readout_map(model, "vision", u).shape
    torch.Size([3, 64])
    >>> bool(torch.allclose(readout_map(model, "vision", u + 5.0), readout_map(model, "vision", u), atol=1e-5))
    True
    """
    gamma, proj = _readout_parts(model, tower)
    u = vectors.float().to(gamma.device)
    with float32_region(u.device.type):  # float32 under any autocast, like the split (docs/math.md, Numerics)
        mapped = gamma * (u - u.mean(-1, keepdim=True))
        return mapped @ proj if proj is not None else mapped


class _LensRecorder:
    """Sums of β per head at the readout, the learned b, and the injected prompt tokens' values (per tower)."""

    def __init__(self, kinds: dict[str, list[str]]) -> None:
        self.kinds = kinds
        self.head_sum: dict[tuple[str, int], torch.Tensor] = {}  # [heads, width]
        self.rows: dict[tuple[str, int], int] = {}
        self.learned: dict[tuple[str, int], torch.Tensor] = {}  # [width]
        self.values: dict[tuple[str, int], torch.Tensor] = {}  # [n_prompt, width]

    def __call__(self, call: BlockCall, split: AttentionSplit, z: torch.Tensor, rebuilt: torch.Tensor) -> None:
        key = (call.branch, call.layer)
        if self.kinds[call.branch][call.layer] == "none":
            return
        batch = call.x.shape[0]
        roles = call.roles if call.roles.dim() == 2 else call.roles.expand(batch, -1)
        readout = (roles == ROLE_CODES[schema.READOUT_ROLE[call.branch]]).int().argmax(-1)
        beta = head_outputs(split, split.at(readout).prompt_context)  # [batch, heads, width]
        self.head_sum[key] = self.head_sum.get(key, 0) + beta.sum(0)
        self.rows[key] = self.rows.get(key, 0) + batch
        if call.post_attn_bias is not None:
            self.learned[key] = call.post_attn_bias.detach().float()
        if self.kinds[call.branch][call.layer] == "injected" and key not in self.values:
            prompts = (roles[0] == ROLE_CODES["prompt"]).nonzero().flatten()
            if len(prompts):
                # the values the injected prompts carry are the same in every row (learned vectors)
                v = split.v[:1, :, prompts]  # [1, heads, n_prompt, head_dim]
                self.values[key] = head_outputs(split, v)[0].sum(0)  # Σ_h v_m^h W_O^h: [n_prompt, width]


@torch.no_grad()
def measure_directions(model: Any, images_or_loader: Any, *, batch_size: int = 32, progress: bool = True,
                       device: str | torch.device | None = None) -> tuple[xr.DataArray, xr.DataArray, int]:
    """The lens directions of a model on images: residual-stream vectors and their joint-space maps.

    Returns ``(vectors, directions, n_images)``: ``vectors (direction, channel)`` in the residual stream
    (differently wide per tower: NaN-padded to the wider), ``directions (direction, embed)`` mapped by
    :func:`readout_map`, with coordinates ``tower, kind, layer, layer_kind, head, prompt_token`` along
    ``direction``. Directions of zero length (a block whose β is exactly 0) are left out.
    """
    from mmlens._progress import progress_bar
    from mmlens.tracing.interventions import SplitHook
    from mmlens.tracing.tracer import _batches

    device = torch.device(device) if device is not None else next(model.parameters()).device
    kinds = {b: model.layer_kinds(b) for b in schema.BRANCHES}
    recorder = _LensRecorder(kinds)
    previous_hook, previous_enabled, was_training = model.block_hook, model.prompts_enabled, model.training
    model.eval()
    model.prompts_enabled = True
    n_images = 0
    try:
        model.block_hook = SplitHook(recorder=recorder, record_branches=("text",))
        model.text_features()
        model.block_hook = SplitHook(recorder=recorder, record_branches=("vision",))
        bar = progress_bar(total=None, desc="lens", unit="img", enabled=progress)
        for batch in _batches(images_or_loader, batch_size):
            images = batch["image"].to(device)
            if len(images):
                model.encode_image(images)
                n_images += len(images)
                bar.update(len(images))
        bar.close()
    finally:
        model.block_hook, model.prompts_enabled = previous_hook, previous_enabled
        model.train(was_training)
    if not n_images:
        raise ValueError("lens() got no images: the input was empty.")

    rows: list[dict[str, Any]] = []
    vecs: list[torch.Tensor] = []
    learned_bias = schema.bias_source(model.method) == "learned"
    for tower in schema.BRANCHES:
        for layer, kind in enumerate(kinds[tower]):
            key = (tower, layer)
            if kind == "none" or key not in recorder.rows:
                continue
            mean_heads = recorder.head_sum[key] / recorder.rows[key]  # [heads, width]
            layer_vec = mean_heads.sum(0) + recorder.learned.get(key, 0)
            found = [("layer_bias", -1, -1, layer_vec)]
            if not learned_bias:  # bias tuning's b is added after the heads: it has no per-head part
                found += [("head_bias", h, -1, mean_heads[h]) for h in range(mean_heads.shape[0])]
            if key in recorder.values:
                found += [("prompt_value", -1, m, v) for m, v in enumerate(recorder.values[key])]
            for what, head, token, vec in found:
                if float(vec.norm()) == 0.0:
                    continue
                rows.append({"tower": tower, "kind": what, "layer": layer, "layer_kind": kind, "head": head,
                             "prompt_token": token})
                vecs.append(vec.float().cpu())
    if not rows:
        raise ValueError(f"The {model.method!r} model has no prompt bias to look at (no prompted block with a "
                         "non-zero β): the lens needs a prompt method or bias tuning.")
    mapped = [readout_map(model, r["tower"], v[None])[0].cpu() for r, v in zip(rows, vecs, strict=True)]
    width = max(len(v) for v in vecs)
    residual = np.full((len(vecs), width), np.nan, dtype=np.float32)
    for i, v in enumerate(vecs):
        residual[i, :len(v)] = v.numpy()
    coords = {"direction": np.arange(len(rows)),
              **{name: ("direction", np.array([r[name] for r in rows],
                                              dtype=object if isinstance(rows[0][name], str) else np.int64))
                 for name in ("tower", "kind", "layer", "layer_kind", "head", "prompt_token")}}
    vectors = xr.DataArray(residual, dims=("direction", "channel"), coords=coords)
    directions = xr.DataArray(torch.stack(mapped).numpy().astype(np.float32), dims=("direction", "embed"),
                              coords=coords)
    return vectors, directions, n_images


def _readout_null(model: Any, directions: xr.DataArray, n: int, seed: int) -> xr.DataArray | None:
    """``n`` random residual-stream vectors per tower (isotropic Gaussian), mapped by :func:`readout_map`.

    The second control of the lens (docs/lens.md): a direction drawn at random in the residual stream and seen
    through the same readout keeps whatever structure the readout gives every vector, which shuffling
    coordinates destroys.
    """
    if n <= 0:
        return None
    parts, towers = [], []
    for tower in dict.fromkeys(np.asarray(directions["tower"].values).astype(str)):
        gamma, _ = _readout_parts(model, tower)
        gen = torch.Generator().manual_seed(int(seed) * 2 + (tower == "text"))
        sample = torch.randn(n, gamma.shape[0], generator=gen)
        parts.append(readout_map(model, tower, sample).cpu().numpy())
        towers += [tower] * n
    return xr.DataArray(np.concatenate(parts), dims=("sample", "embed"),
                        coords={"tower": ("sample", np.array(towers, dtype=object))})


def vocabulary_sha256(entries: Iterable[Phrase], template: str) -> str:
    """sha256 of the vocabulary as embedded: the template, then ``source<TAB>text`` per entry, in order.

    Examples
    --------
    >>> vocabulary_sha256([Phrase("dark")], "{}.")[:12]
    'c047909d26ef'
    """
    digest = hashlib.sha256(f"template\t{template}\n".encode())
    for p in entries:
        digest.update(f"{p.source}\t{p.text}\n".encode())
    return digest.hexdigest()


def lens(model: Any, images_or_loader: Any, *, vocabulary: Sequence[str] | Sequence[Phrase] | str | os.PathLike
         | None = None, other_classnames: Sequence[str] = (), top: int = 5, n_shuffles: int = 1000, seed: int = 0,
         template: str = TEMPLATE, center: bool = True, batch_size: int = 32, progress: bool = True,
         device: str | torch.device | None = None, provenance: dict | None = None) -> xr.Dataset:
    """The text lens: rank a vocabulary against the directions the prompt bias pushes, layer by layer.

    Parameters
    ----------
    model : PromptedCLIP
        A prompted model (any prompt method, or bias tuning); its class names are the dataset's.
    images_or_loader : Tensor, Dataset or iterable of batches
        The images the dataset-mean β is measured on (as :func:`mmlens.trace` takes them).
    vocabulary : path, list of str, list of Phrase, optional
        The descriptive phrases (default: the shipped ``mmlens/assets/lens_vocabulary.txt``). The model's
        class names are always added first, ``other_classnames`` last.
    other_classnames : sequence of str
        Other datasets' class names (:func:`other_classnames` gives those of the packaged manifests).
    top : int
        Vocabulary entries kept per direction.
    n_shuffles, seed
        The controls: shuffled directions and as many random residual-stream vectors through the readout
        (:func:`mmlens.stats.lens.rank_vocabulary`).
    template : str
        The one template every entry is embedded with (:data:`TEMPLATE`).
    center : bool
        Rank against vocabulary embeddings centred on their mean (docs/lens.md).
    provenance : dict, optional
        Extra provenance fields (``dataset``, ``seed``, ...), as in :func:`mmlens.trace`.

    Returns
    -------
    xarray.Dataset
        Dims ``direction``, ``rank`` (docs/lens.md): ``phrase``, ``cosine``, ``source``, ``section``;
        ``control_cosine``, ``control_p`` (shuffled coordinates), ``readout_control_cosine``,
        ``readout_control_p`` (``n_shuffles`` random residual-stream vectors through the same readout),
        ``norm`` (the residual-stream length of the measured vector), ``joint_direction`` (direction, embed: the
        mapped vector itself);
        coordinates ``tower, kind, layer, layer_kind, head, prompt_token``; provenance with
        ``vocabulary_sha256`` and ``template`` in ``attrs``.

    Examples
    --------
    >>> ds = mmlens.lens(model, images, top=3, n_shuffles=100, progress=False)
    >>> sorted(set(ds["kind"].values.tolist()))
    ['head_bias', 'layer_bias', 'prompt_value']
    >>> ds["phrase"].sel(rank=1).dims, int(ds.sizes["rank"])
    (('direction',), 3)
    """
    from mmlens.stats.lens import rank_vocabulary
    from mmlens.tracing.tracer import _provenance

    device = torch.device(device) if device is not None else next(model.parameters()).device
    context_length = int(getattr(model.clip, "context_length", 0) or 0) or None
    entries = build_vocabulary(model.classnames, vocabulary, other_classnames, tokenizer=model.tokenizer,
                               template=template, context_length=context_length)
    vectors, directions, n_images = measure_directions(model, images_or_loader, batch_size=batch_size,
                                                       progress=progress, device=device)
    emb = embed_texts(model, [p.text for p in entries], template=template)
    embeddings = xr.DataArray(emb, dims=("entry", "embed"), coords={
        "phrase": ("entry", np.array([p.text for p in entries], dtype=object)),
        "source": ("entry", np.array([p.source for p in entries], dtype=object)),
        "section": ("entry", np.array([p.section for p in entries], dtype=object)),
    })
    null = _readout_null(model, directions, n_shuffles, seed)
    ds = rank_vocabulary(directions, embeddings, top=top, n_shuffles=n_shuffles, seed=seed, center=center,
                         null=null)
    ds["joint_direction"] = (("direction", "embed"), directions.values)
    ds["norm"] = ("direction", np.sqrt(np.nansum(vectors.values.astype(np.float64) ** 2, axis=1)).astype(np.float32))
    ds = ds.assign_coords(bias_source=schema.bias_source(model.method))
    attrs = _provenance(model, provenance, device)
    attrs.update(ds.attrs)
    attrs.update({"vocabulary_sha256": vocabulary_sha256(entries, template), "template": template,
                  "n_images": int(n_images), "n_classes": len(model.classnames)})
    # plain str: torch_version is a TorchVersion (a str subclass) that netCDF writers cannot store
    ds.attrs = {k: str(v) if isinstance(v, str) else v for k, v in attrs.items()}
    return ds
