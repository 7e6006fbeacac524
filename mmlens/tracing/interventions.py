"""Route ablations of docs/math.md as one mechanism: per block, how the split is put back together.

A block's attention output is rebuilt from the split as::

    Σ_h [ scale_h ⊙ (Σ_{j∈O} â_j v_j)  +  bias_h ] W_O^h  +  b_O

=========================  ===================  ==========================================
variant                    scale                bias term
=========================  ===================  ==========================================
``full``                   1-α                  α Σ ã v      (the model as it is)
``bias_only``              1                    α Σ ã v      (keep β, drop the (1-α) scaling)
``redistribution_only``    1-α                  0            (keep (1-α), drop β)
``constant_bias``          1                    mean β       (per token role; prompts out of the softmax)
``drop_prompts``           1                    0            (prompts out of the softmax)
=========================  ===================  ==========================================

``zeroshot`` disables the prompts altogether (zero-shot CLIP, the reference). For bias tuning,
whose blocks have no prompt tokens, the bias term is the learned b^ℓ: variants that drop β drop
b^ℓ and ``constant_bias`` keeps it (it is constant already).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from mmlens.models.prompted import ROLE_CODES, ROLE_NAMES, BlockCall, block_forward, finish_block
from mmlens.store import schema
from mmlens.tracing.decompose import AttentionSplit, float32_region, merged_output, split_attention

__all__ = ["VARIANTS", "Route", "ROUTE_RULES", "RoleMeanBias", "SplitHook", "intervene", "measure_mean_bias"]

#: The variants :func:`intervene` accepts (re-exported: defined in mmlens.store.schema).
VARIANTS = schema.VARIANTS
BRANCHES = schema.BRANCHES


@dataclass(frozen=True)
class Route:
    """How a block's attention output is rebuilt from its split."""

    scale: str  # "renorm": (1-α) ; "one": 1
    bias: str  # "prompt": α Σ ã v ; "none": 0 ; "constant": a supplied mean β


#: How each route rebuilds a block's output (``zeroshot`` removes the prompts instead: no rule).
ROUTE_RULES = {
    "full": Route("renorm", "prompt"),
    "bias_only": Route("one", "prompt"),
    "redistribution_only": Route("renorm", "none"),
    "constant_bias": Route("one", "constant"),
    "drop_prompts": Route("one", "none"),
}

@dataclass
class RoleMeanBias:
    """Dataset-mean β of one block, aligned by token role (the ``constant_bias`` ablation's β̄).

    A role whose token count was the same in every measured input keeps one mean per token of that
    role, in order (``per_token``): every vision role (``[cls]``, the i-th patch, the i-th prompt
    slot) and, in the text tower, SOT, the prompt slots and EOT. A role whose count varies between
    inputs (class-name tokens, template words, padding) has no per-token alignment: its tokens get
    the mean over all of them (``pooled``). Averaging per absolute position instead would mix roles
    in the text tower, where EOT moves with the length of the class name (docs/math.md, "Route
    ablations").

    Examples
    --------
    >>> eot, word = ROLE_CODES["eot"], ROLE_CODES["word"]
    >>> m = RoleMeanBias(per_token={eot: torch.ones(1, 2)}, pooled={eot: torch.ones(2), word: torch.zeros(2)})
    >>> m.for_roles(torch.tensor([[word, eot, word], [word, word, eot]]))[:, :, 0].tolist()
    [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """

    per_token: dict[int, torch.Tensor]  # role code -> [count, width]
    pooled: dict[int, torch.Tensor]  # role code -> [width]

    def for_roles(self, roles: torch.Tensor) -> torch.Tensor:
        """The mean β at every token of rows with role codes ``roles`` ([tokens] or [batch, tokens]).

        Returns ``[batch, tokens, width]`` (batch 1 for 1-D ``roles``), float32.
        """
        rows = roles if roles.dim() == 2 else roles[None]
        width = next(iter(self.pooled.values())).shape[-1]
        out = torch.zeros(*rows.shape, width, device=rows.device)
        for code in rows.unique().tolist():
            mask = rows == code
            counts = mask.sum(1)
            aligned = self.per_token.get(code)
            if aligned is not None and bool((counts == len(aligned)).all()):
                # boolean indexing walks row by row, each row's tokens of this role in order
                out[mask] = aligned.to(out.device).repeat(rows.shape[0], 1)
            elif code in self.pooled:
                out[mask] = self.pooled[code].to(out.device)
            else:
                measured = sorted(ROLE_NAMES[c] for c in self.pooled)
                raise ValueError(
                    f"constant_bias: no mean β for token role {ROLE_NAMES[code]!r}; the mean was measured on "
                    f"inputs with roles {measured}. Measure it with measure_mean_bias on inputs of the same kind."
                )
        return out


class _RoleSums:
    """Running sums of β per token role, and per token of a role while its count stays fixed."""

    def __init__(self) -> None:
        self.pooled: dict[int, torch.Tensor] = {}  # role -> Σ β over all its tokens
        self.tokens: dict[int, int] = {}  # role -> number of its tokens
        self.per_token: dict[int, torch.Tensor | None] = {}  # role -> Σ over rows of [count, width]; None: varies
        self.role_rows: dict[int, int] = {}  # role -> rows that had it
        self.rows = 0

    def add(self, beta: torch.Tensor, roles: torch.Tensor) -> None:
        batch = beta.shape[0]
        rows = roles.expand(batch, -1) if roles.dim() == 1 else roles
        for code in rows.unique().tolist():
            mask = rows == code
            counts = mask.sum(1)
            picked = beta[mask]  # [n, width]: row by row, each row's tokens of this role in order
            self.pooled[code] = self.pooled.get(code, 0) + picked.sum(0)
            self.tokens[code] = self.tokens.get(code, 0) + int(counts.sum())
            self.role_rows[code] = self.role_rows.get(code, 0) + batch
            count, previous = int(counts[0]), self.per_token.get(code, 0)
            if previous is not None and bool((counts == count).all()) and \
                    (not torch.is_tensor(previous) or len(previous) == count):
                self.per_token[code] = previous + picked.reshape(batch, count, -1).sum(0)
            else:
                self.per_token[code] = None
        self.rows += batch

    def mean(self) -> RoleMeanBias:
        # a role missing from some rows has a varying count (0 there) too: pooled only
        per_token = {c: (s / self.rows).cpu() for c, s in self.per_token.items()
                     if s is not None and self.role_rows[c] == self.rows}
        pooled = {c: (s / self.tokens[c]).cpu() for c, s in self.pooled.items()}
        return RoleMeanBias(per_token=per_token, pooled=pooled)


# recorder(call, split, z, rebuilt): z = ln_1(x); rebuilt = split.output(), the attention output the
# stream continues with while recording (equal to the module's own output to float tolerance). It is
# called with autocast off (float32); to run the module itself in the model's precision, enter
# float32_region(device_type, split.autocast).
Recorder = Callable[[BlockCall, AttentionSplit, torch.Tensor, torch.Tensor], None]


class SplitHook:
    """The block hook behind trace and interventions (installed as ``PromptedCLIP.block_hook``).

    Blocks with no route and no recorder run open_clip's own forward untouched (fast path).
    """

    def __init__(self, routes: dict[tuple[str, int], Route] | None = None,
                 mean_bias: dict[tuple[str, int], RoleMeanBias] | None = None,
                 recorder: Recorder | None = None, record_branches: Iterable[str] = BRANCHES,
                 capture_bias: Callable[[BlockCall, torch.Tensor], None] | None = None) -> None:
        self.routes = dict(routes or {})
        self.mean_bias = mean_bias or {}
        self.recorder = recorder
        self.record_branches = set(record_branches)
        self.capture_bias = capture_bias

    def __call__(self, call: BlockCall) -> torch.Tensor:
        if not torch.isfinite(call.x.float().sum()):  # one reduction: any NaN/Inf makes the sum non-finite
            raise FloatingPointError(
                f"NaN/Inf in the residual stream entering the {call.branch} tower, layer {call.layer}. "
                "Check the input images and the prompts (a diverged training run?)."
            )
        route = self.routes.get((call.branch, call.layer))
        recording = self.recorder is not None and call.branch in self.record_branches
        if route is None and not recording and self.capture_bias is None:
            if call.post_attn_bias is not None:
                return block_forward(call.block, call.x, call.attn_mask, post_attn_bias=call.post_attn_bias)
            return call.block(call.x, attn_mask=call.attn_mask)

        z = call.block.ln_1(call.x)
        split = split_attention(call.block, z, call.attn_mask, call.roles == ROLE_CODES["prompt"])
        rebuilt = None
        # recording and rebuilding stay in float32 under any autocast (the statistics' promise); the
        # rest of the block (MLP) runs in the model's own precision, below
        with float32_region(z.device.type):
            if recording:
                # the stream continues with the recomputed attention (a·v, all queries), so the module's
                # own attention is not computed a second time; the recorder splits it where it needs to
                rebuilt = split.output()
                self.recorder(call, split, z, rebuilt)
            if self.capture_bias is not None:
                beta = merged_output(split, split.prompt_context)
                if call.post_attn_bias is not None:
                    beta = beta + call.post_attn_bias.float()
                self.capture_bias(call, beta)
            post_bias = call.post_attn_bias
            if route is None or route == ROUTE_RULES["full"]:
                attention = rebuilt
            else:
                attention, post_bias = self._rebuild(call, split, route)
        if attention is None:
            return block_forward(call.block, call.x, call.attn_mask, post_attn_bias=post_bias)
        return finish_block(call.block, call.x, attention, post_bias)

    def _rebuild(self, call: BlockCall, split: AttentionSplit, route: Route):
        # (1-α) Σ â v is Σ_{j∈O} a v; without the (1-α) scaling it is Σ â v
        context = split.original_context if route.scale == "renorm" else split.context_original
        post_bias = call.post_attn_bias
        if route.bias == "prompt":
            context = context + split.prompt_context  # α Σ ã v
        elif route.bias == "none":
            post_bias = None
        out = merged_output(split, context) + split.out_bias
        if route.bias == "constant" and call.post_attn_bias is None:
            mean = self.mean_bias.get((call.branch, call.layer))
            if mean is None:
                raise ValueError(
                    f"constant_bias needs the mean β of the {call.branch} tower, layer {call.layer}: "
                    "measure it with measure_mean_bias(model, training_batches) and pass mean_bias=..."
                )
            out = out + mean.for_roles(call.roles).to(out.device)
        return out, post_bias


def _resolve_layers(model, branch: str, layers) -> list[int]:
    kinds = model.layer_kinds(branch)
    if layers is None:
        return [i for i, k in enumerate(kinds) if k != "none"]
    if isinstance(layers, str):
        if layers not in ("injected", "carried"):
            raise ValueError(f"layers={layers!r}: use 'injected', 'carried', None (all) or a list of ints.")
        return [i for i, k in enumerate(kinds) if k == layers]
    chosen = sorted({int(i) for i in layers})
    bad = [i for i in chosen if not 0 <= i < len(kinds)]
    if bad:
        raise ValueError(f"layers {bad} out of range: the {branch} tower has blocks 0..{len(kinds) - 1}.")
    return chosen


def _branches(branch: str) -> tuple[str, ...]:
    if branch == "both":
        return BRANCHES
    if branch not in BRANCHES:
        raise ValueError(f"branch={branch!r}: use 'vision', 'text' or 'both'.")
    return (branch,)


def routes_for(model, variant: str, *, branch: str = "both", layers=None) -> dict[tuple[str, int], Route]:
    """The per-block routes of a variant (empty for ``full`` and ``zeroshot``)."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; known: {', '.join(VARIANTS)}.")
    if variant in ("full", "zeroshot"):
        return {}
    return {(b, i): ROUTE_RULES[variant] for b in _branches(branch) for i in _resolve_layers(model, b, layers)}


@contextlib.contextmanager
def intervene(model, variant: str, *, branch: str = "both", layers=None,
              mean_bias: dict[tuple[str, int], RoleMeanBias] | None = None,
              recorder: Recorder | None = None) -> Iterator[Any]:
    """Run ``model`` under a route ablation (or as zero-shot) inside a ``with`` block.

    Parameters
    ----------
    model : PromptedCLIP
    variant : str
        One of ``full, zeroshot, bias_only, redistribution_only, constant_bias, drop_prompts``.
    branch : {"both", "vision", "text"}
    layers : None, "injected", "carried" or iterable of int
        Which blocks (0-based); ``None``: every block that carries prompts.
    mean_bias : dict
        For ``constant_bias``: ``{(branch, layer): RoleMeanBias}`` from :func:`measure_mean_bias`.

    Examples
    --------
    >>> with torch.no_grad(), intervene(model, "bias_only", branch="vision", layers="injected"):
    ...     only_bias = model(images)
    >>> with torch.no_grad():
    ...     full = model(images)
    >>> only_bias.shape == full.shape, bool((only_bias != full).any()), model.block_hook is None
    (True, True, True)
    """
    routes = routes_for(model, variant, branch=branch, layers=layers)
    if variant == "constant_bias" and not mean_bias:
        raise ValueError("constant_bias needs mean_bias=measure_mean_bias(model, training_batches).")
    previous_hook, previous_enabled = model.block_hook, model.prompts_enabled
    if variant == "zeroshot":
        model.prompts_enabled = False
    if routes or recorder is not None:
        model.block_hook = SplitHook(routes, mean_bias, recorder)
    try:
        yield model
    finally:
        model.block_hook, model.prompts_enabled = previous_hook, previous_enabled


def _images_of(batch) -> torch.Tensor:
    if isinstance(batch, dict):
        return batch["image"]
    if isinstance(batch, (list, tuple)):
        return batch[0]
    return batch


@torch.no_grad()
def measure_mean_bias(model, batches: Iterable, *, branch: str = "both",
                      device: str | torch.device | None = None) -> dict[tuple[str, int], RoleMeanBias]:
    """Dataset-mean β per block and token role, for the ``constant_bias`` ablation.

    The vision mean is over the given images (the training images, by the protocol); the text
    mean is over the model's current class prompts (the text tower does not see images). β is
    averaged per token role, not per position (:class:`RoleMeanBias`): at the EOT readout the
    constant is the mean EOT β, wherever each prompt's EOT sits. Returns
    ``{(branch, layer): RoleMeanBias}`` (float32).

    Examples
    --------
    >>> means = measure_mean_bias(model, [images])
    >>> means["text", 0].per_token[ROLE_CODES["eot"]].shape
    torch.Size([1, 64])
    """
    sums: dict[tuple[str, int], _RoleSums] = {}
    wanted = set(_branches(branch))

    def capture(call: BlockCall, beta: torch.Tensor) -> None:
        if call.branch in wanted:
            sums.setdefault((call.branch, call.layer), _RoleSums()).add(beta, call.roles)

    previous = model.block_hook
    model.block_hook = SplitHook(capture_bias=capture)
    try:
        if "text" in wanted:
            model.text_features()
        if "vision" in wanted:
            device = device or next(model.parameters()).device
            for batch in batches:
                model.encode_image(_images_of(batch).to(device))
    finally:
        model.block_hook = previous
    return {key: s.mean() for key, s in sums.items()}
