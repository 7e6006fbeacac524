"""Gradient-weighted attention maps for ViTs: token GradCAM per layer and Chefer-style relevance rollout.

Attention probabilities are recomputed from each block's own ``in_proj`` weights (open_clip calls
``nn.MultiheadAttention`` with ``need_weights=False``) inside a ``model.block_hook``, so that the
probabilities are part of the autograd graph and their gradients can be taken.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from captum.attr import LayerGradientXActivation
from torch import nn

from mmlens.attribution._inputs import (
    as_image_batch,
    chunks,
    finish,
    grid_coords,
    image_coords,
    layer_coords,
    patch_grid,
    patch_indices,
    progress,
    resolve_target,
)
from mmlens.attribution.forward import ClassLogits
from mmlens.models.prompted import ROLE_CODES, BlockCall, block_forward

__all__ = ["AttentionCapture", "AttentionGradCAM", "GradientRollout", "attention_probabilities"]


class AttentionProbs(nn.Module):
    """``softmax(scores, dim=-1)`` as a module: a layer captum can hook (``LayerGradientXActivation``)."""

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.softmax(dim=-1)


def attention_probabilities(
    block: nn.Module, z: torch.Tensor, attn_mask: torch.Tensor | None = None, probe: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recompute one block's multi-head attention from its own weights.

    Parameters
    ----------
    block : open_clip ResidualAttentionBlock
        Its ``attn`` is an ``nn.MultiheadAttention`` (``batch_first``, packed ``in_proj_weight``).
    z : Tensor
        ``ln_1(x)``, ``[batch, tokens, width]``.
    attn_mask : Tensor, optional
        Additive float mask or boolean mask (True = masked), as ``nn.MultiheadAttention`` takes it.
    probe : nn.Module, optional
        Applies the softmax (default :class:`AttentionProbs`); a hookable module for captum.

    Returns
    -------
    probs : Tensor
        ``[batch, heads, queries, keys]``, softmax over all keys.
    output : Tensor
        The attention output ``[batch, tokens, width]`` (after ``out_proj``), equal to the module's own.

    Examples
    --------
    >>> blk = model.clip.visual.transformer.resblocks[0]
    >>> z = blk.ln_1(torch.randn(2, 17, blk.attn.embed_dim))             # [batch, tokens, width]
    >>> a, out = attention_probabilities(blk, z)
    >>> a.shape, torch.allclose(out, blk.attention(z), atol=1e-5)
    (torch.Size([2, 4, 17, 17]), True)
    """
    mha = block.attn
    if not isinstance(mha, nn.MultiheadAttention) or not mha._qkv_same_embed_dim or not mha.batch_first:
        raise TypeError(f"Expected a batch-first nn.MultiheadAttention with a packed in_proj_weight, found "
                        f"{type(mha).__name__}; this open_clip block type is not supported by the attention methods.")
    b, t, w = z.shape
    h = mha.num_heads
    d = w // h
    q, k, v = F.linear(z, mha.in_proj_weight, mha.in_proj_bias).split(w, dim=-1)
    q, k, v = (y.reshape(b, t, h, d).transpose(1, 2) for y in (q, k, v))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.to(scores.dtype)
    probs = (probe or AttentionProbs())(scores)
    out = (probs @ v).transpose(1, 2).reshape(b, t, w)
    return probs, F.linear(out, mha.out_proj.weight, mha.out_proj.bias)


class AttentionCapture:
    """Context manager: run the model with recomputed, differentiable attention and keep the probabilities.

    While active, ``model.block_hook`` runs each block of ``branch`` from its own sub-modules with
    :func:`attention_probabilities` in place of the fused attention; ``records[layer]`` holds the
    probabilities ``[batch, heads, tokens, tokens]`` of the last forward and ``roles[layer]`` the
    token-role codes. ``probes[layer]`` is the softmax module of that layer (hookable by captum).
    Other branches run unchanged.

    Examples
    --------
    >>> with AttentionCapture(model) as cap:
    ...     logits = model(images)
    >>> cap.records[0].shape               # [image, head, token, token]: [cls], 8 x 8 patches, 2 prompts
    torch.Size([4, 4, 67, 67])
    """

    def __init__(self, model: Any, branch: str = "vision") -> None:
        if branch not in ("vision", "text"):
            raise ValueError(f"branch must be 'vision' or 'text', found {branch!r}.")
        self.model = model
        self.branch = branch
        self.probes = nn.ModuleList(AttentionProbs() for _ in range(model.n_layers[branch]))
        self.records: dict[int, torch.Tensor] = {}
        self.roles: dict[int, torch.Tensor] = {}

    def __enter__(self) -> AttentionCapture:
        if self.model.block_hook is not None:
            raise RuntimeError("The model already has a block_hook (an active trace or intervention); attention "
                               "attributions cannot run inside it. Leave the `intervene(...)` block first.")
        self.model.block_hook = self
        return self

    def __exit__(self, *exc: Any) -> None:
        self.model.block_hook = None

    def __call__(self, call: BlockCall) -> torch.Tensor:
        if call.branch != self.branch:
            if call.post_attn_bias is not None:
                return block_forward(call.block, call.x, call.attn_mask, post_attn_bias=call.post_attn_bias)
            return call.block(call.x, attn_mask=call.attn_mask)

        def attention(z: torch.Tensor) -> torch.Tensor:
            probs, out = attention_probabilities(call.block, z, call.attn_mask, self.probes[call.layer])
            self.records[call.layer] = probs
            self.roles[call.layer] = call.roles
            return out

        return block_forward(call.block, call.x, call.attn_mask, attention=attention,
                             post_attn_bias=call.post_attn_bias)


class _AttentionMethod:
    name = "attention"

    def __init__(self, model: Any, *, progress: bool = True) -> None:
        if not hasattr(model, "clip") or not hasattr(model, "block_hook"):
            raise TypeError(f"Expected a mmlens PromptedCLIP, found {type(model).__name__}.")
        self.model = model
        self.progress = progress

    def _grad_x_attention(self, forward: ClassLogits, x: torch.Tensor, t: torch.Tensor
                          ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """One forward and backward: ``dlogit/dA * A`` per layer, roles, target logits.

        captum's :class:`~captum.attr.LayerGradientXActivation` on the softmax probes of
        :class:`AttentionCapture` (one module per layer) computes ``grad * A`` for every layer at once.
        """
        seen: list[torch.Tensor] = []

        def logits(images: torch.Tensor) -> torch.Tensor:
            out = forward(images)
            seen.append(out)  # captum runs the forward once; its target logits are reported as ``logit``
            return out

        with AttentionCapture(self.model) as cap:
            per_layer = LayerGradientXActivation(logits, list(cap.probes)).attribute(x, target=t)
        target_logits = seen[-1].detach().gather(1, t.reshape(-1, 1)).squeeze(1)
        return [a.detach() for a in per_layer], cap.roles[0], target_logits

    def _run(self, images: Any, target: Any, internal_batch_size: int | None, labels: Any, paths: Any,
             classnames: Any, desc: str, compute: Any) -> tuple[Any, ...]:
        batch = as_image_batch(images, labels=labels, paths=paths, classnames=classnames, model=self.model)
        device = self.model.clip.visual.conv1.weight.device
        batch.images = batch.images.to(device)
        with torch.no_grad():
            text_features = self.model.text_features()
        forward = ClassLogits(self.model, text_features)
        tgt = resolve_target(target, batch, text_features.shape[0], self.model, text_features)
        grid = patch_grid(self.model, batch.images)
        results, logits = [], []
        for rows in progress(chunks(len(batch), internal_batch_size), enabled=self.progress, desc=desc):
            weighted, roles, out = self._grad_x_attention(forward, batch.images[rows], tgt[rows].to(device))
            cls, patches = patch_indices(roles, grid)
            results.append(compute(weighted, roles, cls, patches))
            logits.append(out.cpu())
        return batch, tgt, grid, results, torch.cat(logits)


class AttentionGradCAM(_AttentionMethod):
    """GradCAM for ViTs on tokens: ``mean_h ReLU(dlogit/dA_h * A_h)`` on the ``[cls]`` -> patch row, per layer.

    The class-discriminative weighting acts on attention probabilities ``A`` (recomputed with
    gradients), not on CNN channels: for each layer the ``[cls]`` query's attention to each patch
    is multiplied by the gradient of the target logit with respect to it, clipped at zero and
    averaged over heads. Attention to prompt keys enters the softmax but is not part of the map.

    Examples
    --------
    >>> cam = AttentionGradCAM(model, progress=False).attribute(images, target="label", labels=labels)
    >>> cam.dims
    ('image', 'layer', 'patch_row', 'patch_col')
    """

    name = "attention_gradcam"

    def attribute(
        self,
        images: torch.Tensor | Mapping[str, Any],
        target: Any = None,
        *,
        per_head: bool = False,
        internal_batch_size: int | None = 8,
        labels: Sequence[int] | torch.Tensor | None = None,
        paths: Sequence[str] | None = None,
        classnames: Sequence[str] | None = None,
    ) -> xr.DataArray:
        """Gradient-weighted ``[cls]`` attention per layer (and head).

        Parameters
        ----------
        images, target, labels, paths, classnames
            As in :meth:`mmlens.attribution.PixelIntegratedGradients.attribute`.
        per_head : bool
            Keep the ``head`` dim instead of averaging over heads.
        internal_batch_size : int, optional
            Images per forward/backward pass.

        Returns
        -------
        xarray.DataArray
            ``(image, layer, patch_row, patch_col)`` or with ``head`` after ``layer``; coords ``logit``,
            ``layer_kind`` and the image metadata.
        """

        def compute(weighted, roles, cls, patches):
            # Chefer's weighting (grad * A)^+ per head, on the [cls] -> patch row
            layers = [w.clamp(min=0)[:, :, cls][:, :, patches] for w in weighted]  # [B, H, P]
            m = torch.stack(layers, dim=1)  # [B, L, H, P]
            return m if per_head else m.mean(dim=2)

        batch, tgt, grid, results, logits = self._run(images, target, internal_batch_size, labels, paths,
                                                      classnames, "Attention GradCAM", compute)
        data = torch.cat(results).cpu()
        data = data.reshape(*data.shape[:-1], grid.rows, grid.cols).numpy()
        dims = ("image", "layer", "head", "patch_row", "patch_col") if per_head else \
            ("image", "layer", "patch_row", "patch_col")
        coords = {**image_coords(batch, tgt, self.model), **grid_coords(grid), **layer_coords(self.model),
                  "logit": ("image", logits.numpy())}
        if per_head:
            coords["head"] = np.arange(data.shape[2])
        return finish(data, dims, coords, name=self.name, model=self.model,
                      attrs={"attribution_method": "mean over heads of ReLU(grad * attention), [cls] -> patches",
                             "per_head": int(per_head)})


class GradientRollout(_AttentionMethod):
    """Gradient-weighted attention rollout (Chefer, Gur & Wolf, ICCV 2021): relevance of each patch for ``[cls]``.

    ``R = I``; for every block ``R <- R + mean_h((dlogit/dA_h * A_h)^+) @ R``; the map is
    ``R[cls, patches]``. Where a block's prompt slots are overwritten by fresh learned prompts
    (``layer_kind == "injected"`` after block 0) their rows of ``R`` are reset to the identity:
    a fresh prompt depends on no input token. ``prompt_relevance`` (per image) is the relevance of
    ``[cls]`` on the prompt tokens, ``R[cls, prompts].sum()``.

    Examples
    --------
    >>> rel = GradientRollout(model, progress=False).attribute(images, target=2)
    >>> rel.dims, rel.prompt_relevance.dims
    (('image', 'patch_row', 'patch_col'), ('image',))
    """

    name = "gradient_rollout"

    def attribute(
        self,
        images: torch.Tensor | Mapping[str, Any],
        target: Any = None,
        *,
        internal_batch_size: int | None = 8,
        labels: Sequence[int] | torch.Tensor | None = None,
        paths: Sequence[str] | None = None,
        classnames: Sequence[str] | None = None,
    ) -> xr.DataArray:
        """Relevance of each patch for the target logit through all blocks.

        Parameters are those of :meth:`AttentionGradCAM.attribute` (without ``per_head``).

        Returns
        -------
        xarray.DataArray
            ``(image, patch_row, patch_col)`` with coords ``prompt_relevance``, ``logit`` and the image metadata.
        """
        kinds = self.model.layer_kinds("vision") if self.model.prompts_enabled else []

        def compute(weighted, roles, cls, patches):
            prompt_rows = torch.nonzero(roles.reshape(-1) == ROLE_CODES["prompt"]).reshape(-1).to(weighted[0].device)
            b, _, t, _ = weighted[0].shape
            eye = torch.eye(t, dtype=weighted[0].dtype, device=weighted[0].device)
            rel = eye.expand(b, t, t).clone()
            for layer, w in enumerate(weighted):
                if layer > 0 and prompt_rows.numel() and kinds and kinds[layer] == "injected":
                    rel[:, prompt_rows] = eye[prompt_rows]
                rel = rel + w.clamp(min=0).mean(dim=1) @ rel  # Chefer's (grad * A)^+, mean over heads
            readout = rel[:, cls]  # [B, T]
            return readout[:, patches], readout[:, prompt_rows].sum(dim=-1)

        batch, tgt, grid, results, logits = self._run(images, target, internal_batch_size, labels, paths,
                                                      classnames, "Gradient rollout", compute)
        data = torch.cat([r[0] for r in results]).cpu().reshape(-1, grid.rows, grid.cols).numpy()
        coords = {**image_coords(batch, tgt, self.model), **grid_coords(grid),
                  "prompt_relevance": ("image", torch.cat([r[1] for r in results]).cpu().numpy()),
                  "logit": ("image", logits.numpy())}
        return finish(data, ("image", "patch_row", "patch_col"), coords, name=self.name, model=self.model,
                      attrs={"attribution_method": "gradient-weighted attention rollout (Chefer et al. 2021)"})
