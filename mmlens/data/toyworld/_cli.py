"""``mmlens data toyworld``: write the toyworld datasets to disk (called by mmlens/data/_cli.py)."""

from __future__ import annotations

import argparse
import time


def add_toyworld_command(data_subparsers) -> None:
    """Add ``mmlens data toyworld --out DIR [--seed S] [--size small|full] [--domain D ...]``."""
    from mmlens.data.toyworld.domains import DOMAINS

    p = data_subparsers.add_parser(
        "toyworld",
        help="generate the toyworld datasets (CoOp layout, exact masks) under a data root",
        description="Generate the toyworld photo domain and its six shifted downstream datasets in the CoOp "
        "layout (images/, masks/, split_zhou_<Name>.json) under --out; the manifests are packaged "
        "(`mmlens data list`). Same seed -> identical files.",
    )
    p.add_argument("--out", required=True, help="data root to write into (one folder per dataset)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.add_argument(
        "--size",
        choices=["small", "full"],
        default="full",
        help="images per class: small = 16/4/8, full = 32/8/40 train/val/test (default full)",
    )
    p.add_argument(
        "--domain",
        action="append",
        choices=list(DOMAINS),
        help="only this domain (repeatable); default: all seven",
    )
    p.set_defaults(func=_cmd_toyworld)


def _cmd_toyworld(args: argparse.Namespace) -> int:
    from mmlens.data.toyworld.domains import DOMAINS
    from mmlens.data.toyworld.export import write_domain

    keys = args.domain or list(DOMAINS)
    total, t0 = 0, time.perf_counter()
    for key in keys:
        t = time.perf_counter()
        info = write_domain(key, args.out, seed=args.seed, size=args.size)
        n = sum(info["split_sizes"].values())
        total += n
        sizes = "/".join(str(info["split_sizes"][s]) for s in ("train", "val", "test"))
        print(
            f"{info['name']:<15} {len(info['classes']):>3} classes  train/val/test {sizes:<14} "
            f"{time.perf_counter() - t:5.1f} s"
        )
    print(f"wrote {total} images (+ masks) under {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0
