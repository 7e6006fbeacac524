"""One MaPLe prompt-learning step vs a plain open_clip forward+backward: ViT-B-16 random weights, batch 4, CPU.

The step of :func:`mmlens.train.fit` (PromptedCLIP forward over the images and the class prompts,
cross-entropy, backward to the prompts, SGD update) is timed against the same open_clip model's own
``encode_image`` + ``encode_text`` forward, the same loss and a backward pass of the same depth: the
CLIP weights stay frozen and the gradient flows to the positional embeddings of both towers, so that,
as in prompt learning, every block back-propagates activation gradients and no weight gradients.
A full fine-tuning step (all weights trainable) is printed for context. Goal: ratio <= 1.15.

    python benchmarks/train_step.py [--model ViT-B-16] [--batch 4] [--classes 10] [--repeats 5] [--threads 1]
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    parser.add_argument("--no-finetune", action="store_true", help="skip the full fine-tuning reference")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clip = load_clip(args.model)
    m = clip.model
    classes = [f"class {i}" for i in range(args.classes)]
    images = torch.randn(args.batch, 3, *m.visual.image_size)
    labels = torch.arange(args.batch) % args.classes
    tokens = clip.tokenizer([f"a photo of a {c}." for c in classes])

    maple = PromptedCLIP(clip, classes, method="maple", n_ctx=2, depth=9, init_seed=0)
    params = [p for p in maple.prompt_learner.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-9, momentum=0.9, weight_decay=5e-4)  # tiny lr: prompts stay put

    def maple_step() -> None:
        loss = F.cross_entropy(maple(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def clip_loss() -> torch.Tensor:
        f = F.normalize(m.encode_image(images), dim=-1)
        g = F.normalize(m.encode_text(tokens), dim=-1)
        return F.cross_entropy(m.logit_scale.exp() * f @ g.T, labels)

    leaves = [m.positional_embedding, m.visual.positional_embedding]

    def plain_step() -> None:  # frozen weights, gradient to the input side of both towers
        for p in m.parameters():
            p.requires_grad_(False)
        for p in leaves:
            p.requires_grad_(True)
            p.grad = None
        clip_loss().backward()

    def finetune_step() -> None:  # every weight trainable (gradient computation only, no update)
        for p in m.parameters():
            p.requires_grad_(True)
            p.grad = None
        clip_loss().backward()

    fns = {"open_clip fwd+bwd (frozen)": plain_step, "mmlens maple step": maple_step}
    if not args.no_finetune:
        fns["open_clip fwd+bwd (all weights)"] = finetune_step
    t = interleaved_medians(fns, repeats=args.repeats, warmup=1)
    for p in m.parameters():
        p.requires_grad_(False)
    print(f"{args.model} random weights, batch {args.batch}, {args.classes} classes, MaPLe n_ctx 2 depth 9 "
          f"({maple.trainable_parameter_count():,} prompt parameters), CPU threads {torch.get_num_threads()}, "
          f"median of {args.repeats} interleaved runs")
    for name, sec in t.items():
        print(f"  {name:34s} {sec * 1000:9.1f} ms")
    ratio = t["mmlens maple step"] / t["open_clip fwd+bwd (frozen)"]
    print(f"ratio maple step / open_clip fwd+bwd (frozen) = {ratio:.3f}   (goal <= 1.15)")
    if not args.no_finetune:
        print(f"ratio maple step / open_clip fwd+bwd (all weights) = "
              f"{t['mmlens maple step'] / t['open_clip fwd+bwd (all weights)']:.3f}   (context)")


if __name__ == "__main__":
    main()
