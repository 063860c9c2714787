"""The latency policy: predictions from live estimates and load, the cheapest target that meets the deadline."""

from __future__ import annotations

import pytest

from router.latency import LiveLatency
from router.policies.base import Tally
from router.policies.latency import DEADLINE_MS, LatencyPolicy
from tests.policies.helpers import context, request, views


def deadline_request(ms: int, **extra: object):  # type: ignore[no-untyped-def]
    req = request("Summarise the meeting notes.", max_tokens=50, **extra)
    req.memo[DEADLINE_MS] = ms
    return req


# An idle edge: 100 ms to the first token, 30 ms a token, one slot. The cloud: 800 ms, 10 ms a token.
IDLE = views(
    edge={"live": LiveLatency(100.0, 30.0, 1600.0, 20), "concurrency": 1},
    cloud={"live": LiveLatency(800.0, 10.0, 1300.0, 20)},
)


def test_without_a_deadline_it_abstains() -> None:
    verdict = LatencyPolicy().evaluate(context(request(), targets=IDLE))
    assert verdict.abstains and "no deadline" in verdict.reason


def test_an_idle_edge_that_meets_the_deadline_wins_because_it_is_cheapest() -> None:
    verdict = LatencyPolicy().evaluate(context(deadline_request(3000), targets=IDLE))

    # edge: 100 + 30 x 49 = 1,570 ms; cloud: 800 + 10 x 49 = 1,290 ms. Both meet 3 s; the edge is free.
    assert verdict.prefer == "edge" and not verdict.forbid
    assert "edge 1,570 ms" in verdict.reason and "cloud 1,290 ms" in verdict.reason
    assert verdict.reason.startswith("deadline 3,000 ms (x-deadline-ms)")


def test_a_queued_edge_that_would_miss_spills_to_the_cloud() -> None:
    busy = views(
        edge={"live": LiveLatency(100.0, 30.0, 1600.0, 20), "concurrency": 1, "active": 1, "queue_depth": 2},
        cloud={"live": LiveLatency(800.0, 10.0, 1300.0, 20)},
    )
    verdict = LatencyPolicy().evaluate(context(deadline_request(2000), targets=busy))

    # Three ahead of it on one slot: three answers of 1.6 s first, then its own 1,570 ms.
    assert verdict.forbid == {"edge": "predicted 6,370 ms, over the 2,000 ms deadline"}
    assert verdict.prefer == "cloud"
    assert "edge 6,370 ms (3 ahead, 1 slot)" in verdict.reason


def test_a_streamed_request_is_timed_to_its_first_token() -> None:
    verdict = LatencyPolicy().evaluate(context(deadline_request(500, stream=True), targets=IDLE))

    assert verdict.forbid == {"cloud": "predicted 800 ms, over the 500 ms deadline"}
    assert verdict.prefer == "edge" and "first token" in verdict.reason


def test_privacy_wins_a_forbidden_cloud_is_never_brought_back() -> None:
    busy = views(edge={"concurrency": 1, "active": 1, "queue_depth": 5}, cloud={})
    tally = Tally(forbidden={"cloud": "personal data stays local"})
    verdict = LatencyPolicy().evaluate(context(deadline_request(100), targets=busy, tally=tally))

    assert "cloud" not in verdict.forbid and not verdict.forbid
    assert verdict.prefer == "edge" and "none is predicted to meet it" in verdict.reason


def test_the_configured_slo_applies_when_the_request_names_no_deadline_and_priors_stand_in_for_estimates() -> None:
    verdict = LatencyPolicy(LatencyPolicy.Options(slo_ms=500)).evaluate(context(request(max_tokens=1), targets=views()))

    # No answers seen yet: the configured latency_ms (edge 100, cloud 800) are the first-token priors.
    assert verdict.forbid == {"cloud": "predicted 800 ms, over the 500 ms deadline"}
    assert verdict.reason.startswith("deadline 500 ms (slo_ms)")


@pytest.mark.parametrize(("ahead", "expected"), [(0, 1570.0), (1, 3170.0), (2, 4770.0)])
def test_the_wait_grows_by_whole_answers_per_slot(ahead: int, expected: float) -> None:
    view = views(edge={"live": LiveLatency(100.0, 30.0, 1600.0, 20), "concurrency": 1, "active": min(ahead, 1),
                       "queue_depth": max(0, ahead - 1)})["edge"]  # fmt: skip
    assert LatencyPolicy().predict(view, 50, streaming=False).ms == pytest.approx(expected)
