"""Cost of tracing with direct logit effects vs the plain trace, side by side (issue IV goal: <= 1.3x).

Two models: the shipped toy CLIP (toyworld weights, MaPLe prompts, 64 images) and ViT-B-16 with random weights
(MaPLe, a few images), each traced with ``direct_effects`` off, ``True`` (label and margin) and ``"all"`` in
interleaved rounds (``benchmarks/_timing.py``). Text tower and completeness checks included, as a real trace runs.

Run: python benchmarks/direct_effects.py [--vit-images 4] [--repeats 3] [--skip-vit] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved_medians  # noqa: E402

import mmlens  # noqa: E402
from mmlens import PromptedCLIP, load_clip  # noqa: E402


def _prompts(model: PromptedCLIP, scale: float) -> PromptedCLIP:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.prompt_learner.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def compare(name: str, model: PromptedCLIP, images: torch.Tensor, batch: int, repeats: int) -> None:
    labels = torch.arange(len(images)) % len(model.classnames)

    def run(direct):
        def go():
            batches = ({"image": images[lo:lo + batch], "label": labels[lo:lo + batch]}
                       for lo in range(0, len(images), batch))
            return mmlens.trace(model, batches, with_reference=True, direct_effects=direct, progress=False)
        return go

    with torch.no_grad():
        t = interleaved_medians({"plain": run(False), "margin": run(True), "all": run("all")}, repeats=repeats)
    print(f"{name}: {len(images)} images, batch {batch}, variants full + zeroshot, {len(model.classnames)} classes, "
          f"CPU threads {torch.get_num_threads()}")
    print(f"  plain trace                     {t['plain'] * 1000:9.1f} ms")
    print(f"  direct_effects=True  (margin)   {t['margin'] * 1000:9.1f} ms   ratio {t['margin'] / t['plain']:.3f}")
    print(f"  direct_effects='all'            {t['all'] * 1000:9.1f} ms   ratio {t['all'] / t['plain']:.3f}")
    print("  (goal: ratio <= 1.3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="rounds for ViT-B-16 (the toy runs 4x as many)")
    parser.add_argument("--toy-images", type=int, default=64)
    parser.add_argument("--vit-images", type=int, default=4)
    parser.add_argument("--skip-vit", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    toy = load_clip("mmlens-toy", pretrained="toyworld")
    classes = ["blue ring", "red star", "green cube", "yellow blob", "purple cross", "orange disc"]
    model = _prompts(PromptedCLIP(toy, classes, method="maple", depth=2, init_seed=0), 0.5)
    images = torch.rand(args.toy_images, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # a toy trace takes a fraction of a second: more rounds, so that the shared machine's noise averages out
    compare("mmlens-toy (toyworld), MaPLe", model, images, batch=32, repeats=4 * args.repeats)

    if not args.skip_vit:
        clip = load_clip("ViT-B-16")  # random weights, no download
        model = _prompts(PromptedCLIP(clip, [f"class {i}" for i in range(10)], method="maple", init_seed=0), 0.05)
        images = torch.randn(args.vit_images, 3, 224, 224, generator=torch.Generator().manual_seed(2))
        compare("ViT-B-16 random weights, MaPLe", model, images, batch=args.vit_images, repeats=args.repeats)


if __name__ == "__main__":
    main()
