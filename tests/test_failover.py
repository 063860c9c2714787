"""Fallback chains: FailoverBackend over scripted targets, the router's chain, and what the client sees."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from router.backends.base import Readiness
from router.backends.fake import ScriptedBackend, ScriptedReply
from router.backends.redacting import RedactingBackend
from router.config import RouterConfig
from router.errors import (
    BackendBusy,
    BackendError,
    CircuitOpen,
    ConfigError,
    ContentFiltered,
    HybridRouterError,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamConnectError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from router.policies.base import TargetCatalog
from router.policies.registry import build_policies
from router.resilience import FailoverBackend, GuardedBackend
from router.router import FallbackStep, Router, TargetProfile, describe_targets
from service.app import create_app
from service.settings import Settings
from tests.conftest import DEFAULT_POLICIES, chat_body, cloud_backend, edge_backend, make_settings
from tests.policies.helpers import request


def chain(*backends: ScriptedBackend) -> FailoverBackend:
    return FailoverBackend([(backend.name, backend) for backend in backends])


def fail(error: HybridRouterError) -> ScriptedReply:
    return ScriptedReply(error=error)


async def streamed_text(failover: FailoverBackend) -> str:
    pieces = []
    async for chunk in failover.stream(request(stream=True)):
        for choice in chunk.get("choices") or ():
            pieces.append(choice["delta"].get("content") or "")
    return "".join(pieces)


# --- FailoverBackend ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        UpstreamConnectError("refused"),
        UpstreamRateLimited("slow down", retry_after=30),
        BackendError("upstream returned 503"),
        UpstreamTimeout("no first byte"),
        CircuitOpen("circuit open", retry_after=10),
        UpstreamAuthError("our key was rejected"),
    ],
    ids=lambda error: error.code,
)
async def test_a_failure_before_the_answer_falls_back(error: HybridRouterError) -> None:
    cloud, edge = cloud_backend(fail(error)), edge_backend()
    failover = chain(cloud, edge)

    result = await failover.complete(request())

    assert result.body["choices"][0]["message"]["content"] == "edge says hi"
    record = failover.record
    assert (record.served_by, record.header, record.reason, record.fell_back) == (
        "edge",
        "cloud->edge",
        error.code,
        True,
    )


async def test_a_stream_falls_back_before_its_first_chunk() -> None:
    cloud, edge = cloud_backend(fail(UpstreamRateLimited("slow down"))), edge_backend()
    failover = chain(cloud, edge)

    assert await streamed_text(failover) == "edge says hi"
    assert failover.record.served_by == "edge" and cloud.active_streams == edge.active_streams == 0


@pytest.mark.parametrize("error", [UpstreamBadRequest("bad"), ContentFiltered("filtered")], ids=lambda e: e.code)
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_refused_request_never_falls_back(error: HybridRouterError, stream: bool) -> None:
    cloud, edge = cloud_backend(fail(error)), edge_backend()
    failover = chain(cloud, edge)

    with pytest.raises(type(error)):
        if stream:
            await streamed_text(failover)
        else:
            await failover.complete(request())

    assert edge.requests == [] and not failover.record.fell_back and failover.record.served_by is None


async def test_after_the_first_chunk_a_stream_failure_is_the_callers() -> None:
    cut = ScriptedReply(text="one two three", fail_after=1, error=UpstreamTimeout("went quiet"))
    cloud, edge = cloud_backend(cut), edge_backend()
    failover = chain(cloud, edge)

    received: list[dict[str, Any]] = []
    with pytest.raises(UpstreamTimeout):
        async for chunk in failover.stream(request(stream=True)):
            received.append(chunk)

    assert len(received) == 2 and edge.requests == []
    assert failover.record.served_by == "cloud" and not failover.record.fell_back


async def test_a_fallback_that_cannot_serve_is_skipped_and_the_first_failure_raised() -> None:
    cloud = cloud_backend(fail(UpstreamConnectError("refused")))
    edge = edge_backend(ready=Readiness(ready=True, busy=True, reason="generation queue full"))
    failover = chain(cloud, edge)

    with pytest.raises(UpstreamConnectError):
        await failover.complete(request())

    assert edge.requests == []
    assert failover.record.skipped == {"edge": "busy (generation queue full)"}
    assert not failover.record.fell_back


async def test_when_every_target_fails_the_last_failure_is_raised() -> None:
    cloud = cloud_backend(fail(BackendError("upstream returned 500")))
    edge = edge_backend(fail(BackendBusy("queue full", retry_after=4)))
    failover = chain(cloud, edge)

    with pytest.raises(BackendBusy) as caught:
        await failover.complete(request())

    assert caught.value.retry_after == 4
    record = failover.record
    assert [hop.target for hop in record.failed] == ["cloud", "edge"]
    assert (record.served_by, record.header, record.reason, record.fell_back) == (
        None,
        "cloud->edge",
        "upstream_error",
        True,
    )


async def test_a_chain_goes_on_past_a_skipped_target() -> None:
    cloud = cloud_backend(fail(UpstreamConnectError("refused")))
    edge = edge_backend(ready=Readiness(ready=False, reason="model not loaded"))
    spare = ScriptedBackend("spare", ScriptedReply(text="spare says hi"))
    failover = chain(cloud, edge, spare)

    assert (await failover.complete(request())).body["choices"][0]["message"]["content"] == "spare says hi"
    assert failover.record.header == "cloud->spare" and failover.record.skipped == {
        "edge": "not ready (model not loaded)"
    }


async def test_closing_a_fallback_stream_early_frees_it() -> None:
    cloud, edge = cloud_backend(fail(UpstreamConnectError("refused"))), edge_backend(ScriptedReply(text="a b c d e"))
    chunks = chain(cloud, edge).stream(request(stream=True))

    await anext(chunks)
    await chunks.aclose()

    assert edge.active_streams == 0 and cloud.active_streams == 0


# --- the router's chain -------------------------------------------------------------------------


def make_router(policies: list[dict[str, Any]], **fallbacks: list[str]) -> Router:
    backends = {"edge": edge_backend(), "cloud": cloud_backend()}
    profiles = {name: TargetProfile(fallback=tuple(fallbacks.get(name, ()))) for name in backends}
    catalog = TargetCatalog(describe_targets(backends, profiles))
    return Router(backends=backends, policies=build_policies(policies, catalog), profiles=profiles)


DEFAULT_CLOUD = [{"type": "explicit"}, {"type": "privacy", "on_personal_data": "edge"}, {"type": "default", "target": "cloud"}]  # fmt: skip


async def test_the_decision_carries_the_chosen_targets_fallbacks() -> None:
    router = make_router(DEFAULT_CLOUD, cloud=["edge"], edge=["cloud"])

    decision = await router.decide(request("what is the capital of France?"))
    backend = router.backend_for(decision)

    assert decision.target == "cloud" and decision.fallback == (FallbackStep("edge"),)
    assert decision.to_dict()["fallback"] == ["edge"]
    assert isinstance(backend, FailoverBackend)
    assert [name for name, _ in backend.chain] == ["cloud", "edge"]
    assert backend.chain[1][1] is router.backends["edge"]


async def test_personal_data_never_falls_back_to_the_cloud() -> None:
    router = make_router(DEFAULT_CLOUD, cloud=["edge"], edge=["cloud"])

    decision = await router.decide(request("mail ann@example.com about the invoice"))

    assert decision.target == "edge" and decision.fallback == ()
    assert router.backend_for(decision) is router.backends["edge"]
    assert decision.to_dict()["trail"][-1] == {
        "policy": "fallback",
        "reason": "no fallback to cloud: forbidden (personal data (email) must stay on this machine)",
    }


async def test_a_fallback_to_the_cloud_is_redacted_when_privacy_says_redact() -> None:
    policies = [{"type": "privacy", "on_personal_data": "redact"}, {"type": "default", "target": "edge"}]
    router = make_router(policies, edge=["cloud"])
    edge = router.backends["edge"]
    assert isinstance(edge, ScriptedBackend)
    edge.script = fail(BackendBusy("queue full", retry_after=1))

    decision = await router.decide(request("mail ann@example.com about the invoice"))
    backend = router.backend_for(decision)
    result = await backend.complete(request("mail ann@example.com about the invoice"))

    assert decision.fallback == (FallbackStep("cloud", redact=True),) and not decision.redact
    assert isinstance(backend, FailoverBackend) and isinstance(backend.chain[1][1], RedactingBackend)
    cloud = router.backends["cloud"]
    assert isinstance(cloud, ScriptedBackend)
    sent = cloud.requests[0].prompt_text
    assert "ann@example.com" not in sent and "<EMAIL_1_" in sent
    assert result.body["choices"][0]["message"]["content"] == "cloud says hi"


async def test_no_fallback_without_config_and_none_under_a_cascade() -> None:
    router = make_router(DEFAULT_CLOUD)
    decision = await router.decide(request("hello"))

    assert decision.fallback == () and "fallback" not in decision.to_dict()
    assert router.backend_for(decision) is router.backends["cloud"]


def test_the_router_rejects_an_unknown_fallback() -> None:
    backends = {"edge": edge_backend(), "cloud": cloud_backend()}
    with pytest.raises(ConfigError, match=r"targets\.cloud\.fallback: 'edg' is not a target"):
        Router(backends=backends, policies=[], profiles={"cloud": TargetProfile(fallback=("edg",))})


@pytest.mark.parametrize(
    ("fallback", "message"),
    [
        (["nope"], "targets.cloud.fallback: 'nope' is not a target; the targets are: edge, cloud"),
        (["cloud"], "targets.cloud.fallback: a target cannot fall back to itself"),
        (["edge", "edge"], "targets.cloud.fallback: names a target twice"),
    ],
)
def test_config_validates_fallbacks(fallback: list[str], message: str) -> None:
    targets = {"edge": {"type": "fake", "fallback": ["cloud"]}, "cloud": {"type": "fake", "fallback": fallback}}
    with pytest.raises(ValidationError, match=message.replace(".", r"\.")):
        RouterConfig.model_validate({"targets": targets})


def test_config_defaults_suit_each_kind_of_target() -> None:
    cfg = RouterConfig.model_validate(
        {"targets": {"edge": {"type": "fake"}, "cloud": {"type": "openai", "base_url": "http://x/v1", "model": "m"}}}
    )
    edge, cloud = cfg.targets["edge"], cfg.targets["cloud"]

    assert edge.retries.max_attempts == 1 and edge.circuit is None and edge.fallback == []
    assert cloud.retries.max_attempts == 3 and cloud.retries.budget_ratio == 0.2
    assert cloud.circuit is not None and (cloud.circuit.failures, cloud.circuit.open_s) == (10, 15.0)


# --- what the client sees -----------------------------------------------------------------------


def resilient_settings(**cloud: Any) -> Settings:
    """Scripted edge and cloud; the cloud chosen by default, retried, circuit-broken, falling back to the edge."""
    targets = make_settings().model_dump()["targets"]
    targets["cloud"].update(
        fallback=["edge"],
        retries={"max_attempts": 2, "base_delay_s": 0},
        circuit={"failures": 3, "open_s": 60},
        **cloud,
    )
    targets["edge"]["fallback"] = ["cloud"]
    policies = [*DEFAULT_POLICIES[:-1], {"type": "default", "target": "cloud"}]
    return make_settings(targets=targets, policies=policies)


KEY = "sk-client-key-for-readyz"


def serve(cloud: ScriptedBackend, edge: ScriptedBackend | None = None, **cloud_config: Any) -> TestClient:
    """The app over scripted targets; a client key is configured so that /readyz shows its details."""
    app = create_app(
        resilient_settings(**cloud_config),
        backends={"edge": edge or edge_backend(), "cloud": cloud},
        registry=CollectorRegistry(),
        environ={"HYBRID_ROUTER_API_KEYS": KEY},
    )
    return TestClient(app, raise_server_exceptions=False, headers={"authorization": f"Bearer {KEY}"})


def metric(client: TestClient, name: str, **labels: str) -> float | None:
    value = client.app.state.gateway.metrics.registry.get_sample_value(name, labels)  # type: ignore[attr-defined]
    return None if value is None else float(value)


def sse_events(text: str) -> list[str]:
    return [block[len("data: ") :] for block in text.strip().split("\n\n")]


def test_a_failing_cloud_is_retried_then_the_edge_answers_with_headers_and_metrics() -> None:
    cloud = cloud_backend(fail(BackendError("target cloud: upstream returned 503")))
    with serve(cloud) as client:
        response = client.post("/v1/chat/completions", json=chat_body())

        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == "edge says hi"
        assert response.headers["x-route-target"] == "edge"
        assert response.headers["x-route-fallback"] == "cloud->edge"
        assert response.headers["x-route-fallback-reason"] == "upstream_error"
        assert len(cloud.requests) == 2  # one retry, then the fallback
        assert metric(client, "hybrid_router_fallbacks_total", **{"from": "cloud", "to": "edge", "reason": "upstream_error"}) == 1  # fmt: skip
        assert metric(client, "hybrid_router_upstream_attempts_total", target="cloud", outcome="upstream_error") == 2
        assert (
            metric(client, "hybrid_router_requests_total", target="edge", decided_by="default", status="200",
                   tenant="default") == 1
        )  # fmt: skip
        assert metric(client, "hybrid_router_circuit_state", target="cloud") == 0


def test_a_stream_falls_back_before_its_first_byte() -> None:
    cloud = cloud_backend(fail(UpstreamConnectError("target cloud: cannot connect")))
    with serve(cloud) as client:
        response = client.post("/v1/chat/completions", json=chat_body(stream=True))

    assert response.status_code == 200 and response.headers["x-route-fallback"] == "cloud->edge"
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1] if json.loads(e)["choices"])  # fmt: skip
    assert text == "edge says hi"


def test_a_failure_mid_stream_is_an_error_event_and_done_with_no_fallback() -> None:
    cut = ScriptedReply(text="one two three", fail_after=1, error=UpstreamTimeout("target cloud: went quiet"))
    edge = edge_backend()
    with serve(cloud_backend(cut), edge) as client:
        response = client.post("/v1/chat/completions", json=chat_body(stream=True))

    events = sse_events(response.text)
    assert response.status_code == 200 and "x-route-fallback" not in response.headers
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "upstream_timeout"
    assert edge.requests == []


def test_a_refused_request_reaches_the_client_as_is() -> None:
    edge = edge_backend()
    with serve(cloud_backend(fail(ContentFiltered("target cloud: blocked by the content filter"))), edge) as client:
        response = client.post("/v1/chat/completions", json=chat_body())

    assert response.status_code == 400 and response.json()["error"]["code"] == "content_filter"
    assert "x-route-fallback" not in response.headers and edge.requests == []


def test_when_the_fallback_fails_too_the_client_gets_its_error_and_the_headers_say_so() -> None:
    edge = edge_backend(fail(BackendBusy("target edge: queue full", retry_after=3)))
    with serve(cloud_backend(fail(UpstreamConnectError("target cloud: refused"))), edge) as client:
        response = client.post("/v1/chat/completions", json=chat_body())

    assert response.status_code == 503 and response.json()["error"]["code"] == "backend_busy"
    assert response.headers["retry-after"] == "3"
    assert response.headers["x-route-fallback"] == "cloud->edge"
    assert response.headers["x-route-target"] == "edge"


def test_an_open_circuit_takes_the_cloud_out_of_routing_and_readyz_shows_why() -> None:
    cloud = cloud_backend(fail(BackendError("target cloud: upstream returned 500")))
    with serve(cloud) as client:
        for _ in range(2):  # 2 requests x 2 attempts: the circuit opens on the 3rd failure
            assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
        calls = len(cloud.requests)
        response = client.post("/v1/chat/completions", json=chat_body())
        ready = client.get("/readyz").json()
        assert metric(client, "hybrid_router_circuit_state", target="cloud") == 2

    assert calls == 3 and len(cloud.requests) == 3  # not called once open
    assert response.status_code == 200 and response.headers["x-route-target"] == "edge"
    assert "x-route-fallback" not in response.headers  # the router skipped it: no fallback needed
    assert response.headers["x-route-reason"].startswith("cloud not ready (circuit open: 3 consecutive failures")
    cloud_state = ready["targets"]["cloud"]
    assert cloud_state["ready"] is False and cloud_state["circuit"] == "open" and cloud_state["error_rate"] == 1.0
    assert ready["status"] == "ready"


def test_a_pinned_request_falls_back_too() -> None:
    with serve(cloud_backend(fail(UpstreamAuthError("target cloud: key rejected")))) as client:
        response = client.post("/v1/chat/completions", json=chat_body(model="cloud"))

    assert response.status_code == 200 and response.headers["x-route-fallback-reason"] == "upstream_auth_error"


def test_edge_busy_at_call_time_falls_back_to_the_cloud() -> None:
    edge = edge_backend(fail(BackendBusy("target edge: queue full", retry_after=2)))
    cloud = cloud_backend()
    settings = resilient_settings()
    settings.policies[-1] = {"type": "default", "target": "edge"}
    app = create_app(settings, backends={"edge": edge, "cloud": cloud}, registry=CollectorRegistry())
    with TestClient(app) as client:
        response = client.post("/v1/chat/completions", json=chat_body())

    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "cloud says hi"
    assert response.headers["x-route-fallback"] == "edge->cloud"
    assert response.headers["x-route-fallback-reason"] == "backend_busy"


def test_the_gateway_guards_configured_cloud_targets_only() -> None:
    app = create_app(resilient_settings(), registry=CollectorRegistry())
    backends = app.state.gateway.backends

    assert isinstance(backends["cloud"], GuardedBackend) and not isinstance(backends["edge"], GuardedBackend)


def test_a_pinned_target_with_an_open_circuit_falls_back_before_any_call() -> None:
    cloud = cloud_backend(fail(BackendError("target cloud: upstream returned 500")))
    with serve(cloud) as client:
        for _ in range(2):  # the third failed call (the second request's first) opens the circuit
            client.post("/v1/chat/completions", json=chat_body(model="cloud"))
        calls = len(cloud.requests)
        response = client.post("/v1/chat/completions", json=chat_body(model="cloud"))
        route = client.post("/v1/route", json=chat_body(model="cloud")).json()
        counted = metric(client, "hybrid_router_fallbacks_total", **{"from": "cloud", "to": "edge", "reason": "circuit_open"})  # fmt: skip

    assert len(cloud.requests) == calls == 3
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "edge says hi"
    assert response.headers["x-route-target"] == "edge"
    assert response.headers["x-route-fallback"] == "cloud->edge"
    assert response.headers["x-route-fallback-reason"] == "circuit_open"
    assert response.headers["x-route-reason"].startswith("cloud not ready (circuit open: 3 consecutive failures")
    assert (route["target"], route["decided_by"], route["fallback_from"]) == ("edge", "fallback", "cloud")
    assert counted == 1


async def test_a_required_target_that_cannot_serve_still_fails_without_an_allowed_fallback() -> None:
    router = make_router(DEFAULT_CLOUD, cloud=["edge"])
    edge, cloud = router.backends["edge"], router.backends["cloud"]
    assert isinstance(edge, ScriptedBackend) and isinstance(cloud, ScriptedBackend)
    cloud.ready = Readiness(ready=False, reason="circuit open: 5 consecutive failures, next probe in 9 s")

    rescued = await router.decide(request("hello", model="cloud"))
    edge.ready = Readiness(ready=True, busy=True, reason="generation queue full", detail={"retry_after": 2})
    stuck = await router.decide(request("hello", model="cloud"))

    assert (rescued.target, rescued.fallback_from, rescued.fallback_reason) == ("edge", "cloud", "not_ready")
    assert rescued.skipped == {"cloud": "not ready (circuit open: 5 consecutive failures, next probe in 9 s)"}
    assert stuck.target is None and stuck.error is not None and stuck.error.code == "no_target_available"


async def test_a_reload_that_changes_only_fallbacks_keeps_each_targets_circuit() -> None:
    from service.gateway import Gateway

    before = resilient_settings()
    gateway = Gateway(before, registry=CollectorRegistry())
    await gateway.start()
    guarded = gateway.backends["cloud"]
    targets = before.model_dump()["targets"]
    targets["cloud"]["fallback"] = []
    try:
        result = await gateway.reload(make_settings(targets=targets, policies=before.policies))
        assert result.ok and "cloud" in result.kept
        assert gateway.backends["cloud"] is guarded and isinstance(guarded, GuardedBackend)
        assert gateway.router.profiles["cloud"].fallback == () and gateway.router.profiles["edge"].fallback == (
            "cloud",
        )
    finally:
        await gateway.aclose()
