"""The versions of one distilled model, and which one serves.

Layout, under ``<models_dir>/distilled/<base>/``::

    v1/  v2/  v3/        model folders (ONNX GenAI + distill.json), never modified once written
    registry.json        {"current": "v2", "history": [{"action": "promote", "version": "v2", "at": ...}, ...]}

``promote`` and ``rollback`` rewrite ``registry.json`` atomically; a gateway
whose edge target has ``distilled: true`` watches it and swaps models live
(router/backends/edge.py). ``current: null`` means the base model serves.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_models.catalog import default_models_dir
from edge_models.distill.manifest import write_json_atomic
from edge_models.errors import EdgeModelError, ModelNotFound

__all__ = ["REGISTRY_FILE", "Registry", "default_registry_dir"]

REGISTRY_FILE = "registry.json"
_VERSION = re.compile(r"v(\d+)")


def default_registry_dir(base: str, models_dir: Path | None = None) -> Path:
    return (models_dir or default_models_dir()) / "distilled" / base


@dataclass(frozen=True)
class Registry:
    root: Path

    @property
    def pointer(self) -> Path:
        return self.root / REGISTRY_FILE

    def state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.pointer.read_text())
        except FileNotFoundError:
            return {"current": None, "history": []}
        except ValueError as exc:
            raise EdgeModelError(f"{self.pointer} is not valid JSON: {exc}") from exc
        return {"current": data.get("current"), "history": list(data.get("history", []))}

    def versions(self) -> list[str]:
        """Built versions, oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p.name) for p in self.root.iterdir() if (m := _VERSION.fullmatch(p.name))]
        return [name for _, name in sorted(found)]

    def next_version(self) -> str:
        versions = self.versions()
        return f"v{int(versions[-1][1:]) + 1 if versions else 1}"

    def folder(self, version: str) -> Path:
        folder = self.root / version
        if not _VERSION.fullmatch(version) or not folder.is_dir():
            known = ", ".join(self.versions()) or "none"
            raise ModelNotFound(f"no distilled version {version!r} in {self.root} (built: {known})")
        return folder

    def current(self) -> str | None:
        current = self.state()["current"]
        return str(current) if current else None

    def current_folder(self) -> Path | None:
        version = self.current()
        return self.folder(version) if version else None

    def _write(self, current: str | None, action: str, version: str | None, note: Mapping[str, Any]) -> None:
        state = self.state()
        entry = {"action": action, "version": version, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        state["history"].append({**entry, **note})
        state["current"] = current
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.pointer, state)

    def promote(self, version: str, **note: Any) -> None:
        self.folder(version)
        self._write(version, "promote", version, note)

    def rollback(self, **note: Any) -> str | None:
        """Serve the version promoted before the current one (None: the base model). Returns it."""
        state = self.state()
        current = state["current"]
        if current is None:
            raise EdgeModelError(f"nothing to roll back in {self.root}: the base model is serving")
        # The promotions still standing, oldest first: each rollback pops the newest.
        standing: list[str | None] = [None]
        for entry in state["history"]:
            if entry.get("action") == "promote":
                standing.append(entry.get("version"))
            elif entry.get("action") == "rollback" and len(standing) > 1:
                standing.pop()
        if standing and standing[-1] == current and len(standing) > 1:
            standing.pop()
        previous = standing[-1]
        self._write(previous, "rollback", current, note)
        return previous
