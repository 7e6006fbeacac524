"""``mmlens trace``: trace a prompted CLIP on a dataset split into a zarr store."""

from __future__ import annotations

import argparse

# the names of mmlens.store.schema.ATTRIBUTION_METHODS (kept here so that `mmlens --help` imports nothing)
_ATTRIBUTION_METHODS = ("ig_pixels", "ig_patch_embedding", "occlusion", "attention_gradcam", "gradient_rollout",
                        "prompt_ig")


def _attribution_methods(text: str) -> list[str]:
    """argparse type of ``--attribution``: comma-separated method names, checked by ``trace``'s own parser."""
    from mmlens.trace.tracer import parse_attribution

    try:
        names = list(parse_attribution(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names among {', '.join(_ATTRIBUTION_METHODS)}")
    return names


def register(subparsers) -> None:
    """Add ``mmlens trace``."""
    p = subparsers.add_parser(
        "trace",
        help="trace a prompted CLIP on a dataset into a zarr store",
        description="Run a prompted CLIP on a dataset split and store the per-layer, per-head split of "
        "every attention block (docs/store_schema.md). Resumable: rerun the same command after an interruption.",
    )
    p.add_argument("--model", default="mmlens-toy", help="open_clip model name (default: mmlens-toy)")
    p.add_argument("--pretrained", default=None,
                   help="open_clip tag or weights file; 'random' for random weights (default: the shipped "
                        "'toyworld' weights for mmlens-toy, 'openai' otherwise)")
    p.add_argument("--prompts", default=None,
                   help="mmlens prompt file (.safetensors) or a MaPLe checkpoint (model.pth.tar-N or its folder)")
    p.add_argument("--method", default="maple", help="prompt method for MaPLe checkpoints / no prompts (zeroshot)")
    p.add_argument("--depth", type=int, default=None,
                   help="prompt depth for MaPLe checkpoints (default: the recipe's 9, clipped to all blocks but the "
                        "last, with a note)")
    p.add_argument("--n-ctx", type=int, default=2, help="prompt tokens for MaPLe checkpoints")
    p.add_argument("--dataset", required=True, help="dataset name (see `mmlens data list`)")
    p.add_argument("--data-root", required=True, help="folder holding the datasets in the CoOp layout")
    p.add_argument("--split", default="test", help="train / val / test (default: test)")
    p.add_argument("--subset", default="all", choices=["all", "base", "novel"], help="classes to trace")
    p.add_argument("--limit", type=int, default=None, help="trace only the first N images")
    p.add_argument("--out", required=True, help="zarr store to write (resumed if it exists)")
    p.add_argument("--with-reference", action="store_true", help="also trace without prompts (zero-shot)")
    p.add_argument("--all-queries", action="store_true", help="store prompt mass for every query token")
    p.add_argument("--bias-vectors", action="store_true", help="store the β vectors (channel axis)")
    p.add_argument("--attribution", type=_attribution_methods, default=None, metavar="METHOD[,METHOD]",
                   help="also compute captum attributions of the traced images into the store's `attribution` "
                        "group (explaining the true class; for the variants full and, with --with-reference, "
                        "zeroshot): " + ", ".join(_ATTRIBUTION_METHODS) + ". Costly: integrated gradients run "
                        "the model n_steps (32; prompt_ig 16) times per image, occlusion once per patch")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu or cuda (autocast fp16 model, fp32 statistics)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for anything random (random weights / prompt init), so a rerun resumes the same run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store instead of resuming")
    p.set_defaults(func=_run)


def build_prompted(args: argparse.Namespace, classnames: list[str]):
    """A PromptedCLIP from CLI arguments (shared by trace, evaluate and reproduce)."""
    from pathlib import Path

    import torch

    from mmlens.models import PromptedCLIP, load_clip, load_maple_checkpoint, load_prompts
    from mmlens.models.loading import cli_pretrained
    from mmlens.train.recipes import prompt_depth

    torch.manual_seed(getattr(args, "seed", 0))  # random weights and prompt inits repeat on a rerun
    precision = "fp16" if str(args.device).startswith("cuda") else "fp32"
    clip = load_clip(args.model, cli_pretrained(args.model, args.pretrained), device=args.device,
                     precision=precision)
    path = None if args.prompts is None else Path(args.prompts)
    if path is not None and path.suffix == ".safetensors":
        return load_prompts(path, clip, classnames=classnames).to(args.device)  # the file carries its depth
    n_blocks = min(len(clip.model.visual.transformer.resblocks), len(clip.model.transformer.resblocks))
    depth, note = prompt_depth(n_blocks, args.depth)
    if note:
        print(f"note: {note}")
    if path is None:
        return PromptedCLIP(clip, classnames, method=args.method, n_ctx=args.n_ctx, depth=depth).to(args.device)
    model = PromptedCLIP(clip, classnames, method="maple", n_ctx=args.n_ctx, depth=depth)
    model.load_prompt_state(load_maple_checkpoint(path), source=str(path))
    return model.to(args.device)


def _run(args: argparse.Namespace) -> int:
    import torch

    from mmlens.data import build, get_manifest
    from mmlens.data.transforms import eval_mask_transform
    from mmlens.trace.tracer import trace_to_store

    manifest = get_manifest(args.dataset)
    probe = build(manifest, args.data_root, args.split, subset=args.subset)
    model = build_prompted(args, probe.classnames)
    size = model.clip.visual.image_size

    dataset = build(manifest, args.data_root, args.split, subset=args.subset, transform=model.preprocess,
                    mask_transform=eval_mask_transform(size), on_error="skip")
    if args.limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
    from mmlens.data import collate

    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate)
    subset = args.subset
    with torch.autocast("cuda", dtype=torch.float16, enabled=str(args.device).startswith("cuda")):
        path = trace_to_store(
            model, loader, args.out, with_reference=args.with_reference, all_queries=args.all_queries,
            store_bias_vectors=args.bias_vectors, attribution=args.attribution, attribution_target="label",
            batch_size=args.batch_size, device=args.device,
            image_split=subset, class_split=[subset] * len(model.classnames), total=len(dataset),
            provenance={"dataset": manifest.name, "manifest_version": str(manifest.manifest_version)},
            overwrite=args.overwrite,
        )
    print(f"wrote {path}")
    return 0

