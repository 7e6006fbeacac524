"""Time per image of every attribution method, on the toy CLIP and on ViT-B-16 (random weights), CPU.

Each method explains the logit of one class for a small batch; times are per image, side by side with
one forward+backward pass of the same model (the unit cost), measured in the same run and interleaved,
so the ratios hold on a busy machine. MaPLe prompts (n_ctx 2, depth min(9, blocks)), 10 classes.

Run: python benchmarks/attribution_speed.py [--models toy ViT-B-16] [--steps 16] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved_medians  # noqa: E402

from mmlens import PromptedCLIP, load_clip  # noqa: E402
from mmlens.attribution import (  # noqa: E402
    AttentionGradCAM,
    GradientRollout,
    PatchEmbeddingIntegratedGradients,
    PatchOcclusion,
    PixelIntegratedGradients,
    PromptIntegratedGradients,
)
from mmlens.models import toy  # noqa: E402


def _model(name: str) -> tuple[PromptedCLIP, str]:
    torch.manual_seed(0)
    if name == "toy":
        shipped = toy.WEIGHTS_FILE.is_file()
        clip = load_clip("mmlens-toy", pretrained="toyworld" if shipped else None)
        label = "mmlens-toy (" + ("shipped toyworld weights" if shipped else "random weights: not shipped yet") + ")"
    else:
        clip = load_clip(name)
        label = f"{name} (random weights)"
    classes = [f"class {i}" for i in range(10)] if name != "toy" else ["red circle", "blue star", "green square",
                                                                        "pink heart", "teal ring", "gray cross",
                                                                        "brown arrow", "purple kite", "white oval",
                                                                        "black diamond"]
    depth = min(9, len(clip.model.visual.transformer.resblocks))
    return PromptedCLIP(clip, classes, method="maple", depth=depth, init_seed=0), label


def bench(name: str, args: argparse.Namespace) -> None:
    """Time every method on one model and print a table."""
    model, label = _model(name)
    size = model.clip.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    batch = 4 if name == "toy" else 1
    images = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))
    target = torch.arange(batch) % len(model.classnames)
    rows = 64 if name == "toy" else 16  # rows per forward pass (occlusion, IG)
    with torch.no_grad():
        text_features = model.text_features()

    def forward_backward():
        x = images.clone().requires_grad_(True)
        out = model(x, text_features).gather(1, target[:, None]).sum()
        torch.autograd.grad(out, x)

    methods = {
        "forward+backward (unit)": forward_backward,
        f"ig_pixels ({args.steps} steps)": lambda: PixelIntegratedGradients(model, progress=False).attribute(
            images, target, n_steps=args.steps, internal_batch_size=rows),
        f"ig_patch_embedding ({args.steps} steps)": lambda: PatchEmbeddingIntegratedGradients(
            model, progress=False).attribute(images, target, n_steps=args.steps, internal_batch_size=rows),
        "occlusion (1 patch / feature)": lambda: PatchOcclusion(model, progress=False).attribute(
            images, target, internal_batch_size=rows),
        "attention_gradcam": lambda: AttentionGradCAM(model, progress=False).attribute(images, target),
        "gradient_rollout": lambda: GradientRollout(model, progress=False).attribute(images, target),
        f"prompt_ig ({args.prompt_steps} steps, zero baseline)": lambda: PromptIntegratedGradients(
            model, progress=False).attribute(images, target, n_steps=args.prompt_steps),
    }
    cpu: dict[str, float] = {}

    def with_cpu(key: str, fn):
        def run():
            start = time.process_time()
            fn()
            cpu[key] = min(cpu.get(key, float("inf")), time.process_time() - start)
        return run

    warmup = 1 if name == "toy" else 0  # ViT-B-16 runs are long; one warm-up costs minutes
    wall = interleaved_medians({k: with_cpu(k, fn) for k, fn in methods.items()}, repeats=args.repeats, warmup=warmup)
    unit_wall, unit_cpu = wall["forward+backward (unit)"] / batch, cpu["forward+backward (unit)"] / batch
    grid = model.clip.visual.grid_size
    print(f"\n{label}: {size[0]}x{size[1]} images, {grid[0]}x{grid[1]} patches, batch {batch}, "
          f"{len(model.classnames)} classes, 1 torch thread, {args.repeats} repeat(s)")
    print(f"  {'method':44s} {'wall s/img':>10s} {'CPU s/img':>10s} {'x unit (CPU)':>13s}")
    for method in methods:
        w, c = wall[method] / batch, cpu[method] / batch
        print(f"  {method:44s} {w:10.3f} {c:10.3f} {c / unit_cpu:13.1f}")
    print(f"  (unit: one forward+backward of the target logit per image, {unit_wall:.3f} s wall, {unit_cpu:.3f} s CPU)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["toy", "ViT-B-16"])
    parser.add_argument("--steps", type=int, default=16, help="IG steps (pixels, patch embedding)")
    parser.add_argument("--prompt-steps", type=int, default=8, help="IG steps on the prompts")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.models:
        bench(name, args)


if __name__ == "__main__":
    main()
