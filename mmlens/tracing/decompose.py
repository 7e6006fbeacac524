"""The exact per-block, per-head split of docs/math.md: original path (a), prompt bias (b), output bias (c).

For head h and query i, with scores s_ij over keys j in O (originals) and P (prompts)::

    α_i   = Σ_{m∈P} softmax_j(s_ij)_m                 prompt mass
    â_ij  = softmax over j∈O of s_ij                  attention over originals, renormalised
    ã_im  = softmax over m∈P of s_im                  attention within the prompts
    (a)_i = (1-α_i) (Σ_{j∈O} â_ij v_j) W_O^h  =  (Σ_{j∈O} a_ij v_j) W_O^h      original path
    (b)_i =    α_i  (Σ_{m∈P} ã_im v_m) W_O^h  =  (Σ_{m∈P} a_im v_m) W_O^h      prompt bias β
    (c)   = b_O

Everything is computed in float32 from the block's own ``in_proj``/``out_proj`` parameters, with
autocast switched off, whatever the model's dtype and whatever autocast is active (docs/math.md,
Numerics): α can be tiny and half precision would round it away. The
attention is computed once, for all queries (the residual stream needs it); the split itself is
taken where it is asked for: at the readout queries (:meth:`AttentionSplit.at`, what the trace
stores) or for every query (the lazily computed attributes, used by the route ablations).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

__all__ = ["AttentionSplit", "QuerySplit", "CompletenessError", "check_completeness", "check_query_split",
           "check_module_output", "head_outputs", "merged_output", "attention_output", "split_attention",
           "COMPLETENESS_RTOL", "completeness_rtol", "float32_region", "autocast_dtype", "compute_dtype"]

#: Relative completeness tolerance by the dtype the block's own output was computed in. float32: the
#: split is exact up to float32 rounding of sums over a few hundred keys; float16 (10-bit mantissa,
#: unit roundoff 4.9e-4) and bfloat16 (7-bit, 3.9e-3): about ten units of roundoff of that format,
#: what the module's own half-precision matmuls and softmax leave (measured: fp16 ~5e-4, bf16 ~5e-3
#: on the toy model). A wrong split (a misplaced head or key) is off by O(1), far above all of these.
COMPLETENESS_RTOL: dict[torch.dtype, float] = {
    torch.float64: 1e-5, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2,
}

_F = TypeVar("_F", bound=Callable[..., Any])


def completeness_rtol(dtype: torch.dtype) -> float:
    """The completeness tolerance for a block whose own output was computed in ``dtype``.

    Examples
    --------
    >>> completeness_rtol(torch.float32), completeness_rtol(torch.float16), completeness_rtol(torch.bfloat16)
    (1e-05, 0.005, 0.04)
    """
    if dtype not in COMPLETENESS_RTOL:
        raise ValueError(f"No completeness tolerance for a block computed in {dtype}; expected one of "
                         f"{', '.join(map(str, COMPLETENESS_RTOL))}. Run the model in float32, float16 or bfloat16.")
    return COMPLETENESS_RTOL[dtype]


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs matmuls in on ``device_type`` (``"cpu"``, ``"cuda"``), or None when it is off.

    Examples
    --------
    >>> autocast_dtype("cpu") is None
    True
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     autocast_dtype("cpu")
    torch.bfloat16
    """
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def compute_dtype(block: torch.nn.Module, device_type: str) -> torch.dtype:
    """The dtype a residual block's attention computes in here: autocast's when it is on, else its weights'.

    The dtype of ``positional_embedding`` (which open_clip keeps in float32) says nothing about it.

    Examples
    --------
    >>> from open_clip.transformer import ResidualAttentionBlock
    >>> block = ResidualAttentionBlock(4, 2)
    >>> compute_dtype(block, "cpu"), compute_dtype(block.half(), "cpu")
    (torch.float32, torch.float16)
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     compute_dtype(block, "cpu")
    torch.bfloat16
    """
    return autocast_dtype(device_type) or block.attn.in_proj_weight.dtype


@contextlib.contextmanager
def float32_region(device_type: str, autocast: torch.dtype | None = None) -> Iterator[None]:
    """Autocast off on ``device_type`` (the split's float32 arithmetic), or back on with ``autocast``.

    ``autocast`` given: the model's own precision is restored inside (e.g. to run the module itself
    for the completeness check from within the float32 region).
    """
    region = torch.autocast(device_type, enabled=False) if autocast is None else \
        torch.autocast(device_type, dtype=autocast)
    with region:
        yield


def _device_type(obj: Any) -> str:
    t = obj.attn if isinstance(obj, (AttentionSplit, QuerySplit)) else obj
    return t.device.type


def _in_float32(fn: _F) -> _F:
    """Run ``fn`` with autocast off on the device of its first argument (a split or a tensor)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with float32_region(_device_type(args[0])):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class CompletenessError(AssertionError):
    """(a)+(b)+(c) did not reproduce the block's own attention output."""


@dataclass
class QuerySplit:
    """The split at one query per row (the readout query), float32.

    Shapes: ``[batch, heads, keys]`` for ``attn``/``attn_original``, ``[batch, heads]`` for masses,
    ``[batch, heads, head_dim]`` for contexts (before the output projection ``W_O^h``).
    """

    queries: torch.Tensor  # [batch] query position of each row
    attn: torch.Tensor  # a_ij over all keys
    prompt_mass: torch.Tensor  # α_i
    original_mass: torch.Tensor  # Σ_{j∈O} a_ij  (= 1-α_i, summed directly)
    attn_original: torch.Tensor  # â_ij (zero on prompt keys)
    original_context: torch.Tensor  # Σ_{j∈O} a_ij v_j = (1-α) Σ â v   -> path (a) after W_O^h
    prompt_context: torch.Tensor  # Σ_{m∈P} a_im v_m = α Σ ã v        -> β after W_O^h
    context: torch.Tensor  # Σ_j a_ij v_j, the unsplit head output the stream continues with


@dataclass
class AttentionSplit:
    """One block's attention recomputed in float32, with the split of docs/math.md on demand.

    ``q``/``k``/``v``/``context`` are ``[batch, heads, tokens, head_dim]``; ``attn`` is
    ``[batch, heads, queries, keys]``. The all-query split quantities (``prompt_mass``,
    ``original_mass``, ``original_context``, ``prompt_context``, ``attn_original``,
    ``context_original`` = Σ â v, ``context_prompt`` = Σ ã v) are computed when first read.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    attn: torch.Tensor  # a_ij over all keys
    context: torch.Tensor  # Σ_j a_ij v_j (unsplit)
    is_prompt: torch.Tensor  # bool [batch, keys]
    prompt_index: torch.Tensor | None  # prompt key positions when the same for every row, else None
    out_weight: torch.Tensor  # W_O [width, width] (float32)
    out_bias: torch.Tensor  # b_O [width]
    #: the autocast dtype active where the block ran (None: off); the module itself runs under it
    #: when it is checked against this float32 recomputation
    autocast: torch.dtype | None = None
    key_bias: torch.Tensor | None = None  # b_K per head [heads, head_dim] (None: the block has no in_proj bias)

    @property
    def keys_without_bias(self) -> torch.Tensor:
        """The keys z W_K^h without b_K^h, ``[batch, heads, tokens, head_dim]``.

        b_K is the same for every key, so it adds q·b_K to every score of a query and cancels in the
        softmax: attention never sees it. Key similarities that should say what attention can tell
        apart (the prompt-key cosines of the trace) leave it out; with it, every pair of keys shares
        a common component and looks more alike than attention treats them.
        """
        if self.key_bias is None:
            return self.k
        return self.k - self.key_bias[None, :, None, :]

    # -- all queries, on demand -------------------------------------------------------------
    @cached_property
    @_in_float32
    def prompt_mass(self) -> torch.Tensor:
        """α for every query, ``[batch, heads, queries]``."""
        if self.prompt_index is not None:  # a few prompt columns: read only those
            if len(self.prompt_index) == 0:
                return self.attn.new_zeros(self.attn.shape[:-1])
            return self.attn.index_select(-1, self.prompt_index).sum(-1)
        return (self.attn * self.is_prompt[:, None, None, :]).sum(-1)

    @cached_property
    @_in_float32
    def original_mass(self) -> torch.Tensor:
        """Σ_{j∈O} a_ij for every query (= 1-α, summed directly for precision)."""
        return self.attn.masked_fill(self.is_prompt[:, None, None, :], 0.0).sum(-1)

    @cached_property
    @_in_float32
    def prompt_context(self) -> torch.Tensor:
        """Σ_{m∈P} a_im v_m = α Σ ã v for every query, ``[batch, heads, queries, head_dim]``."""
        if self.prompt_index is not None:
            if len(self.prompt_index) == 0:
                return torch.zeros_like(self.context)
            return self.attn.index_select(-1, self.prompt_index) @ self.v.index_select(2, self.prompt_index)
        return self.attn.masked_fill(~self.is_prompt[:, None, None, :], 0.0) @ self.v

    @cached_property
    @_in_float32
    def original_context(self) -> torch.Tensor:
        """Σ_{j∈O} a_ij v_j = (1-α) Σ â v for every query, computed from the original keys alone."""
        return self.attn.masked_fill(self.is_prompt[:, None, None, :], 0.0) @ self.v

    @cached_property
    @_in_float32
    def attn_original(self) -> torch.Tensor:
        """â for every query (zero on prompt keys), ``[batch, heads, queries, keys]``."""
        return self.attn.masked_fill(self.is_prompt[:, None, None, :], 0.0) / self.original_mass[..., None]

    @cached_property
    @_in_float32
    def context_original(self) -> torch.Tensor:
        """Σ_{j∈O} â_ij v_j for every query."""
        return self.original_context / self.original_mass[..., None]

    @cached_property
    @_in_float32
    def context_prompt(self) -> torch.Tensor:
        """Σ_{m∈P} ã_im v_m for every query (zero where a query sees no prompt key)."""
        alpha = self.prompt_mass[..., None]
        zero = torch.zeros((), device=alpha.device)
        return torch.where(alpha > 0, self.prompt_context / alpha.clamp_min(1e-38), zero)

    # -- one query per row ---------------------------------------------------------------------
    @_in_float32
    def at(self, queries: torch.Tensor) -> QuerySplit:
        """The split at query ``queries[b]`` of each row ``b`` (e.g. the readout token)."""
        rows = torch.arange(self.attn.shape[0], device=self.attn.device)
        attn = self.attn[rows, :, queries]  # [batch, heads, keys]
        prompt = self.is_prompt[:, None, :]
        # [batch, heads, 2, keys]: the attention on the original keys, then on the prompt keys
        parts = torch.stack([attn.masked_fill(prompt, 0.0), attn.masked_fill(~prompt, 0.0)], dim=2)
        masses = parts.sum(-1)  # [batch, heads, 2]
        contexts = parts @ self.v  # [batch, heads, 2, head_dim]: each path summed over its own keys
        return QuerySplit(
            queries=queries, attn=attn, prompt_mass=masses[..., 1], original_mass=masses[..., 0],
            attn_original=parts[:, :, 0] / masses[..., :1],
            original_context=contexts[:, :, 0], prompt_context=contexts[:, :, 1],
            context=self.context[rows, :, queries],
        )

    @_in_float32
    def output(self) -> torch.Tensor:
        """The block's attention output, all queries: Σ_h (Σ_j a_ij v_j) W_O^h + b_O = (a)+(b)+(c)."""
        return merged_output(self, self.context) + self.out_bias


def _prompt_index(is_prompt: torch.Tensor) -> torch.Tensor | None:
    """Positions of the prompt keys when every row has them at the same positions (PromptedCLIP's case)."""
    if is_prompt.shape[0] > 1 and not bool((is_prompt == is_prompt[:1]).all()):
        return None
    return is_prompt[0].nonzero().flatten()


def split_attention(block: torch.nn.Module, z: torch.Tensor, attn_mask: torch.Tensor | None,
                    prompt_keys: torch.Tensor) -> AttentionSplit:
    """Recompute a block's attention from its parameters, ready to be split per docs/math.md.

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

    Examples
    --------
    >>> from open_clip.transformer import ResidualAttentionBlock
    >>> block = ResidualAttentionBlock(4, 2).eval()
    >>> z = torch.randn(1, 3, 4)
    >>> split = split_attention(block, z, None, torch.tensor([False, False, True]))
    >>> bool(torch.allclose(split.output(), block.attention(z), atol=1e-6))
    True
    >>> at_cls = split.at(torch.tensor([0]))
    >>> bool(torch.allclose(at_cls.prompt_mass + at_cls.original_mass, torch.ones(1, 2)))
    True

    Under autocast, or with half-precision weights, the split is still float32:

    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     split = split_attention(block, z, None, torch.tensor([False, False, True]))
    >>> split.prompt_mass.dtype, split.autocast
    (torch.float32, torch.bfloat16)
    """
    mha = block.attn
    if not isinstance(mha, torch.nn.MultiheadAttention) or mha.in_proj_weight is None:
        raise TypeError(
            f"mmlens decomposes blocks whose attention is nn.MultiheadAttention with a packed in_proj_weight; "
            f"found {type(mha).__name__}. Custom attention blocks (qk-norm, scaled cosine) are not supported."
        )
    # the block's own precision (autocast or its weights) is noted, then left: the split is float32
    autocast = autocast_dtype(z.device.type)
    with float32_region(z.device.type):
        return _split_float32(mha, z, attn_mask, prompt_keys, autocast)


def _split_float32(mha: torch.nn.MultiheadAttention, z: torch.Tensor, attn_mask: torch.Tensor | None,
                   prompt_keys: torch.Tensor, autocast: torch.dtype | None) -> AttentionSplit:
    batch, tokens, width = z.shape
    heads = mha.num_heads
    head_dim = width // heads
    w = mha.in_proj_weight.float()
    b = mha.in_proj_bias.float() if mha.in_proj_bias is not None else None
    qkv = F.linear(z.float(), w, b).reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    # [batch * heads, tokens, head_dim], contiguous: the layout bmm wants (one copy each)
    q, k, v = (t.reshape(batch * heads, tokens, head_dim) for t in qkv)
    if attn_mask is None:
        added = q.new_zeros(1, 1, 1)
    else:
        mask = attn_mask.float()
        added = mask.expand(batch * heads, tokens, tokens) if mask.dim() == 2 else mask
    # scores = q k^T / sqrt(d_h) (+ mask) in one kernel; beta=0 ignores `added` when there is no mask
    scores = torch.baddbmm(added, q, k.transpose(1, 2), beta=0.0 if attn_mask is None else 1.0,
                           alpha=1.0 / math.sqrt(head_dim))
    attn = scores.softmax(dim=-1)
    context = torch.bmm(attn, v)
    is_prompt = prompt_keys.to(z.device)
    is_prompt = is_prompt.expand(batch, -1) if is_prompt.dim() == 1 else is_prompt

    def per_head(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, heads, tokens, -1)

    return AttentionSplit(
        q=per_head(q), k=per_head(k), v=per_head(v), attn=per_head(attn), context=per_head(context),
        is_prompt=is_prompt, prompt_index=_prompt_index(is_prompt),
        out_weight=mha.out_proj.weight.float(),
        out_bias=mha.out_proj.bias.float() if mha.out_proj.bias is not None else torch.zeros(width, device=z.device),
        autocast=autocast,
        key_bias=b[width:2 * width].view(heads, head_dim) if b is not None else None,  # in_proj packs q, k, v
    )


@_in_float32
def head_outputs(split: AttentionSplit, context: torch.Tensor) -> torch.Tensor:
    """Per-head output projection: ``context_h @ W_O^h`` -> [batch, heads, ..., width].

    ``context`` is ``[batch, heads, head_dim]`` (one query per row) or ``[batch, heads, tokens, head_dim]``.
    """
    heads, head_dim = context.shape[1], context.shape[-1]
    w_o = split.out_weight.T.reshape(heads, head_dim, -1)  # rows of W_O^T grouped by head
    if context.dim() == 3:
        return torch.einsum("bhd,hdw->bhw", context, w_o)
    return torch.einsum("bhtd,hdw->bhtw", context, w_o)


@_in_float32
def merged_output(split: AttentionSplit, context: torch.Tensor) -> torch.Tensor:
    """Σ_h context_h W_O^h (without b_O) as one matmul -> [batch, tokens, width] (or [batch, width])."""
    if context.dim() == 3:  # one query per row
        return context.reshape(context.shape[0], -1) @ split.out_weight.T
    batch, heads, tokens, head_dim = context.shape
    return context.transpose(1, 2).reshape(batch, tokens, heads * head_dim) @ split.out_weight.T


@_in_float32
def attention_output(split: AttentionSplit) -> torch.Tensor:
    """(a)+(b)+(c) summed over heads, all queries, each path computed on its own key set.

    Unlike :meth:`AttentionSplit.output` (the unsplit a·v the stream continues with) this adds the
    separately computed paths, so it tests the split.
    """
    return merged_output(split, split.original_context + split.prompt_context) + split.out_bias


def _relative(a: torch.Tensor, b: torch.Tensor, dims) -> torch.Tensor:
    return (a - b).abs().amax(dim=dims) / b.abs().amax().clamp_min(1e-30)


def _raise_head(per_head: torch.Tensor, rtol: float, branch: str, layer: int, where: str) -> float:
    worst = int(per_head.argmax())
    if per_head[worst] > rtol:
        raise CompletenessError(
            f"Completeness failed in the {branch} tower, layer {layer}, head {worst}: (a)+(b) differs from the "
            f"head's attention output{where} by {float(per_head[worst]):.2e} relative (tolerance {rtol:.0e})."
        )
    return float(per_head.max())


@torch.no_grad()
@_in_float32
def check_query_split(split: AttentionSplit, at: QuerySplit, *, branch: str, layer: int, rtol: float) -> float:
    """Cheap per-head completeness at the split queries: (a)_h + (b)_h = head output, both routes of (1-α).

    Checks, for every row and head, that the original and prompt paths (each summed over its own
    key set) add up to the unsplit head output a·v the stream continued with, and that
    (1-α) Σ â v reproduces the original path (â renormalised correctly). Raises
    :class:`CompletenessError` naming branch, layer and head; returns the worst relative error.
    """
    per_head = _relative(at.original_context + at.prompt_context, at.context, dims=(0, 2))
    err = _raise_head(per_head, rtol, branch, layer, " at the readout query")
    renorm = at.original_mass[..., None] * (at.attn_original[:, :, None, :] @ split.v)[:, :, 0]
    per_head = _relative(renorm, at.original_context, dims=(0, 2))
    return max(err, _raise_head(per_head, rtol, branch, layer, " (the (1-α) Σ â v form)"))


@torch.no_grad()
def check_module_output(ours: torch.Tensor, module_output: torch.Tensor, *, branch: str, layer: int,
                        rtol: float | None = None) -> float:
    """Raise :class:`CompletenessError` unless the recomputed attention equals the module's own output.

    ``rtol`` defaults to :func:`completeness_rtol` of ``module_output.dtype``: the dtype the block
    actually computed in (its weights', or autocast's), against which our float32 recomputation is
    compared. Returns the relative error.
    """
    if rtol is None:
        rtol = completeness_rtol(module_output.dtype)
    ref = module_output.float()
    err = float((ours.float() - ref).abs().amax() / ref.abs().amax().clamp_min(1e-30))
    if err > rtol:
        raise CompletenessError(
            f"Completeness failed in the {branch} tower, layer {layer} (all heads): (a)+(b)+(c) differs from the "
            f"block's own attention output by {err:.2e} relative (tolerance {rtol:.0e}). The recomputed "
            "attention does not match the module — is this an unsupported block type?"
        )
    return err


@torch.no_grad()
@_in_float32
def check_completeness(split: AttentionSplit, module_output: torch.Tensor, *, branch: str, layer: int,
                       rtol: float | None = None, rebuilt: torch.Tensor | None = None) -> float:
    """Raise :class:`CompletenessError` unless (a)+(b)+(c) equals the module's attention output, all queries.

    Two identities are checked: per head, (1-α)Σâv + αΣãv equals the unsplit head context a·v
    (before W_O^h, which is linear; names the head when it fails); summed over heads and projected,
    (a)+(b)+(c) equals the block's own output ``module_output`` (its first rows may be given alone).
    ``rebuilt`` is :func:`attention_output` when the caller has it already. Returns the relative
    error of the sum. The trace itself uses the cheaper :func:`check_query_split` and
    :func:`check_module_output`. ``rtol`` defaults to the tolerance of ``module_output``'s dtype
    (:func:`completeness_rtol`); the per-head identity, all float32, is held to float32's.
    """
    head_rtol = COMPLETENESS_RTOL[torch.float32] if rtol is None else rtol
    split_context = split.original_mass[..., None] * split.context_original + \
        split.prompt_mass[..., None] * split.context_prompt
    _raise_head(_relative(split_context, split.context, dims=(0, 2, 3)), head_rtol, branch, layer, "")
    total = rebuilt if rebuilt is not None else attention_output(split)
    return check_module_output(total[: len(module_output)], module_output, branch=branch, layer=layer, rtol=rtol)
