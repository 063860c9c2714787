"""Targets whose model changes while they run: the edge target serving distilled versions.

An edge target with ``distilled: true`` serves the version its registry
points at (``hybrid-router distill promote|rollback``) and swaps to a new one
live (router/backends/edge.py). What the rest of the gateway needs of that is
the optional contract here, :class:`VersionedBackend`:

* the router puts the serving version and its :class:`StudentCard` in each
  request's target views (a policy may route a task to the student that learned
  it) and the version in the decision trail;
* ``/v1/models`` and the metrics show the serving version and count the swaps;
* a config reload asks each target to :meth:`~VersionedBackend.refresh` at once.

Backends without versions need nothing: :func:`model_version` answers None for
them, and :class:`~router.backends.wrapping.WrappingBackend` passes the calls through.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, cast, runtime_checkable

__all__ = ["ModelVersion", "StudentCard", "SwapResult", "VersionedBackend", "model_version"]


@dataclass(frozen=True, slots=True)
class StudentCard:
    """What a policy may know of a distilled model: what it learned, and how sure of an answer it must be.

    Read from the serving version's manifest (``distill.json``), so it changes when the model swaps.

    >>> card = StudentCard("v3", tasks=frozenset({"banking77"}), gate_threshold=-0.4, gate_signal="mean")
    >>> "banking77" in card.tasks, card.holdout_accuracy
    (True, None)
    """

    version: str
    tasks: frozenset[str] = frozenset()
    # system_hash() of each fixed system prompt the student was trained on (edge_models.distill.prefix).
    prompt_hashes: frozenset[str] = frozenset()
    # Keep the student's answer when its ``gate_signal`` log-probability is at least this; None: no gate.
    gate_threshold: float | None = None
    gate_signal: str | None = None
    holdout_accuracy: float | None = None
    # The share of the holdout the gate accepts (its answers kept); None without a gate.
    gate_coverage: float | None = None


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """Which version of its model a target serves now: ``"base"`` or a distilled ``"v3"``.

    ``parent`` is the model a distilled version was trained from (None for the base model),
    ``student`` its card for the policies.
    """

    version: str
    parent: str | None = None
    student: StudentCard | None = None


@dataclass(frozen=True, slots=True)
class SwapResult:
    """What one swap did. Not ``ok``: the new model failed to load or its smoke test, and ``previous`` still serves."""

    ok: bool
    version: str
    previous: str
    seconds: float = 0.0
    error: str | None = None

    @property
    def changed(self) -> bool:
        return self.ok and self.version != self.previous


@runtime_checkable
class VersionedBackend(Protocol):
    """A backend whose model can change while it runs."""

    def model_version(self) -> ModelVersion | None:
        """The version serving now; None when there are no versions (a wrapper over a cloud target)."""
        ...

    def swap_counts(self) -> Mapping[str, int]:
        """Live swaps so far by outcome, ``ok`` and ``failed``, for the metrics endpoint."""
        ...

    async def refresh(self) -> SwapResult | None:
        """Serve the version the registry points at now; None when it already serves (or has no registry)."""
        ...


def model_version(backend: object) -> ModelVersion | None:
    """``backend``'s serving version if it has versions, else None.

    >>> from router.backends.fake import ScriptedBackend
    >>> model_version(ScriptedBackend("cloud")) is None
    True
    """
    # Not isinstance(backend, VersionedBackend): a runtime Protocol check costs ~10 us, and this runs per target
    # for every request (router.describe_targets).
    method = getattr(backend, "model_version", None)
    return cast("ModelVersion | None", method()) if method is not None else None
