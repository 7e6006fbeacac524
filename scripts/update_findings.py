"""Regenerate docs/findings.md: run the default ``mmlens reproduce`` (resumable) and copy its findings page.

Usage: ``python scripts/update_findings.py [--out DIR] [--skip-run] [reproduce options ...]``

Without ``--skip-run`` this runs ``mmlens reproduce --out DIR`` (default ``out/reproduce``, git-ignored: the six
toyworld datasets, seeds 1 2 3, the shipped toy CLIP; resumes if the folder exists), then copies
``DIR/findings.md`` to ``docs/findings.md``. Extra arguments are passed to ``mmlens reproduce``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "out" / "reproduce"), help="reproduce output folder")
    ap.add_argument("--skip-run", action="store_true", help="only copy DIR/findings.md")
    ap.add_argument("--target", default=str(REPO / "docs" / "findings.md"))
    args, rest = ap.parse_known_args(argv)
    if not args.skip_run:
        from mmlens.cli import main as mmlens_main

        code = mmlens_main(["reproduce", "--out", args.out, *rest])
        if code != 0:
            return code
    source = Path(args.out) / "findings.md"
    if not source.is_file():
        print(f"no findings page at {source}: run without --skip-run first")
        return 1
    shutil.copyfile(source, args.target)
    print(f"copied {source} -> {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
