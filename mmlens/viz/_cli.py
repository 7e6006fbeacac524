"""The ``mmlens report`` sub-command: a standalone HTML report of a trace store."""

from __future__ import annotations

import argparse


def register_report(subparsers) -> None:
    """Add ``mmlens report STORE --out x.html`` to ``subparsers``."""
    p = subparsers.add_parser(
        "report",
        help="write a standalone HTML report of a trace store (works offline, without a kernel)",
        description=(
            "Write a self-contained HTML page of a trace store: provenance, layer x head heatmaps "
            "(dataset and variant selectors), per-layer curves with bands, [cls] attention with and "
            "without prompts for a few images (layer and head sliders), EOT attention over token "
            "roles, what the prompts learn (beta's direct effect on the margin when the store was "
            "traced with --direct-effects; the text lens with --lens) and the accuracy / route-ablation "
            "table. All frames are embedded; the page needs no kernel, server or network."
        ),
    )
    p.add_argument("store", help="path of a trace store (zarr directory or netCDF file)")
    p.add_argument("--out", required=True, help="the .html file to write")
    p.add_argument("--images", type=int, default=2, help="images whose attention maps are embedded (default 2)")
    p.add_argument("--max-datasets", type=int, default=12, help="datasets in the heatmap selector (default 12)")
    p.add_argument("--max-classes", type=int, default=50, help="classes in the EOT-attention map (default 50)")
    p.add_argument("--data-root", default=None, help="folder that relative image paths are relative to (optional)")
    p.add_argument("--lens", action="append", default=None, metavar="LENS_NC",
                   help="a text-lens result written by 'mmlens lens --out lens.nc' (repeat for several datasets)")
    p.add_argument("--title", default=None, help="page title (default: 'mmlens report: METHOD')")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from mmlens.viz.report import write_report

    store = Path(args.store)
    if not store.exists():
        print(f"mmlens report: no store at {store}; pass the path written by 'mmlens trace' or "
              "mmlens.trace_to_store", file=sys.stderr)
        return 2
    for path in args.lens or []:
        if not Path(path).exists():
            print(f"mmlens report: no lens file at {path}; pass the file written by 'mmlens lens ... --out "
                  "lens.nc'", file=sys.stderr)
            return 2
    out = write_report(
        store,
        args.out,
        title=args.title or "mmlens report",
        images=args.images,
        max_datasets=args.max_datasets,
        max_classes=args.max_classes,
        data_root=args.data_root,
        lens=args.lens,
    )
    size = out.stat().st_size / 1e6
    print(f"wrote {out} ({size:.1f} MB)")
    return 0
