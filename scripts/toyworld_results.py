"""Zero-shot accuracy of the shipped toy CLIP on every toyworld domain -> docs/results/toyworld_zeroshot.md.

Usage: ``python scripts/toyworld_results.py [--weights FILE] [--per-class 40] [--seed 0] [--out FILE]``

Photo = held-out photo-domain images (the pre-training domain, a stream never used in training),
over all 96 photo classes; every other row is a downstream dataset's ``test`` split over its own
classes (also split into its base and novel halves). Prompt: ``"a photo of a {classname}."``. Also
reports generation speed (10k images, wall and CPU time) and the recipe's training time from the
weights' sidecar.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmlens.data.toyworld import DOMAINS, generate
from mmlens.models import toy
from mmlens.train.pretrain_toy import class_text_features, to_model_input

ROOT = Path(__file__).resolve().parent.parent


@torch.no_grad()
def predictions(model, tok, key: str, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    g = generate(key, per_class, seed=seed, split="test")
    text = class_text_features(model, tok, g.classnames)
    preds = []
    for s in range(0, len(g.labels), 512):
        img = F.normalize(model.encode_image(to_model_input(g.images[s : s + 512])), dim=-1)
        preds.append((img @ text.T).numpy())
    return np.concatenate(preds), g.labels, g.classnames


def generation_speed(n: int = 10_000) -> tuple[float, float]:
    """Wall and CPU seconds to generate ``n`` images spread evenly over the seven domains (in memory)."""
    per_domain = n // len(DOMAINS)
    w, c = time.perf_counter(), time.process_time()
    done = 0
    for key, d in DOMAINS.items():
        k = max(1, round(per_domain / d.num_classes))
        done += len(generate(key, k, seed=123, split="train").labels)
    return (time.perf_counter() - w) * n / done, (time.process_time() - c) * n / done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(toy.WEIGHTS_FILE))
    ap.add_argument("--per-class", type=int, default=40, help="test images per class (default 40 = full size)")
    ap.add_argument("--seed", type=int, default=0, help="data seed (default 0, as `mmlens data toyworld`)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "toyworld_zeroshot.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from safetensors.torch import load_file

    model = toy.create_model(pretrained=False)
    model.load_state_dict({k: v.float() for k, v in load_file(args.weights).items()})
    model.eval()
    tok = toy.get_tokenizer()
    sidecar = Path(args.weights).with_suffix(".json")
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}

    rows = []
    for key, d in DOMAINS.items():
        logits, labels, names = predictions(model, tok, key, args.per_class, args.seed)
        half = d.num_classes // 2
        top1 = 100 * float((logits.argmax(1) == labels).mean())
        base = labels < half
        b = 100 * float((logits[base][:, :half].argmax(1) == labels[base]).mean())
        nv = 100 * float((logits[~base][:, half:].argmax(1) == labels[~base] - half).mean())
        rows.append((d, len(labels), top1, b, nv))
        print(f"{d.name:<15} all {top1:6.2f}  base {b:6.2f}  novel {nv:6.2f}", flush=True)
    gen_wall, gen_cpu = generation_speed()

    lines = [
        "# toyworld: zero-shot accuracy of the shipped toy CLIP",
        "",
        f"Written by `python scripts/toyworld_results.py` (weights `{Path(args.weights).name}`, "
        f"sha256 `{meta.get('sha256', '?')[:16]}…`). Data seed {args.seed}, `test` split, "
        f"{args.per_class} images per class, prompt `a photo of a {{classname}}.`; top-1 %. "
        "*all* ranks every class of the dataset; *base* / *novel* rank only the first / second half of the "
        "class list (the base-to-novel protocol's zero-shot row). Photo is held-out photo-domain images "
        "(the pre-training domain) over all 96 classes.",
        "",
        "| dataset | domain | shift | classes | test images | all | base | novel |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d, n, top1, b, nv in rows:
        lines.append(
            f"| {d.name} | {d.key} | {d.shift} | {d.num_classes} | {n} | {top1:.1f} | {b:.1f} | {nv:.1f} |"
        )
    rec = meta.get("recipe", {})
    secs = meta.get("train_seconds")
    lines += [
        "",
        "## Pre-training and generation",
        "",
        f"- Recipe: {rec.get('steps', '?')} steps x batch {rec.get('batch_size', '?')}, AdamW lr "
        f"{rec.get('lr', '?')}, seed {rec.get('seed', '?')}, {rec.get('threads', '?')} torch threads "
        f"(`mmlens toy pretrain`).",
        f"- Training time: {secs / 60:.1f} min wall"
        + (f", {meta['cpu_seconds'] / 60:.1f} min CPU" if meta.get("cpu_seconds") else "")
        + f" ({meta.get('machine', {}).get('processor', '?')}; wall time depends on how busy the machine was)."
        if secs
        else "- Training time: not recorded.",
        f"- Final training loss {meta.get('final_loss', float('nan')):.3f}.",
        f"- Generation speed: 10,000 images (all seven domains, in memory, one process) in {gen_wall:.1f} s "
        f"wall / {gen_cpu:.1f} s CPU.",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
