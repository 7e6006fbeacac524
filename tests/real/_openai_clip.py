"""An independent model of OpenAI's CLIP ViT (the architecture of openai/CLIP ``clip/model.py``), for fixtures.

Written from reading OpenAI's code, not calling open_clip or mmlens: residual blocks of
``nn.MultiheadAttention`` + a ``c_fc``/QuickGELU/``c_proj`` MLP with LayerNorms computed in fp32, the
class token and positional embedding of the ViT, the causal text transformer read out at the EOT
token (the largest id). The parameter names are OpenAI's, so its state dict is the file OpenAI ships.
:func:`to_fp16_like_openai` casts the weights the way OpenAI's ``convert_weights`` did before their
archives were saved, and :func:`save_openai_archive` writes a TorchScript archive like ``ViT-B-16.pt``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in fp32 whatever the input dtype (OpenAI's fp16 handling)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    """OpenAI's activation: ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mask: torch.Tensor | None = None):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = FP32LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(), c_proj=nn.Linear(4 * width, width)))
        self.ln_2 = FP32LayerNorm(width)
        self.mask = mask  # a plain attribute (not a buffer): OpenAI's archives carry no mask in the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [L, N, D] (sequence first, as OpenAI's)
        mask = None if self.mask is None else self.mask.to(dtype=x.dtype, device=x.device)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Tower(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mask: torch.Tensor | None = None):
        super().__init__()
        self.resblocks = nn.Sequential(*[Block(width, heads, mask) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class Vision(nn.Module):
    def __init__(self, resolution: int, patch: int, width: int, layers: int, out_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        s = width ** -0.5
        self.class_embedding = nn.Parameter(s * torch.randn(width))
        self.positional_embedding = nn.Parameter(s * torch.randn((resolution // patch) ** 2 + 1, width))
        self.ln_pre = FP32LayerNorm(width)
        self.transformer = Tower(width, layers, width // 64)  # OpenAI: one head per 64 channels
        self.ln_post = FP32LayerNorm(width)
        self.proj = nn.Parameter(s * torch.randn(width, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [N, grid*grid, D]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x).transpose(0, 1)).transpose(0, 1)
        return self.ln_post(x[:, 0]) @ self.proj


class OpenAICLIP(nn.Module):
    """OpenAI's CLIP with a ViT image tower, initialised as OpenAI initialises it."""

    def __init__(self, *, embed_dim: int, resolution: int, patch: int, vision_width: int, vision_layers: int,
                 context_length: int, vocab_size: int, text_width: int, text_layers: int):
        super().__init__()
        self.visual = Vision(resolution, patch, vision_width, vision_layers, embed_dim)
        causal = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.transformer = Tower(text_width, text_layers, text_width // 64, causal)
        self.token_embedding = nn.Embedding(vocab_size, text_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, text_width))
        self.ln_final = FP32LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.empty(text_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        # The three integers OpenAI's archives carry in their state dict beside the weights
        self.register_buffer("input_resolution", torch.tensor(resolution))
        self.register_buffer("context_length", torch.tensor(context_length))
        self.register_buffer("vocab_size", torch.tensor(vocab_size))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=text_width ** -0.5)
        for tower, width, layers in ((self.transformer, text_width, text_layers),
                                     (self.visual.transformer, vision_width, vision_layers)):
            for block in tower.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
                nn.init.normal_(block.attn.out_proj.weight, std=width ** -0.5 * (2 * layers) ** -0.5)
                nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
                nn.init.normal_(block.mlp.c_proj.weight, std=width ** -0.5 * (2 * layers) ** -0.5)
                for p in (block.attn.in_proj_bias, block.mlp.c_fc.bias, block.mlp.c_proj.bias):
                    nn.init.normal_(p, std=0.02)  # nonzero biases, so a wrong bias route cannot hide

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image.to(self.dtype))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text).to(self.dtype) + self.positional_embedding.to(self.dtype)
        x = self.ln_final(self.transformer(x.transpose(0, 1)).transpose(0, 1)).to(self.dtype)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode_image(image)
        g = self.encode_text(text)
        f = f / f.norm(dim=-1, keepdim=True)
        g = g / g.norm(dim=-1, keepdim=True)
        logits = self.logit_scale.exp() * f @ g.t()
        return logits, logits.t()


def to_fp16_like_openai(model: nn.Module) -> nn.Module:
    """Cast to fp16 what OpenAI's ``convert_weights`` casts: conv/linear weights and biases, the attention
    input projections, ``proj`` and ``text_projection``. LayerNorms and embeddings stay as they are."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            m.weight.data = m.weight.data.half()
            if m.bias is not None:
                m.bias.data = m.bias.data.half()
        if isinstance(m, nn.MultiheadAttention):
            for attr in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias",
                         "bias_k", "bias_v"):
                t = getattr(m, attr, None)
                if t is not None:
                    t.data = t.data.half()
        for attr in ("proj", "text_projection"):
            t = getattr(m, attr, None)
            if isinstance(t, torch.Tensor):
                t.data = t.data.half()
    return model


def tiny_openai_config(**over: int) -> dict:
    """A small OpenAI-architecture ViT (fast): 2 vision heads, 1 text head, 2 blocks each."""
    cfg = dict(embed_dim=32, resolution=32, patch=8, vision_width=128, vision_layers=2, context_length=77,
               vocab_size=49408, text_width=64, text_layers=2)
    cfg.update(over)
    return cfg


#: OpenAI's ViT-B/16 (the shapes of ViT-B-16.pt)
VIT_B_16 = dict(embed_dim=512, resolution=224, patch=16, vision_width=768, vision_layers=12, context_length=77,
                vocab_size=49408, text_width=512, text_layers=12)


def open_clip_config(cfg: dict, *, quick_gelu: bool = False) -> dict:
    """The open_clip model config describing the same architecture (for ``register_config``)."""
    return {
        "embed_dim": cfg["embed_dim"],
        "quick_gelu": quick_gelu,
        "vision_cfg": {"image_size": cfg["resolution"], "layers": cfg["vision_layers"],
                       "width": cfg["vision_width"], "patch_size": cfg["patch"], "head_width": 64},
        "text_cfg": {"context_length": cfg["context_length"], "vocab_size": cfg["vocab_size"],
                     "width": cfg["text_width"], "heads": cfg["text_width"] // 64, "layers": cfg["text_layers"]},
    }


def save_openai_archive(model: OpenAICLIP, path: str | Path) -> Path:
    """Trace the fp16 model on example inputs and save it as a TorchScript archive, like OpenAI's ``*.pt``."""
    res = int(model.input_resolution)
    image = torch.zeros(1, 3, res, res)
    text = torch.zeros(1, int(model.context_length), dtype=torch.long)
    text[0, :3] = torch.tensor([49406, 320, 49407])
    with torch.no_grad():
        archive = torch.jit.trace(model, (image, text), check_trace=False)
    torch.jit.save(archive, str(path))
    return Path(path)
