"""Combining policy verdicts into one routing decision.

For each request the :class:`Router` computes features once, asks every
policy in the configured order, and resolves the tally:

1. no target left (all forbidden)            -> 403 with the forbidding reasons;
2. a target is required                      -> that one (403 if forbidden,
                                                 503 if it cannot serve now);
3. otherwise rank the allowed targets by summed scores, then by the
   preferred target, then by config order, and take the first that can
   serve now; a skipped one is named in the reason ("cloud not ready: ...").

The decision, the features and every verdict (the *trail*) are returned
together, so ``/v1/route`` and the response headers explain every choice.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.backends.base import Backend, Readiness
from router.chat import ChatRequest
from router.classify.classifier import RequestClassifier
from router.classify.redaction import RedactingBackend
from router.errors import BackendBusy, HybridRouterError, NoTargetAvailable, PolicyViolation, UnknownModel
from router.features import Features
from router.policies.base import Policy, RoutingContext, Tally, TargetView, Verdict

__all__ = ["AUTO", "Decision", "Router", "TargetProfile", "TrailEntry"]

AUTO = "auto"


@dataclass(frozen=True, slots=True)
class TargetProfile:
    """The operator's static description of a target, from config."""

    price_input: float = 0.0
    price_output: float = 0.0
    quality: float = 0.5
    latency_ms: float = 1000.0
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TrailEntry:
    policy: str
    reason: str
    verdict: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "reason": self.reason, **self.verdict}


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes and why; ``error`` is set when it can go nowhere."""

    target: str | None
    reason: str
    decided_by: str
    features: Features | None
    trail: Sequence[TrailEntry]
    config_version: str
    decision_ms: float
    error: HybridRouterError | None = None
    skipped: Mapping[str, str] = field(default_factory=dict)
    # True when personal data must be redacted on the way to the chosen (non-local) target.
    redact: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target,
            "reason": self.reason,
            "decided_by": self.decided_by,
            "features": self.features.to_dict() if self.features else None,
            "trail": [entry.to_dict() for entry in self.trail],
            "skipped": dict(self.skipped),
            "config_version": self.config_version,
            "decision_ms": round(self.decision_ms, 3),
            "redact": self.redact,
        }
        if self.error is not None:
            out["error"] = self.error.to_openai()["error"]
        return out


class _Unroutable(Exception):
    def __init__(self, error: HybridRouterError, decided_by: str) -> None:
        self.error, self.decided_by = error, decided_by


class Router:
    """Decides which target answers a request.

    >>> from router.backends.fake import ScriptedBackend
    >>> from router.policies.default import DefaultPolicy
    >>> from router.policies.base import TargetCatalog
    >>> edge = ScriptedBackend("edge")
    >>> router = Router(backends={"edge": edge}, policies=[])
    >>> import asyncio
    >>> request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    >>> asyncio.run(router.decide(request)).target
    'edge'
    """

    def __init__(
        self,
        *,
        backends: Mapping[str, Backend],
        policies: Sequence[Policy],
        profiles: Mapping[str, TargetProfile] | None = None,
        classifier: RequestClassifier | None = None,
        config_version: str = "unversioned",
        latency_alpha: float = 0.2,
    ) -> None:
        if not backends:
            raise ValueError("a router needs at least one target")
        self.backends = dict(backends)
        self.policies = list(policies)
        self.profiles = {name: (profiles or {}).get(name, TargetProfile()) for name in self.backends}
        self.classifier = classifier or RequestClassifier()
        self.config_version = config_version
        self._alpha = latency_alpha
        self._latency: dict[str, float] = {}
        self._names: dict[str, str] = {name: name for name in self.backends}
        for name, profile in self.profiles.items():
            self._names.update(dict.fromkeys(profile.aliases, name))

    @property
    def model_names(self) -> list[str]:
        """``auto``, then every target name and alias a request may pin."""
        return [AUTO, *self._names]

    def observe_latency(self, target: str, milliseconds: float) -> None:
        """Feed an observed latency into the target's moving average."""
        previous = self._latency.get(target)
        self._latency[target] = milliseconds if previous is None else previous + self._alpha * (milliseconds - previous)

    def target_views(self) -> dict[str, TargetView]:
        views = {}
        for name, backend in self.backends.items():
            profile = self.profiles[name]
            views[name] = TargetView(
                name=name,
                model=backend.model,
                capabilities=backend.capabilities,
                readiness=backend.readiness(),
                price_input=profile.price_input,
                price_output=profile.price_output,
                quality=profile.quality,
                latency_ms=self._latency.get(name, profile.latency_ms),
            )
        return views

    async def decide(self, request: ChatRequest) -> Decision:
        """Classify ``request``, run the policies and resolve: never raises for a routing outcome."""
        started = time.perf_counter()
        trail: list[TrailEntry] = []
        pinned: str | None = None
        if request.model != AUTO:
            pinned = self._names.get(request.model)
            if pinned is None:
                error = UnknownModel(
                    f"The model {request.model!r} does not exist; use one of: {', '.join(self.model_names)}",
                    param="model",
                )
                elapsed = (time.perf_counter() - started) * 1000
                return Decision(None, "unknown model", "router", None, trail, self.config_version, elapsed, error)
        features = await self.classifier.classify(request)
        return self.resolve(request, features, pinned, started, trail)

    def resolve(
        self, request: ChatRequest, features: Features, pinned: str | None, started: float, trail: list[TrailEntry]
    ) -> Decision:
        """Run the policies over already computed features."""
        tally = Tally()
        views = self.target_views()
        skipped: dict[str, str] = {}
        for note in features.notes:
            trail.append(TrailEntry("classifier", note, {}))
        verdicts: list[tuple[str, Verdict]] = []
        for policy in self.policies:
            verdict = policy.evaluate(RoutingContext(request, features, views, pinned, tally))
            _apply(tally, verdict)
            verdicts.append((policy.name, verdict))
            trail.append(TrailEntry(policy.name, verdict.reason, verdict.to_dict()))

        def elapsed() -> float:
            return (time.perf_counter() - started) * 1000

        try:
            target, reason, by = _Resolution(tally, views, verdicts, skipped).resolve()
        except _Unroutable as exc:
            return Decision(None, exc.error.message, exc.decided_by, features, trail, self.config_version, elapsed(),
                            exc.error, skipped)  # fmt: skip
        redact = tally.redact and not views[target].capabilities.local
        return Decision(target, reason, by, features, trail, self.config_version, elapsed(), None, skipped, redact)

    def backend_for(self, decision: Decision) -> Backend:
        """The backend that serves ``decision``: wrapped to redact and restore when it says so."""
        assert decision.target is not None
        backend = self.backends[decision.target]
        if decision.redact:
            return RedactingBackend(backend, self.classifier.detector)
        return backend


def _apply(tally: Tally, verdict: Verdict) -> None:
    for name, why in verdict.forbid.items():
        tally.forbidden.setdefault(name, why)
    if verdict.require and tally.required is None:
        tally.required = verdict.require
    if verdict.prefer and tally.preferred is None:
        tally.preferred = verdict.prefer
    for name, score in verdict.scores.items():
        tally.scores[name] = tally.scores.get(name, 0.0) + score
    tally.redact = tally.redact or verdict.redact


@dataclass
class _Resolution:
    """Turns a finished tally into (target, reason, decided_by), or raises _Unroutable."""

    tally: Tally
    views: Mapping[str, TargetView]
    verdicts: Sequence[tuple[str, Verdict]]
    skipped: dict[str, str]

    def resolve(self) -> tuple[str, str, str]:
        tally, views = self.tally, self.views
        allowed = [name for name in views if name not in tally.forbidden]

        if tally.required is not None:
            name = tally.required
            by, why = self._first("require", name)
            if name in tally.forbidden:
                veto_by, _ = self._first("forbid", name)
                error = PolicyViolation(f"{name} is forbidden by policy {veto_by}: {tally.forbidden[name]}")
                raise _Unroutable(error, veto_by)
            _check_can_serve(name, views[name].readiness, why)
            return name, why, by

        if not allowed:
            vetoes = [f"{name}: {verdict.reason}" for name, verdict in self.verdicts if verdict.forbid]
            veto_by, _ = self._first("forbid", next(iter(tally.forbidden)))
            raise _Unroutable(PolicyViolation(f"no target is allowed by policy {'; '.join(vetoes)}"), veto_by)

        ranked = sorted(
            allowed,
            key=lambda name: (-tally.scores.get(name, 0.0), name != tally.preferred, allowed.index(name)),
        )
        serving = [name for name in ranked if views[name].readiness.can_serve]
        if not serving:
            self._none_can_serve(ranked)
        winner = serving[0]
        for name in ranked[: ranked.index(winner)]:
            self.skipped[name] = _unavailable(views[name].readiness)
        if self.skipped:
            first = next(iter(self.skipped))
            return winner, f"{first} {self.skipped[first]}; using {winner}", "readiness"
        by, why = self._why(winner, allowed)
        return winner, why, by

    def _none_can_serve(self, ranked: list[str]) -> None:
        states = [(name, self.views[name].readiness) for name in ranked]
        parts = [f"{name} {_unavailable(state)}" for name, state in states]
        parts += [f"{name} forbidden ({why})" for name, why in self.tally.forbidden.items()]
        message = "no allowed target can serve this request: " + "; ".join(parts)
        if all(state.busy for _, state in states):
            retry = min(float(str(state.detail.get("retry_after", 1.0))) for _, state in states)
            raise _Unroutable(BackendBusy(message, retry_after=retry), "readiness")
        raise _Unroutable(NoTargetAvailable(message), "readiness")

    def _why(self, winner: str, allowed: list[str]) -> tuple[str, str]:
        tally = self.tally
        if len(allowed) == 1 and tally.forbidden:
            # The forbids made the choice: the first target removed explains it best.
            return self._first("forbid", next(iter(tally.forbidden)))
        if tally.scores:
            return self._top_scorer(winner)
        if tally.preferred == winner:
            return self._first("prefer", winner)
        return "order", f"first configured target ({winner})"

    def _first(self, effect: str, target: str) -> tuple[str, str]:
        for name, verdict in self.verdicts:
            if (
                (effect == "require" and verdict.require == target)
                or (effect == "prefer" and verdict.prefer == target)
                or (effect == "forbid" and target in verdict.forbid)
            ):
                return name, verdict.reason
        return "router", effect

    def _top_scorer(self, winner: str) -> tuple[str, str]:
        def margin(verdict: Verdict) -> float:
            own = verdict.scores.get(winner, 0.0)
            others = [score for name, score in verdict.scores.items() if name != winner]
            return own - max(others, default=0.0)

        name, verdict = max(((n, v) for n, v in self.verdicts if v.scores), key=lambda item: margin(item[1]))
        return name, verdict.reason


def _check_can_serve(name: str, readiness: Readiness, why: str) -> None:
    if readiness.busy:
        retry = float(str(readiness.detail.get("retry_after", 1.0)))
        raise _Unroutable(BackendBusy(f"target {name} is busy: {readiness.reason}", retry_after=retry), "readiness")
    if not readiness.ready:
        suffix = f" (chosen because: {why})" if why else ""
        raise _Unroutable(NoTargetAvailable(f"target {name} is not ready: {readiness.reason}{suffix}"), "readiness")


def _unavailable(readiness: Readiness) -> str:
    return f"busy ({readiness.reason})" if readiness.busy else f"not ready ({readiness.reason})"
