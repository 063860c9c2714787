"""The pooled HTTP client every cloud adapter sends through: its deadlines and its refusal of redirects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from router.backends.http import HttpUpstream, redirect_error
from router.config import Timeouts
from router.errors import UpstreamProtocolError, UpstreamTimeout
from tests.support.loopback import Handler, handler_app, serving


@asynccontextmanager
async def upstream(handler: Handler, **timeouts: float) -> AsyncIterator[HttpUpstream]:
    async with serving(handler_app(handler)) as url:
        http = HttpUpstream(url, timeouts=Timeouts(**timeouts))
        http.start()
        try:
            yield http
        finally:
            await http.aclose()


def events(*gaps_s: float) -> Handler:
    """A stream that sends its headers at once, then one line after each gap."""

    async def handler(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for index, gap in enumerate(gaps_s):
                await asyncio.sleep(gap)
                yield f"data: {index}\n\n".encode()

        return StreamingResponse(body(), media_type="text/event-stream")

    return handler


async def read_lines(http: HttpUpstream) -> list[str]:
    async with http.open_stream("/x", b"{}", headers={}) as stream:
        return [line async for line in stream.lines() if line]


async def test_a_slow_first_event_may_take_first_byte_s_even_when_idle_s_is_shorter() -> None:
    # Headers come at once and the first token late, as with a reasoning model.
    async with upstream(events(0.6, 0.05), first_byte_s=3, idle_s=0.3) as http:
        assert await read_lines(http) == ["data: 0", "data: 1"]


async def test_headers_then_silence_is_a_first_byte_timeout() -> None:
    async with upstream(events(1.0), first_byte_s=0.3, idle_s=5) as http:
        with pytest.raises(UpstreamTimeout, match="no first byte within first_byte_s"):
            await read_lines(http)


async def test_the_total_deadline_fails_the_next_read_and_never_cancels_the_consumer() -> None:
    received: list[str] = []
    async with upstream(events(*[0.05] * 40), first_byte_s=5, idle_s=5, total_s=0.5) as http:
        with pytest.raises(UpstreamTimeout, match="total_s"):
            async with http.open_stream("/x", b"{}", headers={}) as stream:
                async for line in stream.lines():
                    # The consumer's own work between reads is not interrupted by the deadline.
                    await asyncio.sleep(0.2)
                    received.append(line)
    assert 1 <= len(received) < 10


async def test_a_redirect_is_not_followed() -> None:
    followed: list[str] = []

    async def handler(request: Request) -> Response:
        if request.url.path == "/elsewhere":
            followed.append(request.url.path)
            return Response("{}", media_type="application/json")
        return Response(status_code=301, headers={"location": "/elsewhere"})

    async with upstream(handler) as http:
        with pytest.raises(UpstreamProtocolError, match="upstream returned 301, a redirect to /elsewhere"):
            await http.post_json("/x", b"{}", headers={"authorization": "Bearer secret-token"})
        with pytest.raises(UpstreamProtocolError, match="redirects are not followed"):
            await read_lines(http)
    assert followed == []


def test_a_redirect_error_shows_where_it_points_but_no_credentials_or_query() -> None:
    error = redirect_error(302, {"location": "https://user:pass@evil.example/steal?token=abc#frag"})
    assert "https://evil.example/steal" in error.message
    for hidden in ("user", "pass", "token=abc", "frag"):
        assert hidden not in error.message
    assert "nowhere" in redirect_error(307, {}).message
