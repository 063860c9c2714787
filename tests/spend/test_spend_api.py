"""Rate limits, budgets and keys through the HTTP API, on the in-memory store (one process)."""

from __future__ import annotations

import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.backends.fake import ScriptedReply
from router.errors import UpstreamTimeout
from router.state import BudgetScope
from service.auth import hash_key
from tests.conftest import edge_backend
from tests.spend.conftest import priced_cloud, serving, settled, spend_settings


def chat(content: str = "Hello there", **extra: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 5, **extra}


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


def cost(body: dict[str, object]) -> float:
    usage = body["usage"]
    assert isinstance(usage, dict)
    return (usage["prompt_tokens"] + usage["completion_tokens"]) * 1000.0 / 1e6


async def test_a_rate_limit_answers_429_with_retry_after_naming_the_limit() -> None:
    settings = spend_settings(tenants={"default": {"limits": {"requests_per_minute": 2}}})
    async with serving(settings) as (client, _):
        statuses = [(await client.post("/v1/chat/completions", json=chat())).status_code for _ in range(2)]
        refused = await client.post("/v1/chat/completions", json=chat())

    assert statuses == [200, 200]
    assert refused.status_code == 429
    # The sliding window weighs the previous minute's count: a full minute can take up to two to drain.
    assert 1 <= int(refused.headers["retry-after"]) <= 120
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert "tenant 'default'" in error["message"] and "2 requests per minute" in error["message"]


async def test_a_token_rate_limit_counts_prompt_tokens_and_a_request_too_big_for_it_gets_no_retry_after() -> None:
    settings = spend_settings(tenants={"default": {"limits": {"tokens_per_minute": 20}}})
    async with serving(settings) as (client, _):
        huge = await client.post("/v1/chat/completions", json=chat("word " * 200))

    assert huge.status_code == 429
    assert "retry-after" not in huge.headers
    assert "alone exceed" in huge.json()["error"]["message"]


async def test_over_a_rate_limit_a_tenant_that_says_edge_is_served_by_the_edge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = spend_settings(tenants={"default": {"limits": {"requests_per_minute": 1}, "on_rate_limited": "edge"}})
    async with serving(settings) as (client, _):
        first = await client.post("/v1/chat/completions", json=chat())
        with caplog.at_level(logging.INFO, logger="hybrid_router.access"):
            spilled = await client.post("/v1/chat/completions", json=chat())
        metrics = (await client.get("/metrics")).text

    assert first.headers["x-route-target"] == "cloud"
    assert spilled.status_code == 200 and spilled.headers["x-route-target"] == "edge"
    assert spilled.json()["choices"][0]["message"]["content"] == "edge says hi"
    assert 'hybrid_router_rate_limited_total{kind="requests",tenant="default"} 1.0' in metrics
    logged = [r for r in caplog.records if getattr(r, "limit", None)]
    assert logged and "1 requests per minute" in logged[0].limit  # type: ignore[attr-defined]


async def test_a_client_that_pins_the_cloud_is_refused_rather_than_silently_answered_by_the_edge() -> None:
    settings = spend_settings(tenants={"default": {"limits": {"requests_per_minute": 1}, "on_rate_limited": "edge"}})
    async with serving(settings) as (client, _):
        await client.post("/v1/chat/completions", json=chat(model="cloud"))
        pinned = await client.post("/v1/chat/completions", json=chat(model="cloud"))

    assert pinned.status_code == 429


async def test_a_spent_budget_answers_429_insufficient_quota_naming_the_budget_and_its_reset() -> None:
    settings = spend_settings(tenants={"acme": {"limits": {"usd_per_day": 0.005}}},
                              auth={"keys": [{"hash": hash_key("sk-acme"), "tenant": "acme"}]})  # fmt: skip
    async with serving(settings) as (client, _):
        refused = await client.post("/v1/chat/completions", json=chat(), headers={"authorization": "Bearer sk-acme"})

    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "insufficient_quota" and error["code"] == "budget_exceeded"
    assert "tenant 'acme''s daily budget of $0.0050" in error["message"]
    assert "resets at" in error["message"] and "T00:00:00Z" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 86_400


async def test_a_spent_budget_that_says_edge_routes_to_the_edge_and_says_why() -> None:
    settings = spend_settings(tenants={"default": {"limits": {"usd_per_day": 0.005}, "on_budget_exhausted": "edge"}})
    async with serving(settings) as (client, gateway):
        answered = await client.post("/v1/chat/completions", json=chat())
        await settled(gateway)
        usage = await gateway.store.budgets.usage(BudgetScope("tenant:default", "day", 0.005))

    assert answered.status_code == 200 and answered.headers["x-route-target"] == "edge"
    assert answered.headers["x-route-reason"].startswith("tenant 'default''s daily budget")
    assert usage.spent_usd == 0 and usage.held_usd == 0


async def test_the_real_cost_is_charged_and_a_failed_request_releases_its_hold() -> None:
    def script(request: object) -> ScriptedReply:
        text = request.messages[-1].content  # type: ignore[attr-defined]
        if text == "fail":
            return ScriptedReply(error=UpstreamTimeout("target cloud: slow"))
        return ScriptedReply(text="cloud says hi", prompt_tokens=10)

    settings = spend_settings(tenants={"default": {"limits": {"usd_per_day": 1.0, "usd_per_month": 5.0}}})
    backends = {"edge": edge_backend(), "cloud": priced_cloud(script)}
    async with serving(settings, backends=backends) as (client, gateway):
        answers = [await client.post("/v1/chat/completions", json=chat()) for _ in range(3)]
        failed = await client.post("/v1/chat/completions", json=chat("fail"))
        streamed = await client.post(
            "/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True})
        )
        await settled(gateway)
        day = await gateway.store.budgets.usage(BudgetScope("tenant:default", "day", 1.0))
        month = await gateway.store.budgets.usage(BudgetScope("tenant:default", "month", 5.0))
        metrics = (await client.get("/metrics")).text

    assert [a.status_code for a in answers] == [200, 200, 200] and failed.status_code == 504
    assert streamed.status_code == 200
    # Three answers at (10 + 3 tokens) x $0.001 and the stream's usage (10 + 3): $0.052; the failure costs nothing.
    expected = sum(cost(a.json()) for a in answers) + 13 * 0.001
    assert day.spent_usd == pytest.approx(expected) == month.spent_usd
    assert day.held_usd == 0 == month.held_usd
    assert sample(metrics, "hybrid_router_budget_remaining_usd", subject="tenant:default", window="day") == (
        pytest.approx(1 - expected)
    )
    assert sample(metrics, "hybrid_router_cost_usd_total", target="cloud", tenant="default") == pytest.approx(expected)


async def test_edge_answers_count_what_they_saved_at_the_cloud_prices() -> None:
    settings = spend_settings(policies=[{"type": "default", "target": "edge"}])
    backends = {"edge": edge_backend(ScriptedReply(text="edge says hi", prompt_tokens=7)), "cloud": priced_cloud()}
    async with serving(settings, backends=backends) as (client, gateway):
        await client.post("/v1/chat/completions", json=chat())
        await settled(gateway)
        metrics = (await client.get("/metrics")).text

    # 7 prompt + 3 completion tokens at the cloud's $0.001 each.
    assert sample(metrics, "hybrid_router_cost_saved_usd_total", tenant="default") == pytest.approx(0.01)


async def test_config_keys_name_the_tenant_and_limit_the_targets() -> None:
    settings = spend_settings(
        auth={"keys": [{"hash": hash_key("sk-acme"), "tenant": "acme", "allowed_targets": ["edge"]}]}
    )
    acme = {"authorization": "Bearer sk-acme"}
    async with serving(settings) as (client, _):
        missing = await client.post("/v1/chat/completions", json=chat())
        routed = await client.post("/v1/chat/completions", json=chat(), headers=acme)
        pinned = await client.post("/v1/chat/completions", json=chat(model="cloud"), headers=acme)
        metrics = (await client.get("/metrics")).text

    assert missing.status_code == 401
    assert routed.status_code == 200 and routed.headers["x-route-target"] == "edge"
    assert pinned.status_code == 403 and "may not use it" in pinned.json()["error"]["message"]
    assert (
        'hybrid_router_requests_total{decided_by="admission",status="200",target="edge",tenant="acme"} 1.0' in metrics
    )


async def test_a_keys_own_limits_apply_beside_its_tenants() -> None:
    settings = spend_settings(
        auth={"keys": [{"hash": hash_key("sk-a"), "tenant": "acme", "limits": {"requests_per_minute": 1}},
                       {"hash": hash_key("sk-b"), "tenant": "acme"}]},
        tenants={"acme": {"limits": {"requests_per_minute": 3}}},
    )  # fmt: skip
    a, b = {"authorization": "Bearer sk-a"}, {"authorization": "Bearer sk-b"}
    async with serving(settings) as (client, _):
        codes = [
            (await client.post("/v1/chat/completions", json=chat(), headers=headers)).status_code
            for headers in (a, a, b, b, b)
        ]

    # sk-a's own limit refuses its second request (not counted on the tenant); the tenant's 3 then hold for sk-b.
    assert codes == [200, 429, 200, 200, 429]


async def test_a_stream_the_client_cuts_is_charged_for_what_was_relayed_and_its_hold_dropped() -> None:
    words = " ".join(["word"] * 400)
    slow = priced_cloud(ScriptedReply(text=words, piece_delay_s=0.01, prompt_tokens=10))
    settings = spend_settings(tenants={"default": {"limits": {"usd_per_day": 10.0}}})
    async with serving(settings, backends={"edge": edge_backend(), "cloud": slow}) as (client, gateway):
        async with client.stream("POST", "/v1/chat/completions", json=chat(stream=True, max_tokens=1000)) as answer:
            seen = 0
            async for line in answer.aiter_lines():
                seen += line.count("word")
                if seen >= 20:
                    break
        await settled(gateway)
        usage = await gateway.store.budgets.usage(BudgetScope("tenant:default", "day", 10.0))

    # Cut after ~20 of 400 words: charged on what was relayed (about 5 characters a word, 4 a token),
    # far below the hold of 1,010 tokens, and the hold is gone.
    assert usage.held_usd == 0
    assert 0 < usage.spent_usd < 0.2
