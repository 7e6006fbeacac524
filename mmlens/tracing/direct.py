"""Direct logit effects: every class logit split exactly into the direct contributions of the model's parts.

docs/math.md, "Direct logit effects". The readout of each tower is linear once the final LayerNorm's
scale σ and the feature norm ‖f‖ are frozen at the actual readout (LayerNorm's centering is linear)::

    logit_c = s · f·t̂_c / ‖f‖,   f = P(γ ⊙ center(x_L)/σ + b_ln),   x_L = x_0 + Σ_ℓ (attn_ℓ [+ b^ℓ] + mlp_ℓ)

so every residual component u (the embedding; per block and head the original path (a) and β; b_O;
the MLP) contributes ``s·P(γ ⊙ center(u)/σ)·t̂_c/‖f‖`` and the LayerNorm bias ``s·P(b_ln)·t̂_c/‖f‖``.
The text tower is split the same way at each class's EOT, against the image feature f̂. The
components are what each block actually used: under a route ablation, the rebuilt output.

:class:`DirectRecorder` is a recorder for :class:`~mmlens.tracing.interventions.SplitHook` (it runs
beside the trace's own collector); :func:`linear_readout` maps residual vectors through a tower's
linearised readout (:func:`tower_readout`: a recorded tower's components); :func:`direct_effects_batch`
combines the towers into the stored numbers and checks completeness; :func:`direct_dataset` labels them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from mmlens.models.prompted import ROLE_CODES, BlockCall
from mmlens.store import schema
from mmlens.tracing.decompose import (
    AttentionSplit,
    CompletenessError,
    completeness_rtol,
    float32_region,
    head_outputs,
)
from mmlens.tracing.interventions import ROUTE_RULES, Route

__all__ = ["DIRECT_MODES", "parse_direct_effects", "direct_rtol", "tower_layout", "component_coords",
           "DirectRecorder", "Readout", "linear_readout", "tower_readout", "direct_effects_batch", "direct_dataset"]

#: What ``direct_effects=`` asks for: the label logit and the margin (``margin``), or every class too (``all``).
DIRECT_MODES: tuple[str, ...] = ("margin", "all")
_READOUT = {b: ROLE_CODES[r] for b, r in schema.READOUT_ROLE.items()}
#: The stricter floor of the direct-effect completeness tolerance (float32 compute): the logit is a sum of
#: a few hundred components, each rounded once more by the readout's projection.
DIRECT_RTOL_FLOAT32 = 1e-4


def parse_direct_effects(value: Any) -> str | None:
    """Normalise a ``direct_effects=`` argument: ``None`` (off), ``"margin"`` or ``"all"``.

    Examples
    --------
    >>> parse_direct_effects(True), parse_direct_effects(False), parse_direct_effects("all")
    ('margin', None, 'all')
    """
    if value is None or value is False:
        return None
    if value is True:
        return "margin"
    if isinstance(value, str) and value in DIRECT_MODES:
        return value
    raise ValueError(f"direct_effects={value!r}: expected False, True, 'margin' (label logit and margin) or 'all' "
                     "(also every class).")


def direct_rtol(dtype: torch.dtype) -> float:
    """Completeness tolerance of the direct effects when the blocks computed in ``dtype``.

    1e-4 relative to the largest logit for float32; the split's own tolerance of half precision
    (:func:`~mmlens.tracing.decompose.completeness_rtol`) where that is looser.

    Examples
    --------
    >>> direct_rtol(torch.float32), direct_rtol(torch.bfloat16)
    (0.0001, 0.04)
    """
    return max(DIRECT_RTOL_FLOAT32, completeness_rtol(dtype))


def _blocks(model, tower: str) -> Sequence[torch.nn.Module]:
    return model.clip.visual.transformer.resblocks if tower == "vision" else model.clip.transformer.resblocks


def tower_layout(model, tower: str) -> list[tuple[str, int, int]]:
    """The direct components of one tower of ``model``, in stored order (:func:`mmlens.store.schema.direct_layout`).

    Examples
    --------
    >>> layout = tower_layout(model, "vision")
    >>> layout[0], layout[1], layout[-1]
    (('embedding', -1, -1), ('original', 0, 0), ('ln_bias', -1, -1))
    """
    learned = schema.bias_source(model.method) == "learned"
    return schema.direct_layout([block.attn.num_heads for block in _blocks(model, tower)], learned_bias=learned)


def component_coords(model) -> dict[str, Any]:
    """The ``component`` coordinates of the ``direct`` group of ``model``: both towers, vision first."""
    return schema.direct_component_coords({tower: tower_layout(model, tower) for tower in schema.BRANCHES})


def _layer_scale(module: torch.nn.Module) -> torch.Tensor | None:
    """The per-channel gain of open_clip's ``ls_1``/``ls_2`` (None: identity). It is linear, so it scales each part."""
    if isinstance(module, torch.nn.Identity):
        return None
    gamma = getattr(module, "gamma", None)
    if gamma is None:
        raise TypeError(f"direct effects: unsupported layer scale {type(module).__name__}; expected nn.Identity or "
                        "open_clip's LayerScale (a per-channel gain).")
    return gamma.float()


class DirectRecorder:
    """Per forward pass of one tower: every direct component at the readout token, float32 ``[rows, k, width]``.

    A :data:`~mmlens.tracing.interventions.Recorder` (``recorder(call, split, z, rebuilt)``). The
    attention parts are taken from the split as the block used them under its route (``routes``:
    ``{(branch, layer): Route}`` of the traced variant; ``mean_bias`` for ``constant_bias``). The MLP
    is run again on the readout rows alone, in the model's precision, from the block input and the
    attention output: the block's own arithmetic on one token (open_clip's ``finish_block``).
    """

    def __init__(self, model, tower: str, routes: Mapping[tuple[str, int], Route] | None = None,
                 mean_bias: Mapping | None = None) -> None:
        self.tower = tower
        self.routes = dict(routes or {})
        self.mean_bias = mean_bias or {}
        self.learned = schema.bias_source(model.method) == "learned"
        self.n_layers = len(_blocks(model, tower))
        self.embedding: torch.Tensor | None = None
        self.layers: dict[int, torch.Tensor] = {}
        # x_L at the readout: the last block's own arithmetic on the readout rows (float32 copy)
        self.final: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, call: BlockCall, split: AttentionSplit, z: torch.Tensor, rebuilt: torch.Tensor) -> None:
        if call.branch != self.tower:
            return
        batch = call.x.shape[0]
        roles = call.roles if call.roles.dim() == 2 else call.roles.expand(batch, -1)
        readout = (roles == _READOUT[call.branch]).int().argmax(-1)
        rows = torch.arange(batch, device=readout.device)
        x_r = call.x[rows, readout]  # [rows, width], the model's dtype
        if call.layer == 0:
            self.embedding = x_r.float()
        route = self.routes.get((call.branch, call.layer), ROUTE_RULES["full"])
        at = split.at(readout)
        # (1-α) Σ â v is Σ_{j∈O} a v; without the (1-α) scaling (the ablations' "one") it is Σ â v
        original = at.original_context if route.scale == "renorm" else \
            at.original_context / at.original_mass[..., None]
        prompt = at.prompt_context if route.bias == "prompt" else torch.zeros_like(at.prompt_context)
        per_head = head_outputs(split, torch.stack([original, prompt], dim=2))  # [rows, heads, 2, width]
        heads_original, heads_bias = per_head[:, :, 0], per_head[:, :, 1]
        post = call.post_attn_bias.float().to(x_r.device).expand(batch, -1) if call.post_attn_bias is not None \
            else None
        if route.bias == "none":
            post = None
        if route.bias == "constant" and call.post_attn_bias is None:
            mean = self.mean_bias[(call.branch, call.layer)].for_roles(call.roles).to(x_r.device)
            mean = mean.expand(batch, -1, -1)[rows, readout]  # β̄ at the readout: summed over heads
            # β̄ has no per-head part: it is shared equally among the heads so that the sum stays exact
            heads_bias = heads_bias + mean[:, None] / heads_bias.shape[1]
        out_bias = split.out_bias.expand(batch, -1)
        attention = heads_original.sum(1) + heads_bias.sum(1) + out_bias  # the block's attention output here
        block = call.block
        with float32_region(x_r.device.type, split.autocast):  # the model's own precision again
            x_mid = x_r + block.ls_1(attention.to(x_r.dtype))
            if post is not None:
                x_mid = x_mid + call.post_attn_bias.to(x_r.dtype)  # as finish_block adds it
            mlp = block.ls_2(block.mlp(block.ln_2(x_mid)))
        gain = _layer_scale(block.ls_1)
        parts = [heads_original, heads_bias, out_bias[:, None]]
        if gain is not None:
            parts = [p * gain for p in parts]
        heads_original, heads_bias, out_bias = parts
        if self.learned:  # one learned b^ℓ per block (bias tuning has no prompt keys: the per-head part is 0)
            bias = heads_bias.sum(1, keepdim=True) + (post[:, None] if post is not None else 0.0)
        else:
            bias = heads_bias
        self.layers[call.layer] = torch.cat([heads_original, bias, out_bias, mlp.float()[:, None]], dim=1)
        if call.layer == self.n_layers - 1:
            self.final = (x_mid + mlp).float()

    def components(self) -> torch.Tensor:
        """The residual components at the readout, ``[rows, k, width]`` float32, in :func:`tower_layout` order
        (without ``ln_bias``, which is not a residual part)."""
        missing = [i for i in range(self.n_layers) if i not in self.layers]
        if self.embedding is None or missing or self.final is None:
            raise RuntimeError(f"direct effects: the {self.tower} tower was not recorded in every block "
                               f"(missing blocks {missing}); run the model with this recorder installed.")
        return torch.cat([self.embedding[:, None], *(self.layers[i] for i in range(self.n_layers))], dim=1)


@dataclass
class Readout:
    """A tower's readout, linearised: the joint-space contribution of every component and the unit feature.

    ``parts`` ``[rows, K, embed]``: component k's share of ``s·f`` divided by ‖f‖ (σ and ‖f‖ frozen), so
    ``parts.sum(1) == s·f̂``; ``unit`` ``[rows, embed]``: f̂ = f/‖f‖ from the actual readout.
    """

    parts: torch.Tensor
    unit: torch.Tensor


def _readout_modules(model, tower: str) -> tuple[torch.nn.Module, torch.Tensor | None, torch.Tensor | None]:
    """(final LayerNorm, projection matrix [width, embed] or None, projection bias or None) of a tower."""
    clip = model.clip
    if tower == "vision":
        v = clip.visual
        if getattr(v, "attn_pool", None) is not None or getattr(v, "pool_type", "tok") != "tok":
            raise ValueError(f"direct effects need the [cls] readout (pool_type 'tok', no attention pooling); this "
                             f"image tower pools with {getattr(v, 'pool_type', 'attn_pool')!r}.")
        return v.ln_post, (v.proj.float() if v.proj is not None else None), None
    proj = clip.text_projection
    if isinstance(proj, torch.nn.Linear):
        return clip.ln_final, proj.weight.float().T, (proj.bias.float() if proj.bias is not None else None)
    return clip.ln_final, (proj.float() if proj is not None else None), None


@torch.no_grad()
def linear_readout(model, tower: str, components: torch.Tensor, final: torch.Tensor) -> Readout:
    """Map residual-stream vectors into the joint space through a tower's readout, linearised at ``final``.

    The final LayerNorm's σ and the feature norm ‖f‖ are those of the actual readout ``final``
    (x_L at the readout token, ``[rows, width]``); each vector u of ``components`` (``[rows, K, width]``)
    maps to ``s·P(γ ⊙ center(u)/σ)/‖f‖``, and one more part, the LayerNorm bias (plus a projection
    bias, if any), to ``s·P(b_ln)/‖f‖`` (docs/math.md, "Direct logit effects"). Float32. When the
    components sum to ``final``, the parts sum to ``s·f̂``.

    Examples
    --------
    >>> x = torch.randn(2, model.vision_width)
    >>> readout = linear_readout(model, "vision", torch.stack([0.25 * x, 0.75 * x], dim=1), x)
    >>> s = model.clip.logit_scale.exp()
    >>> bool(torch.allclose(readout.parts.sum(1), s * readout.unit, atol=1e-4)), tuple(readout.parts.shape)
    (True, (2, 3, 64))
    """
    ln, proj, proj_bias = _readout_modules(model, tower)
    device = final.device
    with float32_region(device.type):
        x = final.float()
        width = x.shape[-1]
        gamma = ln.weight.float() if ln.weight is not None else torch.ones(width, device=device)
        beta = ln.bias.float() if ln.bias is not None else torch.zeros(width, device=device)
        centred = x - x.mean(-1, keepdim=True)
        sigma = (centred.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()  # LayerNorm's biased variance
        u = components.float()
        u = (u - u.mean(-1, keepdim=True)) * gamma / sigma[:, None]
        parts = torch.cat([u, beta.expand(x.shape[0], 1, width)], dim=1)
        if proj is not None:
            parts = parts @ proj
        if proj_bias is not None:
            parts[:, -1] += proj_bias
        feature = gamma * centred / sigma + beta
        feature = feature @ proj if proj is not None else feature
        if proj_bias is not None:
            feature = feature + proj_bias
        norm = feature.norm(dim=-1, keepdim=True)
        scale = model.clip.logit_scale.float().exp()
        return Readout(parts=parts * (scale / norm)[:, :, None], unit=feature / norm)


def tower_readout(model, recorder: DirectRecorder) -> Readout:
    """The recorded tower's components through its linearised readout (:func:`linear_readout`)."""
    return linear_readout(model, recorder.tower, recorder.components(), recorder.final)


def _other_mean(values: torch.Tensor, total: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Mean over the other classes from the label's value and the sum over all classes (NaN with one class)."""
    if n_classes < 2:
        return torch.full_like(values, float("nan"))
    return (total - values) / (n_classes - 1)


@torch.no_grad()
def direct_effects_batch(vision: Readout, text: Readout, labels: torch.Tensor, logits: torch.Tensor, *,
                         mode: str = "margin", rtol: float = DIRECT_RTOL_FLOAT32,
                         variant: str = "full") -> dict[str, np.ndarray]:
    """The stored numbers of one variant and batch of images, checked for completeness.

    Parameters
    ----------
    vision, text
        :func:`tower_readout` of the image batch (rows = images) and of the class prompts (rows = classes).
    labels : Tensor [images]
        Label class of each image (-1, or a class outside ``logits``: none; its ``label``/``margin`` are NaN).
    logits : Tensor [images, classes]
        The model's own logits, the totals the components must add up to.
    mode : {"margin", "all"}
    rtol : float
        Completeness tolerance relative to the batch's largest |logit| (:func:`direct_rtol`).

    Returns
    -------
    dict
        ``direct_effect`` [images, components, 2] (targets ``label``, ``margin``), ``direct_total``
        [images, 2], and with ``all`` ``direct_effect_all_classes`` [images, components, classes]; float32.

    Raises
    ------
    CompletenessError
        When a tower's components do not add up to the logit (or margin), naming tower, variant and error.
    """
    with float32_region(vision.parts.device.type):
        logits = logits.float().to(vision.parts.device)
        n_classes = logits.shape[1]
        known = (labels >= 0) & (labels < n_classes)  # a label outside the traced classes has no logit here
        lab = torch.where(known, labels, 0).to(vision.parts.device)
        rows = torch.arange(len(lab), device=lab.device)
        t_hat, f_hat = text.unit, vision.unit
        # vision components read along the label's text direction and the margin's (label minus mean of the others)
        t_label = t_hat[lab]
        t_margin = t_label - _other_mean(t_label, t_hat.sum(0, keepdim=True), n_classes)
        vis = torch.stack([torch.einsum("ikd,id->ik", vision.parts, t) for t in (t_label, t_margin)], dim=-1)
        # text components of the label class (and the sum over classes, for the margin): [classes, K, D] once
        g_label = text.parts[lab]
        g_margin = g_label - _other_mean(g_label, text.parts.sum(0, keepdim=True), n_classes)
        txt = torch.stack([torch.einsum("id,ikd->ik", f_hat, g) for g in (g_label, g_margin)], dim=-1)
        label_logit = logits[rows, lab]
        total = torch.stack([label_logit, label_logit - _other_mean(label_logit, logits.sum(1), n_classes)], dim=-1)
        effect = torch.cat([vis, txt], dim=1)
        nan = torch.tensor(float("nan"), device=effect.device)
        effect = torch.where(known[:, None, None].to(effect.device), effect, nan)
        total = torch.where(known[:, None].to(total.device), total, nan)
        scale = float(logits.abs().max().clamp_min(1e-30))
        out = {"direct_effect": effect, "direct_total": total}
        # completeness, per tower: its components add up to the label logit and the margin (labelled images)
        ok = known.to(total.device)
        targets = ((0, "label logit"), (1, "margin")) if n_classes > 1 else ((0, "label logit"),)
        for tower, part in (("vision", vis), ("text", txt)):
            for index, what in targets:
                if bool(ok.any()):
                    err = float((part[ok, :, index].sum(1) - total[ok, index]).abs().max()) / scale
                    _check(tower, variant, what, err, rtol)
        if mode == "all":  # ... and to every class's logit, every image
            vis_all = torch.einsum("ikd,cd->ikc", vision.parts, t_hat)
            txt_all = torch.einsum("id,ckd->ikc", f_hat, text.parts)
            for tower, part in (("vision", vis_all), ("text", txt_all)):
                err = float((part.sum(1) - logits).abs().max()) / scale
                _check(tower, variant, "logits of every class", err, rtol)
            out["direct_effect_all_classes"] = torch.cat([vis_all, txt_all], dim=1)
        return {k: v.float().cpu().numpy() for k, v in out.items()}


def _check(tower: str, variant: str, what: str, err: float, rtol: float) -> None:
    if not err <= rtol:  # NaN fails too
        raise CompletenessError(
            f"Direct-effect completeness failed in the {tower} tower (variant {variant}): its components sum to the "
            f"{what} only within {err:.2e} of the largest |logit| (tolerance {rtol:.0e}). The linearised readout "
            "does not reproduce the model's logits: is this an unsupported block or readout type?"
        )


def direct_dataset(model, per_variant: Sequence[Mapping[str, np.ndarray]], variants: Sequence[str],
                   image_coords: Mapping[str, Any]) -> xr.Dataset:
    """The ``direct`` group of one batch (docs/store_schema.md) from :func:`direct_effects_batch` per variant."""
    dims = {"direct_effect": ("variant", "image", "component", "target"),
            "direct_total": ("variant", "image", "target"),
            "direct_effect_all_classes": ("variant", "image", "component", "class")}
    data = {name: (dims[name], np.stack([part[name] for part in per_variant]).astype(np.float32))
            for name in per_variant[0]}
    coords: dict[str, Any] = {"variant": np.array(list(variants), dtype=object),
                              "target": np.array(schema.DIRECT_TARGETS, dtype=object),
                              "bias_source": schema.bias_source(model.method),
                              **component_coords(model), **image_coords}
    if "direct_effect_all_classes" in data:
        coords["class"] = np.arange(len(model.classnames))
    return xr.Dataset(data, coords=coords)
