"""``mmlens trace``: trace a prompted CLIP on a dataset split into a zarr store."""

from __future__ import annotations

import argparse

# the schema is a names-only module (no numpy, xarray or torch), so `mmlens --help` stays light
from mmlens.store.schema import ATTRIBUTION_METHODS

# what builds a run's model and data lives with TraceSpec (one place for `mmlens trace` and cluster workers)
from mmlens.tracing.spec import _precision, build_prompted, file_list_sha256, run_seed

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


def _direct_mode(text: str) -> str:
    """argparse type of ``--direct-effects``: ``margin`` or ``all``, checked by ``trace``'s own parser."""
    from mmlens.tracing.direct import parse_direct_effects

    try:
        return parse_direct_effects(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
    p.add_argument("--direct-effects", type=_direct_mode, nargs="?", const="margin", default=None,
                   metavar="margin|all",
                   help="also split every logit exactly into the direct effects of the embedding, each block's "
                        "heads (original path and prompt bias), output bias and MLP, and the final LayerNorm's "
                        "bias, both towers, into the store's `direct` group (docs/math.md): on the label logit and "
                        "the margin (bare flag: margin), or on every class as well (all)")
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


def register_lens(subparsers) -> None:
    """Add ``mmlens lens``."""
    from mmlens.models.loading import add_quick_gelu_argument

    p = subparsers.add_parser(
        "lens",
        help="the text lens: which words the prompt bias of each layer points to",
        description="Measure the dataset-mean prompt bias β of every prompted block (per layer, per head) and "
        "each injected prompt token's value, map them into the joint space through the linearised readout, and "
        "rank a vocabulary of zero-shot text embeddings against them, with a shuffled-direction control "
        "(docs/lens.md). Writes a netCDF file (open it with xarray.open_dataset) and prints the table.",
    )
    p.add_argument("--model", default="mmlens-toy", help="open_clip model name (default: mmlens-toy)")
    p.add_argument("--pretrained", default=None,
                   help="open_clip tag or weights file (default: the shipped 'toyworld' weights for mmlens-toy, "
                        "'openai' otherwise)")
    add_quick_gelu_argument(p)
    p.add_argument("--prompts", default=None,
                   help="the trained prompts: an mmlens prompt file (.safetensors) or a published MaPLe / IVLP / "
                        "CoOp checkpoint. Without it the prompts are at their initialisation (--method, --depth, "
                        "--n-ctx): a reference, not a result")
    p.add_argument("--method", default="maple", help="prompt method without --prompts")
    p.add_argument("--depth", type=int, default=None, help="prompt depth without --prompts (default: the recipe's)")
    p.add_argument("--n-ctx", type=int, default=2, help="prompt tokens without --prompts")
    p.add_argument("--dataset", required=True, help="dataset name (see `mmlens data list`)")
    p.add_argument("--data-root", required=True, help="folder holding the datasets in the CoOp layout")
    p.add_argument("--split", default="test", help="the images β is averaged over: train / val / test (default)")
    p.add_argument("--subset", default="all", choices=["all", "base", "novel"],
                   help="classes (images and class prompts) to measure on (default: all)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--vocabulary", default=None,
                   help="phrase file (one phrase per line, '#' comments, '[section]' headers; default: the shipped "
                        "mmlens/assets/lens_vocabulary.txt). The dataset's class names are always added")
    p.add_argument("--no-other-classnames", action="store_true",
                   help="leave the other datasets' class names out of the vocabulary")
    p.add_argument("--top", type=int, default=5, help="vocabulary entries kept per direction (default 5)")
    p.add_argument("--shuffles", type=int, default=1000, help="shuffled directions per direction (default 1000)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "amp", "bf16"],
                   help="how the model runs, as for `mmlens trace` (the lens itself is float32); auto = fp16 on "
                        "cuda, fp32 elsewhere")
    p.add_argument("--seed", type=int, default=None,
                   help="the run's seed (read from --prompts when recorded); also seeds the shuffles")
    p.add_argument("--out", default="lens.nc", help="netCDF file to write (default: lens.nc)")
    p.set_defaults(func=_run_lens)


def _run_lens(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from mmlens.data import build, collate, get_manifest
    from mmlens.stats.lens import lens_markdown
    from mmlens.tracing.lens import lens, other_classnames

    out = Path(args.out)
    if out.suffix not in (".nc", ".nc4"):
        raise ValueError(f"--out {args.out}: the lens is written as netCDF; give a file name ending in .nc.")
    if args.prompts is not None and not Path(args.prompts).exists():
        raise FileNotFoundError(f"--prompts {args.prompts}: no such file or folder. Pass the prompts written by "
                                "`mmlens train` (prompts.safetensors) or a published checkpoint.")
    if args.vocabulary is not None and not Path(args.vocabulary).is_file():
        raise FileNotFoundError(f"--vocabulary {args.vocabulary}: no such file. Omit it for the shipped phrase list.")
    args.seed = run_seed(args.prompts, args.seed)
    manifest = get_manifest(args.dataset)
    probe = build(manifest, args.data_root, args.split, subset=args.subset)
    model = build_prompted(args, probe.classnames)
    if args.prompts is None:
        print("note: no --prompts: the lens of prompts at their initialisation (a reference, not a result)")
    dataset = build(manifest, args.data_root, args.split, subset=args.subset, transform=model.preprocess)
    if args.limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate)
    with _precision(args).autocast():
        ds = lens(model, loader, vocabulary=args.vocabulary,
                  other_classnames=() if args.no_other_classnames else other_classnames(manifest.name),
                  top=args.top, n_shuffles=args.shuffles, seed=args.seed, batch_size=args.batch_size,
                  device=args.device,
                  provenance={"dataset": manifest.name, "manifest_version": str(manifest.manifest_version),
                              "seed": args.seed, "split": args.split, "subset": args.subset, "limit": args.limit})
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(out, engine="h5netcdf")
    print(lens_markdown(ds, heading=f"The text lens on {manifest.name}"))
    print(f"wrote {out}")
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
