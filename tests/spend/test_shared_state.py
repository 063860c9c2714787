"""Two gateway processes on one store (SQLite, then Redis): a budget and a rate limit hold across both."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import yaml

from router.state import BudgetScope, BudgetUsage, open_store
from service.auth import hash_key
from tests.support.processes import Server, free_port, running

BUDGET_USD = 0.1

StartGateways = Callable[[Path], list[Server]]


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("redis_server")
    return url


def write_config(tmp_path: Path, url: str, tenant: str, limits: dict[str, float]) -> Path:
    config = {
        "targets": {
            "edge": {"type": "fake", "reply": "edge says hi"},
            # $0.001 a token in and out; a little delay so that requests overlap.
            "cloud": {"type": "fake", "reply": "cloud says hi", "local": False, "delay_s": 0.05,
                      "price_per_mtok": {"input": 1000.0, "output": 1000.0}},
        },
        "policies": [{"type": "default", "target": "cloud"}],
        "auth": {"keys": [{"hash": hash_key("sk-shared"), "tenant": tenant}]},
        "tenants": {tenant: {"limits": limits}},
        "state": {"url": url},
    }  # fmt: skip
    file = tmp_path / f"{tenant}.yaml"
    file.write_text(yaml.safe_dump(config))
    return file


@pytest.fixture
def two_gateways(tmp_path: Path) -> Iterator[StartGateways]:
    stack = ExitStack()

    def start(config: Path) -> list[Server]:
        servers = []
        for index in range(2):
            port = free_port()
            servers.append(stack.enter_context(running(
                ["-m", "service.cli", "serve", "--config", str(config), "--port", str(port)],
                port=port, ready_path="/readyz", log=tmp_path / f"gateway-{index}.log",
            )))  # fmt: skip
        return servers

    with stack:
        yield start


async def fire(servers: list[Server], count: int) -> list[httpx.Response]:
    body = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 5}
    headers = {"authorization": "Bearer sk-shared"}
    async with httpx.AsyncClient(timeout=30) as client:
        return list(await asyncio.gather(*(
            client.post(servers[i % 2].url + "/v1/chat/completions", json=body, headers=headers) for i in range(count)
        )))  # fmt: skip


def charged_usd(answers: list[httpx.Response]) -> float:
    """What the answers cost at the scripted cloud's $0.001 a token."""
    return sum((a.json()["usage"]["prompt_tokens"] + a.json()["usage"]["completion_tokens"]) * 0.001 for a in answers)


async def settled_usage(url: str, scope: BudgetScope) -> BudgetUsage:
    """``scope``'s usage once nothing is held any more (or after 5 s)."""
    store = open_store(url)
    try:
        for _ in range(100):
            usage = await store.budgets.usage(scope)
            if usage.held_usd == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        await store.close()
    return usage


async def test_fifty_concurrent_requests_at_a_budgets_edge_never_overshoot_it_across_two_processes(
    tmp_path: Path, store_url: str, two_gateways: StartGateways
) -> None:
    tenant = "t" + uuid.uuid4().hex[:8]
    servers = two_gateways(write_config(tmp_path, store_url, tenant, {"usd_per_day": BUDGET_USD}))

    answers = await fire(servers, 50)

    ok = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(ok) + len(refused) == 50, [a.text for a in answers if a.status_code not in (200, 429)]
    assert ok and refused
    assert all(a.json()["error"]["code"] == "budget_exceeded" for a in refused)
    charged = charged_usd(ok)
    # Settlements finish just after their responses.
    usage = await settled_usage(store_url, BudgetScope(f"tenant:{tenant}", "day", BUDGET_USD))
    assert usage.held_usd == 0
    assert usage.spent_usd == pytest.approx(charged)
    assert usage.spent_usd <= BUDGET_USD + 1e-9


async def test_busy_clients_are_admitted_from_leases_and_every_cent_still_reaches_redis(
    tmp_path: Path, two_gateways: StartGateways, request: pytest.FixtureRequest
) -> None:
    import redis.asyncio

    url: str = request.getfixturevalue("redis_server")
    tenant = "t" + uuid.uuid4().hex[:8]
    limits = {"usd_per_day": 10.0, "requests_per_minute": 2000}
    servers = two_gateways(write_config(tmp_path, url, tenant, limits))
    client = redis.asyncio.Redis.from_url(url)
    await client.config_resetstat()
    try:
        answers: list[httpx.Response] = []
        for _ in range(4):
            answers += await fire(servers, 50)
        stats = await client.info("commandstats")
    finally:
        await client.aclose()

    assert [a.status_code for a in answers] == [200] * 200
    scripts = sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))
    # Without leases: an admission and a completion each, 400 at least. With them, a few per lease.
    assert scripts < 150, stats
    charged = charged_usd(answers)
    # Leases retire within a second or so of their last request.
    usage = await settled_usage(url, BudgetScope(f"tenant:{tenant}", "day", 10.0))
    assert usage.held_usd == 0
    assert usage.spent_usd == pytest.approx(charged)


async def test_a_rate_limit_holds_across_two_processes(
    tmp_path: Path, store_url: str, two_gateways: StartGateways
) -> None:
    tenant = "t" + uuid.uuid4().hex[:8]
    servers = two_gateways(write_config(tmp_path, store_url, tenant, {"requests_per_minute": 10}))

    answers = await fire(servers, 30)

    codes = sorted(a.status_code for a in answers)
    # The sliding window weighs the previous minute's count: crossing a minute boundary mid-test admits
    # at most one more.
    assert 10 <= codes.count(200) <= 11 and codes.count(429) == 30 - codes.count(200)
    assert all("retry-after" in a.headers for a in answers if a.status_code == 429)


async def test_a_conversation_escalated_on_one_process_stays_on_the_cloud_on_the_other(
    tmp_path: Path, store_url: str, two_gateways: StartGateways
) -> None:
    file = tmp_path / "sticky.yaml"
    file.write_text(yaml.safe_dump({
        "targets": {"edge": {"type": "fake", "reply": "edge says hi"},
                    "cloud": {"type": "fake", "reply": "cloud says hi", "local": False}},
        "policies": [{"type": "explicit"}, {"type": "sticky"}, {"type": "default", "target": "edge"}],
        "state": {"url": store_url},
    }))  # fmt: skip
    first, second = two_gateways(file)
    session = {"x-session-id": "conv-" + uuid.uuid4().hex[:8]}
    turn = {"messages": [{"role": "user", "content": "Prove it."}]}
    async with httpx.AsyncClient(timeout=30) as client:
        before = await client.post(second.url + "/v1/chat/completions", json=turn, headers=session)
        escalated = await client.post(first.url + "/v1/chat/completions", json={**turn, "model": "cloud"},
                                      headers=session)  # fmt: skip
        for _ in range(50):  # the shared write runs just after the answer
            follow_up = await client.post(second.url + "/v1/chat/completions", json=turn, headers=session)
            if follow_up.headers["x-route-target"] == "cloud":
                break
            await asyncio.sleep(0.05)

    assert before.headers["x-route-target"] == "edge"
    assert escalated.headers["x-route-target"] == "cloud"
    assert follow_up.headers["x-route-target"] == "cloud"
    assert follow_up.headers["x-route-reason"].startswith("sticky: conversation id conv-")
