import pytest

from router.policies.weighted import WeightedPolicy
from tests.policies.helpers import context, views


def test_quality_weight_prefers_the_better_model() -> None:
    verdict = WeightedPolicy(WeightedPolicy.Options(latency=0, cost=0, quality=1)).evaluate(context())
    assert verdict.scores == pytest.approx({"edge": 0.3, "cloud": 0.9})


def test_cost_and_latency_weights_prefer_the_cheap_fast_one() -> None:
    verdict = WeightedPolicy(WeightedPolicy.Options(latency=1, cost=1, quality=0)).evaluate(context())
    assert verdict.scores == pytest.approx({"edge": 1.0, "cloud": 0.0})
    assert verdict.reason == "best latency/cost/quality score: edge"


def test_observed_latency_changes_the_score() -> None:
    slow_edge = views(edge={"latency_ms": 5000})
    verdict = WeightedPolicy(WeightedPolicy.Options(latency=1, cost=0, quality=0)).evaluate(context(targets=slow_edge))
    assert verdict.scores == pytest.approx({"edge": 0.0, "cloud": 1.0})


def test_all_zero_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        WeightedPolicy.Options(latency=0, cost=0, quality=0)
