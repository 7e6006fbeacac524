"""PromptedCLIP (zeroshot, maple) vs plain open_clip forward: ViT-B-16 random weights, batch 8, CPU.

Targets: zeroshot <= 1.05, maple <= 1.10 (2 extra tokens of 199). Run: python benchmarks/prompted_forward.py
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved_medians  # noqa: E402

from mmlens import PromptedCLIP, load_clip  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    clip = load_clip(args.model)
    classes = [f"class {i}" for i in range(10)]
    images = torch.randn(args.batch, 3, *clip.model.visual.image_size)
    tokens = clip.tokenizer([f"a photo of a {c}." for c in classes])
    zeroshot = PromptedCLIP(clip, classes, method="zeroshot")
    maple = PromptedCLIP(clip, classes, method="maple")
    m = clip.model

    def plain():
        f = F.normalize(m.encode_image(images), dim=-1)
        g = F.normalize(m.encode_text(tokens), dim=-1)
        return m.logit_scale.exp() * f @ g.T

    with torch.no_grad():
        t = interleaved_medians({"open_clip": plain, "zeroshot": lambda: zeroshot(images),
                                 "maple": lambda: maple(images)}, repeats=args.repeats)
    print(f"{args.model}, batch {args.batch}, {len(classes)} classes, CPU threads {torch.get_num_threads()}")
    for name, sec in t.items():
        print(f"  {name:10s} {sec * 1000:8.1f} ms")
    print(f"ratio zeroshot / open_clip = {t['zeroshot'] / t['open_clip']:.3f}   (target <= 1.05)")
    print(f"ratio maple    / open_clip = {t['maple'] / t['open_clip']:.3f}   (target <= 1.10)")


if __name__ == "__main__":
    main()
