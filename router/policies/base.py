"""The policy contract.

A policy looks at one request's :class:`~router.features.Features` and the
targets' live state, and returns a :class:`Verdict`: targets it forbids, a
target it requires, a target it prefers, scores it adds. Every verdict says
why, in words a person reads in ``/v1/route`` and the ``x-route-reason``
header. :class:`router.router.Router` combines the verdicts in the configured
order; policies never see each other, only the running tally in
:attr:`RoutingContext.so_far`.

Writing one::

    class NightShift:
        name = "night_shift"

        class Options(BaseModel):
            target: str

        def __init__(self, options: "NightShift.Options", targets: TargetCatalog) -> None:
            targets.check(options.target, key="target")
            self.target = options.target

        def evaluate(self, ctx: RoutingContext) -> Verdict:
            return Verdict(reason="after hours", prefer=self.target)

and load it with ``policies: [{type: "mypkg.policies:NightShift", target: edge}]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel

from router.backends.base import Capabilities, Readiness
from router.backends.cascade import Signal
from router.backends.versions import StudentCard
from router.chat import ChatRequest
from router.errors import ConfigError
from router.features import Features
from router.latency import LiveLatency

__all__ = [
    "Cascade",
    "OutcomeObserver",
    "Policy",
    "PolicyClass",
    "PreparingPolicy",
    "RoutingContext",
    "ShadowObserver",
    "StudentCard",
    "TargetCatalog",
    "TargetView",
    "Tally",
    "Verdict",
]


@dataclass(frozen=True, slots=True)
class Cascade:
    """Answer on ``first``; escalate to ``then`` when the answer's ``signal`` is below ``threshold``.

    Set by the ``cascade`` policy; the router resolves it per request, with
    ``blocked`` saying why escalation is off (``then`` forbidden or not ready)
    and ``redact`` whether the escalated request must be redacted.
    """

    first: str
    then: str
    threshold: float
    signal: Signal = "mean"
    blocked: str = ""
    redact: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"first": self.first, "then": self.then, "signal": self.signal}
        out["threshold"] = self.threshold
        if self.blocked:
            out["blocked"] = self.blocked
        return out


@dataclass(frozen=True, slots=True)
class Verdict:
    """One policy's say on one request.

    >>> Verdict(reason="personal data stays local", forbid={"cloud": "personal data"}).abstains
    False
    """

    reason: str
    forbid: Mapping[str, str] = field(default_factory=dict)
    require: str | None = None
    prefer: str | None = None
    scores: Mapping[str, float] = field(default_factory=dict)
    # Personal data must be redacted (and restored) if the request leaves the machine.
    redact: bool = False
    # With redact: whether restored values (credentials never) may go back into tool-call arguments.
    restore_in_tool_arguments: bool = True
    # Answer on the preferred target first and escalate when unsure (the ``cascade`` policy).
    cascade: Cascade | None = None

    @property
    def abstains(self) -> bool:
        return not (self.forbid or self.require or self.prefer or self.scores or self.redact)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.forbid:
            out["forbid"] = dict(self.forbid)
        if self.require:
            out["require"] = self.require
        if self.prefer:
            out["prefer"] = self.prefer
        if self.scores:
            out["scores"] = {name: round(score, 4) for name, score in self.scores.items()}
        if self.redact:
            out["redact"] = True
        if self.cascade:
            out["cascade"] = self.cascade.to_dict()
        return out


@dataclass(frozen=True, slots=True)
class TargetView:
    """What a policy may know about one target: static traits plus live state."""

    name: str
    model: str
    capabilities: Capabilities
    readiness: Readiness
    # USD per million tokens.
    price_input: float = 0.0
    price_output: float = 0.0
    # Operator-assigned quality in [0, 1] and expected latency, for the weighted policy.
    quality: float = 0.5
    latency_ms: float = 1000.0
    # The model version serving now ("base", "v3") for a target that has versions, read per request:
    # a distilled edge model swaps live. ``student`` is set while a distilled version serves.
    version: str | None = None
    student: StudentCard | None = None
    # Live estimates from answers served (router/latency.py; None before the first), and the target's own
    # load: requests waiting, generating, and how many it generates at once (None: no fixed limit).
    live: LiveLatency | None = None
    queue_depth: int = 0
    active: int = 0
    concurrency: int | None = None


@dataclass(slots=True)
class Tally:
    """The running result of the policies evaluated so far."""

    forbidden: dict[str, str] = field(default_factory=dict)
    required: str | None = None
    preferred: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    redact: bool = False
    restore_in_tool_arguments: bool = True
    cascade: Cascade | None = None

    @property
    def undecided(self) -> bool:
        return self.required is None and self.preferred is None and not self.scores


@dataclass(frozen=True, slots=True)
class RoutingContext:
    """Everything a policy is given."""

    request: ChatRequest
    features: Features
    targets: Mapping[str, TargetView]
    # The target the request pinned with ``model``, or None for ``auto``.
    pinned: str | None
    so_far: Tally

    def allowed(self) -> list[str]:
        """Targets not forbidden so far, in config order."""
        return [name for name in self.targets if name not in self.so_far.forbidden]


class TargetCatalog:
    """The configured targets (and semantic route names), as policies see them at construction time."""

    def __init__(self, targets: Mapping[str, TargetView], routes: tuple[str, ...] = ()) -> None:
        self._targets = dict(targets)
        self.routes = routes

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __iter__(self) -> Any:
        return iter(self._targets)

    def __getitem__(self, name: str) -> TargetView:
        return self._targets[name]

    def check(self, name: str, *, key: str) -> str:
        """Fail start-up when ``name`` is not a configured target."""
        if name not in self._targets:
            valid = ", ".join(sorted(self._targets))
            raise ConfigError(f"{key}: unknown target {name!r}; configured targets: {valid}")
        return name

    def check_route(self, name: str, *, key: str) -> str:
        """Fail start-up when ``name`` is not a route in ``classifier.routes``."""
        if name not in self.routes:
            valid = ", ".join(self.routes) or "(none configured)"
            raise ConfigError(f"{key}: unknown semantic route {name!r}; classifier.routes: {valid}")
        return name

    def first(self, *, local: bool) -> str | None:
        return next((n for n, view in self._targets.items() if view.capabilities.local == local), None)


class Policy(Protocol):
    """A routing policy: turns a :class:`RoutingContext` into a :class:`Verdict`.

    A policy that reads model-based features lists them in ``requires``
    (``"embedding"``, ``"difficulty"``, ``"language"``); the gateway loads the
    encoder, the difficulty head and the language identifier only when some
    policy needs them.
    """

    name: str

    def evaluate(self, ctx: RoutingContext) -> Verdict: ...


@runtime_checkable
class OutcomeObserver(Protocol):
    """A policy that also learns from where requests were served (e.g. ``sticky``)."""

    def observe(self, request: ChatRequest, target: str, ok: bool) -> None:
        """Called once per finished request with the target that served it and whether it succeeded."""


@runtime_checkable
class PreparingPolicy(Protocol):
    """A policy that needs I/O before it can judge a request (``sticky`` on shared sessions): the router
    awaits ``prepare`` before routing, so ``evaluate`` stays synchronous."""

    async def prepare(self, request: ChatRequest) -> None: ...


@runtime_checkable
class ShadowObserver(Protocol):
    """A policy that asks for some answers to be checked against another target, off the client's path
    (``distilled``: the student's answers against the cloud's)."""

    def shadow_target(self, request: ChatRequest, served_by: str, escalated: bool) -> str | None:
        """The target to ask the same request in shadow, or None."""

    def record_shadow(self, request: ChatRequest, agree: bool) -> object:
        """Told whether the shadow answer agreed with the one the client got."""


class PolicyClass(Protocol):
    """What the registry needs of a policy class: its options model and constructor."""

    Options: ClassVar[type[BaseModel]]

    def __call__(self, options: Any, targets: TargetCatalog) -> Policy: ...
