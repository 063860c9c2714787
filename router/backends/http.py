"""What every HTTP backend shares: the pooled client, error translation, SSE.

Provider adapters call upstream APIs through :class:`HttpUpstream`, which
owns one pooled :class:`aiohttp.ClientSession` and turns every client
exception and error status into a :mod:`router.errors` error raised
``from`` the original. Error messages name the target and the upstream
status, quote the upstream's own message, and pass through :func:`scrub` so
that no credential can leak into a response or a log line.

Why aiohttp and not httpx: ``bench/http_clients.py`` measured aiohttp 4.6x
faster at concurrency 1 (p50 0.13 ms against 0.58 ms) and 21x at 32
(8,200 against 380 requests/s): httpx's pool re-checks every pooled
socket on each request. The gateway's own throughput went from about 420
to about 1,650 requests/s with the switch.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

from router.config import Timeouts
from router.errors import (
    BackendError,
    ContentFiltered,
    ContextLengthExceeded,
    HybridRouterError,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
)

__all__ = [
    "HttpUpstream",
    "UpstreamStream",
    "error_for_status",
    "iter_sse",
    "parse_retry_after",
    "scrub",
    "translate_transport_errors",
    "upstream_message",
]

_MAX_MESSAGE = 300


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in ``text`` with ``***``; secrets shorter than 6 characters are left (too common)."""
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, "***")
    return text


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if (millis := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@contextmanager
def translate_transport_errors(target: str) -> Iterator[None]:
    """Map aiohttp's exceptions (and our own deadlines) onto our error tree."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise UpstreamTimeout(f"target {target}: timed out connecting to the upstream") from exc
    except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
        raise UpstreamTimeout(f"target {target}: the upstream did not answer in time") from exc
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamConnectError(f"target {target}: cannot connect to the upstream") from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
        raise UpstreamProtocolError(f"target {target}: the upstream connection broke ({type(exc).__name__})") from exc
    except aiohttp.ClientError as exc:
        raise BackendError(f"target {target}: upstream request failed ({type(exc).__name__})") from exc
    except ValueError as exc:
        # aiohttp raises a bare ValueError for an SSE line over its buffer limit.
        raise UpstreamProtocolError(f"target {target}: the upstream sent an oversized line") from exc


def error_for_status(
    target: str,
    status: int,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    code: str | None = None,
) -> HybridRouterError:
    """The error for an upstream answering ``status``; ``message`` is the upstream's own text."""
    message = message[:_MAX_MESSAGE]
    where = f"target {target}: upstream returned {status}"
    retry_after = parse_retry_after(headers or {})
    lowered = f"{code or ''} {message}".lower()
    if status in (401, 403):
        # The upstream's text may quote (part of) our key, so it is never passed on.
        return UpstreamAuthError(f"{where}: the upstream rejected the gateway's credentials")
    if status == 429:
        return UpstreamRateLimited(f"{where}: {message}", retry_after=retry_after if retry_after is not None else 1.0)
    if "content_filter" in lowered or "content management policy" in lowered or "safety" in lowered:
        return ContentFiltered(f"{where}: {message}")
    if status in (408, 504):
        return UpstreamTimeout(f"{where}: {message}")
    if status == 400 and ("context_length" in lowered or "context length" in lowered or "too long" in lowered):
        return ContextLengthExceeded(f"{where}: {message}", param="messages")
    if 400 <= status < 500:
        return UpstreamBadRequest(f"{where}: {message}")
    return BackendError(f"{where}: {message}", retry_after=retry_after)


def upstream_message(body: bytes) -> tuple[str, str | None]:
    """The human message and code in an upstream error body, whatever its JSON shape."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:_MAX_MESSAGE].decode("utf-8", "replace").strip() or "(empty body)", None
    if isinstance(data, list) and data:
        data = data[0]
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            message = error.get("message") or error.get("Message") or orjson.dumps(error).decode()
            code = error.get("code") or error.get("status") or error.get("type")
            return str(message), str(code) if code is not None else None
        if isinstance(error, str):
            return error, None
    return "(unrecognised error body)", None


@dataclass
class UpstreamStream:
    """An upstream response whose body is read as it arrives."""

    status: int
    headers: Mapping[str, str]
    _response: aiohttp.ClientResponse

    async def lines(self) -> AsyncIterator[str]:
        """Body lines without their line ends, decoded as UTF-8."""
        async for raw in self._response.content:
            yield raw.decode("utf-8", "replace").rstrip("\r\n")

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes in whatever pieces the network delivers."""
        async for data in self._response.content.iter_any():
            yield data


class HttpUpstream:
    """A pooled HTTP client for one target, with our timeouts and error mapping."""

    def __init__(
        self,
        target: str,
        base_url: str,
        *,
        timeouts: Timeouts,
        max_connections: int = 100,
        headers: Mapping[str, str] | None = None,
        secrets: Callable[[], Iterable[str]] = lambda: (),
        encoded_paths: bool = False,
    ) -> None:
        self.target = target
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts
        # Paths arrive percent-encoded and go out byte for byte: a signed request
        # (SigV4) must send exactly the path it signed, and yarl would decode %3A.
        self._encoded_paths = encoded_paths
        self._secrets = secrets
        self._headers = dict(headers or {})
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def started(self) -> bool:
        return self._session is not None

    def start(self) -> None:
        """Open the pool; must run on the event loop that will use it."""
        if self._session is None:
            t = self.timeouts
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300),
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s, sock_read=t.first_byte_s),
                trust_env=False,
                read_bufsize=1 << 20,
                max_line_size=1 << 20,
                max_field_size=1 << 16,
            )

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise BackendError(f"target {self.target}: not started")
        return self._session

    def url(self, path: str) -> str | URL:
        """The full URL for ``path``, kept as given when paths are pre-encoded."""
        if self._encoded_paths:
            return URL(self.base_url + path, encoded=True)
        return self.base_url + path

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> HybridRouterError:
        message, code = upstream_message(body)
        return error_for_status(self.target, status, scrub(message, self._secrets()), headers=headers, code=code)

    async def post_json(
        self, path: str, payload: bytes, *, headers: Mapping[str, str], params: Mapping[str, str] | None = None
    ) -> Any:
        """POST and return the decoded JSON answer; errors translated."""
        with translate_transport_errors(self.target):
            async with (
                asyncio.timeout(self.timeouts.total_s),
                self.session.post(self.url(path), data=payload, headers=headers, params=params) as response,
            ):
                body = await response.read()
        if response.status >= 400:
            raise self.error(response.status, response.headers, body)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(f"target {self.target}: the upstream answered with invalid JSON") from exc

    @asynccontextmanager
    async def open_stream(
        self, path: str, payload: bytes, *, headers: Mapping[str, str], params: Mapping[str, str] | None = None
    ) -> AsyncIterator[UpstreamStream]:
        """POST and hand over the response once its headers arrive; errors translated.

        ``first_byte_s`` bounds the wait for the headers, ``idle_s`` every
        later read, ``total_s`` the whole exchange.
        """
        t = self.timeouts
        read_timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s, sock_read=t.idle_s)
        with translate_transport_errors(self.target):
            async with asyncio.timeout(t.total_s):
                async with asyncio.timeout(t.first_byte_s):
                    response = await self.session.post(
                        self.url(path), data=payload, headers=headers, params=params, timeout=read_timeout
                    )
                try:
                    if response.status >= 400:
                        raise self.error(response.status, response.headers, await response.read())
                    yield UpstreamStream(response.status, response.headers, response)
                finally:
                    response.release()


async def iter_sse(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """Yield ``(event, data)`` for each server-sent event; ``event`` is ``""`` when unnamed.

    Follows the WHATWG rules that matter for LLM APIs: blank lines end an
    event, multi-line ``data`` is joined by ``\\n``, comments are ignored.
    """
    event, data = "", list[str]()
    async for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
    if data:
        yield event, "\n".join(data)
