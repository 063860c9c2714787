"""``latency``: meet a deadline, as cheaply as possible, from live estimates of each target.

A request's deadline is its ``x-deadline-ms`` header (the gateway puts it in
``request.memo[DEADLINE_MS]``), else the policy's ``slo_ms``; without either
the policy abstains. A streamed request must see its first token by then; a
plain one must have its whole answer.

For each target the policies still allow, it predicts::

    wait  = (requests ahead of this one beyond the target's free slots) / slots x an answer's time
    first = wait + time to first token
    whole = first + time per output token x output tokens (max_tokens, else ``output_tokens``)

from the live estimates (router/latency.py: moving averages of served
answers) and the target's load (queue depth, active generations, slots: the
edge's ``max_concurrency``), with the configured ``latency_ms`` and
``tpot_ms`` before any answer was seen. It forbids the targets predicted to
miss and prefers the cheapest one predicted to meet the deadline. So a busy
edge spills to the cloud when the other policies allow, and never when they
do not: it only chooses among the targets still allowed, so placed after
``privacy`` it keeps personal data local however late. When no allowed target
is predicted to meet the deadline, nothing is forbidden, the fastest is
preferred, and the trail says so.

The trail shows every prediction: ``deadline 800 ms (x-deadline-ms): edge
2,410 ms (3 ahead, 1 slot), cloud 620 ms -> cloud, the cheapest predicted to
meet it``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from router.policies.base import RoutingContext, TargetCatalog, TargetView, Verdict

__all__ = ["DEADLINE_MS", "LatencyPolicy", "Prediction"]

DEADLINE_MS = "deadline_ms"
"""``request.memo`` key: the client's deadline in milliseconds (from ``x-deadline-ms``)."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """How long a target is predicted to take for one request, and why: requests ahead of it, and slots."""

    target: str
    ms: float
    ahead: int
    slots: int | None

    def describe(self) -> str:
        load = f" ({self.ahead} ahead, {self.slots} slot{'s' if self.slots != 1 else ''})" if self.ahead else ""
        return f"{self.target} {self.ms:,.0f} ms{load}"


class LatencyPolicy:
    """Forbid targets predicted to miss the request's deadline; prefer the cheapest that meets it.

    >>> LatencyPolicy(LatencyPolicy.Options(slo_ms=2000)).slo_ms
    2000
    """

    name = "latency"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        slo_ms: Annotated[int, Field(ge=1)] | None = Field(
            default=None, description="The deadline of requests without x-deadline-ms; none: they are left alone."
        )
        output_tokens: Annotated[int, Field(ge=1)] = Field(
            default=256, description="Output tokens assumed for a request without max_tokens."
        )
        tpot_ms: Annotated[float, Field(gt=0)] = Field(
            default=20.0, description="Time per output token assumed for a target before it has answered."
        )

    def __init__(self, options: Options | None = None, targets: TargetCatalog | None = None) -> None:
        opts = options or self.Options()
        self.slo_ms = opts.slo_ms
        self.output_tokens = opts.output_tokens
        self.tpot_ms = opts.tpot_ms

    def evaluate(self, ctx: RoutingContext) -> Verdict:
        given = ctx.request.memo.get(DEADLINE_MS)
        deadline = given if isinstance(given, int) else self.slo_ms
        if deadline is None:
            return Verdict(reason="no deadline (x-deadline-ms or slo_ms)")
        source = "x-deadline-ms" if isinstance(given, int) else "slo_ms"
        allowed = [ctx.targets[name] for name in ctx.allowed()]
        if not allowed:
            return Verdict(reason="no allowed target to time")
        output = ctx.features.max_tokens or self.output_tokens
        streaming = bool(ctx.request.stream)
        predictions = {view.name: self.predict(view, output, streaming=streaming) for view in allowed}
        shown = ", ".join(p.describe() for p in predictions.values())
        head = f"deadline {deadline:,} ms ({source}"
        head += ", first token)" if streaming else ")"
        meets = [view for view in allowed if predictions[view.name].ms <= deadline]
        if not meets:
            fastest = min(allowed, key=lambda view: predictions[view.name].ms)
            return Verdict(reason=f"{head}: {shown}; none is predicted to meet it, {fastest.name} is the fastest",
                           prefer=fastest.name)  # fmt: skip

        def cost(view: TargetView) -> float:
            return ctx.features.prompt_tokens * view.price_input + output * view.price_output

        chosen = min(meets, key=lambda view: (cost(view), predictions[view.name].ms))
        missing = {
            view.name: f"predicted {predictions[view.name].ms:,.0f} ms, over the {deadline:,} ms deadline"
            for view in allowed
            if view not in meets
        }
        return Verdict(reason=f"{head}: {shown} -> {chosen.name}, the cheapest predicted to meet it",
                       forbid=missing, prefer=chosen.name)  # fmt: skip

    def predict(self, view: TargetView, output_tokens: int, *, streaming: bool) -> Prediction:
        live = view.live
        ttft = live.ttft_ms if live is not None else view.latency_ms
        tpot = live.tpot_ms if live is not None and live.tpot_ms is not None else self.tpot_ms
        answer = live.answer_ms if live is not None else ttft + tpot * output_tokens
        ahead = view.queue_depth + view.active
        wait = 0.0
        if view.concurrency is not None and ahead >= view.concurrency:
            # This request starts when enough of those ahead have finished to free a slot: whole rounds of
            # answers, each as long as an average answer.
            rounds = math.floor((ahead - view.concurrency) / view.concurrency) + 1
            wait = rounds * answer
        total = wait + ttft + (0.0 if streaming else tpot * max(0, output_tokens - 1))
        return Prediction(view.name, total, ahead, view.concurrency)
