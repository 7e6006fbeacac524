"""The record of finished pipeline steps (``steps.json`` in the output folder), written atomically after each step."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["Ledger", "SettingsMismatch"]

FORMAT = "mmlens-reproduce-steps/1"


class SettingsMismatch(ValueError):
    """The output folder was made with other settings; its finished steps would not be comparable."""


class Ledger:
    """Finished steps of a run, keyed by name, persisted to ``<out>/steps.json``.

    ``settings`` are the options that change results (model, recipe, image counts ...): an
    output folder made with other settings is refused, so that numbers from different
    experiments are never mixed. Datasets and seeds may be added on a rerun (new steps run, the
    study-wide steps are redone).

    Examples
    --------
    >>> import tempfile
    >>> led = Ledger(tempfile.mkdtemp(), {"epochs": 5})
    >>> led.done("train/A/seed1")
    False
    >>> led.finish("train/A/seed1", seconds=1.0, outputs={"prompts": "p.safetensors"})
    >>> Ledger(led.path.parent, {"epochs": 5}).done("train/A/seed1")
    True
    """

    def __init__(self, out: str | os.PathLike, settings: Mapping[str, Any]) -> None:
        self.path = Path(out) / "steps.json"
        self.settings = json.loads(json.dumps(dict(settings)))
        self.steps: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            data = json.loads(self.path.read_text())
            if data.get("format") != FORMAT:
                raise SettingsMismatch(
                    f"{self.path} is not an mmlens reproduce record (format {data.get('format')!r}); "
                    "use another --out.")
            old = data.get("settings", {})
            diffs = [f"{k}: folder {old.get(k)!r}, this run {v!r}" for k, v in self.settings.items()
                     if json.dumps(old.get(k), sort_keys=True) != json.dumps(v, sort_keys=True)]
            if diffs:
                raise SettingsMismatch(
                    f"{self.path.parent} holds a reproduce run made with other settings:\n  " + "\n  ".join(diffs)
                    + "\nUse another --out, rerun with the folder's settings, or pass --restart to delete its "
                    "finished steps and start afresh."
                )
            self.steps = dict(data.get("steps", {}))

    def done(self, name: str, inputs: Any = None) -> bool:
        """Whether step ``name`` finished (with the same ``inputs``, when given)."""
        entry = self.steps.get(name)
        if entry is None:
            return False
        return inputs is None or entry.get("inputs") == json.loads(json.dumps(inputs))

    def get(self, name: str) -> dict[str, Any]:
        return self.steps[name]

    def finish(self, name: str, *, seconds: float, outputs: Mapping[str, Any] | None = None,
               inputs: Any = None, info: Mapping[str, Any] | None = None) -> None:
        """Record step ``name`` as finished (atomically: a kill never leaves a half-written record)."""
        self.steps[name] = {
            "seconds": round(float(seconds), 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "outputs": json.loads(json.dumps(dict(outputs or {}), default=str)),
            "inputs": json.loads(json.dumps(inputs, default=str)) if inputs is not None else None,
            "info": json.loads(json.dumps(dict(info or {}), default=str)),
        }
        self._write()

    def forget(self, name: str) -> None:
        if self.steps.pop(name, None) is not None:
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"format": FORMAT, "settings": self.settings, "steps": self.steps}, indent=1))
        os.replace(tmp, self.path)
