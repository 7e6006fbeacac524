"""Sub-commands of this sub-package (see mmlens/cli.py): ``mmlens data list|verify|toyworld``."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path


def _cmd_list(args: argparse.Namespace) -> int:
    from mmlens.data.manifest import get_manifest, list_manifests

    root = Path(args.root).expanduser() if args.root else None
    if root is not None and not root.is_dir():
        print(f"error: data root {str(root)!r} does not exist or is not a folder.", file=sys.stderr)
        return 2
    header = ["dataset", "kind", "classes", "layout", "folder", "splits (train/val/test)", "roles"]
    if root is not None:
        header.append("present")
    rows = []
    for name in list_manifests():
        m = get_manifest(name)
        sizes = "/".join(str(m.expected_split_sizes.get(s, "-")) for s in ("train", "val", "test"))
        roles = []
        if m.protocol.get("base_to_novel"):
            roles.append("b2n")
        if m.protocol.get("cross_dataset_source"):
            roles.append("xd-source")
        if m.protocol.get("cross_dataset_target"):
            roles.append("xd-target")
        if m.protocol.get("domain_generalisation_of"):
            roles.append(f"dg-of-{m.protocol['domain_generalisation_of']}")
        row = [m.name, m.kind, str(m.num_classes), m.layout, m.folder + "/", sizes, ",".join(roles) or "-"]
        if root is not None:
            row.append("yes" if m.dataset_dir(root).is_dir() else "no")
        rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip())
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from mmlens.data.manifest import ManifestError, get_manifest
    from mmlens.data.verification import format_reports, verify_root

    root = Path(args.root).expanduser()
    if not root.is_dir():
        print(
            f"error: data root {str(root)!r} does not exist or is not a folder; pass the folder holding "
            "the dataset folders (eurosat/, imagenet/, ...).",
            file=sys.stderr,
        )
        return 2
    try:
        datasets = [get_manifest(d).name for d in args.dataset] if args.dataset else None
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    reports = verify_root(
        root, datasets, decode=not args.quick, check_counts=not args.skip_counts, workers=args.workers,
        progress=True,
    )
    if not reports:
        print(f"No known dataset folder under {root} (see `mmlens data list --root {root}`).")
        return 1
    print(format_reports(reports, max_listed=args.max_listed))
    return 0 if all(r.ok for r in reports) else 1


def register(subparsers) -> None:
    """Add ``mmlens data ...`` to ``subparsers``."""
    data = subparsers.add_parser(
        "data",
        help="dataset manifests: list, verify local copies, toyworld",
        description="Datasets known to mmlens and checks of local copies.",
    )
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data.set_defaults(func=lambda args: (data.print_help(), 0)[1])

    p = data_sub.add_parser("list", help="known datasets (and which are present under --root)")
    p.add_argument("--root", help="data root; adds a 'present' column")
    p.set_defaults(func=_cmd_list)

    p = data_sub.add_parser(
        "verify",
        help="check local copies against their manifests (non-zero exit on problems)",
        description="Check missing files, corrupt images and masks, masks whose size is not their image's, "
        "unexpected class folders and split sizes (a toyworld copy: those of the size it was generated at). "
        "Also lists files the loader decodes by a special rule (EXIF orientation, 16-bit, transparency, CMYK).",
    )
    p.add_argument("--root", required=True, help="data root holding the dataset folders")
    p.add_argument(
        "--dataset",
        action="append",
        help="dataset name (case-insensitive; repeatable); default: every dataset found under --root",
    )
    p.add_argument("--quick", action="store_true", help="check that files exist, do not decode images or masks")
    p.add_argument("--skip-counts", action="store_true", help="do not compare split sizes with the manifest")
    p.add_argument("--workers", type=int, default=2, help="threads used to decode images (default 2)")
    p.add_argument("--max-listed", type=int, default=10, help="problems listed per kind (default 10)")
    p.set_defaults(func=_cmd_verify)

    # The toyworld generator (owned by another module) adds `mmlens data toyworld --out DIR` here. Guarded
    # with hasattr / ImportError so this CLI works before (or without) the toyworld CLI module.
    try:
        toyworld_cli = importlib.import_module("mmlens.data.toyworld._cli")
    except ModuleNotFoundError as exc:  # only "module not written yet"; real import bugs still raise
        if exc.name != "mmlens.data.toyworld._cli":
            raise
        toyworld_cli = None
    if toyworld_cli is not None and hasattr(toyworld_cli, "add_toyworld_command"):
        toyworld_cli.add_toyworld_command(data_sub)
