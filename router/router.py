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

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from router.backends.base import Backend, Readiness
from router.backends.cascade import CascadeBackend
from router.backends.redacting import RedactingBackend
from router.backends.versions import model_version
from router.chat import ChatRequest, ChatResult
from router.classify.base import Classifier
from router.classify.classifier import RequestClassifier
from router.config import check_fallbacks
from router.errors import BackendBusy, ConfigError, HybridRouterError, NoTargetAvailable, PolicyViolation, UnknownModel
from router.features import Features
from router.latency import LatencyEstimates
from router.policies.base import (
    Cascade,
    OutcomeObserver,
    Policy,
    PreparingPolicy,
    RoutingContext,
    ShadowObserver,
    Tally,
    TargetView,
    Verdict,
)
from router.policies.distilled import answers_agree
from router.resilience.failover import FailoverBackend

__all__ = [
    "ADMISSION",
    "AUTO",
    "Decision",
    "FallbackStep",
    "Router",
    "ShadowReport",
    "TargetProfile",
    "TrailEntry",
    "describe_targets",
]

AUTO = "auto"
ADMISSION = "admission"
"""``request.memo`` key: targets the gateway's admission rules out for this request (a client key's allowed
targets, a spent budget or a rate limit that spills to the edge), as ``{target: why}``. Applied before the
policies, as the trail's first entry, so the policies choose among what is left and privacy still holds."""
# Shadow requests in flight at once; more are skipped (counted), never queued behind client traffic.
MAX_SHADOWS_IN_FLIGHT = 4

log = logging.getLogger("hybrid_router.router")

ShadowReport = Callable[[str, str, "ChatResult | None"], None]
"""Called after each shadow request with (target, outcome: agree|disagree|error|skipped, the answer)."""


@dataclass(frozen=True, slots=True)
class TargetProfile:
    """The operator's static description of a target, from config."""

    price_input: float = 0.0
    price_output: float = 0.0
    quality: float = 0.5
    latency_ms: float = 1000.0
    aliases: tuple[str, ...] = ()
    # Targets to try in order when this one fails before answering (README, "Resilience").
    fallback: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FallbackStep:
    """A target a request may fall back to, and whether the request must be redacted on the way there."""

    target: str
    redact: bool = False


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
    # Whether restored values (never credentials) may go back into tool-call arguments.
    restore_in_tool_arguments: bool = True
    # Set when the target answers first and may escalate (the ``cascade`` policy).
    cascade: Cascade | None = None
    # The chosen target's configured fallbacks that no policy forbids for this request, in order.
    fallback: tuple[FallbackStep, ...] = ()
    # Set when a required target could not serve and ``target`` is its fallback; the reason is a code.
    fallback_from: str | None = None
    fallback_reason: str = ""
    # The chosen target's model version when it has versions ("base", "v3": a distilled edge model).
    model_version: str | None = None

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
        if self.model_version is not None:
            out["model_version"] = self.model_version
        if self.cascade is not None:
            out["cascade"] = self.cascade.to_dict()
        if self.fallback:
            out["fallback"] = [step.target for step in self.fallback]
        if self.fallback_from is not None:
            out["fallback_from"] = self.fallback_from
        if self.error is not None:
            out["error"] = self.error.to_openai()["error"]
        return out


@dataclass(frozen=True, slots=True)
class _Rescue:
    source: str
    target: str
    reason: str
    code: str
    rest: tuple[FallbackStep, ...]


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
        classifier: Classifier | None = None,
        config_version: str = "unversioned",
        latency_alpha: float = 0.2,
    ) -> None:
        if not backends:
            raise ValueError("a router needs at least one target")
        self.backends = dict(backends)
        self.policies = list(policies)
        # Found once here, not with an isinstance check per policy on every request.
        self._observers = [policy for policy in self.policies if isinstance(policy, OutcomeObserver)]
        self._preparing = [policy for policy in self.policies if isinstance(policy, PreparingPolicy)]
        self._shadowers = [policy for policy in self.policies if isinstance(policy, ShadowObserver)]
        self._shadows: set[asyncio.Task[None]] = set()
        self.profiles = {name: (profiles or {}).get(name, TargetProfile()) for name in self.backends}
        self.classifier: Classifier = classifier or RequestClassifier()
        self.config_version = config_version
        self._alpha = latency_alpha
        self._latency: dict[str, float] = {}
        # Time to first token, per output token and per answer, by target (the latency policy's predictions).
        self.timing = LatencyEstimates(latency_alpha)
        self._names: dict[str, str] = {name: name for name in self.backends}
        for name, profile in self.profiles.items():
            self._names.update(dict.fromkeys(profile.aliases, name))
        try:
            check_fallbacks({name: list(profile.fallback) for name, profile in self.profiles.items()})
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    @property
    def model_names(self) -> list[str]:
        """``auto``, then every target name and alias a request may pin."""
        return [AUTO, *self._names]

    def observe_outcome(self, request: ChatRequest, target: str, ok: bool) -> None:
        """Tell the policies that learn from outcomes (``sticky``) where ``request`` was served."""
        for policy in self._observers:
            policy.observe(request, target, ok)

    @property
    def shadows_answers(self) -> bool:
        """Whether any policy shadow-checks answers (so callers skip preparing for it otherwise)."""
        return bool(self._shadowers)

    def observe_answer(
        self, request: ChatRequest, served_by: str, answer: str, *, escalated: bool, report: ShadowReport | None = None
    ) -> None:
        """Offer a served answer to the policies that shadow-check answers; a shadow request runs in
        the background, after the client has its answer, and its outcome goes back to the policy."""
        for policy in self._shadowers:
            target = policy.shadow_target(request, served_by, escalated)
            if target is None or target not in self.backends:
                continue
            if len(self._shadows) >= MAX_SHADOWS_IN_FLIGHT:
                if report is not None:
                    report(target, "skipped", None)
                continue
            task = asyncio.get_running_loop().create_task(self._shadow(policy, request, target, answer, report))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)

    async def _shadow(
        self, policy: ShadowObserver, request: ChatRequest, target: str, answer: str, report: ShadowReport | None
    ) -> None:
        copy = request.model_copy(update={"stream": False, "stream_options": None})
        try:
            result = await self.backends[target].complete(copy)
            choice = result.body["choices"][0]["message"]
            text = choice.get("content") or ""
        except (HybridRouterError, LookupError, TypeError) as exc:
            # A failed shadow says nothing about the student: not counted against it.
            log.info("shadow request to %s failed: %s", target, getattr(exc, "message", type(exc).__name__))
            if report is not None:
                report(target, "error", None)
            return
        agree = answers_agree(answer, text)
        policy.record_shadow(request, agree)
        if report is not None:
            report(target, "agree" if agree else "disagree", result)

    async def drain_shadows(self, timeout_s: float = 5.0) -> None:
        """Let shadow requests in flight finish (a reload or shutdown), cancelling what is left after ``timeout_s``."""
        pending = set(self._shadows)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=timeout_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    def observe_latency(self, target: str, milliseconds: float) -> None:
        """Feed an observed latency into the target's moving average."""
        previous = self._latency.get(target)
        self._latency[target] = milliseconds if previous is None else previous + self._alpha * (milliseconds - previous)

    def observe_timing(self, target: str, *, ttft_ms: float, total_ms: float, completion_tokens: int) -> None:
        """Feed one answer's first-token and total times into the target's live estimates (the latency policy)."""
        self.timing.observe(target, ttft_ms=ttft_ms, total_ms=total_ms, completion_tokens=completion_tokens)

    def target_views(self) -> dict[str, TargetView]:
        return describe_targets(self.backends, self.profiles, self._latency, self.timing)

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
        for policy in self._preparing:
            await policy.prepare(request)
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
        ruled_out: Mapping[str, str] | None = request.memo.get(ADMISSION)
        if ruled_out:
            admission = Verdict(reason="; ".join(dict.fromkeys(ruled_out.values())), forbid=dict(ruled_out))
            _apply(tally, admission)
            verdicts.append((ADMISSION, admission))
            trail.append(TrailEntry(ADMISSION, admission.reason, admission.to_dict()))
        for policy in self.policies:
            verdict = policy.evaluate(RoutingContext(request, features, views, pinned, tally))
            _apply(tally, verdict)
            verdicts.append((policy.name, verdict))
            trail.append(TrailEntry(policy.name, verdict.reason, verdict.to_dict()))

        def elapsed() -> float:
            return (time.perf_counter() - started) * 1000

        rescued: _Rescue | None = None
        try:
            target, reason, by = _Resolution(tally, views, verdicts, skipped).resolve()
        except _Unroutable as exc:
            rescued = self._rescue(tally, views, exc, trail)
            if rescued is None:
                return Decision(None, exc.error.message, exc.decided_by, features, trail, self.config_version,
                                elapsed(), exc.error, skipped)  # fmt: skip
            target, reason, by = rescued.target, rescued.reason, "fallback"
            skipped[rescued.source] = _unavailable(views[rescued.source].readiness)
        redact = tally.redact and not views[target].capabilities.local
        cascade = _resolve_cascade(tally, views, target, trail)
        if cascade is not None:
            fallback: tuple[FallbackStep, ...] = ()
        elif rescued is not None:
            fallback = rescued.rest
        else:
            fallback = _fallback_steps(tally, views, self.profiles[target].fallback, trail)
        return Decision(target, reason, by, features, trail, self.config_version, elapsed(), None, skipped, redact,
                        tally.restore_in_tool_arguments, cascade=cascade, fallback=fallback,
                        fallback_from=rescued.source if rescued else None,
                        fallback_reason=rescued.code if rescued else "",
                        model_version=views[target].version)  # fmt: skip

    def redecide(self, request: ChatRequest, decision: Decision, rule_out: Mapping[str, str]) -> Decision:
        """``decision`` made again with ``rule_out`` added to the request's admission constraints.

        For a limit learnt only once the target is known (a budget without room
        for the chosen target's price): the features are reused, only the
        policies run again.
        """
        assert decision.features is not None
        request.memo[ADMISSION] = {**request.memo.get(ADMISSION, {}), **rule_out}
        pinned = self._names.get(request.model) if request.model != AUTO else None
        again = self.resolve(request, decision.features, pinned, time.perf_counter(), [])
        return replace(again, decision_ms=decision.decision_ms + again.decision_ms)

    def _rescue(
        self, tally: Tally, views: Mapping[str, TargetView], error: _Unroutable, trail: list[TrailEntry]
    ) -> _Rescue | None:
        """A required target (a pinned model) that cannot serve now falls back at once to the first of its
        fallbacks that is allowed and can: the same chain a failed call would have taken."""
        source = tally.required
        if source is None or error.decided_by != "readiness":
            return None
        steps = _fallback_steps(tally, views, self.profiles[source].fallback, trail)
        for position, step in enumerate(steps):
            if views[step.target].readiness.can_serve:
                state = views[source].readiness
                reason = f"{source} {_unavailable(state)}; falling back to {step.target}"
                return _Rescue(source, step.target, reason, _readiness_code(state), steps[position + 1 :])
        return None

    def backend_for(self, decision: Decision) -> Backend:
        """The backend that serves ``decision``: wrapped to redact and restore when it says so,
        in a :class:`CascadeBackend` when its answer may escalate, and in a :class:`FailoverBackend`
        over its fallback chain when it has one."""
        assert decision.target is not None
        backend = self.backends[decision.target]
        if decision.redact:
            backend = self._redacting(decision, backend)
        if decision.cascade is not None:
            return self._cascade(decision, decision.cascade, backend)
        if decision.fallback:
            return self._failover(decision, backend)
        return backend

    def _failover(self, decision: Decision, first: Backend) -> FailoverBackend:
        assert decision.target is not None
        chain = [(decision.target, first)]
        for step in decision.fallback:
            backend = self.backends[step.target]
            chain.append((step.target, self._redacting(decision, backend) if step.redact else backend))
        return FailoverBackend(chain)

    def _redacting(self, decision: Decision, backend: Backend) -> Backend:
        if decision.features is None:
            return backend
        spans = decision.features.personal_data.spans
        return RedactingBackend(backend, spans, restore_in_tool_arguments=decision.restore_in_tool_arguments)

    def _cascade(self, decision: Decision, cascade: Cascade, first: Backend) -> CascadeBackend:
        then = None if cascade.blocked else self.backends[cascade.then]
        if then is not None and cascade.redact:
            then = self._redacting(decision, then)
        return CascadeBackend(first, then, threshold=cascade.threshold, signal=cascade.signal, then_name=cascade.then,
                              blocked=cascade.blocked)  # fmt: skip


def describe_targets(
    backends: Mapping[str, Backend],
    profiles: Mapping[str, TargetProfile],
    latency: Mapping[str, float] | None = None,
    timing: LatencyEstimates | None = None,
) -> dict[str, TargetView]:
    """What policies may know about each target now: its profile, capabilities and live state."""
    views = {}
    for name, backend in backends.items():
        profile = profiles.get(name, TargetProfile())
        serving = model_version(backend)
        stats = backend.stats()
        limit = stats.get("max_concurrency")
        views[name] = TargetView(
            name=name,
            model=backend.model,
            capabilities=backend.capabilities,
            readiness=backend.readiness(),
            price_input=profile.price_input,
            price_output=profile.price_output,
            quality=profile.quality,
            latency_ms=(latency or {}).get(name, profile.latency_ms),
            version=serving.version if serving else None,
            student=serving.student if serving else None,
            live=timing.get(name) if timing is not None else None,
            queue_depth=int(stats.get("queue_depth", 0)),
            active=int(stats.get("active_generations", 0)),
            concurrency=int(limit) if limit else None,
        )
    return views


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
    tally.restore_in_tool_arguments = tally.restore_in_tool_arguments and verdict.restore_in_tool_arguments
    if verdict.cascade and tally.cascade is None:
        tally.cascade = verdict.cascade


def _fallback_steps(
    tally: Tally, views: Mapping[str, TargetView], names: Sequence[str], trail: list[TrailEntry]
) -> tuple[FallbackStep, ...]:
    """The configured fallbacks this request may use: a target a policy forbids is left out (the trail says so),
    and a non-local one is redacted when the privacy policy said redact."""
    steps = []
    for name in names:
        if name in tally.forbidden:
            trail.append(TrailEntry("fallback", f"no fallback to {name}: forbidden ({tally.forbidden[name]})", {}))
            continue
        steps.append(FallbackStep(name, redact=tally.redact and not views[name].capabilities.local))
    return tuple(steps)


def _resolve_cascade(
    tally: Tally, views: Mapping[str, TargetView], target: str, trail: list[TrailEntry]
) -> Cascade | None:
    """The tally's cascade if it starts at ``target``, with escalation blocked where the policies or
    readiness rule ``then`` out now (the trail says so); None when there is no cascade to run."""
    cascade = tally.cascade
    if cascade is None or cascade.first != target:
        return None
    if tally.required is not None:
        trail.append(TrailEntry("cascade", f"no cascade: {tally.required} is required", {}))
        return None
    then = views[cascade.then]
    if cascade.then in tally.forbidden:
        blocked = f"{cascade.then} forbidden ({tally.forbidden[cascade.then]})"
    elif not then.readiness.can_serve:
        blocked = f"{cascade.then} {_unavailable(then.readiness)}"
    else:
        return replace(cascade, redact=tally.redact and not then.capabilities.local)
    trail.append(TrailEntry("cascade", f"{target} answers; no escalation: {blocked}", {}))
    return replace(cascade, blocked=blocked)


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


def _readiness_code(readiness: Readiness) -> str:
    """An error code for why a target cannot serve, as a failed call would have reported it."""
    if readiness.busy:
        return "backend_busy"
    return "circuit_open" if readiness.detail.get("circuit") in ("open", "half_open") else "not_ready"


def _unavailable(readiness: Readiness) -> str:
    return f"busy ({readiness.reason})" if readiness.busy else f"not ready ({readiness.reason})"
