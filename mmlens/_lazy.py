"""One PEP 562 lazy-export helper for every mmlens package (so that ``import mmlens.x`` stays cheap)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, names: dict[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` that import ``names`` (public name -> module) on first use.

    A name whose module is ``f"{package}.{name}"`` resolves to that module itself (a sub-package);
    otherwise to the attribute of that name in the module. Resolved values are cached in ``namespace``
    (the package's ``globals()``), so each import happens once.

    Examples
    --------
    >>> ns = {}
    >>> getattr_, dir_ = lazy_exports("pkg", {"sqrt": "math"}, ns)
    >>> getattr_("sqrt")(9.0), "sqrt" in ns, dir_()
    (3.0, True, ['sqrt'])
    """

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        imported = importlib.import_module(module)
        value = imported if module == f"{package}.{name}" else getattr(imported, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace.get("__all__", names)))

    return __getattr__, __dir__
