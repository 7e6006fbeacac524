"""The ``mmlens`` command line: one entry point, sub-commands registered by each sub-package."""

from __future__ import annotations

import argparse
import importlib
import sys

from mmlens._version import __version__

# (module, function): the function ``register(subparsers)`` adds the module's sub-commands; every
# sub-command sets ``func`` (called with the parsed args, returns an exit code). Kept as a list so that
# each sub-package owns its own CLI code and only this module assembles them (no package imports
# another package's private CLI module); the order is the order of ``mmlens --help``.
_COMMAND_MODULES = [
    ("mmlens.experiments._cli", "register"),  # demo, reproduce
    ("mmlens.viz._cli", "register_report"),  # report
    ("mmlens.data._cli", "register"),  # data list / verify / toyworld
    ("mmlens.train._cli", "register"),  # toy pretrain, train, evaluate
    ("mmlens.tracing._cli", "register"),  # trace
    ("mmlens.tracing._cli", "register_lens"),  # lens
    ("mmlens.store._cli", "register"),  # store verify
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmlens",
        description="Look inside CLIP models with learned multi-modal prompts (MaPLe and relatives).",
    )
    parser.add_argument("--version", action="version", version=f"mmlens {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full Python traceback when a command stops on an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module, function in _COMMAND_MODULES:
        getattr(importlib.import_module(module), function)(sub)
    return parser


#: Exit code of a run stopped by the user's input (a bad name, a missing file, a store of another run),
#: as argparse uses for bad flags; a bug keeps Python's traceback and exit code 1.
USAGE_ERROR = 2


def _is_user_error(err: BaseException) -> bool:
    """Errors that say what is wrong with the input: shown as one message, without a traceback.

    mmlens raises ``ValueError`` / ``LookupError`` subclasses for bad names, values and files, ``OSError``
    for files that cannot be read or written (a full disk included), and ``StoreIdentityError`` when a
    store belongs to another run. Everything else (``CompletenessError`` among them) is a bug to report.
    """
    if isinstance(err, (ValueError, LookupError, OSError)):
        return True
    from mmlens.store.writer import StoreIdentityError  # torch-free, and only imported once something failed

    if isinstance(err, StoreIdentityError):
        return True
    from mmlens.tracing.spec import ClusterError  # no dask needed to name it

    return isinstance(err, ClusterError)


def main(argv: list[str] | None = None) -> int:
    """Run ``mmlens ARGS``; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    command = " ".join(filter(None, ["mmlens", args.command, getattr(args, "toy_command", None),
                                     getattr(args, "data_command", None)]))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"\n{command}: interrupted. What was finished is kept; rerun the same command to resume.",
              file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug or not _is_user_error(err):
            raise
        print(f"{command}: error: {err}", file=sys.stderr)
        print("(run `mmlens --debug ...` to see the traceback)", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
