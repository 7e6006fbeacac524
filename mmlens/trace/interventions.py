"""Route ablations of docs/math.md as one mechanism: per block, how the split is put back together.

A block's attention output is rebuilt from the split as::

    Σ_h [ scale_h ⊙ (Σ_{j∈O} â_j v_j)  +  bias_h ] W_O^h  +  b_O

=========================  ===================  ==========================================
variant                    scale                bias term
=========================  ===================  ==========================================
``full``                   1-α                  α Σ ã v      (the model as it is)
``bias_only``              1                    α Σ ã v      (keep β, drop the (1-α) scaling)
``redistribution_only``    1-α                  0            (keep (1-α), drop β)
``constant_bias``          1                    mean β       (prompts out of the softmax)
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

from mmlens.models.prompted import ROLE_CODES, BlockCall, block_forward, finish_block
from mmlens.trace.decompose import AttentionSplit, float32_region, merged_output, split_attention

__all__ = ["VARIANTS", "Route", "ROUTES", "SplitHook", "intervene", "measure_mean_bias"]

VARIANTS = ("full", "zeroshot", "bias_only", "redistribution_only", "constant_bias", "drop_prompts")
BRANCHES = ("vision", "text")


@dataclass(frozen=True)
class Route:
    """How a block's attention output is rebuilt from its split."""

    scale: str  # "renorm": (1-α) ; "one": 1
    bias: str  # "prompt": α Σ ã v ; "none": 0 ; "constant": a supplied mean β


ROUTES = {
    "full": Route("renorm", "prompt"),
    "bias_only": Route("one", "prompt"),
    "redistribution_only": Route("renorm", "none"),
    "constant_bias": Route("one", "constant"),
    "drop_prompts": Route("one", "none"),
}

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
                 mean_bias: dict[tuple[str, int], torch.Tensor] | None = None,
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
            if route is None or route == ROUTES["full"]:
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
            out = out + mean.to(out.device)[: out.shape[1]]
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
    return {(b, i): ROUTES[variant] for b in _branches(branch) for i in _resolve_layers(model, b, layers)}


@contextlib.contextmanager
def intervene(model, variant: str, *, branch: str = "both", layers=None,
              mean_bias: dict[tuple[str, int], torch.Tensor] | None = None,
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
        For ``constant_bias``: ``{(branch, layer): Tensor[tokens, width]}`` from :func:`measure_mean_bias`.

    Examples
    --------
    >>> with intervene(model, "bias_only", branch="vision", layers="injected"):  # doctest: +SKIP
    ...     logits = model(images)
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
                      device: str | torch.device | None = None) -> dict[tuple[str, int], torch.Tensor]:
    """Dataset-mean β per block and token position, for the ``constant_bias`` ablation.

    The vision mean is over the given images (the training images, by the protocol); the text
    mean is over the class prompts (the text tower does not see images). Returns
    ``{(branch, layer): Tensor[tokens, width]}`` (float32).
    """
    sums: dict[tuple[str, int], torch.Tensor] = {}
    counts: dict[tuple[str, int], int] = {}
    wanted = set(_branches(branch))

    def capture(call: BlockCall, beta: torch.Tensor) -> None:
        if call.branch not in wanted:
            return
        key = (call.branch, call.layer)
        sums[key] = sums.get(key, 0) + beta.sum(0)
        counts[key] = counts.get(key, 0) + beta.shape[0]

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
    return {key: (sums[key] / counts[key]).cpu() for key in sums}
