"""Chaos tests: the gateway against a real loopback upstream that fails on cue (tests/support/chaos.py).

For each failure kind, for both fallback paths, streamed and not, the client
sees a full answer, a clean OpenAI-shaped error, or (once output has started)
an SSE error event and ``[DONE]``; the headers and metrics say what happened.

* cloud -> edge: the cloud target is the chaos upstream, failing every call
  with the kind; the edge (a scripted local target) answers when it may.
* edge busy -> cloud: the edge is full at call time; the cloud fallback fails
  once with the kind, then answers, so its retry is what serves.

Timeouts are short (first byte and idle gap 0.3 s, a whole answer 0.6 s) so
stalls cost little.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import httpx
import pytest
from prometheus_client import CollectorRegistry

from router.backends.fake import ScriptedReply
from router.backends.http import transport_error
from router.backends.registry import create_backend
from router.errors import BackendBusy
from service.app import create_app
from service.settings import Settings
from tests.conftest import chat_body, edge_backend
from tests.support.chaos import ChaosUpstream, Fault, closed_port_url

TIMEOUTS = {"connect_s": 0.5, "first_byte_s": 0.3, "idle_s": 0.3, "total_s": 0.6}
KINDS: dict[str, Fault | None] = {
    "refused": None,  # a closed port
    "reset": Fault("reset"),
    "429": Fault.error(429, retry_after=0.1),
    "503": Fault.error(503),
    "first_byte_stall": Fault("stall_first_byte", stall_s=5),
    "mid_stream_stall": Fault("stall_mid_stream", stall_s=5),
    "mid_stream_cut": Fault("cut_mid_stream"),
}
# The error each kind surfaces as, on the first attempt.
CODES = {
    "refused": "upstream_connect_error",
    "reset": "upstream_protocol_error",
    "429": "upstream_rate_limited",
    "503": "upstream_error",
    "first_byte_stall": "upstream_timeout",
    "mid_stream_stall": "upstream_timeout",
    "mid_stream_cut": "upstream_protocol_error",
}


def settings(cloud_url: str, default: str) -> Settings:
    cloud = {
        "type": "openai", "base_url": cloud_url, "model": "chaos-model", "api_key_env": None,
        "timeouts": TIMEOUTS, "fallback": ["edge"],
        "retries": {"max_attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.5},
        "circuit": {"failures": 5, "open_s": 30},
    }  # fmt: skip
    edge = {"type": "fake", "reply": "edge says hi", "fallback": ["cloud"]}
    policies = [{"type": "explicit"}, {"type": "privacy", "on_personal_data": "edge"}, {"type": "default", "target": default}]  # fmt: skip
    return Settings(targets={"edge": edge, "cloud": cloud}, policies=policies)


@dataclass
class Gateway:
    client: httpx.AsyncClient
    registry: CollectorRegistry
    upstream: ChaosUpstream

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def ask(self, stream: bool) -> httpx.Response:
        return await self.client.post("/v1/chat/completions", json=chat_body("What is six times seven?", stream=stream))


@asynccontextmanager
async def gateway(path: Literal["cloud->edge", "edge->cloud"], fault: Fault | None) -> AsyncIterator[Gateway]:
    """The app, its cloud the chaos upstream (or a closed port for ``None``), driven in-process.

    cloud->edge: the cloud fails every call. edge->cloud: it fails once, then answers.
    """
    script = [fault] if path == "edge->cloud" and fault is not None else []
    default = fault if path == "cloud->edge" and fault is not None else Fault.ok()
    async with ChaosUpstream(script, default=default) as up:
        cloud_url = up.url if fault is not None else closed_port_url()
        config = settings(cloud_url, default="cloud" if path == "cloud->edge" else "edge")
        registry = CollectorRegistry()
        if path == "edge->cloud":
            busy = edge_backend(
                ScriptedReply(error=BackendBusy("target edge: generation queue is full", retry_after=2))
            )
            backends = {"edge": busy, "cloud": create_backend("cloud", config.targets["cloud"], environ={})}
            app = create_app(config, backends=backends, registry=registry)
        else:
            app = create_app(config, registry=registry)
        transport = httpx.ASGITransport(app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as client,
        ):
            yield Gateway(client, registry, up)


def answer_text(response: httpx.Response, stream: bool) -> str:
    if not stream:
        return str(response.json()["choices"][0]["message"]["content"])
    events = sse(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert not any("error" in chunk for chunk in chunks)
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def sse(response: httpx.Response) -> list[str]:
    return [block.removeprefix("data: ") for block in response.text.strip().split("\n\n")]


def assert_clean_error(response: httpx.Response, code: str) -> None:
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"error"}
    assert response.json()["error"]["code"] == code
    assert "Traceback" not in response.text


def assert_sse_error_then_done(response: httpx.Response, code: str) -> None:
    assert response.status_code == 200
    events = sse(response)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == code
    assert any(json.loads(event).get("choices") for event in events[:-2])  # some output came first


# (path, kind, stream) -> what the client sees: "answer", "error", or "sse_error".
Outcome = Literal["answer", "error", "sse_error"]


# Whether the adapter marks a broken connection (before any answer reached the client) retryable:
# router/backends/http.py does, so a reset or a cut reply is retried and then falls back.
RESET_RETRIED = transport_error(aiohttp.ClientOSError(104, "Connection reset by peer")).retryable
CUT_RETRIED = transport_error(aiohttp.ClientPayloadError("Response payload is not completed")).retryable


def expected(path: str, kind: str, stream: bool) -> Outcome:
    if kind in ("mid_stream_stall", "mid_stream_cut") and stream:
        return "sse_error"  # output had started: no retry, no fallback
    if (kind == "reset" and not RESET_RETRIED) or (kind == "mid_stream_cut" and not stream and not CUT_RETRIED):
        return "error"
    if kind == "refused" and path == "edge->cloud":
        return "error"  # the fallback is the closed port itself; a fallback's own fallbacks are not followed
    return "answer"


MATRIX = [
    pytest.param(path, kind, stream, id=f"{path}-{kind}-{'stream' if stream else 'complete'}")
    for path in ("cloud->edge", "edge->cloud")
    for kind in KINDS
    for stream in (False, True)
]


@pytest.mark.parametrize(("path", "kind", "stream"), MATRIX)
async def test_chaos_matrix(path: Literal["cloud->edge", "edge->cloud"], kind: str, stream: bool) -> None:
    async with gateway(path, KINDS[kind]) as gw:
        started = time.perf_counter()
        response = await gw.ask(stream)
        elapsed = time.perf_counter() - started
        outcome = expected(path, kind, stream)
        code = CODES[kind]

        if outcome == "answer":
            assert response.status_code == 200, response.text
            if path == "cloud->edge":
                assert answer_text(response, stream) == "edge says hi"
                assert response.headers["x-route-target"] == "edge"
                assert response.headers["x-route-fallback"] == "cloud->edge"
                assert response.headers["x-route-fallback-reason"] == code
                assert gw.metric("hybrid_router_upstream_attempts_total", target="cloud", outcome=code) == 2
                labels = {"from": "cloud", "to": "edge", "reason": code}
            else:
                assert answer_text(response, stream) == "The answer is forty-two."
                assert response.headers["x-route-target"] == "cloud"
                assert response.headers["x-route-fallback"] == "edge->cloud"
                assert response.headers["x-route-fallback-reason"] == "backend_busy"
                assert gw.metric("hybrid_router_upstream_attempts_total", target="cloud", outcome=code) == 1
                assert gw.metric("hybrid_router_upstream_attempts_total", target="cloud", outcome="ok") == 1
                labels = {"from": "edge", "to": "cloud", "reason": "backend_busy"}
            assert gw.metric("hybrid_router_fallbacks_total", **labels) == 1
        elif outcome == "error":
            assert response.status_code == 502
            assert_clean_error(response, code)
            assert response.headers["x-route-target"] == "cloud"
            assert gw.metric("hybrid_router_upstream_attempts_total", target="cloud", outcome=code) == (
                2 if kind == "refused" else 1
            )
        else:
            assert_sse_error_then_done(response, code)
            assert response.headers["x-route-target"] == "cloud"
            assert gw.metric("hybrid_router_fallbacks_total", **{"from": "cloud", "to": "edge", "reason": code}) == 0
        # Stalls cost a timeout each (0.3-0.6 s), not the 300 s request deadline; the margin is for a loaded machine.
        assert elapsed < 10.0


async def test_a_transient_429_is_retried_after_its_retry_after_and_the_cloud_answers() -> None:
    async with ChaosUpstream([Fault.error(429, retry_after=0.25)]) as up:
        app = create_app(settings(up.url, default="cloud"), registry=(registry := CollectorRegistry()))
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as client:  # fmt: skip
            started = time.perf_counter()
            response = await client.post("/v1/chat/completions", json=chat_body())
            elapsed = time.perf_counter() - started

    assert response.status_code == 200 and response.headers["x-route-target"] == "cloud"
    assert "x-route-fallback" not in response.headers
    assert elapsed >= 0.25 and up.requests == 2
    assert registry.get_sample_value("hybrid_router_upstream_attempts_total", {"target": "cloud", "outcome": "ok"}) == 1


async def test_a_cloud_that_keeps_failing_opens_its_circuit_and_stops_being_called() -> None:
    async with gateway("cloud->edge", Fault.error(503)) as gw:
        for _ in range(3):  # 2 attempts each: the circuit (5 failures) opens during the third request
            assert (await gw.ask(stream=False)).status_code == 200
        calls = gw.upstream.requests
        response = await gw.ask(stream=True)
        ready = (await gw.client.get("/readyz")).json()
        assert gw.metric("hybrid_router_circuit_state", target="cloud") == 2

    assert calls == 5 and gw.upstream.requests == 5
    assert response.status_code == 200 and answer_text(response, stream=True) == "edge says hi"
    assert response.headers["x-route-reason"].startswith("cloud not ready (circuit open: 5 consecutive failures")
    assert ready["targets"]["cloud"] == {"ready": False, "busy": False, "reason": "not ready"}  # no key: no details


async def test_personal_data_never_falls_back_to_the_failing_cloud() -> None:
    edge = edge_backend(ScriptedReply(error=BackendBusy("target edge: queue full", retry_after=2)))
    async with ChaosUpstream() as up:
        config = settings(up.url, default="edge")
        app = create_app(config, backends={"edge": edge, "cloud": create_backend("cloud", config.targets["cloud"], environ={})}, registry=CollectorRegistry())  # fmt: skip
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as client:  # fmt: skip
            body: dict[str, Any] = chat_body("Email ann@example.com the contract")
            response = await client.post("/v1/chat/completions", json=body)

    assert response.status_code == 503 and response.json()["error"]["code"] == "backend_busy"
    assert "x-route-fallback" not in response.headers and up.requests == 0


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_reset_before_the_first_byte_falls_back(stream: bool) -> None:
    async with gateway("cloud->edge", Fault("reset")) as gw:
        response = await gw.ask(stream)

    assert response.status_code == 200 and answer_text(response, stream) == "edge says hi"
