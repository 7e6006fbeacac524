"""Sub-commands of this sub-package (see mmlens/cli.py): ``mmlens toy pretrain``."""

from __future__ import annotations

import argparse


def add_quick_gelu_argument(parser: argparse.ArgumentParser) -> None:
    """``--quick-gelu``: declare a plain weights file as OpenAI's (or fine-tuned from it), for commands that
    load a CLIP. Absent it is ``None`` (not declared), so ``load_clip`` decides from the weights."""
    parser.add_argument("--quick-gelu", action="store_true", default=None,
                        help="build the CLIP with QuickGELU: the weights file is OpenAI's or fine-tuned from it "
                             "(tags, OpenAI's .pt and the Hugging Face cache are recognised without it; "
                             "see docs/real_weights.md)")


def register(subparsers) -> None:
    """Add ``mmlens toy pretrain --out FILE [--steps N] [--seed S] ...`` to ``subparsers``."""
    from mmlens.train.pretrain_toy import PretrainConfig

    d = PretrainConfig()
    toy = subparsers.add_parser("toy", help="the toyworld CLIP (mmlens-toy): pre-train it")
    toy_sub = toy.add_subparsers(dest="toy_command", metavar="TOY_COMMAND")
    p = toy_sub.add_parser(
        "pretrain",
        help="pre-train the toy CLIP contrastively on captioned photo-domain scenes",
        description="Train mmlens-toy from scratch with the shipped recipe and write an open_clip state "
        "dict (safetensors) plus a JSON sidecar (recipe, seed, sha256, zero-shot metrics). The shipped "
        "weights were made with the defaults.",
    )
    p.add_argument("--out", required=True, help="output .safetensors file (the sidecar is <out>.json)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of init and data (default {d.seed})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--threads", type=int, default=d.threads, help=f"torch threads (default {d.threads})")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="log held-out photo accuracy")
    p.add_argument(
        "--eval-per-class", type=int, default=40,
        help="test images per class for the final zero-shot metrics in the sidecar (0 = skip; default 40)",
    )
    p.add_argument(
        "--checkpoint", default=None,
        help="resume file, written every 250 steps (default: <out>.ckpt; rerun the same command to resume)",
    )
    p.set_defaults(func=_cmd_pretrain)
    toy.set_defaults(func=lambda args: toy.print_help() or 0)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from mmlens.train.pretrain_toy import PretrainConfig, evaluate_all, pretrain, save_weights

    cfg = PretrainConfig(
        steps=args.steps, seed=args.seed, batch_size=args.batch_size, lr=args.lr, threads=args.threads,
        eval_every=args.eval_every,
    )
    cfg.warmup = min(cfg.warmup, max(1, cfg.steps // 10))
    model, history = pretrain(cfg, checkpoint=args.checkpoint or f"{args.out}.ckpt")
    metrics = {}
    if args.eval_per_class:
        metrics = {"zero_shot_top1": evaluate_all(model, n_per_class=args.eval_per_class, seed=cfg.seed)}
        metrics["eval"] = {"split": "test", "per_class": args.eval_per_class, "template": "a photo of a {}."}
        for k, v in metrics["zero_shot_top1"].items():
            print(f"zero-shot top-1 {k:<12} {v:6.2f} %")
    meta = save_weights(model, args.out, recipe=cfg, history=history, metrics=metrics)
    print(f"wrote {args.out} (sha256 {meta['sha256'][:16]}...) in {meta['train_seconds']:.0f} s of training")
    return 0
