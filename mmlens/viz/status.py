"""Whether a store is complete or still being written: the one place the viewers ask (repointable)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmlens.store import schema

__all__ = ["store_status"]


def store_status(store: Any) -> dict[str, Any]:
    """``{"complete": bool | None, "images": n, "expected": m | None, "message": str}`` of a store.

    Reads the writer's progress record (root attr ``_progress``, docs/store_schema.md) straight from
    the zarr metadata, without torch and without opening arrays. ``complete`` is ``None`` when the
    store has no progress record (an in-memory trace, a netCDF file, a store written in one go).
    This is the single function the explorer and the report call; it is meant to be repointed at
    ``mmlens.store``'s own status function once that exists.

    Parameters
    ----------
    store
        A :class:`~mmlens.viz.slices.StudyView`, a path, or an object with a ``source`` path.

    Examples
    --------
    >>> store_status("/nonexistent")["complete"] is None
    True
    """
    path = getattr(store, "source", store)
    out: dict[str, Any] = {"complete": None, "images": None, "expected": None, "message": ""}
    if path is None or not isinstance(path, (str, Path)):
        return out
    path = Path(path)
    raw = None
    for name in ("zarr.json", ".zattrs"):  # zarr v3, then v2
        meta = path / name
        if meta.is_file():
            try:
                attrs = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return out
            attrs = attrs.get("attributes", attrs) if name == "zarr.json" else attrs
            raw = attrs.get(schema.PROGRESS_ATTR)
            break
    if raw is None:
        return out
    progress = json.loads(raw) if isinstance(raw, str) else dict(raw)
    n, m = int(progress.get("images", 0)), progress.get("expected")
    out.update(complete=bool(progress.get("complete", False)), images=n, expected=m)
    if not out["complete"]:
        of = f"{n} of {m} images" if m is not None else f"{n} images so far"
        out["message"] = (f"incomplete: {of} (the store is still being written or was interrupted; "
                          "press refresh to read what has been added)")
    return out
