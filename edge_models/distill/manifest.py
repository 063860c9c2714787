"""A distilled model's manifest (``distill.json``): where it came from, what it learned, how it scored.

Written by ``distill train`` (export step), completed by ``distill eval``, read
by the registry, the edge backend (prompt aliases, gate) and the router (tasks,
gate). Plain JSON so an operator can read it with ``cat``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_models.errors import ModelInvalid

__all__ = ["MANIFEST", "ConfidenceGate", "StudentManifest", "write_json_atomic"]

MANIFEST = "distill.json"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


@dataclass(frozen=True)
class ConfidenceGate:
    """Keep the student's answer when its ``signal`` token log-probability is at least ``threshold``.

    Calibrated on the holdout: the lowest threshold that keeps accuracy at
    ``target_accuracy``, measured as ``objective`` says: ``route`` (what
    clients get, kept answers plus the cloud's for the rest) or ``kept`` (the
    kept answers alone). ``coverage`` is the share of holdout answers it
    accepts, ``accepted_accuracy`` their accuracy and ``route_accuracy`` the
    route's as a whole.
    """

    threshold: float
    signal: str = "mean"
    target_accuracy: float = 0.97
    coverage: float = 0.0
    accepted_accuracy: float = 0.0
    objective: str = "route"
    route_accuracy: float = 0.0


@dataclass(frozen=True)
class StudentManifest:
    """What ``distill.json`` holds."""

    version: str
    parent: str
    data_sha256: str
    train_rows: int
    holdout_rows: int
    created_at: str
    # Task tags (x-task / metadata.task) the training rows carried.
    tasks: tuple[str, ...] = ()
    # Fixed system prompt hash -> the alias the student sees (edge_models.distill.prefix).
    prompt_aliases: Mapping[str, str] = field(default_factory=dict)
    gate: ConfidenceGate | None = None
    # Evaluation results (holdout and guards) and training settings, as measured.
    metrics: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    # Seconds per step: train, export, eval.
    seconds: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tasks"] = list(self.tasks)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudentManifest:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        gate = values.get("gate")
        # Gates written before ``objective`` existed were calibrated on the kept answers.
        values["gate"] = ConfidenceGate(**{"objective": "kept", **gate}) if isinstance(gate, Mapping) else None
        values["tasks"] = tuple(values.get("tasks", ()))
        return cls(**values)

    @classmethod
    def load(cls, folder: Path) -> StudentManifest:
        path = folder / MANIFEST
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError as exc:
            raise ModelInvalid(f"{folder} is not a distilled model: {MANIFEST} is missing") from exc
        except (ValueError, TypeError) as exc:
            raise ModelInvalid(f"{path} is not a valid distillation manifest: {exc}") from exc

    @classmethod
    def find(cls, folder: Path) -> StudentManifest | None:
        """The manifest of ``folder`` if it is a distilled model, else None."""
        return cls.load(folder) if (folder / MANIFEST).is_file() else None

    def save(self, folder: Path) -> None:
        write_json_atomic(folder / MANIFEST, self.to_dict())
