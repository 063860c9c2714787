"""The cascade policy, and how the router resolves a cascade against the rest of the chain."""

from __future__ import annotations

from typing import Any

import pytest

from router.backends.base import Readiness
from router.backends.cascade import CascadeBackend
from router.backends.redacting import RedactingBackend
from router.errors import ConfigError
from router.policies.base import Cascade, Tally, TargetCatalog
from router.policies.capability import CapabilityPolicy
from router.policies.cascade import CascadePolicy
from router.policies.privacy import PrivacyPolicy
from router.policies.registry import build_policies
from router.router import Router
from tests.conftest import cloud_backend, edge_backend
from tests.policies.helpers import context, request, views


def policy(**options: Any) -> CascadePolicy:
    return CascadePolicy(CascadePolicy.Options(**{"threshold": -0.5, **options}), TargetCatalog(views()))


def test_prefers_the_edge_and_asks_for_a_cascade_to_the_cloud() -> None:
    verdict = policy(threshold=-0.8).evaluate(context())

    assert verdict.prefer == "edge"
    assert verdict.cascade == Cascade("edge", "cloud", -0.8, "mean")
    assert verdict.reason == "edge first; cloud if its mean token logprob < -0.80"
    assert verdict.to_dict()["cascade"] == {"first": "edge", "then": "cloud", "signal": "mean", "threshold": -0.8}


def test_a_pinned_request_is_not_cascaded() -> None:
    verdict = policy().evaluate(context(pinned="edge"))

    assert verdict.abstains and verdict.cascade is None
    assert verdict.reason == "pinned to edge: no cascade"


def test_no_cascade_when_the_edge_is_already_forbidden() -> None:
    verdict = policy().evaluate(context(tally=Tally(forbidden={"edge": "needs tools"})))

    assert verdict.abstains and verdict.cascade is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"edge": "nope"}, "policies[0].edge: unknown target 'nope'; configured targets: cloud, edge"),
        ({"cloud": "edge"}, "policies[0].cloud: the cascade escalates from edge to another target, not to itself"),
        ({"threshold": 0.5}, "policies[0].threshold: Input should be less than or equal to 0"),
        ({"signal": "vibes"}, "policies[0].signal: Input should be 'mean' or 'min'"),
    ],
)
def test_bad_options_fail_at_start_up(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_policies([{"type": "cascade", "threshold": -0.5, **options}], TargetCatalog(views()))

    assert message in caught.value.message


def test_the_threshold_must_be_chosen() -> None:
    with pytest.raises(ConfigError, match=r"policies\[0\]\.threshold: Field required"):
        build_policies([{"type": "cascade"}], TargetCatalog(views()))


def test_needs_a_local_and_a_remote_target() -> None:
    only_local = {"edge": views()["edge"]}
    with pytest.raises(ConfigError, match="needs a local and a non-local target"):
        CascadePolicy(CascadePolicy.Options(threshold=-0.5), TargetCatalog(only_local))


def make_router(*policies: Any, cloud: Readiness | None = None) -> Router:
    backends = {"edge": edge_backend(), "cloud": cloud_backend(ready=cloud or Readiness(True))}
    return Router(backends=backends, policies=list(policies), config_version="v1")


async def test_the_router_wraps_the_edge_in_a_cascade_to_the_cloud() -> None:
    router = make_router(policy(threshold=-1.2))

    decision = await router.decide(request())
    backend = router.backend_for(decision)

    assert decision.target == "edge" and decision.decided_by == "cascade"
    assert decision.to_dict()["cascade"] == {"first": "edge", "then": "cloud", "signal": "mean", "threshold": -1.2}
    assert isinstance(backend, CascadeBackend)
    assert backend.first is router.backends["edge"] and backend.then is router.backends["cloud"]
    assert backend.threshold == -1.2


async def test_personal_data_kept_local_never_escalates_and_the_trail_says_so() -> None:
    router = make_router(PrivacyPolicy(PrivacyPolicy.Options(on_personal_data="edge")), policy())

    decision = await router.decide(request("write to ann@example.com"))
    backend = router.backend_for(decision)

    assert decision.target == "edge"
    assert isinstance(backend, CascadeBackend) and backend.then is None
    assert backend.blocked == "cloud forbidden (personal data (email) must stay on this machine)"
    assert decision.to_dict()["trail"][-1] == {
        "policy": "cascade",
        "reason": "edge answers; no escalation: cloud forbidden (personal data (email) must stay on this machine)",
    }


async def test_a_privacy_policy_after_the_cascade_still_binds() -> None:
    router = make_router(policy(), PrivacyPolicy(PrivacyPolicy.Options(on_personal_data="edge")))

    decision = await router.decide(request("write to ann@example.com"))

    assert decision.cascade is not None and decision.cascade.blocked.startswith("cloud forbidden")


async def test_escalation_is_redacted_when_privacy_says_redact() -> None:
    router = make_router(PrivacyPolicy(PrivacyPolicy.Options(on_personal_data="redact")), policy())

    decision = await router.decide(request("write to ann@example.com"))
    backend = router.backend_for(decision)

    assert decision.target == "edge" and decision.redact is False  # the edge itself sees the data
    assert isinstance(backend, CascadeBackend) and isinstance(backend.then, RedactingBackend)
    assert backend.then.inner is router.backends["cloud"]


async def test_a_cloud_that_cannot_serve_blocks_escalation() -> None:
    router = make_router(policy(), cloud=Readiness(False, reason="no API key"))

    decision = await router.decide(request())

    assert decision.cascade is not None and decision.cascade.blocked == "cloud not ready (no API key)"


async def test_no_cascade_when_the_request_goes_elsewhere_or_is_pinned() -> None:
    router = make_router(CapabilityPolicy(), policy())

    tools = await router.decide(request(tools=[{"type": "function", "function": {"name": "f"}}]))
    pinned = await router.decide(request(model="edge"))

    assert tools.target == "cloud" and tools.cascade is None
    assert isinstance(router.backend_for(tools), type(router.backends["cloud"]))
    assert pinned.target == "edge" and pinned.cascade is None
    assert not isinstance(router.backend_for(pinned), CascadeBackend)


async def test_a_first_target_that_is_not_local_is_redacted_too() -> None:
    router = make_router(
        PrivacyPolicy(PrivacyPolicy.Options(on_personal_data="redact")), policy(edge="cloud", cloud="edge")
    )

    decision = await router.decide(request("write to ann@example.com"))
    backend = router.backend_for(decision)

    assert decision.target == "cloud" and decision.redact is True
    assert isinstance(backend, CascadeBackend) and isinstance(backend.first, RedactingBackend)
    assert backend.then is router.backends["edge"]
