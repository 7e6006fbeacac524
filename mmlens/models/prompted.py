"""PromptedCLIP: the prompt-method family driving open_clip's own blocks and parameters.

Insertion follows PROMPT_METHODS.md: text prompts replace the token slots right after SOT (with
positional embedding); vision prompts are appended after the patches without positional embedding,
before ``ln_pre``; before blocks 1..depth-1 the slots are replaced by that layer's prompts; after
``depth`` they carry the previous block's outputs. Tokens are located by their ``token_role``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmlens.store import schema

__all__ = ["METHODS", "PromptedCLIP", "ROLE_CODES", "BlockCall", "block_forward", "classname_in_prompt"]


def classname_in_prompt(name: str) -> str:
    """A class name as it is written into a prompt: ``_`` becomes a space.

    MaPLe's, IVLP's and CoOp's ``PromptLearner`` (and CoOp's zero-shot CLIP) rewrite the names this way,
    while CoOp split files keep the underscores (Food101's ``apple_pie``); prompts learned there only
    agree with ours when the text they were learned with is rebuilt the same way. Only prompt text
    is rewritten: ``PromptedCLIP.classnames`` and the stored ``classname`` coordinate keep the
    dataset's own names.

    Examples
    --------
    >>> classname_in_prompt("american_bulldog")
    'american bulldog'
    """
    return str(name).replace("_", " ")

# Token roles ride along with tensors as small integer codes: the position of each role in the schema's
# vocabulary (codes never leave the process; stores hold the role names).
ROLE_CODES = {role: code for code, role in enumerate(schema.TOKEN_ROLES)}
ROLE_NAMES = {v: k for k, v in ROLE_CODES.items()}

#: MaPLe's prompt depth J (prompts in blocks 0-8 of ViT-B/16's 12): the depth the recipes ask for.
MAPLE_DEPTH = 9


def prompt_depth(n_blocks: int, depth: int | None = None) -> tuple[int, str | None]:
    """The prompt depth to use on a model with ``n_blocks`` blocks, and a note when it was clipped.

    ``depth=None`` asks for the recipe's depth (MaPLe's 9, :data:`MAPLE_DEPTH`), clipped to ``n_blocks - 1``
    so that at least one block carries the prompts forward (MaPLe on ViT-B/16: 9 of 12). An explicit depth
    is checked, not clipped: asking for more blocks than the model has is an error.

    Examples
    --------
    >>> prompt_depth(12)
    (9, None)
    >>> prompt_depth(6)
    (5, 'prompt depth 5: the recipe depth 9 clipped to the 6-block model (all blocks but the last)')
    >>> prompt_depth(6, 3)
    (3, None)
    """
    if depth is not None:
        if not 1 <= depth <= n_blocks:
            raise ValueError(f"prompt depth {depth}: the model has {n_blocks} blocks; choose 1..{n_blocks}.")
        return depth, None
    recipe = MAPLE_DEPTH
    if recipe <= n_blocks - 1:
        return recipe, None
    clipped = max(1, n_blocks - 1)
    return clipped, (f"prompt depth {clipped}: the recipe depth {recipe} clipped to the {n_blocks}-block model "
                     "(all blocks but the last)")


@dataclass(frozen=True)
class _MethodSpec:
    text_prompts: bool = False  # learned text context at the input
    text_deep: bool = False  # ... and at blocks 1..depth-1
    vision_prompts: bool = False
    vision_deep: bool = False
    coupled: bool = False  # vision = linear map of text (MaPLe)
    bias: bool = False  # bias tuning instead of prompts


_SPECS = {
    "zeroshot": _MethodSpec(),
    "coop": _MethodSpec(text_prompts=True),
    "deep_vision": _MethodSpec(vision_prompts=True, vision_deep=True),
    "deep_language": _MethodSpec(text_prompts=True, text_deep=True),
    "ivlp": _MethodSpec(text_prompts=True, text_deep=True, vision_prompts=True, vision_deep=True),
    "maple": _MethodSpec(text_prompts=True, text_deep=True, vision_prompts=True, vision_deep=True,
                         coupled=True),
    "bias": _MethodSpec(bias=True),
    "bias_coupled": _MethodSpec(bias=True, coupled=True),
}
METHODS = tuple(_SPECS)


@dataclass
class BlockCall:
    """Everything a block hook needs to run (or take apart) one residual block."""

    branch: str  # "vision" or "text"
    layer: int
    block: nn.Module
    x: torch.Tensor  # block input [batch, tokens, width]
    attn_mask: torch.Tensor | None
    roles: torch.Tensor  # role codes, [tokens] (vision) or [batch, tokens] (text)
    post_attn_bias: torch.Tensor | None  # bias tuning's b^l, or None


def block_forward(
    block: nn.Module,
    x: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    *,
    attention: Callable[[torch.Tensor], torch.Tensor] | None = None,
    post_attn_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """One open_clip residual block from its own sub-modules, with optional replaced attention.

    ``x + ls_1(MHA(ln_1(x))) [+ b]`` then ``+ ls_2(mlp(ln_2(.)))`` — the block's own arithmetic.
    ``attention(z)`` replaces the MHA output for ``z = ln_1(x)`` (used by trace and interventions).
    """
    z = block.ln_1(x)
    a = attention(z) if attention is not None else block.attention(z, attn_mask=attn_mask)
    return finish_block(block, x, a, post_attn_bias)


def finish_block(
    block: nn.Module, x: torch.Tensor, attention_out: torch.Tensor, post_attn_bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The rest of :func:`block_forward` once the attention output for ``ln_1(x)`` is known.

    ``x + ls_1(attention_out) [+ b]`` then ``+ ls_2(mlp(ln_2(.)))``; ``attention_out`` may be float32
    while the model runs in half precision (the trace computes attention in float32).
    """
    x = x + block.ls_1(attention_out.to(x.dtype))
    if post_attn_bias is not None:
        x = x + post_attn_bias.to(x.dtype)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _unwrap(clip: Any) -> tuple[nn.Module, Callable | None, dict]:
    """Accept a LoadedCLIP or a bare open_clip CLIP."""
    if hasattr(clip, "model") and hasattr(clip, "tokenizer"):
        # the same dict as the LoadedCLIP's, so a weights hash computed once is shared
        return clip.model, clip.tokenizer, {"name": clip.name, "pretrained": clip.pretrained}
    return clip, None, {}


class PromptedCLIP(nn.Module):
    """A frozen open_clip CLIP with a prompt method inserted between its own blocks.

    Parameters
    ----------
    clip : LoadedCLIP or open_clip.CLIP
        The model to prompt (kept frozen). With a bare ``CLIP`` pass ``tokenizer``.
    classnames : sequence of str
        The classes the logits range over (``set_classnames`` switches them later).
    method : str
        One of ``zeroshot, coop, deep_vision, deep_language, ivlp, maple, bias, bias_coupled``.
    n_ctx : int
        Prompt tokens per layer and branch (MaPLe: 2).
    depth : int
        J: prompts (or biases) are injected in blocks ``0..depth-1`` (MaPLe: 9). CoOp uses 1.
    ctx_init : str or None
        Initialises the layer-0 text context from the embeddings of its first ``n_ctx`` tokens;
        the class prompt is then ``f"{ctx_init} {classname}."``. ``None``: random N(0, 0.02)
        context and prompts ``"X X ... {classname}."``.
    template : str
        Hand-written prompt for branches without learned text context (zero-shot CLIP).
    init_seed : int, optional
        Seed for the random initialisation of prompt parameters (default: torch's global RNG).

    Examples
    --------
    >>> from mmlens import load_clip, PromptedCLIP
    >>> clip = load_clip("mmlens-toy", pretrained="toyworld")
    >>> model = PromptedCLIP(clip, ["blue ring", "red star"], method="maple", depth=2, init_seed=0)
    >>> model(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 2])
    """

    def __init__(
        self,
        clip: Any,
        classnames: Sequence[str],
        method: str = "maple",
        *,
        n_ctx: int = 2,
        depth: int = 9,
        ctx_init: str | None = "a photo of a",
        template: str = "a photo of a {}.",
        tokenizer: Callable | None = None,
        init_seed: int | None = None,
    ) -> None:
        super().__init__()
        if method not in _SPECS:
            import difflib

            close = difflib.get_close_matches(method, METHODS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Unknown prompt method {method!r}.{hint} Known: {', '.join(METHODS)}.")
        model, tok, source = _unwrap(clip)
        self.tokenizer = tokenizer or tok
        if self.tokenizer is None:
            raise ValueError("A bare open_clip CLIP needs tokenizer=...; or pass mmlens.load_clip(...)'s result.")
        if not all(hasattr(model, a) for a in ("transformer", "token_embedding")) or not hasattr(
            getattr(model, "visual", None), "conv1"
        ):
            raise TypeError(
                f"PromptedCLIP needs an open_clip CLIP with a ViT image tower (found {type(model).__name__} "
                "without `visual.conv1`); ResNet towers and CustomTextCLIP are not supported."
            )
        self.clip = model
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip_source = source
        #: the evaluation image transform of the loaded CLIP (None for a bare open_clip model)
        self.preprocess = getattr(clip, "preprocess", None)
        self.method = method
        self.spec = _SPECS[method]
        self.n_ctx = int(n_ctx)
        n_layers_v = len(model.visual.transformer.resblocks)
        n_layers_t = len(model.transformer.resblocks)
        self.depth = 1 if method == "coop" else int(depth)
        if self.spec != _SPECS["zeroshot"] and not 1 <= self.depth <= min(n_layers_v, n_layers_t):
            raise ValueError(
                f"depth={depth} must be between 1 and the number of blocks "
                f"({min(n_layers_v, n_layers_t)}) for method {method!r}."
            )
        if self.n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {n_ctx}.")
        self.ctx_init = ctx_init
        self.template = template
        self.text_width = model.token_embedding.weight.shape[1]
        self.vision_width = model.visual.conv1.weight.shape[0]
        self.n_layers = {"vision": n_layers_v, "text": n_layers_t}
        self.hparams = {"method": method, "n_ctx": self.n_ctx, "depth": self.depth,
                        "ctx_init": ctx_init, "template": template}
        # Hooks: trace and interventions install a callable(BlockCall) -> Tensor here.
        self.block_hook: Callable[[BlockCall], torch.Tensor] | None = None
        self.prompts_enabled = True  # False runs the same object as zero-shot CLIP

        gen = torch.Generator().manual_seed(init_seed) if init_seed is not None else None
        self.prompt_learner = nn.Module()
        self._build_parameters(gen)
        self.set_classnames(classnames)

    # ------------------------------------------------------------------ parameters
    def _normal(self, *shape: int, gen: torch.Generator | None) -> nn.Parameter:
        return nn.Parameter(torch.randn(*shape, generator=gen) * 0.02)

    def _linear(self, gen: torch.Generator | None) -> nn.Linear:
        layer = nn.Linear(self.text_width, self.vision_width)
        if gen is not None:  # nn.Linear's default init, drawn from our generator
            bound = 1 / math.sqrt(self.text_width)
            with torch.no_grad():
                layer.weight.uniform_(-bound, bound, generator=gen)
                layer.bias.uniform_(-bound, bound, generator=gen)
        return layer

    def _build_parameters(self, gen: torch.Generator | None) -> None:
        spec, pl, n, J = self.spec, self.prompt_learner, self.n_ctx, self.depth
        self._ctx_from_init = False
        if spec.text_prompts:
            init_ids = self._ctx_init_ids()
            if init_ids is not None:
                with torch.no_grad():
                    emb = self.clip.token_embedding(init_ids.to(self.clip.token_embedding.weight.device))
                pl.ctx = nn.Parameter(emb.detach().float().clone().cpu())
                self._ctx_from_init = True
            else:
                pl.ctx = self._normal(n, self.text_width, gen=gen)
            if spec.text_deep and J > 1:
                pl.compound_prompts_text = nn.ParameterList(
                    [self._normal(n, self.text_width, gen=gen) for _ in range(J - 1)]
                )
        if spec.vision_prompts:
            if spec.coupled:  # MaPLe: vision prompts = proj(text prompts)
                pl.proj = self._linear(gen)
                if J > 1:
                    # MaPLe clones one initialised layer for every deeper coupling map.
                    single = self._linear(gen)
                    pl.compound_prompt_projections = nn.ModuleList([copy.deepcopy(single) for _ in range(J - 1)])
            else:
                pl.visual_ctx = self._normal(n, self.vision_width, gen=gen)
                if spec.vision_deep and J > 1:
                    pl.compound_prompts_visual = nn.ParameterList(
                        [self._normal(n, self.vision_width, gen=gen) for _ in range(J - 1)]
                    )
        if spec.bias:
            pl.text_bias = nn.Parameter(torch.zeros(J, self.text_width))
            if spec.coupled:
                pl.bias_projections = nn.ModuleList([self._linear(gen) for _ in range(J)])
                with torch.no_grad():  # start as the identity model: every projected bias is 0
                    for layer in pl.bias_projections:
                        layer.weight.zero_()
                        layer.bias.zero_()
            else:
                pl.visual_bias = nn.Parameter(torch.zeros(J, self.vision_width))

    def _ctx_init_ids(self) -> torch.Tensor | None:
        if not self.ctx_init:
            return None
        ids = self.tokenizer([self.ctx_init])[0]
        eot = int(ids.argmax())
        words = ids[1:eot]  # between SOT (position 0) and EOT: the init words
        return words[: self.n_ctx] if len(words) >= self.n_ctx else None

    def trainable_parameter_count(self) -> int:
        """Number of learned parameters (the frozen CLIP excluded)."""
        return sum(p.numel() for p in self.prompt_learner.parameters())

    def prompt_state_dict(self) -> dict[str, torch.Tensor]:
        """The learned part only, with MaPLe's key names (no ``prompt_learner.`` prefix)."""
        return {k: v.detach().clone() for k, v in self.prompt_learner.state_dict().items()}

    def load_prompt_state(self, state: dict[str, torch.Tensor], *, source: str = "state dict") -> None:
        """Load learned prompts (e.g. from :func:`mmlens.models.load_maple_checkpoint`).

        Raises a ValueError naming every missing / unexpected key and shape mismatch, with advice.
        """
        own = self.prompt_learner.state_dict()
        state = {k[len("prompt_learner."):] if k.startswith("prompt_learner.") else k: v for k, v in state.items()}
        state = {k: v for k, v in state.items() if k not in ("token_prefix", "token_suffix")}
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own
                 if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or wrong:
            lines = [f"The prompts in {source} do not fit this PromptedCLIP "
                     f"(method={self.method!r}, n_ctx={self.n_ctx}, depth={self.depth}, "
                     f"text width {self.text_width}, vision width {self.vision_width}):"]
            lines += [f"  missing key {k!r} (expected shape {tuple(own[k].shape)})" for k in missing]
            lines += [f"  unexpected key {k!r} (shape {tuple(state[k].shape)})" for k in unexpected]
            lines += [f"  key {k!r}: found shape {f}, expected {e}" for k, f, e in wrong]
            lines.append("  " + self._mismatch_advice(state, missing, unexpected, wrong))
            raise ValueError("\n".join(lines))
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v.to(own[k].dtype))
        self.prompt_learner.load_state_dict(own)

    def _mismatch_advice(self, state: dict, missing: list, unexpected: list, wrong: list) -> str:
        if any(k.startswith("compound") for k in missing + unexpected):
            deep_prefixes = ("compound_prompts_text.", "compound_prompts_visual.")
            deep = {k.split(".")[1] for k in state if k.startswith(deep_prefixes)}
            return (f"The prompt depth differs: the checkpoint has depth={len(deep) + 1}, this model "
                    f"depth={self.depth}. Build PromptedCLIP(..., depth={len(deep) + 1}).")
        for _key, found, expected in wrong:
            if len(found) == 2 and found[1] == expected[1] and found[0] != expected[0]:
                return f"n_ctx differs: the checkpoint has {found[0]} prompt tokens; pass n_ctx={found[0]}."
            return ("The widths differ: these prompts were learned for another backbone "
                    "(e.g. ViT-L prompts into ViT-B). Load them into the model they were trained with.")
        return f"Check the method: these keys fit another prompt method than {self.method!r}."

    # ------------------------------------------------------------------ prompts per layer
    def _text_prompts(self, layer: int) -> torch.Tensor | None:
        pl, spec = self.prompt_learner, self.spec
        if not (self.prompts_enabled and spec.text_prompts):
            return None
        if layer == 0:
            return pl.ctx
        if spec.text_deep and layer < self.depth:
            return pl.compound_prompts_text[layer - 1]
        return None

    def _vision_prompts(self, layer: int) -> torch.Tensor | None:
        pl, spec = self.prompt_learner, self.spec
        if not (self.prompts_enabled and spec.vision_prompts) or layer >= self.depth:
            return None
        if spec.coupled:
            if layer == 0:
                return pl.proj(pl.ctx)
            return pl.compound_prompt_projections[layer - 1](pl.compound_prompts_text[layer - 1])
        return pl.visual_ctx if layer == 0 else pl.compound_prompts_visual[layer - 1]

    def _bias(self, branch: str, layer: int) -> torch.Tensor | None:
        spec, pl = self.spec, self.prompt_learner
        if not (self.prompts_enabled and spec.bias) or layer >= self.depth:
            return None
        if branch == "text":
            return pl.text_bias[layer]
        return pl.bias_projections[layer](pl.text_bias[layer]) if spec.coupled else pl.visual_bias[layer]

    def layer_kinds(self, branch: str) -> list[str]:
        """``injected`` / ``carried`` / ``none`` per block of a branch (docs/math.md consequence 2)."""
        spec = self.spec
        has = (spec.text_prompts if branch == "text" else spec.vision_prompts) or spec.bias
        deep = (spec.text_deep if branch == "text" else spec.vision_deep) or spec.bias
        kinds = []
        for layer in range(self.n_layers[branch]):
            if not has:
                kinds.append("none")
            elif layer == 0 or (deep and layer < self.depth):
                kinds.append("injected")
            else:
                kinds.append("none" if spec.bias else "carried")
        return kinds

    # ------------------------------------------------------------------ classes / text
    @property
    def _has_text_ctx(self) -> bool:
        return self.spec.text_prompts and self.prompts_enabled

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Switch the classes (e.g. base -> novel) without touching the learned prompts.

        ``classnames`` are kept as given; prompts spell them with :func:`classname_in_prompt`.
        """
        self.classnames = [str(c) for c in classnames]
        if not self.classnames:
            raise ValueError("classnames is empty: pass at least one class name.")
        device = self.clip.token_embedding.weight.device
        written = [classname_in_prompt(c) for c in self.classnames]
        zs = self.tokenizer([self.template.format(c) for c in written]).to(device)
        self.register_buffer("zeroshot_tokens", zs, persistent=False)
        self.register_buffer("zeroshot_classname", self._classname_mask(zs, self.template.split("{}")[0]),
                             persistent=False)
        if self.spec.text_prompts:
            prefix = self.ctx_init if self._ctx_from_init else " ".join(["X"] * self.n_ctx)
            tokens = self.tokenizer([f"{prefix} {c}." for c in written]).to(device)
            self.register_buffer("prompt_tokens", tokens, persistent=False)
            self.register_buffer("prompt_classname", self._classname_mask(tokens, prefix + " "), persistent=False)

    def _word_ids(self, text: str) -> list[int]:
        ids = self.tokenizer([text])[0]
        return ids[1:int(ids.argmax())].tolist()  # between SOT and EOT

    def _classname_mask(self, tokens: torch.Tensor, prefix: str) -> torch.Tensor:
        """True at the class-name tokens of each prompt (located by tokenizing the parts, then checked)."""
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        start = 1 + len(self._word_ids(prefix)) if prefix.strip() else 1
        for row, name in enumerate(self.classnames):
            ids = self._word_ids(classname_in_prompt(name))
            if ids and tokens[row, start:start + len(ids)].tolist() == ids:
                mask[row, start:start + len(ids)] = True
            # else: the tokenizer merged across the boundary; these tokens stay 'word'
        return mask

    def text_roles(self, tokens: torch.Tensor, with_prompts: bool,
                   classname: torch.Tensor | None = None) -> torch.Tensor:
        """Role codes [n_classes, tokens]: sot, prompt slots, class-name tokens, other words, eot, pad."""
        n, length = tokens.shape
        pos = torch.arange(length, device=tokens.device).expand(n, length)
        eot = tokens.argmax(dim=-1, keepdim=True)
        roles = torch.full_like(tokens, ROLE_CODES["word"])
        roles[pos > eot] = ROLE_CODES["pad"]
        roles[pos == eot] = ROLE_CODES["eot"]
        roles[pos == 0] = ROLE_CODES["sot"]
        if classname is not None:
            roles[classname] = ROLE_CODES["classname"]
        if with_prompts:
            roles[(pos >= 1) & (pos <= self.n_ctx)] = ROLE_CODES["prompt"]
        return roles

    def encode_text(self, normalize: bool = False) -> torch.Tensor:
        """Text features of every class prompt, [n_classes, embed_dim]."""
        clip = self.clip
        cast = clip.transformer.get_cast_dtype()
        use_ctx = self._has_text_ctx
        tokens = self.prompt_tokens if use_ctx else self.zeroshot_tokens
        roles = self.text_roles(tokens, with_prompts=use_ctx,
                                classname=self.prompt_classname if use_ctx else self.zeroshot_classname)
        slot_index = self._slot_index(roles == ROLE_CODES["prompt"])
        x = clip.token_embedding(tokens).to(cast)
        x = self._fill_slots(x, slot_index, self._text_prompts(0))
        x = x + clip.positional_embedding.to(cast)
        x = self._run_blocks("text", clip.transformer.resblocks, x, clip.attn_mask, roles, slot_index,
                             self._text_prompts)
        x = clip.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # EOT: argmax pooling
        if clip.text_projection is not None:
            x = clip.text_projection(x) if isinstance(clip.text_projection, nn.Linear) else x @ clip.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    # ------------------------------------------------------------------ vision
    def vision_roles(self, n_patches: int, device: torch.device | None = None) -> torch.Tensor:
        n_prompts = self.n_ctx if (self.spec.vision_prompts and self.prompts_enabled) else 0
        roles = [ROLE_CODES["cls"]] + [ROLE_CODES["patch"]] * n_patches + [ROLE_CODES["prompt"]] * n_prompts
        return torch.tensor(roles, device=device)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image features, [batch, embed_dim]."""
        v = self.clip.visual
        x = v.conv1(images.to(v.conv1.weight.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [batch, grid*grid, width]
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        roles = self.vision_roles(x.shape[1] - 1, device=x.device)
        prompt_slots = roles == ROLE_CODES["prompt"]
        slot_index = self._slot_index(prompt_slots)
        if len(slot_index):  # appended after the patches, without positional embedding
            x = torch.cat([x, x.new_zeros(x.shape[0], len(slot_index), x.shape[2])], dim=1)
            x = self._fill_slots(x, slot_index, self._vision_prompts(0))
        x = v.ln_pre(x)
        x = self._run_blocks("vision", v.transformer.resblocks, x, None, roles, slot_index,
                             self._vision_prompts)
        originals = x[:, ~prompt_slots] if len(slot_index) else x  # pooling sees original tokens only
        pooled, _ = v._pool(originals)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return F.normalize(pooled, dim=-1) if normalize else pooled

    # ------------------------------------------------------------------ shared machinery
    @staticmethod
    def _slot_index(slots: torch.Tensor) -> torch.Tensor:
        """Token positions of the prompt slots; identical for every row (prompts sit at fixed roles)."""
        if slots.dim() == 2:
            if not bool((slots == slots[:1]).all()):
                raise ValueError("prompt slots differ between rows; every class prompt must hold them alike")
            slots = slots[0]
        return slots.nonzero().flatten()

    @staticmethod
    def _fill_slots(x: torch.Tensor, slot_index: torch.Tensor, prompts: torch.Tensor | None) -> torch.Tensor:
        """Put ``prompts`` [n_ctx, width] into the slot positions of every row (out of place)."""
        if prompts is None:
            return x
        return x.index_copy(1, slot_index, prompts.to(x.dtype).expand(x.shape[0], -1, -1))

    def _run_blocks(self, branch, blocks, x, attn_mask, roles, slot_index, prompts_for) -> torch.Tensor:
        for layer, block in enumerate(blocks):
            if layer > 0:
                x = self._fill_slots(x, slot_index, prompts_for(layer))
            bias = self._bias(branch, layer)
            if self.block_hook is not None:
                x = self.block_hook(BlockCall(branch, layer, block, x, attn_mask, roles, bias))
            elif bias is not None:
                x = block_forward(block, x, attn_mask, post_attn_bias=bias)
            else:
                x = block(x, attn_mask=attn_mask)
        return x

    def text_features(self) -> torch.Tensor:
        """Normalised class text features (compute once per evaluation, pass to ``forward``)."""
        return self.encode_text(normalize=True)

    def forward(self, images: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [batch, n_classes] with CLIP's logit scale (and bias, if the model has one)."""
        image_features = self.encode_image(images, normalize=True)
        if text_features is None:
            text_features = self.text_features()
        logits = self.clip.logit_scale.exp() * image_features @ text_features.to(image_features.dtype).T
        if getattr(self.clip, "logit_bias", None) is not None:
            logits = logits + self.clip.logit_bias
        return logits

    def extra_repr(self) -> str:
        return (f"method={self.method!r}, n_ctx={self.n_ctx}, depth={self.depth}, "
                f"classes={len(self.classnames)}, trainable={self.trainable_parameter_count():,}")
