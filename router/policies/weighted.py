"""``weighted``: score targets on latency, cost and quality."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.policies.base import RoutingContext, TargetCatalog, Verdict

__all__ = ["WeightedPolicy"]

Weight = Annotated[float, Field(ge=0)]


class WeightedPolicy:
    """Score each allowed target in [0, 1] and add the scores to the tally.

    Latency and cost are min-max normalised across the allowed targets (the
    cheapest or fastest scores 1, the dearest or slowest 0); quality is the
    target's configured ``quality``. The weights are normalised to sum to 1.
    Latency is the target's observed moving average once it has served
    requests, its configured ``latency_ms`` before that. Cost is estimated for
    this request: prompt tokens at the input price plus ``max_tokens`` (or
    ``reserve_tokens``) at the output price.

    >>> opts = WeightedPolicy.Options(latency=1, cost=1, quality=2)
    >>> WeightedPolicy(opts).weights
    (0.25, 0.25, 0.5)
    """

    name = "weighted"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        latency: Weight = 1.0
        cost: Weight = 1.0
        quality: Weight = 1.0
        reserve_tokens: Annotated[int, Field(ge=0)] = 256

        @model_validator(mode="after")
        def _some_weight(self) -> WeightedPolicy.Options:
            if self.latency + self.cost + self.quality <= 0:
                raise ValueError("at least one of latency, cost, quality must be positive")
            return self

    def __init__(self, options: Options | None = None, targets: TargetCatalog | None = None) -> None:
        opts = options or self.Options()
        total = opts.latency + opts.cost + opts.quality
        self.weights = (opts.latency / total, opts.cost / total, opts.quality / total)
        self.reserve = opts.reserve_tokens

    def evaluate(self, ctx: RoutingContext) -> Verdict:
        views = [ctx.targets[name] for name in ctx.allowed()]
        if not views:
            return Verdict(reason="no allowed target to score")
        completion = ctx.features.max_tokens or self.reserve
        costs = {
            v.name: (ctx.features.prompt_tokens * v.price_input + completion * v.price_output) / 1e6 for v in views
        }
        latency = _lower_is_better({v.name: v.latency_ms for v in views})
        cost = _lower_is_better(costs)
        w_latency, w_cost, w_quality = self.weights
        scores = {v.name: w_latency * latency[v.name] + w_cost * cost[v.name] + w_quality * v.quality for v in views}
        best = max(scores, key=lambda name: scores[name])
        return Verdict(reason=f"best latency/cost/quality score: {best}", scores=scores)


def _lower_is_better(values: dict[str, float]) -> dict[str, float]:
    low, high = min(values.values()), max(values.values())
    if high == low:
        return dict.fromkeys(values, 1.0)
    return {name: (high - value) / (high - low) for name, value in values.items()}
