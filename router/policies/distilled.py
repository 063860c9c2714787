"""``distilled``: a route the edge student has learned moves to the edge, gated, shadowed and watched for drift.

The distillation loop (README, "Distillation") trains the edge model on the
cloud's answers to a route's traffic and promotes it when it beats the
current model on the holdout. This policy is the router's side of that loop:

* **which requests**: those whose task tag (``x-task`` / ``metadata.task``) the
  serving student learned, or whose fixed system prompt it was trained on
  (the manifest records both; :class:`router.backends.versions.StudentCard`);
* **competence**: the student's confidence gate, calibrated on the holdout,
  must accept at least ``min_coverage`` of it, else the route stays on the cloud;
* **the gate**: the edge answers first and the request escalates to the cloud
  when the answer's token log-probability is below the calibrated threshold,
  through the cascade (:mod:`router.backends.cascade`); without a client ``temperature`` the
  student decodes greedily, as it did when the gate was calibrated;
* **shadow evaluation**: ``shadow_rate`` of the answers the edge kept are also
  sent to the cloud after the client has its answer, never on its path, and
  only for requests with no personal data that the cloud was allowed to see;
  live agreement is a metric (``hybrid_router_distill_agreement``);
* **drift**: when agreement over the last ``window`` shadowed answers falls
  below ``min_agreement``, the route goes back to the cloud and the trail says
  why, until another version is promoted (a new version starts a new window).

Place it after ``privacy``: a request the privacy policy keeps local is
never escalated or shadowed to the cloud.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from edge_models.distill.prefix import system_hash
from router.backends.cascade import SERVE_GREEDY, Signal
from router.backends.versions import StudentCard
from router.chat import ChatRequest
from router.errors import ConfigError
from router.policies.base import Cascade, RoutingContext, TargetCatalog, Verdict
from router.tasks import task_of

__all__ = ["DISTILLED_ROUTE", "DistilledPolicy", "DistilledRoute", "RouteHealth", "answers_agree"]

DISTILLED_ROUTE = "distilled_route"
"""``ChatRequest.memo`` key: the :class:`DistilledRoute` this request was sent to the student on."""


@dataclass(frozen=True, slots=True)
class DistilledRoute:
    """One request's distilled route: what shadowing it needs to know later."""

    route: str
    version: str
    edge: str
    cloud: str
    # No personal data, cloud not forbidden: the request may be shown to the cloud in shadow.
    shadow_allowed: bool


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(".")


def answers_agree(edge: str, cloud: str) -> bool:
    """Whether two answers say the same, up to case, spacing and a final full stop.

    >>> answers_agree("card_arrival", " Card_arrival.\\n"), answers_agree("card_arrival", "card_linking")
    (True, False)
    """
    return _normalise(edge) == _normalise(cloud)


@dataclass
class RouteHealth:
    """Live agreement of one route's student with the cloud, over the last ``window`` shadowed answers."""

    window: int
    results: deque[bool] = field(default_factory=deque)
    drifted: str = ""
    compared: int = 0

    def add(self, agree: bool) -> None:
        self.results.append(agree)
        self.compared += 1
        while len(self.results) > self.window:
            self.results.popleft()

    @property
    def agreement(self) -> float | None:
        return sum(self.results) / len(self.results) if self.results else None


class DistilledPolicy:
    """Prefer the edge student for the routes it learned, gated by its calibrated confidence.

    >>> from router.policies.base import TargetView, Tally
    >>> from router.backends.base import Capabilities, Readiness
    >>> card = StudentCard("v2", tasks=frozenset({"intent"}), gate_threshold=-0.3, gate_signal="min")
    >>> views = {"edge": TargetView("edge", "m", Capabilities(local=True), Readiness(True), student=card),
    ...          "cloud": TargetView("cloud", "m", Capabilities(), Readiness(True))}
    >>> policy = DistilledPolicy(DistilledPolicy.Options(), TargetCatalog(views))
    >>> from router.features import Features
    >>> request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    >>> request.memo["task"] = "intent"
    >>> verdict = policy.evaluate(RoutingContext(request, Features(), views, None, Tally()))
    >>> verdict.prefer, verdict.cascade.threshold, verdict.reason
    ('edge', -0.3, 'distilled route intent (v2): edge first; cloud if its min token logprob < -0.30')
    """

    name = "distilled"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        edge: str | None = Field(default=None, description="The target serving the student; default: the first local.")
        cloud: str | None = Field(
            default=None, description="Unsure answers escalate here; default: the first non-local."
        )
        min_coverage: Annotated[float, Field(ge=0, le=1)] = Field(
            default=0.2, description="The gate must keep at least this share of the holdout, or the route stays cloud."
        )
        shadow_rate: Annotated[float, Field(ge=0, le=1)] = Field(
            default=0.05,
            description="Share of kept student answers also asked of the cloud, off the client path.",
        )
        min_agreement: Annotated[float, Field(ge=0, le=1)] = Field(
            default=0.85, description="Below this live agreement the route reverts to the cloud."
        )
        window: Annotated[int, Field(ge=1)] = Field(default=200, description="Shadowed answers the agreement spans.")
        min_samples: Annotated[int, Field(ge=1)] = Field(
            default=30, description="Shadowed answers before drift is judged."
        )

    def __init__(self, options: Options, targets: TargetCatalog, *, sample: Callable[[], float] | None = None) -> None:
        edge = options.edge or targets.first(local=True)
        cloud = options.cloud or targets.first(local=False)
        if edge is None or cloud is None:
            raise ConfigError("edge/cloud: the distilled policy needs a local and a non-local target")
        targets.check(edge, key="edge")
        targets.check(cloud, key="cloud")
        self.edge, self.cloud, self.options = edge, cloud, options
        self._sample = sample or random.random
        self._health: dict[tuple[str, str], RouteHealth] = {}
        self._lock = threading.Lock()

    # -- routing ---------------------------------------------------------------------------------

    def _route_of(self, request: ChatRequest, card: StudentCard) -> str | None:
        task = task_of(request)
        if task is not None and task in card.tasks:
            return task
        if card.prompt_hashes and request.messages and request.messages[0].role in ("system", "developer"):
            digest = system_hash(request.messages[0].text())
            if digest in card.prompt_hashes:
                return f"prompt:{digest[:8]}"
        return None

    def evaluate(self, ctx: RoutingContext) -> Verdict:
        view = ctx.targets.get(self.edge)
        card = view.student if view is not None else None
        if card is None:
            return Verdict(reason=f"{self.edge} serves no distilled model")
        route = self._route_of(ctx.request, card)
        if route is None:
            return Verdict(reason=f"not a route {card.version} learned")
        if ctx.pinned is not None:
            return Verdict(reason=f"pinned to {ctx.pinned}")
        if self.edge in ctx.so_far.forbidden:
            return Verdict(reason=f"{self.edge} not allowed")
        health = self._health.get((route, card.version))
        if health is not None and health.drifted:
            return Verdict(reason=f"route {route} back on {self.cloud}: {health.drifted}", prefer=self.cloud)
        coverage = card.gate_coverage or 0.0
        if card.gate_threshold is None or coverage < self.options.min_coverage:
            kept = (
                "no calibrated gate" if card.gate_threshold is None else f"its gate keeps {coverage:.0%} of the holdout"
            )
            return Verdict(reason=f"route {route}: {card.version} not competent yet ({kept})")
        shadow = (
            self.cloud not in ctx.so_far.forbidden and not ctx.so_far.redact and not ctx.features.personal_data.found
        )
        ctx.request.memo[DISTILLED_ROUTE] = DistilledRoute(route, card.version, self.edge, self.cloud, shadow)
        # The gate was calibrated on greedy answers: without a client temperature, the student decodes greedily.
        ctx.request.memo[SERVE_GREEDY] = True
        signal: Signal = "min" if card.gate_signal == "min" else "mean"
        cascade = Cascade(self.edge, self.cloud, card.gate_threshold, signal)
        reason = (
            f"distilled route {route} ({card.version}): edge first; "
            f"{self.cloud} if its {signal} token logprob < {card.gate_threshold:.2f}"
        )
        return Verdict(reason=reason, prefer=self.edge, cascade=cascade)

    # -- shadow evaluation and drift ---------------------------------------------------------------

    def shadow_target(self, request: ChatRequest, served_by: str, escalated: bool) -> str | None:
        """The cloud target to ask in shadow for this answer, or None (not sampled, not allowed)."""
        route = request.memo.get(DISTILLED_ROUTE)
        if not isinstance(route, DistilledRoute) or not route.shadow_allowed or escalated or served_by != route.edge:
            return None
        if self.options.shadow_rate <= 0 or self._sample() >= self.options.shadow_rate:
            return None
        return route.cloud

    def record_shadow(self, request: ChatRequest, agree: bool) -> RouteHealth | None:
        """Count one shadow comparison; judge drift once the window has ``min_samples``."""
        route = request.memo.get(DISTILLED_ROUTE)
        if not isinstance(route, DistilledRoute):
            return None
        options = self.options
        with self._lock:
            health = self._health.setdefault((route.route, route.version), RouteHealth(options.window))
            health.add(agree)
            agreement = health.agreement
            judged = len(health.results) >= options.min_samples and not health.drifted
            if judged and agreement is not None and agreement < options.min_agreement:
                health.drifted = (
                    f"drift: live agreement {agreement:.2f} < {options.min_agreement:.2f} "
                    f"over the last {len(health.results)} shadowed answers of {route.version}"
                )
        return health

    def health(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(route, version) -> agreement, samples, drifted: for metrics and ``/readyz`` detail."""
        with self._lock:
            return {
                key: {"agreement": h.agreement, "samples": len(h.results), "compared": h.compared, "drifted": h.drifted}
                for key, h in self._health.items()
            }
