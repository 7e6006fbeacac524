"""Write data_manifests/toyworld_<domain>.yaml from mmlens.data.toyworld and validate them against the schema.

Usage: ``python scripts/toyworld_manifests.py [--check]`` (``--check``: fail if a file is out of date).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from mmlens.data.manifest import validate_manifest
from mmlens.data.toyworld.domains import DOMAINS
from mmlens.data.toyworld.export import manifest_yaml

OUT = Path(__file__).resolve().parent.parent / "data_manifests"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="only compare with the files on disk")
    args = ap.parse_args(argv)
    stale = []
    for key in DOMAINS:
        text = manifest_yaml(key)
        path = OUT / f"toyworld_{key}.yaml"
        validate_manifest(yaml.safe_load(text), path)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run scripts/toyworld_manifests.py): " + ", ".join(map(str, stale)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
