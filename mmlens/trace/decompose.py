"""The exact per-block, per-head split of MATH.md: original path (a), prompt bias (b), output bias (c).

For head h and query i, with scores s_ij over keys j in O (originals) and P (prompts)::

    α_i   = Σ_{m∈P} softmax_j(s_ij)_m                 prompt mass
    â_ij  = softmax over j∈O of s_ij                  attention over originals, renormalised
    ã_im  = softmax over m∈P of s_im                  attention within the prompts
    (a)_i = (1-α_i) (Σ_{j∈O} â_ij v_j) W_O^h          original path
    (b)_i =    α_i  (Σ_{m∈P} ã_im v_m) W_O^h          prompt bias β
    (c)   = b_O

Everything is computed in float32 from the block's own ``in_proj``/``out_proj`` parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["AttentionSplit", "CompletenessError", "check_completeness", "head_outputs", "merged_output",
           "attention_output", "split_attention"]


class CompletenessError(AssertionError):
    """(a)+(b)+(c) did not reproduce the block's own attention output."""


@dataclass
class AttentionSplit:
    """The split of one block's attention, all queries, float32.

    Shapes: ``[batch, heads, queries, keys]`` for probabilities, ``[batch, heads, queries]`` for
    masses, ``[batch, heads, tokens, head_dim]`` for q/k/v and contexts.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    attn: torch.Tensor  # a_ij over all keys
    prompt_mass: torch.Tensor  # α_i
    original_mass: torch.Tensor  # Σ_{j∈O} a_ij  (= 1-α_i, summed directly for precision)
    attn_original: torch.Tensor  # â_ij (zero on prompt keys)
    context_original: torch.Tensor  # Σ_{j∈O} â_ij v_j
    context_prompt: torch.Tensor  # Σ_{m∈P} ã_im v_m (zero where a query sees no prompt)
    out_weight: torch.Tensor  # W_O [width, width] (float32)
    out_bias: torch.Tensor  # b_O [width]


def _key_mask(prompt_keys: torch.Tensor, batch: int) -> torch.Tensor:
    """Boolean [batch, 1, 1, keys] marking prompt keys (input: [keys] or [batch, keys])."""
    if prompt_keys.dim() == 1:
        prompt_keys = prompt_keys.expand(batch, -1)
    return prompt_keys[:, None, None, :]


def split_attention(block: torch.nn.Module, z: torch.Tensor, attn_mask: torch.Tensor | None,
                    prompt_keys: torch.Tensor) -> AttentionSplit:
    """Recompute a block's attention from its parameters and split it per MATH.md.

    Parameters
    ----------
    block : open_clip ResidualAttentionBlock
        Its ``attn`` must be ``nn.MultiheadAttention`` with packed ``in_proj_weight``.
    z : Tensor [batch, tokens, width]
        ``ln_1(x)``, the attention input.
    attn_mask : Tensor [tokens, tokens] or None
        Additive mask (the text tower's causal mask).
    prompt_keys : bool Tensor [tokens] or [batch, tokens]
        True where the token's role is ``prompt``.
    """
    mha = block.attn
    if not isinstance(mha, torch.nn.MultiheadAttention) or mha.in_proj_weight is None:
        raise TypeError(
            f"mmlens decomposes blocks whose attention is nn.MultiheadAttention with a packed in_proj_weight; "
            f"found {type(mha).__name__}. Custom attention blocks (qk-norm, scaled cosine) are not supported."
        )
    batch, tokens, width = z.shape
    heads = mha.num_heads
    head_dim = width // heads
    zf = z.float()
    w = mha.in_proj_weight.float()
    b = mha.in_proj_bias.float() if mha.in_proj_bias is not None else torch.zeros(3 * width, device=z.device)
    qkv = zf @ w.T + b
    q, k, v = (t.reshape(batch, tokens, heads, head_dim).transpose(1, 2) for t in qkv.split(width, dim=-1))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
    if attn_mask is not None:
        mask = attn_mask.float()
        scores = scores + (mask if mask.dim() == 2 else mask.reshape(batch, heads, tokens, tokens))
    is_prompt = _key_mask(prompt_keys.to(z.device), batch)
    attn = scores.softmax(dim=-1)
    on_prompts = attn * is_prompt
    on_originals = attn - on_prompts
    prompt_mass = on_prompts.sum(-1)
    original_mass = on_originals.sum(-1)
    # â and ã are the softmax restricted to O and to P: the same as a renormalised over each set
    # (one softmax instead of three). Where a query sees no prompt key, α = 0 and ã is 0 by convention.
    attn_original = on_originals / original_mass[..., None]
    attn_prompt = torch.where(prompt_mass[..., None] > 0, on_prompts / prompt_mass.clamp_min(1e-38)[..., None],
                              torch.zeros((), device=z.device))
    return AttentionSplit(
        q=q, k=k, v=v, attn=attn, prompt_mass=prompt_mass, original_mass=original_mass,
        attn_original=attn_original,
        context_original=attn_original @ v,
        context_prompt=attn_prompt @ v,
        out_weight=mha.out_proj.weight.float(),
        out_bias=mha.out_proj.bias.float() if mha.out_proj.bias is not None else torch.zeros(width, device=z.device),
    )


def head_outputs(split: AttentionSplit, context: torch.Tensor) -> torch.Tensor:
    """Per-head output projection: ``context_h @ W_O^h`` -> [batch, heads, tokens, width]."""
    batch, heads, tokens, head_dim = context.shape
    w_o = split.out_weight.T.reshape(heads, head_dim, -1)  # rows of W_O^T grouped by head
    return torch.einsum("bhtd,hdw->bhtw", context, w_o)


def merged_output(split: AttentionSplit, context: torch.Tensor) -> torch.Tensor:
    """Σ_h context_h W_O^h (without b_O) as one matmul -> [batch, tokens, width]."""
    batch, heads, tokens, head_dim = context.shape
    return context.transpose(1, 2).reshape(batch, tokens, heads * head_dim) @ split.out_weight.T


def attention_output(split: AttentionSplit) -> torch.Tensor:
    """(a)+(b)+(c) summed over heads, all queries: the block's attention output rebuilt from the split."""
    context = (split.original_mass[..., None] * split.context_original
               + split.prompt_mass[..., None] * split.context_prompt)
    return merged_output(split, context) + split.out_bias


@torch.no_grad()
def check_completeness(split: AttentionSplit, module_output: torch.Tensor, *, branch: str, layer: int,
                       rtol: float, rebuilt: torch.Tensor | None = None) -> float:
    """Raise :class:`CompletenessError` unless (a)+(b)+(c) equals the module's attention output.

    Two identities are checked: per head, (1-α)Σâv + αΣãv equals the unsplit head context a·v
    (before W_O^h, which is linear; names the head when it fails); summed over heads and projected,
    (a)+(b)+(c) equals the block's own output. ``rebuilt`` is :func:`attention_output` when the
    caller has it already. Returns the relative error of the sum.
    """
    split_context = split.original_mass[..., None] * split.context_original + \
        split.prompt_mass[..., None] * split.context_prompt
    unsplit = split.attn @ split.v
    per_head = (split_context - unsplit).abs().amax(dim=(0, 2, 3)) / unsplit.abs().amax().clamp_min(1e-30)
    worst = int(per_head.argmax())
    if per_head[worst] > rtol:
        raise CompletenessError(
            f"Completeness failed in the {branch} tower, layer {layer}, head {worst}: (a)+(b) differs from the "
            f"head's attention output by {float(per_head[worst]):.2e} relative (tolerance {rtol:.0e})."
        )
    total = rebuilt if rebuilt is not None else attention_output(split)
    ref = module_output.float()
    err = float((total.float() - ref).abs().amax() / ref.abs().amax().clamp_min(1e-30))
    if err > rtol:
        raise CompletenessError(
            f"Completeness failed in the {branch} tower, layer {layer} (all heads): (a)+(b)+(c) differs from the "
            f"block's own attention output by {err:.2e} relative (tolerance {rtol:.0e}). The recomputed "
            "attention does not match the module — is this an unsupported block type?"
        )
    return err
