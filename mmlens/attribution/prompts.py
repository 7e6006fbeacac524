"""Integrated gradients of a logit w.r.t. the learned prompt vectors, against prompt-aware baselines."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr
from captum.attr import IntegratedGradients
from torch.func import functional_call

from mmlens.attribution._inputs import (
    as_image_batch,
    chunks,
    finish,
    image_coords,
    progress,
    resolve_target,
)
from mmlens.models.prompted import ROLE_CODES, BlockCall, block_forward

__all__ = ["BASELINES", "PromptForward", "PromptIntegratedGradients", "handcrafted_prompts", "prompt_parameters"]

BASELINES = ("zero", "handcrafted", "initial")


@dataclass(frozen=True)
class PromptParameter:
    """A learned prompt (or bias) tensor and where its rows act: ``rows[i] = (layer, slot)`` in ``branch``."""

    name: str  # key in model.prompt_learner
    branch: str
    rows: tuple[tuple[int, int], ...]


_PATTERNS = (
    (re.compile(r"ctx"), "text", "prompts", 0),
    (re.compile(r"compound_prompts_text\.(\d+)"), "text", "prompts", 1),
    (re.compile(r"visual_ctx"), "vision", "prompts", 0),
    (re.compile(r"compound_prompts_visual\.(\d+)"), "vision", "prompts", 1),
    (re.compile(r"text_bias"), "text", "bias", 0),
    (re.compile(r"visual_bias"), "vision", "bias", 0),
)


def prompt_parameters(model: Any) -> list[PromptParameter]:
    """The learned vectors of ``model.prompt_learner`` that act as prompts (or biases), layer by layer.

    Text context ``ctx`` is text layer 0, ``compound_prompts_text.i`` text layer ``i+1`` (likewise
    for vision); a bias matrix ``[depth, width]`` gives one vector per layer. MaPLe's coupling
    maps (``proj``, ``compound_prompt_projections``) are not prompt vectors: they stay at their
    values, and the vision prompts follow the text prompts through them.

    Examples
    --------
    >>> [(p.name, p.branch, p.rows[0]) for p in prompt_parameters(model)][:2]   # model: MaPLe
    [('ctx', 'text', (0, 0)), ('compound_prompts_text.0', 'text', (1, 0))]
    """
    out = []
    for name, param in model.prompt_learner.named_parameters():
        for pattern, branch, kind, offset in _PATTERNS:
            m = pattern.fullmatch(name)
            if not m:
                continue
            if kind == "bias":
                rows = tuple((layer, 0) for layer in range(param.shape[0]))
            else:
                layer = int(m.group(1)) + offset if m.groups() else 0
                rows = tuple((layer, slot) for slot in range(param.shape[0]))
            out.append(PromptParameter(name, branch, rows))
            break
    return out


class PromptForward:
    """captum forward: ``(prompt tensors [rows, ...]..., images [rows, 3, H, W]) -> logits [rows, classes]``.

    Row ``r`` runs the whole model (text tower included, so gradients reach the prompts through
    both towers) on image ``r`` with the prompt values of row ``r`` substituted for the learned
    parameters (``torch.func.functional_call``); rows are evaluated one after another.
    """

    def __init__(self, model: Any, names: Sequence[str]) -> None:
        self.model = model
        self.names = list(names)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        values, images = args[: len(self.names)], args[len(self.names)]
        rows = []
        for r in range(images.shape[0]):
            params = {f"prompt_learner.{n}": v[r] for n, v in zip(self.names, values)}
            rows.append(functional_call(self.model, params, (images[r: r + 1],)))
        return torch.cat(rows)


def handcrafted_prompts(model: Any, words: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The prompt values of the hand-written prompt (``"a photo of a"``), per learned parameter.

    * text layer 0 (``ctx``): the token embeddings of the first ``n_ctx`` words of ``words``
      (default: the model's ``ctx_init``, else ``"a photo of a"``);
    * deeper text layers (``compound_prompts_text``): the hidden states those words carry at the
      prompt slots when nothing is injected — the hand-written prompt run through the frozen text
      tower (class independent: the slots sit before the class name under the causal mask);
    * vision prompts and biases: zero (no words exist for them; a zero bias is zero-shot CLIP).
      MaPLe's vision prompts are projections of the text prompts and follow them.

    Returns the values and notes (``words``, the largest difference of the carried states between
    classes).

    Examples
    --------
    >>> values, notes = handcrafted_prompts(model)                   # model: MaPLe
    >>> values["ctx"].shape, notes["handcrafted_words"]
    (torch.Size([2, 64]), 'a photo of a')
    """
    words = words or model.ctx_init or "a photo of a"
    params = dict(model.prompt_learner.named_parameters())
    out: dict[str, torch.Tensor] = {p.name: torch.zeros_like(params[p.name]).detach()
                                    for p in prompt_parameters(model)}
    notes: dict[str, Any] = {"handcrafted_words": words, "handcrafted_class_spread": 0.0}
    if "ctx" not in out:
        return out, notes
    ids = model.tokenizer([words]).to(model.clip.token_embedding.weight.device)
    roles = model.text_roles(ids, with_prompts=False)
    word_ids = ids[roles == ROLE_CODES["word"]]
    n_ctx = params["ctx"].shape[0]
    if word_ids.numel() < n_ctx:
        raise ValueError(f"The hand-crafted prompt {words!r} has {word_ids.numel()} words but the model learns "
                         f"n_ctx={n_ctx} text prompts; pass words with at least {n_ctx} words.")
    with torch.no_grad():
        ctx = model.clip.token_embedding(word_ids[:n_ctx]).to(params["ctx"].dtype)
    out["ctx"] = ctx.detach().clone()
    deep = [p for p in prompt_parameters(model) if p.name.startswith("compound_prompts_text.")]
    if not deep:
        return out, notes
    carried: dict[int, torch.Tensor] = {}
    previous: dict[str, torch.Tensor] = {}

    def hook(call: BlockCall) -> torch.Tensor:
        x = call.x
        if call.branch == "text" and call.layer > 0:
            slots = call.roles == ROLE_CODES["prompt"]
            if slots.any():
                x = x.clone()
                x[slots] = previous["out"][slots]  # undo the injection: the slots carry on
                carried[call.layer] = previous["out"][slots].reshape(x.shape[0], n_ctx, x.shape[-1])
        if call.post_attn_bias is not None:
            y = block_forward(call.block, x, call.attn_mask, post_attn_bias=call.post_attn_bias)
        else:
            y = call.block(x, attn_mask=call.attn_mask)
        if call.branch == "text":
            previous["out"] = y
        return y

    if model.block_hook is not None:
        raise RuntimeError("The model already has a block_hook (an active trace or intervention); compute the "
                           "hand-crafted baseline outside it.")
    model.block_hook = hook
    try:
        with torch.no_grad():
            _encode_text_with(model, {"ctx": ctx})
    finally:
        model.block_hook = None
    spread = 0.0
    for p in deep:
        layer = p.rows[0][0]
        states = carried[layer]
        spread = max(spread, float((states - states[:1]).abs().max()))
        out[p.name] = states.mean(dim=0).to(params[p.name].dtype).detach().clone()
    notes["handcrafted_class_spread"] = spread
    return out, notes


def _encode_text_with(model: Any, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``model.encode_text()`` with some prompt parameters replaced (functional, nothing is modified)."""

    class _Text(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self) -> torch.Tensor:
            return self.inner.encode_text()

    return functional_call(_Text(model), {f"inner.prompt_learner.{k}": v for k, v in values.items()}, ())


class PromptIntegratedGradients:
    """Integrated gradients of the target logit w.r.t. every learned prompt vector, per layer.

    All prompt tensors move together along the straight path from the baseline to the learned
    values (one captum ``IntegratedGradients`` call with a tuple of inputs), so the attributions of
    all layers add up to ``logit(learned) - logit(baseline)`` (captum's convergence delta is the
    difference). The text tower is recomputed for every path point, so gradients flow through
    both towers. Each prompt vector's attribution is the signed sum over its channels.

    Parameters
    ----------
    model : PromptedCLIP
        A prompted model (not ``zeroshot``) with ``prompts_enabled``.
    initial_prompts : dict or PromptedCLIP, optional
        The prompts before training (``model.prompt_state_dict()`` saved then, or a model built with
        the same ``init_seed``); needed for the ``"initial"`` baseline.
    handcrafted_words : str, optional
        Words of the hand-crafted baseline (default ``model.ctx_init`` or ``"a photo of a"``).
    progress : bool
        Progress bar over images.

    Examples
    --------
    >>> initial_state = {k: v.clone() for k, v in model.prompt_state_dict().items()}  # before training
    >>> pig = PromptIntegratedGradients(model, initial_prompts=initial_state, progress=False)
    >>> a = pig.attribute(images[:1], target="label", labels=labels[:1], baselines=["zero", "handcrafted"],
    ...                   n_steps=4)
    >>> a.dims
    ('baseline', 'image', 'branch', 'layer', 'prompt_token')
    """

    name = "prompt_ig"

    def __init__(self, model: Any, *, initial_prompts: Any = None, handcrafted_words: str | None = None,
                 progress: bool = True) -> None:
        self.model = model
        self.progress = progress
        self.params = prompt_parameters(model)
        if not self.params:
            raise ValueError(f"Model method {getattr(model, 'method', '?')!r} has no learned prompt vectors to "
                             "attribute; use a prompted model (coop, maple, ivlp, ...) or a bias method.")
        if initial_prompts is not None and hasattr(initial_prompts, "prompt_state_dict"):
            initial_prompts = initial_prompts.prompt_state_dict()
        self.initial_prompts = initial_prompts
        self.handcrafted_words = handcrafted_words
        self._handcrafted: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None

    def baseline_values(self, baseline: str | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Baseline value of every attributed parameter (``"zero"``, ``"handcrafted"``, ``"initial"`` or a dict)."""
        own = dict(self.model.prompt_learner.named_parameters())
        if isinstance(baseline, Mapping):
            values = dict(baseline)
        elif baseline == "zero":
            values = {p.name: torch.zeros_like(own[p.name]) for p in self.params}
        elif baseline == "handcrafted":
            if self._handcrafted is None:
                self._handcrafted = handcrafted_prompts(self.model, self.handcrafted_words)
            values = self._handcrafted[0]
        elif baseline == "initial":
            if self.initial_prompts is None:
                raise ValueError("baseline='initial' needs the prompts before training: pass "
                                 "initial_prompts=model.prompt_state_dict() saved before training (or a PromptedCLIP "
                                 "built with the same init_seed).")
            values = dict(self.initial_prompts)
        else:
            raise ValueError(f"baseline must be one of {BASELINES} or a dict of tensors, found {baseline!r}.")
        missing = [p.name for p in self.params if p.name not in values]
        wrong = [(p.name, tuple(values[p.name].shape), tuple(own[p.name].shape)) for p in self.params
                 if p.name in values and tuple(values[p.name].shape) != tuple(own[p.name].shape)]
        if missing or wrong:
            raise ValueError(f"The {baseline if isinstance(baseline, str) else 'given'} baseline does not fit the "
                             f"model's prompts: missing {missing}, shape mismatches (name, found, expected) {wrong}.")
        return {p.name: values[p.name].detach().to(own[p.name].device, own[p.name].dtype) for p in self.params}

    def attribute(
        self,
        images: torch.Tensor | Mapping[str, Any],
        target: Any = None,
        *,
        baselines: str | Mapping[str, torch.Tensor] | Sequence[str] = "zero",
        n_steps: int = 16,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        batch_size: int | None = 1,
        labels: Sequence[int] | torch.Tensor | None = None,
        paths: Sequence[str] | None = None,
        classnames: Sequence[str] | None = None,
    ) -> xr.DataArray:
        """Attribute each image's target logit to the learned prompt vectors.

        Parameters
        ----------
        images, target, labels, paths, classnames
            As in :meth:`mmlens.attribution.PixelIntegratedGradients.attribute`.
        baselines : str, dict or sequence of str
            ``"zero"``, ``"handcrafted"``, ``"initial"`` (see the class docs), a dict of tensors, or a
            list of names (adds a ``baseline`` dim).
        n_steps, method, internal_batch_size
            Passed to captum; ``internal_batch_size`` bounds the path points evaluated (and kept in
            memory for the backward pass) at once.
        batch_size : int
            Images per captum call.

        Returns
        -------
        xarray.DataArray
            ``([baseline,] image, branch, layer, prompt_token)`` — NaN where a branch/layer has no
            learned vector — with per-image coords ``convergence_delta``, ``logit``, ``baseline_logit``.
        """
        if not self.model.prompts_enabled:
            raise ValueError("model.prompts_enabled is False: there are no prompts to attribute; switch them on.")
        names = (list(baselines) if isinstance(baselines, (list, tuple)) else [baselines])
        parts = [self._attribute_one(images, target, b, n_steps, method, internal_batch_size, batch_size,
                                     labels, paths, classnames) for b in names]
        if isinstance(baselines, (list, tuple)):
            per_run = [c for c in ("convergence_delta", "logit", "baseline_logit") if c in parts[0].coords]
            out = xr.concat(parts, dim="baseline", coords=per_run, compat="equals", join="exact")
            out = out.assign_coords(baseline=[str(b) for b in names])
            return out.transpose("baseline", "image", ...)
        return parts[0]

    def _attribute_one(self, images, target, baseline, n_steps, method, internal_batch_size, batch_size,
                       labels, paths, classnames) -> xr.DataArray:
        model = self.model
        batch = as_image_batch(images, labels=labels, paths=paths, classnames=classnames, model=model)
        device = model.clip.visual.conv1.weight.device
        batch.images = batch.images.to(device)
        with torch.no_grad():
            text_features = model.text_features()
        tgt = resolve_target(target, batch, text_features.shape[0], model, text_features)
        own = dict(model.prompt_learner.named_parameters())
        base = self.baseline_values(baseline)
        names = [p.name for p in self.params]
        forward = PromptForward(model, names)
        ig = IntegratedGradients(forward)
        branches = sorted({p.branch for p in self.params}, key=["text", "vision"].index)
        n_layers = 1 + max(layer for p in self.params for layer, _ in p.rows)
        n_slots = 1 + max(slot for p in self.params for _, slot in p.rows)
        data = np.full((len(batch), len(branches), n_layers, n_slots), np.nan)
        deltas, logits, base_logits = [], [], []
        for rows in progress(chunks(len(batch), batch_size), enabled=self.progress, desc="IG (prompts)"):
            x = batch.images[rows]
            n = x.shape[0]
            inputs = tuple(own[k].detach().unsqueeze(0).expand(n, *own[k].shape).clone() for k in names)
            bases = tuple(base[k].unsqueeze(0).expand(n, *own[k].shape).clone() for k in names)
            t = tgt[rows].to(device)
            attrs, delta = ig.attribute(inputs, baselines=bases, target=t, additional_forward_args=(x,),
                                        n_steps=n_steps, method=method, internal_batch_size=internal_batch_size,
                                        return_convergence_delta=True)
            for p, a in zip(self.params, attrs):
                per_vector = a.detach().sum(dim=-1).cpu().numpy()  # [n, rows]
                b_i = branches.index(p.branch)
                for r, (layer, slot) in enumerate(p.rows):
                    data[rows, b_i, layer, slot] = per_vector[:, r]
            deltas.append(delta.detach().cpu())
            with torch.no_grad():
                logits.append(forward(*inputs, x).gather(1, t[:, None]).squeeze(1).cpu())
                base_logits.append(forward(*bases, x).gather(1, t[:, None]).squeeze(1).cpu())
        coords = {**image_coords(batch, tgt, model), "branch": branches, "layer": np.arange(n_layers),
                  "prompt_token": np.arange(n_slots),
                  "convergence_delta": ("image", torch.cat(deltas).numpy()),
                  "logit": ("image", torch.cat(logits).numpy()),
                  "baseline_logit": ("image", torch.cat(base_logits).numpy())}
        if not model.spec.bias:
            coords["token_role"] = ("prompt_token", np.asarray(["prompt"] * n_slots, dtype=object))
        notes = dict(self._handcrafted[1]) if baseline == "handcrafted" and self._handcrafted else {}
        out = finish(data, ("image", "branch", "layer", "prompt_token"), coords, name=self.name, model=model,
                     attrs={"attribution_method": "IntegratedGradients on the learned prompt vectors (captum)",
                            "n_steps": n_steps, "integration_method": method,
                            "attributed_parameters": names, **notes})
        return out.assign_coords(baseline=baseline if isinstance(baseline, str) else "custom")
