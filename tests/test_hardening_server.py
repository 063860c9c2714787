"""The connection guards of service/server.py over real sockets: uvicorn on 127.0.0.1, in the test's event loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from router.backends.fake import ScriptedReply
from service.app import create_app, create_metrics_app
from service.server import build_servers, run_servers
from tests.conftest import chat_body, cloud_backend, edge_backend, make_settings
from tests.support.processes import free_port

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def served(backends: dict[str, Any] | None = None, **server: Any) -> AsyncIterator[int]:
    """The gateway behind the guarded protocol, as `hybrid-router serve` runs it; yields its port."""
    settings = make_settings(server={"port": free_port(), **server})
    backends = backends or {"edge": edge_backend(), "cloud": cloud_backend()}
    app = create_app(settings, backends=backends, registry=CollectorRegistry())
    metrics_app = create_metrics_app(app.state.gateway) if settings.server.metrics_port else None
    servers = build_servers(settings, app, metrics_app)
    task = asyncio.create_task(run_servers(servers))
    while not servers[0].started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield settings.server.port
    finally:
        servers[0].should_exit = True
        await task


@asynccontextmanager
async def connections(port: int, *first_bytes: bytes) -> AsyncIterator[list[Conn]]:
    opened = []
    try:
        for data in first_bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data)
            await writer.drain()
            opened.append((reader, writer))
        yield opened
    finally:
        for _, writer in opened:
            writer.close()
        await asyncio.gather(*(writer.wait_closed() for _, writer in opened), return_exceptions=True)


async def read_all(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    """Everything until the server closes the connection (fails if it does not ``within`` seconds)."""
    return await asyncio.wait_for(reader.read(), within)


def parse(raw: bytes) -> tuple[str, dict[str, str], dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return status, headers, json.loads(body)


def chat_request() -> bytes:
    body = json.dumps(chat_body()).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


async def test_a_head_over_the_size_cap_is_431_then_closed() -> None:
    async with served(max_header_bytes=1024) as port, connections(port, b"GET /healthz HTTP/1.1\r\nX-Big: ") as conns:
        reader, writer = conns[0]
        writer.write(b"a" * 2000)
        status, headers, body = parse(await read_all(reader))
        async with httpx.AsyncClient() as client:
            normal = await client.get(f"http://127.0.0.1:{port}/healthz", headers={"x-fine": "b" * 500})

    assert status == "HTTP/1.1 431 Request Header Fields Too Large"
    assert headers["connection"] == "close"
    assert body["error"]["code"] == "headers_too_large"
    assert normal.status_code == 200


async def test_a_whole_head_over_the_size_cap_sent_at_once_is_431_too() -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
    async with served(max_header_bytes=1024) as port, connections(port, head) as conns:
        status, headers, body = parse(await read_all(conns[0][0]))

    assert status == "HTTP/1.1 431 Request Header Fields Too Large"
    assert headers["connection"] == "close"
    assert body["error"]["code"] == "headers_too_large"


async def test_at_the_connection_cap_the_connection_waiting_longest_makes_room() -> None:
    async with served(max_connections=3) as port, connections(port, b"", b"GET /hea", b"") as idle:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat_body())
        oldest = await read_all(idle[0][0])
        await asyncio.sleep(0.05)
        still_open = [not reader.at_eof() for reader, _ in idle[1:]]

    assert response.status_code == 200
    assert oldest == b""
    assert still_open == [True, True]


async def test_when_every_connection_is_serving_a_new_one_gets_503_at_once() -> None:
    slow = edge_backend(ScriptedReply(text="slow", delay_s=1.0))
    async with (
        served({"edge": slow, "cloud": cloud_backend()}, max_connections=2) as port,
        connections(port, chat_request(), chat_request()) as busy,
    ):
        while len(slow.requests) < 2:
            await asyncio.sleep(0.01)
        async with connections(port, b"") as extra:
            status, headers, body = parse(await read_all(extra[0][0], within=0.9))
        answers = [parse(await asyncio.wait_for(reader.read(1000), 5))[0] for reader, _ in busy]

    assert status == "HTTP/1.1 503 Service Unavailable"
    assert headers["retry-after"] == "1"
    assert body["error"]["code"] == "gateway_overloaded"
    assert answers == ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"]


async def test_a_body_still_trickling_after_the_answer_is_cut_off() -> None:
    partial = b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc"
    async with served(body_timeout_s=0.2) as port, connections(port, partial) as conns:
        reader, writer = conns[0]
        answer = await asyncio.wait_for(reader.readuntil(b"}}"), 5)
        writer.write(b"d")
        rest = await read_all(reader)

    assert answer.startswith(b"HTTP/1.1 405 ")
    assert rest == b""


async def test_a_kept_alive_connection_must_finish_its_next_head_in_time() -> None:
    async with (
        served(header_timeout_s=0.3, keep_alive_s=60) as port,
        connections(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n") as conns,
    ):
        reader, writer = conns[0]
        first = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), 5)
        # One byte of a next request cancels uvicorn's keep-alive timer; the head deadline still runs.
        writer.write(b"G")
        rest = await read_all(reader)

    assert first.startswith(b"HTTP/1.1 200 OK")
    assert rest == b""


async def test_pipelined_requests_are_all_answered() -> None:
    two = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" + chat_request()
    async with served(header_timeout_s=0.5) as port, connections(port, two) as conns:
        reader, _ = conns[0]
        first = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), 5)
        second = await asyncio.wait_for(reader.readuntil(b'"finish_reason":"stop"'), 5)

    assert first.startswith(b"HTTP/1.1 200 OK")
    assert second.startswith(b"HTTP/1.1 200 OK")


async def test_metrics_port_serves_metrics_on_loopback_only() -> None:
    metrics_port = free_port()
    async with served(metrics_port=metrics_port) as port, httpx.AsyncClient() as client:
        main = await client.get(f"http://127.0.0.1:{port}/metrics")
        scraped = await client.get(f"http://127.0.0.1:{metrics_port}/metrics")

    assert main.status_code == 404
    assert scraped.status_code == 200
    assert "hybrid_router_requests_total" in scraped.text or "hybrid_router_target_ready" in scraped.text


@pytest.mark.parametrize("host", ["0.0.0.0"])
def test_the_metrics_server_binds_loopback_whatever_the_main_host(host: str) -> None:
    settings = make_settings(server={"host": host, "metrics_port": 9109})
    app = create_app(settings, registry=CollectorRegistry())
    main, metrics = build_servers(settings, app, create_metrics_app(app.state.gateway))
    assert main.config.host == host
    assert metrics.config.host == "127.0.0.1"
    assert metrics.config.port == 9109
