"""Trace cost: (1) full default trace vs plain open_clip forward (ViT-B-16 random, batch 8, CPU), goal <= 1.35;
(2) peak RSS of trace_to_store over 2048 vs 256 images of a tiny model (each in a fresh process), goal <= 1.10.

Run: python benchmarks/trace_overhead.py [--skip-memory] [--threads N]   (default 1 torch thread: a shared machine)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved_medians  # noqa: E402

import mmlens  # noqa: E402
from mmlens import PromptedCLIP, load_clip  # noqa: E402

MEMORY_CHILD = r"""
import resource, sys, tempfile, torch
import mmlens
from mmlens.models import PromptedCLIP, load_clip, register_config
register_config("bench-tiny", {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 4, "width": 64,
    "patch_size": 8, "head_width": 16}, "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64,
    "heads": 4, "layers": 4}})
torch.manual_seed(0)
model = PromptedCLIP(load_clip("bench-tiny"), [f"c{i}" for i in range(10)], method="maple", depth=3)
n = int(sys.argv[1])
def batches():
    g = torch.Generator().manual_seed(0)
    for lo in range(0, n, 64):
        yield {"image": torch.randn(64, 3, 64, 64, generator=g), "label": torch.zeros(64, dtype=torch.long)}
mmlens.trace_to_store(model, batches(), tempfile.mkdtemp() + "/s.zarr", with_reference=True, batch_size=64,
                      progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_kib(n_images: int) -> int:
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(n_images)], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clip = load_clip("ViT-B-16")
    classes = [f"class {i}" for i in range(10)]
    images = torch.randn(args.batch, 3, 224, 224)
    tokens = clip.tokenizer([f"a photo of a {c}." for c in classes])
    model = PromptedCLIP(clip, classes, method="maple")
    m = clip.model

    def plain():
        f = F.normalize(m.encode_image(images), dim=-1)
        g = F.normalize(m.encode_text(tokens), dim=-1)
        return m.logit_scale.exp() * f @ g.T

    def traced():  # the default trace: both towers, readout statistics, completeness check on batch 1
        return mmlens.trace(model, images, batch_size=args.batch, progress=False)

    def traced_later_batch():  # what every batch after the first costs (the check runs on batch 1 only)
        return mmlens.trace(model, images, batch_size=args.batch, progress=False, check_completeness=False)

    with torch.no_grad():
        t = interleaved_medians({"open_clip": plain, "trace": traced, "later": traced_later_batch},
                                repeats=args.repeats)
    print(f"ViT-B-16 random weights, MaPLe prompts, batch {args.batch}, CPU threads {torch.get_num_threads()}")
    print(f"  open_clip forward {t['open_clip'] * 1000:8.1f} ms")
    print(f"  mmlens.trace      {t['trace'] * 1000:8.1f} ms")
    print(f"  trace, no check  {t['later'] * 1000:8.1f} ms  (batches after the first)")
    print(f"ratio trace / forward = {t['trace'] / t['open_clip']:.3f}   (goal <= 1.35; one batch, check included)")
    print(f"ratio trace / forward = {t['later'] / t['open_clip']:.3f}   (every later batch)")
    if not args.skip_memory:
        small, large = peak_rss_kib(256), peak_rss_kib(2048)
        print(f"peak RSS trace_to_store: 256 images {small / 1024:.0f} MiB, 2048 images {large / 1024:.0f} MiB")
        print(f"ratio RSS 2048 / 256 = {large / small:.3f}   (goal <= 1.10)")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
