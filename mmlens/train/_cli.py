"""Sub-commands ``mmlens train``, ``mmlens evaluate`` and ``mmlens toy pretrain`` (see mmlens/cli.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _load_clip(name: str, pretrained: str | None, device: str, quick_gelu: bool | None = None):
    from mmlens.models.loading import cli_pretrained, load_clip

    return load_clip(name, cli_pretrained(name, pretrained), device=device, quick_gelu=quick_gelu)


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from mmlens.models.prompted import PromptedCLIP
    from mmlens.train.trainer import fit

    if args.threads:
        torch.set_num_threads(args.threads)
    from mmlens.train.recipes import prompt_depth, recipe_for

    recipe = recipe_for(args.model)  # flags left unset take the model's recipe (toyworld or MaPLe's)
    for key in ("shots", "epochs", "lr", "batch_size", "crop_scale"):
        if getattr(args, key) is None:
            setattr(args, key, recipe[key])
    clip = _load_clip(args.model, args.pretrained, args.device, args.quick_gelu)
    blocks = min(len(clip.model.visual.transformer.resblocks), len(clip.model.transformer.resblocks))
    depth, note = prompt_depth(blocks, args.depth)
    if note:
        print(f"note: {note}")
    ctx_init = None if args.ctx_init in ("", "none", "None") else args.ctx_init
    model = PromptedCLIP(clip, ["object"], args.method, n_ctx=args.n_ctx, depth=depth, ctx_init=ctx_init,
                         init_seed=args.seed)
    result = fit(
        model, args.dataset, root=args.data_root, shots=args.shots, seed=args.seed, subset=args.subset,
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, warmup_epochs=args.warmup_epochs,
        warmup_lr=args.warmup_lr, device=args.device, checkpoint_dir=args.out, resume=not args.no_resume,
        augment=not args.no_augment, crop_scale=tuple(args.crop_scale), num_workers=args.workers,
        progress=not args.no_progress,
    )
    for h in result.history:
        print(f"epoch {h['epoch']}: lr {h['lr']:.2e}  loss {h['loss']:.4f}  acc {h['accuracy']:.1f}%  "
              f"({h['seconds']:.1f} s)")
    if result.resumed_from_epoch:
        print(f"(resumed after epoch {result.resumed_from_epoch})")
    print(f"{result.method}: {result.trainable_parameters:,} trainable parameters; prompts: {result.prompts_path}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from mmlens.models.checkpoints import read_prompt_file
    from mmlens.stats.tables import to_csv, to_markdown
    from mmlens.train.evaluation import _prompt_files, evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    files = [f for p in args.prompts for f in _prompt_files(Path(p).expanduser())]
    meta = read_prompt_file(files[0])[1]
    model_name = args.model or meta.get("base_model")
    if not model_name:
        print("The prompt file does not name its base model: pass --model NAME [--pretrained TAG|FILE].",
              file=sys.stderr)
        return 2
    pretrained = args.pretrained
    if pretrained is None and model_name == "mmlens-toy" and meta.get("base_weights_sha256"):
        pretrained = "toyworld"
    clip = _load_clip(model_name, pretrained, args.device, args.quick_gelu)
    variants = [v for spec in (args.variants or ["full"]) for v in spec.split(",") if v]
    ds = evaluate(files, args.dataset or None, seeds=args.seeds, variants=variants, protocol=args.protocol,
                  root=args.data_root, clip=clip, batch_size=args.batch_size, device=args.device,
                  num_workers=args.workers, progress=not args.no_progress)
    table = to_markdown(ds)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".csv":
            to_csv(ds, out)
        elif out.suffix in (".nc", ".netcdf"):
            ds.to_netcdf(out, engine="h5netcdf")
        else:
            out.write_text(table + "\n")
        print(f"written: {out}")
    return 0


def _register_toy(subparsers) -> None:
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


def register(subparsers) -> None:
    """Add ``mmlens toy pretrain``, ``mmlens train`` and ``mmlens evaluate`` to ``subparsers``."""
    from mmlens.models.loading import add_quick_gelu_argument

    # the toy CLIP's pre-training is training (mmlens.train.pretrain_toy), so its command is registered here
    _register_toy(subparsers)

    p = subparsers.add_parser(
        "train",
        help="few-shot prompt learning / bias tuning (MaPLe's recipe)",
        description="Train the prompts of one method on one dataset and seed; resumable (per-epoch checkpoints "
                    "in --out). Example: mmlens train --model mmlens-toy --pretrained toyworld --method maple "
                    "--dataset ToySatellite --data-root DIR --seed 1 --out runs/toysat/maple/seed1",
    )
    p.add_argument("--model", default="mmlens-toy", help="open_clip model name (default mmlens-toy)")
    p.add_argument("--pretrained", default=None,
                   help="open_clip tag or weights file; 'random' for random weights (default: 'toyworld' for "
                        "mmlens-toy, 'openai' otherwise)")
    add_quick_gelu_argument(p)
    p.add_argument("--method", default="maple",
                   help="zeroshot, coop, deep_vision, deep_language, ivlp, maple, bias, bias_coupled")
    p.add_argument("--dataset", required=True, help="dataset name (see `mmlens data list`)")
    p.add_argument("--data-root", required=True, help="data root holding the dataset folders")
    p.add_argument("--subset", default="base", choices=("base", "all"),
                   help="classes to train on: base (base-to-novel) or all (cross-dataset source)")
    p.add_argument("--shots", type=int, default=None, help="images per class (default: the recipe's 16)")
    p.add_argument("--seed", type=int, default=1, help="protocol seed (default 1)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's 5)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's 0.0035)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the recipe's 4)")
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--warmup-lr", type=float, default=1e-5)
    p.add_argument("--n-ctx", type=int, default=2, help="prompt tokens per layer (default 2)")
    p.add_argument("--depth", type=int, default=None,
                   help="prompt depth J (default: the recipe's 9, clipped to all blocks but the last, with a note)")
    p.add_argument("--ctx-init", default="a photo of a", help="text used to initialise the context ('none': random)")
    p.add_argument("--out", required=True, help="run folder: checkpoints and prompts.safetensors")
    p.add_argument("--device", default="cpu", help="cpu or cuda (mixed precision on cuda)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if --out holds checkpoints")
    p.add_argument("--no-augment", action="store_true", help="no random-resized-crop / flip")
    p.add_argument("--crop-scale", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="random-resized-crop area fraction (default: the recipe's: MaPLe's 0.08 1; 0.5 1 for "
                        "mmlens-toy)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = subparsers.add_parser(
        "evaluate",
        help="accuracy tables (base / novel / HM, route ablations) of trained prompts",
        description="Evaluate prompt files (from `mmlens train`) and print a markdown table. Example: mmlens "
                    "evaluate --prompts runs/ --data-root DIR --variants full zeroshot bias_only --out table.md",
    )
    p.add_argument("--prompts", nargs="+", required=True, help="prompt files or folders holding prompts.safetensors")
    p.add_argument("--dataset", action="append", help="dataset name (repeatable); default: the training datasets")
    p.add_argument("--data-root", required=True, help="data root holding the dataset folders")
    p.add_argument("--variants", nargs="+", help="full, zeroshot, bias_only[:branch[:layers]], ... (default full)")
    p.add_argument("--protocol", default="base_to_novel",
                   choices=("base_to_novel", "cross_dataset", "domain_generalisation"))
    p.add_argument("--seeds", type=int, nargs="+", help="only prompt files of these seeds")
    p.add_argument("--model", default=None, help="base model (default: the one named in the prompt file)")
    p.add_argument("--pretrained", default=None, help="base weights (default for mmlens-toy: toyworld)")
    add_quick_gelu_argument(p)
    p.add_argument("--out", help="write the table: .md (markdown), .csv (long format) or .nc (netCDF)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_evaluate)
