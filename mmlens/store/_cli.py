"""``mmlens store verify STORE...``: the deep integrity check of trace stores, for a lab's nightly cron."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add ``mmlens store verify``."""
    p = subparsers.add_parser("store", help="check trace stores", description="Trace-store maintenance.")
    sub = p.add_subparsers(dest="store_command", metavar="COMMAND", required=True)
    v = sub.add_parser(
        "verify",
        help="deep integrity check: every shard's (chunk's) size and checksum",
        description="Check every shard (format-2 stores: chunk) of each store against its writer's record (byte "
        "size and crc32), find files that are missing, truncated, rotten or copied in from another store, and lost "
        "metadata files; shards of a running trace written but not yet recorded are reported as pending. "
        "Stores without a record (schema 1) have every chunk decoded instead. Exit code 0: all stores intact; "
        "1: some store damaged (the report names each chunk and the way out); 2: not a store.",
    )
    v.add_argument("stores", nargs="+", metavar="STORE", help="zarr store directories")
    v.add_argument("--quiet", action="store_true", help="print damaged stores only")
    v.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    from mmlens.store.integrity import verify

    code = 0
    for store in args.stores:
        try:
            report = verify(store)
        except FileNotFoundError as err:
            print(f"ERROR {err}")
            code = max(code, 2)
            continue
        if not report.ok or not args.quiet:
            print(report.text())
        if not report.ok:
            code = max(code, 1)
    return code
