"""An independent re-implementation of MaPLe's forward and of Dassl's checkpoint writing, for the `real` tests.

Written from reading MaPLe's ``trainers/maple.py`` and ``clip/model.py`` (muzairkhattak/multimodal-prompt-learning)
and Dassl's ``dassl/utils/torchtools.py`` and ``dassl/optim/lr_scheduler.py`` (KaiyangZhou/Dassl.pytorch). It
does not import mmlens: it is the yardstick mmlens's import path is measured against. The pieces, as MaPLe has them:

- OpenAI's CLIP blocks (sequence-first ``nn.MultiheadAttention``, fp32 LayerNorm, QuickGELU), loaded from an
  OpenAI-format state dict by key name;
- ``MultiModalPromptLearner``: ``ctx`` ([n_ctx, text width]) after SOT, initialised from ``"a photo of a"``;
  the prompt text ``"a photo of a {name}."`` with ``_`` in class names written as spaces; the cached
  ``token_prefix`` / ``token_suffix`` embeddings; ``proj`` (text -> vision width) for the first layer and
  ``compound_prompts_text`` with one ``compound_prompt_projections`` layer each for blocks 1..depth-1;
- the text encoder replaces the n_ctx tokens after SOT with the layer's compound prompt before each deeper
  block; the vision encoder appends ``proj(ctx)`` after the position-embedded patches (no position embedding),
  and replaces the last n_ctx tokens before each deeper block; the image feature is ``ln_post`` of the CLS
  token; logits are ``exp(logit_scale) * cos``.

Two things differ from MaPLe's code on purpose: MaPLe hard-codes ViT-B/16's widths (512, 768), here they are
read from the model so that a tiny model works too; and MaPLe's ``.half()`` casts are left out. Those casts exist
because MaPLe's published recipe (``PREC: fp16``) runs the whole CLIP in fp16, where they only align dtypes;
the comparison here is in fp32 (what they would change is fp16 rounding, which the precision tests cover).
"""

from __future__ import annotations

import copy
import shutil
from collections import OrderedDict
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, _LRScheduler

CTX_INIT = "a photo of a"  # MaPLe's configs: CTX_INIT "a photo of a", N_CTX 2, PROMPT_DEPTH 9


# ------------------------------------------------------------------------------------------- OpenAI's CLIP
class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    """``ResidualAttentionBlock_MaPLe``: sequence-first; swaps in the layer's compound prompt first."""

    def __init__(self, width: int, heads: int, attn_mask: torch.Tensor | None, *, text: bool, first: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = LayerNorm(width)
        self.attn_mask = attn_mask
        self.text, self.first = text, first

    def forward(self, x: torch.Tensor, deeper: list[torch.Tensor], counter: int, n_ctx: int):
        if not self.first and counter < len(deeper):
            prompt = deeper[counter].to(x.dtype).unsqueeze(1).expand(-1, x.shape[1], -1)  # [n_ctx, N, D]
            if self.text:  # the n_ctx tokens after SOT
                x = torch.cat([x[:1], prompt, x[1 + n_ctx:]], dim=0)
            else:  # the last n_ctx tokens (appended after the patches)
                x = torch.cat([x[: x.shape[0] - n_ctx], prompt], dim=0)
            counter += 1
        mask = self.attn_mask.to(x.dtype) if self.attn_mask is not None else None
        z = self.ln_1(x)
        x = x + self.attn(z, z, z, need_weights=False, attn_mask=mask)[0]
        x = x + self.mlp(self.ln_2(x))
        return x, counter


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, attn_mask=None, *, text: bool):
        super().__init__()
        self.resblocks = nn.ModuleList([Block(width, heads, attn_mask, text=text, first=i == 0)
                                        for i in range(layers)])

    def forward(self, x: torch.Tensor, deeper: list[torch.Tensor], n_ctx: int) -> torch.Tensor:
        counter = 0
        for block in self.resblocks:
            x, counter = block(x, deeper, counter, n_ctx)
        return x


class Visual(nn.Module):
    """``VisionTransformer_MaPLe``."""

    def __init__(self, resolution: int, patch: int, width: int, layers: int, output_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((resolution // patch) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, width // 64, text=False)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def forward(self, image: torch.Tensor, shared_ctx: torch.Tensor, deeper: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv1(image)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = torch.cat([x, shared_ctx.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
        x = self.ln_pre(x).permute(1, 0, 2)
        x = self.transformer(x, deeper, shared_ctx.shape[0]).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class OpenAICLIP(nn.Module):
    """OpenAI's CLIP (ViT), built from an OpenAI-format state dict as MaPLe's ``clip.build_model`` reads it."""

    def __init__(self, sd: dict[str, torch.Tensor]):
        super().__init__()
        v_width = sd["visual.conv1.weight"].shape[0]
        v_layers = len([k for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        embed_dim = sd["text_projection"].shape[1]
        context = sd["positional_embedding"].shape[0]
        t_width = sd["ln_final.weight"].shape[0]
        t_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks")})
        self.visual = Visual(patch * grid, patch, v_width, v_layers, embed_dim)
        mask = torch.full((context, context), float("-inf")).triu_(1)
        self.transformer = Transformer(t_width, t_layers, t_width // 64, mask, text=True)
        self.token_embedding = nn.Embedding(sd["token_embedding.weight"].shape[0], t_width)
        self.positional_embedding = nn.Parameter(torch.zeros(context, t_width))
        self.ln_final = LayerNorm(t_width)
        self.text_projection = nn.Parameter(torch.zeros(t_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.zeros([]))
        weights = {k: v for k, v in sd.items() if k not in ("input_resolution", "context_length", "vocab_size")}
        self.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)


# ------------------------------------------------------------------------------------------- MaPLe
class MultiModalPromptLearner(nn.Module):
    def __init__(self, classnames: list[str], clip: OpenAICLIP, n_ctx: int = 2, depth: int = 9):
        super().__init__()
        t_width = clip.ln_final.weight.shape[0]
        v_width = clip.visual.conv1.weight.shape[0]
        tokenize = open_clip.get_tokenizer("ViT-B-16")  # OpenAI's BPE tokenizer, 77 tokens
        if n_ctx <= 4:
            with torch.no_grad():
                ctx = clip.token_embedding(tokenize([CTX_INIT]))[0, 1:1 + n_ctx].clone()
            prefix_text = CTX_INIT
        else:
            ctx = torch.randn(n_ctx, t_width) * 0.02
            prefix_text = " ".join(["X"] * n_ctx)
        # MaPLe's published (fp16) recipe: ctx comes out of the fp16 CLIP, proj is made .half()
        self.ctx = nn.Parameter(ctx.half())
        self.proj = nn.Linear(t_width, v_width).half()
        self.compound_prompts_text = nn.ParameterList([nn.Parameter(torch.randn(n_ctx, t_width) * 0.02)
                                                       for _ in range(depth - 1)])
        single = nn.Linear(t_width, v_width)
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(single) for _ in range(depth - 1)])
        names = [c.replace("_", " ") for c in classnames]
        self.tokenized_prompts = tokenize([f"{prefix_text} {c}." for c in names])
        with torch.no_grad():
            emb = clip.token_embedding(self.tokenized_prompts)
        self.register_buffer("token_prefix", emb[:, :1])
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx:])
        self.n_ctx = n_ctx

    def forward(self):
        ctx = self.ctx.float().unsqueeze(0).expand(self.token_prefix.shape[0], -1, -1)
        prompts = torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        visual_deep = [layer(p) for layer, p in zip(self.compound_prompt_projections, self.compound_prompts_text)]
        shared = F.linear(self.ctx.float(), self.proj.weight.float(), self.proj.bias.float())
        return prompts, shared, list(self.compound_prompts_text), visual_deep


class TextEncoder(nn.Module):
    def __init__(self, clip: OpenAICLIP):
        super().__init__()
        self.transformer = clip.transformer
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection

    def forward(self, prompts, tokenized, deeper, n_ctx):
        x = (prompts + self.positional_embedding).permute(1, 0, 2)
        x = self.transformer(x, deeper, n_ctx).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ self.text_projection


class CustomCLIP(nn.Module):
    """MaPLe's ``CustomCLIP``: its ``state_dict`` has the key names of a published MaPLe checkpoint."""

    def __init__(self, classnames: list[str], clip: OpenAICLIP, n_ctx: int = 2, depth: int = 9):
        super().__init__()
        self.prompt_learner = MultiModalPromptLearner(classnames, clip, n_ctx, depth)
        self.image_encoder = clip.visual
        self.text_encoder = TextEncoder(clip)
        self.logit_scale = clip.logit_scale

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        prompts, shared, deep_text, deep_vision = self.prompt_learner()
        text = self.text_encoder(prompts, self.prompt_learner.tokenized_prompts, deep_text, self.prompt_learner.n_ctx)
        img = self.image_encoder(image, shared, deep_vision)
        img = img / img.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        return self.logit_scale.exp() * img @ text.t()

    def load_model(self, state_dict: dict[str, torch.Tensor]) -> None:
        """MaPLe's ``load_model`` on a checkpoint's ``state_dict``: the cached token embeddings are dropped
        (they belong to the class names trained on), the rest is loaded with strict=False."""
        state = {k: v for k, v in state_dict.items()
                 if k not in ("prompt_learner.token_prefix", "prompt_learner.token_suffix")}
        self.load_state_dict(state, strict=False)


# ------------------------------------------------------------------------------------------- Dassl
class ConstantWarmupScheduler(_LRScheduler):
    """Dassl's ``ConstantWarmupScheduler``: a constant lr for ``warmup_epoch`` epochs, then its successor.

    Like Dassl's, its ``state_dict`` (torch's: ``__dict__`` minus the optimizer) holds the successor
    scheduler object, which holds the optimizer object. torch 2.x's ``_LRScheduler`` has no ``verbose``.
    """

    def __init__(self, optimizer, successor, warmup_epoch: int, cons_lr: float, last_epoch: int = -1):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        self.cons_lr = cons_lr
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)


def build_optim_and_sched(model: nn.Module, *, lr: float = 0.0035, max_epoch: int = 5, warmup_epoch: int = 1,
                          cons_lr: float = 1e-5):
    """Dassl's ``build_optimizer`` (SGD over every parameter of the registered model) and ``build_lr_scheduler``
    (cosine wrapped in a constant warm-up), with MaPLe's recipe values."""
    optim = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, dampening=0, nesterov=False)
    sched = ConstantWarmupScheduler(optim, CosineAnnealingLR(optim, float(max_epoch)), warmup_epoch, cons_lr)
    return optim, sched


def save_checkpoint(state: dict, save_dir: Path, *, is_best: bool = False) -> Path:
    """Dassl's ``save_checkpoint``: ``model.pth.tar-<epoch>``, a ``checkpoint`` pointer file, a copy as best."""
    save_dir.mkdir(parents=True, exist_ok=True)
    path = save_dir / f"model.pth.tar-{state['epoch']}"
    torch.save(state, path)
    (save_dir / "checkpoint").write_text(f"{path.name}\n")
    if is_best:
        shutil.copy(path, save_dir / "model-best.pth.tar")
    return path


def save_model(model: nn.Module, optim, sched, epoch: int, directory: Path, name: str, val_result=None) -> Path:
    """Dassl's ``TrainerBase.save_model`` for one registered model (MaPLe: ``MultiModalPromptLearner``)."""
    return save_checkpoint({"state_dict": model.state_dict(), "epoch": epoch + 1, "optimizer": optim.state_dict(),
                            "scheduler": sched.state_dict(), "val_result": val_result}, directory / name)


def train_maple(model: CustomCLIP, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, lr: float):
    """A few epochs of MaPLe's loop (one batch each): only ``prompt_learner`` learns; the lr steps per epoch."""
    for name, p in model.named_parameters():
        p.requires_grad_("prompt_learner" in name)
    optim, sched = build_optim_and_sched(model, lr=lr)
    for _ in range(epochs):
        loss = F.cross_entropy(model(images), labels)
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
    return optim, sched


def openai_state_dict(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random weights of a QuickGELU CLIP config (open_clip's config format) in OpenAI's file layout.

    The weights OpenAI's ``convert_weights`` makes fp16 (convolutions, linear layers, attention, the two
    projections) are stored in fp16, the rest in fp32, plus the ``input_resolution`` / ``context_length`` /
    ``vocab_size`` keys of OpenAI's archives.
    """
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=True)
    sd = {}
    for k, v in model.state_dict().items():
        half = (v.dim() >= 2 and "embedding" not in k) or k.endswith(
            ("in_proj_bias", "c_fc.bias", "c_proj.bias", "out_proj.bias"))
        sd[k] = v.detach().half() if half else v.detach().clone()
    sd["input_resolution"] = torch.tensor(cfg["vision_cfg"]["image_size"])
    sd["context_length"] = torch.tensor(cfg["text_cfg"]["context_length"])
    sd["vocab_size"] = torch.tensor(cfg["text_cfg"]["vocab_size"])
    return sd


# ------------------------------------------------------------------------------------------- CoOp and IVLP
def prompted_logits(clip: OpenAICLIP, classnames: list[str], images: torch.Tensor, *, prefix_text: str,
                    ctx: torch.Tensor, deep_text=(), visual_ctx: torch.Tensor | None = None,
                    deep_vision=()) -> torch.Tensor:
    """Logits of OpenAI's CLIP with learned tokens put where CoOp / IVLP put them (MaPLe's blocks do the swapping).

    Text: ``"{prefix_text} {name}."`` (``_`` written as a space), the n_ctx tokens after SOT replaced by ``ctx``,
    and by ``deep_text[i-1]`` before block i. Vision: ``visual_ctx`` appended after the patches, replaced by
    ``deep_vision[i-1]`` before block i (CoOp: none).
    """
    tokenize = open_clip.get_tokenizer("ViT-B-16")
    tokens = tokenize([f"{prefix_text} {c.replace('_', ' ')}." for c in classnames])
    emb = clip.token_embedding(tokens)
    n_ctx = ctx.shape[0]
    prompts = torch.cat([emb[:, :1], ctx.float().unsqueeze(0).expand(len(classnames), -1, -1), emb[:, 1 + n_ctx:]],
                        dim=1)
    text = TextEncoder(clip)(prompts, tokens, [t.float() for t in deep_text], n_ctx)
    if visual_ctx is None:
        visual_ctx = torch.zeros(0, clip.visual.conv1.weight.shape[0])
    img = clip.visual(images, visual_ctx.float(), [v.float() for v in deep_vision])
    img = img / img.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return clip.logit_scale.exp() * img @ text.t()


class CoOpPromptLearner(nn.Module):
    """CoOp's ``PromptLearner`` (generic context, class token at the end), the module CoOp registers and saves."""

    def __init__(self, classnames: list[str], clip: OpenAICLIP, n_ctx: int = 16):
        super().__init__()
        t_width = clip.ln_final.weight.shape[0]
        self.ctx = nn.Parameter((torch.randn(n_ctx, t_width) * 0.02).half())  # CoOp's fp16 recipe
        self.prefix_text = " ".join(["X"] * n_ctx)
        tokens = open_clip.get_tokenizer("ViT-B-16")([f"{self.prefix_text} {c.replace('_', ' ')}." for c in classnames])
        with torch.no_grad():
            emb = clip.token_embedding(tokens)
        self.register_buffer("token_prefix", emb[:, :1])
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx:])
