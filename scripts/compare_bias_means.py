"""How far the per-position mean β (before issue II) is from the role-aligned mean at the EOT readout.

Usage: ``python scripts/compare_bias_means.py [--model mmlens-toy] [--pretrained none] [--dataset finegrained]``

Builds MaPLe prompts (random, scaled up so that they matter) on a CLIP, measures the text tower's
dataset-mean β on the base-class prompts both ways, and prints, per block, the relative distance
``‖β̄_position[EOT of c] − β̄_EOT‖ / ‖β̄_EOT‖`` over the classes c: what the old ``constant_bias``
added at each prompt's EOT instead of the mean EOT β. Also on the novel-class prompts (the mean is
measured on base classes and applied to novel ones).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


#: Oxford-IIIT Pets breeds in label order: names of 1 to 3 words, as in real few-shot benchmarks.
PETS = ["abyssinian", "american bulldog", "american pit bull terrier", "basset hound", "beagle", "bengal", "birman",
        "bombay", "boxer", "british shorthair", "chihuahua", "egyptian mau", "english cocker spaniel",
        "english setter", "german shorthaired", "great pyrenees", "havanese", "japanese chin", "keeshond",
        "leonberger", "maine coon", "miniature pinscher", "newfoundland", "persian", "pomeranian", "pug",
        "ragdoll", "russian blue", "saint bernard", "samoyed", "scottish terrier", "shiba inu", "siamese",
        "sphynx", "staffordshire bull terrier", "wheaten terrier", "yorkshire terrier"]


def main() -> None:
    import torch

    from mmlens import PromptedCLIP, load_clip
    from mmlens.data.toyworld import build_in_memory
    from mmlens.models.prompted import ROLE_CODES
    from mmlens.tracing.interventions import SplitHook, measure_mean_bias

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mmlens-toy")
    ap.add_argument("--pretrained", default="none", help="'none': random weights")
    ap.add_argument("--classes", default="pets",
                    help="'pets' (Oxford Pets breed names, first half base, second half novel) or a toyworld domain")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--prompt-scale", type=float, default=0.02, help="std of the random prompts (MaPLe's init: 0.02)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    clip = load_clip(args.model, None if args.pretrained == "none" else args.pretrained)
    if args.classes == "pets":
        half = (len(PETS) + 1) // 2  # CoOp's base-to-novel split: the first half of the labels are base
        base, novel = PETS[:half], PETS[half:]
    else:
        base = build_in_memory(args.classes, "test", subset="base").classnames
        novel = build_in_memory(args.classes, "test", subset="novel").classnames
    model = PromptedCLIP(clip, base, method="maple", depth=args.depth, init_seed=0).eval()
    with torch.no_grad():
        for name, p in model.prompt_learner.named_parameters():
            if "proj" not in name:  # the prompt vectors themselves; the text-to-vision maps stay as built
                p.normal_(0, args.prompt_scale)

    def position_mean_and_roles(classnames):
        model.set_classnames(classnames)
        seen = {}

        def capture(call, beta):
            if call.branch == "text":
                seen[call.layer] = (beta.mean(0), call.roles.clone())

        model.block_hook = SplitHook(capture_bias=capture)
        with torch.no_grad():
            model.text_features()
        model.block_hook = None
        return seen

    seen = position_mean_and_roles(base)
    means = measure_mean_bias(model, [], branch="text")
    novel_roles = {k: r for k, (_, r) in position_mean_and_roles(novel).items()}
    print(f"{args.model} ({args.pretrained} weights), {args.classes}: {len(base)} base / {len(novel)} novel classes")
    print("block  kind      base: mean  max   novel: mean  max   (relative distance of the old mean at EOT)")
    kinds = model.layer_kinds("text")
    everything = []
    for layer, (position_mean, roles) in sorted(seen.items()):
        eot = means["text", layer].per_token[ROLE_CODES["eot"]][0]
        out = []
        for r in (roles, novel_roles[layer]):
            pos = (r == ROLE_CODES["eot"]).int().argmax(-1)
            # positions past the base prompts' longest read the base prompts' padding mean
            d = (position_mean[pos] - eot).norm(dim=-1) / eot.norm()
            out.append(d)
            everything.append(d)
        print(f"{layer:5d}  {kinds[layer]:8s}  {float(out[0].mean()):9.0%} {float(out[0].max()):5.0%}"
              f"   {float(out[1].mean()):10.0%} {float(out[1].max()):5.0%}")
    allv = torch.cat(everything)
    print(f"over all blocks and classes: {float(allv.min()):.0%} to {float(allv.max()):.0%} "
          f"(median {float(allv.median()):.0%})")


if __name__ == "__main__":
    main()
