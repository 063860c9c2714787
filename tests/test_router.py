"""How the router combines verdicts into one decision and a trail."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from router.backends.base import Readiness
from router.chat import ChatRequest
from router.errors import BackendBusy, NoTargetAvailable, PolicyViolation, UnknownModel
from router.policies.base import RoutingContext, Verdict
from router.router import Router, TargetProfile
from tests.conftest import cloud_backend, edge_backend


@dataclass
class Says:
    """A policy that returns a fixed verdict: the policy-side fake."""

    verdict: Verdict
    name: str = "says"
    seen: list[RoutingContext] = field(default_factory=list)

    def evaluate(self, ctx: RoutingContext) -> Verdict:
        self.seen.append(ctx)
        return self.verdict


def make_router(*policies: Says, edge: Readiness | None = None, cloud: Readiness | None = None) -> Router:
    backends = {
        "edge": edge_backend(ready=edge or Readiness(True)),
        "cloud": cloud_backend(ready=cloud or Readiness(True)),
    }
    profiles: Mapping[str, TargetProfile] = {"cloud": TargetProfile(aliases=("gpt-4o-mini",))}
    return Router(backends=backends, policies=list(policies), profiles=profiles, config_version="v1")


def req(**extra: object) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **extra})


async def test_no_policies_picks_the_first_configured_target() -> None:
    decision = await make_router().decide(req())
    assert (decision.target, decision.decided_by, decision.reason) == (
        "edge",
        "order",
        "first configured target (edge)",
    )


async def test_trail_lists_every_verdict_in_order_with_config_version() -> None:
    a = Says(Verdict(reason="a abstains"), name="a")
    b = Says(Verdict(reason="b forbids edge", forbid={"edge": "too small"}), name="b")
    decision = await make_router(a, b).decide(req())

    assert [entry.to_dict() for entry in decision.trail] == [
        {"policy": "a", "reason": "a abstains"},
        {"policy": "b", "reason": "b forbids edge", "forbid": {"edge": "too small"}},
    ]
    assert decision.to_dict()["config_version"] == "v1"
    assert decision.target == "cloud"
    # One target left because of a forbid: that forbid is the reason.
    assert (decision.decided_by, decision.reason) == ("b", "b forbids edge")


async def test_require_wins_over_scores_and_preferences() -> None:
    decision = await make_router(
        Says(Verdict(reason="scores", scores={"edge": 5.0}), name="s"),
        Says(Verdict(reason="needs cloud", require="cloud"), name="r"),
        Says(Verdict(reason="likes edge", prefer="edge"), name="p"),
    ).decide(req())
    assert (decision.target, decision.decided_by) == ("cloud", "r")


async def test_required_but_forbidden_is_a_policy_violation_naming_the_vetoing_policy() -> None:
    decision = await make_router(
        Says(Verdict(reason="pinned", require="cloud"), name="explicit"),
        Says(Verdict(reason="private", forbid={"cloud": "personal data"}), name="privacy"),
    ).decide(req())
    assert isinstance(decision.error, PolicyViolation)
    assert decision.error.message == "cloud is forbidden by policy privacy: personal data"
    assert decision.target is None


async def test_scores_sum_across_policies_and_the_biggest_margin_explains() -> None:
    decision = await make_router(
        Says(Verdict(reason="small nudge to edge", scores={"edge": 0.2, "cloud": 0.1}), name="small"),
        Says(Verdict(reason="big push to cloud", scores={"edge": 0.0, "cloud": 0.9}), name="big"),
    ).decide(req())
    assert (decision.target, decision.decided_by, decision.reason) == ("cloud", "big", "big push to cloud")


async def test_preferred_target_that_is_not_ready_falls_back_with_the_reason() -> None:
    decision = await make_router(
        Says(Verdict(reason="default cloud", prefer="cloud"), name="default"),
        cloud=Readiness(False, reason="no API key"),
    ).decide(req())
    assert (decision.target, decision.reason) == ("edge", "cloud not ready (no API key); using edge")
    assert decision.skipped == {"cloud": "not ready (no API key)"}


async def test_busy_target_spills_to_the_next_allowed_one() -> None:
    decision = await make_router(
        Says(Verdict(reason="default edge", prefer="edge")),
        edge=Readiness(True, busy=True, reason="generation queue full", detail={"retry_after": 4}),
    ).decide(req())
    assert (decision.target, decision.reason) == ("cloud", "edge busy (generation queue full); using cloud")


async def test_only_busy_targets_give_backend_busy_with_retry_after() -> None:
    decision = await make_router(
        Says(Verdict(reason="keep local", forbid={"cloud": "private"})),
        edge=Readiness(True, busy=True, reason="generation queue full", detail={"retry_after": 4}),
    ).decide(req())
    assert isinstance(decision.error, BackendBusy)
    assert decision.error.retry_after == 4


async def test_nothing_ready_is_no_target_available_listing_why() -> None:
    decision = await make_router(
        Says(Verdict(reason="too long", forbid={"edge": "needs 9000 tokens"})),
        cloud=Readiness(False, reason="no API key"),
    ).decide(req())
    assert isinstance(decision.error, NoTargetAvailable)
    assert decision.error.message == (
        "no allowed target can serve this request: cloud not ready (no API key); edge forbidden (needs 9000 tokens)"
    )


async def test_required_target_not_ready_is_503() -> None:
    decision = await make_router(
        Says(Verdict(reason="pinned", require="cloud")), cloud=Readiness(False, "no key")
    ).decide(req())
    assert isinstance(decision.error, NoTargetAvailable)
    assert decision.error.message == "target cloud is not ready: no key (chosen because: pinned)"


async def test_pins_resolve_names_and_aliases_and_reject_unknown_models() -> None:
    says = Says(Verdict(reason="x"))
    router = make_router(says)
    await router.decide(req(model="gpt-4o-mini"))
    await router.decide(req(model="edge"))
    assert [ctx.pinned for ctx in says.seen] == ["cloud", "edge"]

    decision = await router.decide(req(model="nope"))
    assert isinstance(decision.error, UnknownModel)
    assert decision.trail == []


async def test_observed_latency_reaches_policies_as_a_moving_average() -> None:
    says = Says(Verdict(reason="x"))
    router = make_router(says)
    router.observe_latency("edge", 100)
    router.observe_latency("edge", 200)
    await router.decide(req())
    assert says.seen[0].targets["edge"].latency_ms == pytest.approx(120)
    assert says.seen[0].targets["cloud"].latency_ms == 1000


async def test_policies_see_the_running_tally() -> None:
    later = Says(Verdict(reason="look"), name="later")
    await make_router(Says(Verdict(reason="forbid", forbid={"edge": "no"})), later).decide(req())
    assert later.seen[0].so_far.forbidden == {"edge": "no"}
    assert later.seen[0].allowed() == ["cloud"]
