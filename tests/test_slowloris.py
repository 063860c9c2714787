"""200 stalled connections against the real `hybrid-router serve` process: a real request still gets through.

The stalled ones are of every slow kind: connections that send nothing,
request heads trickled a byte at a time (the classic slowloris, which resets
any idle timer), and complete heads whose body never comes. The server must
answer the real request at once while holding them, then close every one of
them on its own deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import Server, free_port, running

pytestmark = pytest.mark.slow

HEAD_TIMEOUT_S = 3.0
BODY_TIMEOUT_S = 3.0
STALLED = {"silent": 60, "trickled_head": 70, "partial_body": 70}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("slowloris")
    config = folder / "config.yaml"
    # Only the deadlines are shortened, to keep the test short; the connection and request caps are the defaults.
    config.write_text(
        f"""
server: {{header_timeout_s: {HEAD_TIMEOUT_S}, body_timeout_s: {BODY_TIMEOUT_S}}}
targets:
  edge: {{type: fake, reply: "edge answer"}}
policies:
  - {{type: default, target: edge}}
"""
    )
    port = free_port()
    args = ["-m", "service.cli", "serve", "--config", str(config), "--port", str(port)]
    with running(args, port=port, ready_path="/healthz", log=folder / "gateway.log") as server:
        yield server


async def _open(server: Server, first_bytes: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    if first_bytes:
        writer.write(first_bytes)
        await writer.drain()
    return reader, writer


@contextlib.asynccontextmanager
async def trickling(writers: list[asyncio.StreamWriter]) -> AsyncIterator[None]:
    """Send one more header byte on each connection every 0.3 s, as slowloris does, while the block runs."""

    async def trickle() -> None:
        while True:
            await asyncio.sleep(0.3)
            for writer in writers:
                if not writer.is_closing():
                    with contextlib.suppress(ConnectionError):
                        writer.write(b"a")

    task = asyncio.create_task(trickle())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _read_until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    return await asyncio.wait_for(reader.read(), within)


async def test_stalled_connections_do_not_delay_a_real_request_and_are_closed_on_their_deadlines(
    gateway: Server,
) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nX-Slow: "
    body_head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n" + b'{"messages": ['
    )
    opened = time.monotonic()
    silent = [await _open(gateway, b"") for _ in range(STALLED["silent"])]
    trickled = [await _open(gateway, head) for _ in range(STALLED["trickled_head"])]
    partial = [await _open(gateway, body_head) for _ in range(STALLED["partial_body"])]
    stalled = silent + trickled + partial
    try:
        async with (
            trickling([writer for _, writer in trickled]),
            httpx.AsyncClient(base_url=gateway.url, timeout=10) as client,
        ):
            started = time.monotonic()
            response = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
            took = time.monotonic() - started

            assert response.status_code == 200
            assert response.json()["choices"][0]["message"]["content"] == "edge answer"
            assert took < 2.0, f"the real request took {took:.2f} s behind {len(stalled)} stalled connections"
            # ...and all 200 were still being held while it was served.
            assert time.monotonic() - opened < HEAD_TIMEOUT_S
            assert not any(reader.at_eof() for reader, _ in stalled)

            limit = max(HEAD_TIMEOUT_S, BODY_TIMEOUT_S) + 10
            silent_left = [await _read_until_closed(reader, limit) for reader, _ in silent]
            trickled_left = [await _read_until_closed(reader, limit) for reader, _ in trickled]
            partial_left = [await _read_until_closed(reader, limit) for reader, _ in partial]
            closed_after = time.monotonic() - opened
    finally:
        for _, writer in stalled:
            writer.close()
        await asyncio.gather(*(writer.wait_closed() for _, writer in stalled), return_exceptions=True)

    # Connections that never finished a head are closed without an answer, trickling or not...
    assert silent_left == [b""] * len(silent)
    assert trickled_left == [b""] * len(trickled)
    # ...and a body that never comes is answered 408 in OpenAI's error shape, then closed.
    for raw in partial_left:
        status_line, _, rest = raw.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 408 Request Timeout"
        error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
        assert error["code"] == "request_timeout"
        assert set(error) == {"message", "type", "param", "code"}
    assert closed_after >= HEAD_TIMEOUT_S


def test_the_gateway_still_serves_after_the_attack(gateway: Server) -> None:
    response = httpx.post(gateway.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 200


def test_serving_on_loopback_without_keys_warns_once(gateway: Server) -> None:
    lines = [json.loads(line) for line in Path(gateway.log).read_text().splitlines() if line.startswith("{")]
    warnings = [line["msg"] for line in lines if line.get("level") == "warning"]
    assert len([msg for msg in warnings if msg.startswith("no client keys configured")]) == 1
