"""Sub-commands of the study's pipeline: ``demo`` and ``reproduce`` (``report`` is viz's, see mmlens/cli.py).

Each command's arguments and body live beside its code: ``add_arguments(parser)`` and
``main(args) -> int`` in modules that import nothing heavy at module level.
"""

from __future__ import annotations


def register(subparsers) -> None:
    """Add ``mmlens demo`` and ``mmlens reproduce``."""
    from mmlens.experiments import demo, reproduce

    for name, module, help_text in (
        ("demo", demo, "the main job on toyworld, end to end (under a minute on two CPU cores)"),
        ("reproduce", reproduce, "the study's pipeline: train, evaluate, trace, statistics, report"),
    ):
        p = subparsers.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(func=module.main)
