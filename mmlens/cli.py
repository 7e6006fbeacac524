"""The ``mmlens`` command line: one entry point, sub-commands registered by each sub-package."""

from __future__ import annotations

import argparse
import importlib
import sys

from mmlens._version import __version__

# Each module defines ``register(subparsers)`` adding its sub-commands; every sub-command sets
# ``func`` (called with the parsed args, returns an exit code). Kept as a list so that each
# sub-package owns its own CLI code.
_COMMAND_MODULES = [
    "mmlens.experiments._cli",  # demo, reproduce, report
    "mmlens.data._cli",  # data list / verify / toyworld
    "mmlens.models._cli",  # toy pretrain
    "mmlens.train._cli",  # train, evaluate
    "mmlens.trace._cli",  # trace
    "mmlens.store._cli",  # store verify
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmlens",
        description="Look inside CLIP models with learned multi-modal prompts (MaPLe and relatives).",
    )
    parser.add_argument("--version", action="version", version=f"mmlens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
