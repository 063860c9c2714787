"""When Redis is down no request is lost: the edge serves (or 503, if configured), once logged, and it recovers."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.spend.conftest import serving, spend_settings
from tests.state.conftest import _wait_for_pong
from tests.support.processes import free_port

CHAT = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 5}


@contextmanager
def redis_on(port: int, folder: Path) -> Iterator[None]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH: the outage tests need one (.ci/run installs it)", pytrace=False)
    log = folder / f"redis-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(folder)], stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_for_pong(port, process, log)
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


def limited(port: int, on_outage: str) -> object:
    return spend_settings(
        state={"url": f"redis://127.0.0.1:{port}/0", "on_outage": on_outage},
        tenants={"default": {"limits": {"requests_per_minute": 100, "usd_per_day": 5.0}}},
    )


async def test_with_redis_down_the_edge_serves_the_outage_is_logged_once_and_the_gateway_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    async with serving(limited(port, "edge")) as (client, _):  # type: ignore[arg-type]
        with caplog.at_level(logging.ERROR, logger="hybrid_router.spend"):
            during = [await client.post("/v1/chat/completions", json=CHAT) for _ in range(3)]
        logged = [r for r in caplog.records if "state store unavailable" in r.getMessage()]
        down = (await client.get("/metrics")).text
        with redis_on(port, tmp_path):
            after = await client.post("/v1/chat/completions", json=CHAT)
            up = (await client.get("/metrics")).text

    assert [r.status_code for r in during] == [200, 200, 200]
    assert {r.headers["x-route-target"] for r in during} == {"edge"}
    assert "state store is unavailable" in during[0].headers["x-route-reason"]
    assert "hybrid_router_state_store_up 0.0" in down
    assert len(logged) == 1
    assert after.status_code == 200 and after.headers["x-route-target"] == "cloud"
    assert "hybrid_router_state_store_up 1.0" in up


async def test_with_redis_down_and_on_outage_reject_requests_get_503_with_retry_after() -> None:
    async with serving(limited(free_port(), "reject")) as (client, _):  # type: ignore[arg-type]
        refused = await client.post("/v1/chat/completions", json=CHAT)

    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "state_unavailable"
    assert refused.headers["retry-after"] == "5"
    # The message names no address: the store's URL may carry a password.
    assert "127.0.0.1" not in refused.text
