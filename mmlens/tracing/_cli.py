"""``mmlens trace``: trace a prompted CLIP on a dataset split into a zarr store."""

from __future__ import annotations

import argparse

# the schema is a names-only module (no numpy, xarray or torch), so `mmlens --help` stays light
from mmlens.store.schema import ATTRIBUTION_METHODS

# what builds a run's model and data lives with TraceSpec (one place for `mmlens trace` and cluster workers)
from mmlens.tracing.spec import build_prompted, file_list_sha256, run_seed

__all__ = ["register", "build_prompted", "file_list_sha256", "run_seed"]


def _attribution_methods(text: str) -> list[str]:
    """argparse type of ``--attribution``: comma-separated method names, checked by ``trace``'s own parser."""
    from mmlens.tracing.tracer import parse_attribution

    try:
        names = list(parse_attribution(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names among {', '.join(ATTRIBUTION_METHODS)}")
    return names


def register(subparsers) -> None:
    """Add ``mmlens trace``."""
    from mmlens.models.loading import add_quick_gelu_argument
    from mmlens.tracing.spec import add_cluster_arguments

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
    add_quick_gelu_argument(p)
    p.add_argument("--prompts", default=None,
                   help="mmlens prompt file (.safetensors) or a published MaPLe / IVLP / CoOp checkpoint "
                        "(model.pth.tar-N or its folder, e.g. eurosat/base/seed1); its method, depth and n_ctx "
                        "come from the file")
    p.add_argument("--method", default="maple", help="prompt method without --prompts (random prompts; zeroshot: "
                                                     "none)")
    p.add_argument("--depth", type=int, default=None,
                   help="prompt depth without --prompts (default: the recipe's 9, clipped to all blocks but the "
                        "last, with a note)")
    p.add_argument("--n-ctx", type=int, default=2, help="prompt tokens without --prompts")
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
                        "zeroshot): " + ", ".join(ATTRIBUTION_METHODS) + ". Costly: integrated gradients run "
                        "the model n_steps (32; prompt_ig 16) times per image, occlusion once per patch")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "amp", "bf16"],
                   help="how the model runs (statistics are float32 whatever it is): fp16 = float16 weights "
                        "under float16 autocast; amp / bf16 = float32 weights under float16 / bfloat16 "
                        "autocast; auto = fp16 on cuda, fp32 elsewhere (default)")
    p.add_argument("--seed", type=int, default=None,
                   help="the run's seed, stored as the store's `seed`: read from --prompts when the file records "
                        "its training seed (a different --seed is refused); otherwise this value (default 0), "
                        "which also seeds random weights and prompt inits")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store instead of resuming")
    add_cluster_arguments(p)
    p.add_argument("--images-per-shard", type=int, default=None, metavar="N",
                   help="with --workers / --scheduler: input items per region, the unit of work of one task "
                        "(default: sized by bytes, rounded to a multiple of --batch-size)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mmlens.tracing.spec import TraceSpec

    spec = TraceSpec.from_args(args)
    args.seed = spec.seed
    if getattr(args, "workers", None) is not None or getattr(args, "scheduler", None) is not None:
        return _run_on_cluster(spec, args)
    from mmlens.tracing.tracer import trace_to_store

    built = spec.build()
    options = dict(built.options)
    # autocast on the device the model runs on (not always "cuda"): --device cpu --precision amp runs the
    # GPU path on CPU; the split inside stays float32 (mmlens.tracing.decompose)
    with built.precision.autocast():
        path = trace_to_store(
            built.model, built.loader(), args.out, with_reference=False, variants=options.pop("variants"),
            batch_size=options.pop("batch_size"), total=len(built.dataset), provenance=built.provenance,
            overwrite=args.overwrite, **options,
        )
    print(f"wrote {path}")
    return 0


def _run_on_cluster(spec, args: argparse.Namespace) -> int:
    """``--workers N`` / ``--scheduler ADDRESS``: the same store, traced by a dask.distributed cluster."""
    from mmlens.tracing.distributed import cluster_client
    from mmlens.tracing.tracer import trace_to_store

    with cluster_client(workers=args.workers, scheduler=args.scheduler, device=spec.device) as client:
        path = trace_to_store(spec, args.out, client=client, overwrite=args.overwrite,
                              images_per_shard=getattr(args, "images_per_shard", None))
    print(f"wrote {path}")
    return 0
