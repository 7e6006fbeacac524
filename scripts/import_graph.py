"""Print mmlens's package-level import graph: edges, cycles, arrows against the allowed direction.

Reads every ``mmlens/**/*.py`` with :mod:`ast` (nothing is imported), so it also runs where torch is
missing. Imports inside functions count too: a lazy import is still an arrow in the design. Edges are
between top-level sub-packages (``models``, ``tracing``, ``store`` ...); the root modules
(``mmlens/__init__.py``, ``cli.py``, ``_lazy.py`` ...) are the ``(root)`` node, which may import
anything and which everything may import for its helpers.

Run ``python scripts/import_graph.py`` (``--modules`` also lists the module-level edges that
cross packages, ``--private`` the imports of a private module from another package).
The exit code is 1 when there is a cycle, a wrong-direction edge or a torch import in store/stats.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mmlens"

#: package -> the packages it may import (besides the root helpers). The design's arrows:
#: models <- tracing <- experiments; data <- train; store <- stats <- viz; experiments on top. store and
#: stats are the torch-free foundation (vocabularies, derived numbers) that any package may use, but
#: store never imports stats.
_FOUNDATION = {"store", "stats"}
ALLOWED: dict[str, set[str]] = {
    "store": set(),
    "stats": {"store"},
    "models": _FOUNDATION,
    "data": _FOUNDATION,
    "tracing": {"models", "data", "attribution"} | _FOUNDATION,
    "attribution": {"models", "data"} | _FOUNDATION,
    "train": {"models", "data", "tracing"} | _FOUNDATION,  # route ablations run through interventions
    "viz": {"tracing", "models", "data"} | _FOUNDATION,  # tracing/models only for on-demand traces
    "experiments": {"models", "data", "tracing", "attribution", "train", "viz"} | _FOUNDATION,
}
TORCH_FREE = {"store", "stats"}
HEAVY = ("torch", "open_clip", "torchvision", "captum")


def _package(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "mmlens":
        return ""
    if len(parts) < 2:
        return "(root)"
    candidate = parts[1]
    return candidate if (ROOT / candidate).is_dir() else "(root)"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _reexports(package: str) -> dict[str, str]:
    """Public name -> defining module, read from a package ``__init__`` (its ``_LAZY`` dict and its imports)."""
    init = ROOT.parent / package.replace(".", "/") / "__init__.py"
    if not init.exists():
        return {}
    names: dict[str, str] = {}
    for node in ast.walk(ast.parse(init.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_LAZY" for t in node.targets):
            if isinstance(node.value, ast.Dict):
                for k, v in zip(node.value.keys, node.value.values):
                    if isinstance(k, ast.Constant) and isinstance(v, ast.Constant):
                        names[k.value] = v.value
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmlens"):
            for alias in node.names:
                names[alias.asname or alias.name] = node.module
    return names


def _imports(path: Path) -> list[tuple[str, int, str]]:
    """Modules imported by ``path``: (defining module, line, module as written), relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_name(path).split(".")
    is_pkg = path.name == "__init__.py"
    found: list[tuple[str, int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_pkg else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from mmlens.x import y``: the sub-module ``mmlens.x.y``, or the module a package re-exports
            # ``y`` from (its ``__init__`` is only a hub), or else the package itself
            reexports = _reexports(module) if module.startswith("mmlens") else {}
            for alias in node.names:
                sub = ROOT.parent / f"{module}.{alias.name}".replace(".", "/")
                if sub.with_suffix(".py").exists() or sub.is_dir():
                    found.append((f"{module}.{alias.name}", node.lineno, f"{module}.{alias.name}"))
                elif alias.name in reexports and reexports[alias.name] != module:
                    found.append((reexports[alias.name], node.lineno, module))
                else:
                    found.append((module, node.lineno, module))
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true", help="list module-level cross-package edges")
    parser.add_argument("--private", action="store_true", help="list private modules used across packages")
    args = parser.parse_args(argv)

    pkg_edges: dict[str, set[str]] = defaultdict(set)
    mod_edges: dict[str, set[str]] = defaultdict(set)
    witnesses: dict[tuple[str, str], list[str]] = defaultdict(list)
    torch_in: list[str] = []
    private: list[str] = []
    for path in sorted(ROOT.rglob("*.py")):
        src = _module_name(path)
        src_pkg = _package(src)
        for module, line, written in _imports(path):
            if module.split(".")[0] in HEAVY and src_pkg in TORCH_FREE:
                torch_in.append(f"{src}:{line} imports {module}")
            dst_pkg = _package(module)
            if not dst_pkg:
                continue
            if module != src and module.startswith("mmlens."):
                mod_edges[src].add(module)
            if dst_pkg != src_pkg:
                pkg_edges[src_pkg].add(dst_pkg)
                witnesses[(src_pkg, dst_pkg)].append(f"{src}:{line} -> {module}")
                # a private module named in another package's import (a package's public re-export is fine)
                if dst_pkg != "(root)" and any(p.startswith("_") for p in written.split(".")[2:]):
                    private.append(f"{src}:{line} -> {written}")

    print("package edges (importer -> imported):")
    for src in sorted(pkg_edges):
        print(f"  {src:12s} -> {', '.join(sorted(pkg_edges[src]))}")

    pkg_cycles = _cycles({k: v - {"(root)"} for k, v in pkg_edges.items() if k != "(root)"})
    mod_cycles = _cycles(mod_edges)
    wrong = [(s, d) for s, targets in pkg_edges.items() for d in targets
             if s != "(root)" and d != "(root)" and d not in ALLOWED.get(s, set())]

    print(f"\npackage cycles: {len(pkg_cycles)}")
    for comp in pkg_cycles:
        print("  " + " <-> ".join(comp))
    print(f"module cycles: {len(mod_cycles)}")
    for comp in mod_cycles:
        print("  " + " <-> ".join(comp))
    print(f"wrong-direction edges: {len(wrong)}")
    for s, d in sorted(wrong):
        print(f"  {s} -> {d}")
        for w in witnesses[(s, d)]:
            print(f"      {w}")
    print(f"torch imports in {'/'.join(sorted(TORCH_FREE))}: {len(torch_in)}")
    for line in torch_in:
        print("  " + line)
    private = list(dict.fromkeys(private))  # one line per import statement, not per imported name
    print(f"private modules used across packages: {len(private)}")
    if args.private:
        for line in private:
            print("  " + line)
    if args.modules:
        print("\nmodule edges across packages:")
        for (s, d), ws in sorted(witnesses.items()):
            for w in ws:
                print(f"  [{s} -> {d}] {w}")
    return 1 if (pkg_cycles or mod_cycles or wrong or torch_in) else 0


if __name__ == "__main__":
    sys.exit(main())
