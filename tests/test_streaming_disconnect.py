"""A client that leaves mid-stream stops the work at once."""

from __future__ import annotations

import asyncio

import httpx
import uvicorn
from prometheus_client import CollectorRegistry

from router.backends.fake import ScriptedReply
from service.app import create_app
from tests.conftest import cloud_backend, edge_backend, make_settings
from tests.support.processes import free_port


async def test_disconnect_mid_stream_closes_the_backend_stream() -> None:
    slow = edge_backend(ScriptedReply(text=" ".join(["tok"] * 200), piece_delay_s=0.02))
    app = create_app(make_settings(), backends={"edge": slow, "cloud": cloud_backend()}, registry=CollectorRegistry())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        body = {"messages": [{"role": "user", "content": "go"}], "stream": True}
        async with (
            httpx.AsyncClient() as client,
            client.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as response,
        ):
            lines = response.aiter_lines()
            while "tok" not in await anext(lines):
                pass
            assert slow.active_streams == 1
        # The client hung up after the first token; the stream must end long before its 4 s of tokens.
        for _ in range(50):
            if slow.active_streams == 0:
                break
            await asyncio.sleep(0.02)
        assert slow.active_streams == 0
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        assert (
            'hybrid_router_requests_total{decided_by="default",status="499",target="edge",tenant="default"} 1.0'
            in metrics
        )
        assert "hybrid_router_in_flight_requests 0.0" in metrics
    finally:
        server.should_exit = True
        await task
