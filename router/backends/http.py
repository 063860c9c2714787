"""What every HTTP backend shares: the pooled client, error translation, SSE.

Provider adapters call upstream APIs through :class:`HttpUpstream`, which
owns one pooled :class:`httpx.AsyncClient` and turns every httpx exception
and error status into a :mod:`router.errors` error raised ``from`` the
original. Error messages name the target and the upstream status, quote the
upstream's own message, and pass through :func:`scrub` so that no credential
can leak into a response or a log line.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import orjson

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

__all__ = ["HttpUpstream", "iter_sse", "parse_retry_after", "scrub", "translate_transport_errors"]

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
    """Map httpx's transport exceptions onto our error tree."""
    try:
        yield
    except httpx.ConnectTimeout as exc:
        raise UpstreamTimeout(f"target {target}: timed out connecting to the upstream") from exc
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(f"target {target}: the upstream did not answer in time") from exc
    except httpx.ConnectError as exc:
        raise UpstreamConnectError(f"target {target}: cannot connect to the upstream") from exc
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        raise UpstreamProtocolError(f"target {target}: the upstream connection broke ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise BackendError(f"target {target}: upstream request failed ({type(exc).__name__})") from exc
    except TimeoutError as exc:
        raise UpstreamTimeout(f"target {target}: the upstream did not answer in time") from exc


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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.target = target
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts
        self._secrets = secrets
        self._headers = dict(headers or {})
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    @property
    def started(self) -> bool:
        return self._client is not None

    def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                headers=self._headers,
                limits=self._limits,
                timeout=self._timeout(self.timeouts.first_byte_s),
                transport=self._transport,
                follow_redirects=False,
                trust_env=False,
            )

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _timeout(self, read: float) -> httpx.Timeout:
        t = self.timeouts
        return httpx.Timeout(connect=t.connect_s, read=read, write=t.connect_s, pool=t.connect_s)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise BackendError(f"target {self.target}: not started")
        return self._client

    def error(self, response: httpx.Response, body: bytes) -> HybridRouterError:
        message, code = upstream_message(body)
        return error_for_status(
            self.target,
            response.status_code,
            scrub(message, self._secrets()),
            headers=response.headers,
            code=code,
        )

    async def post_json(
        self, path: str, payload: bytes, *, headers: Mapping[str, str], params: Mapping[str, str] | None = None
    ) -> Any:
        """POST and return the decoded JSON answer; errors translated."""
        with translate_transport_errors(self.target):
            async with asyncio.timeout(self.timeouts.total_s):
                response = await self.client.post(self.base_url + path, content=payload, headers=headers, params=params)
        if response.status_code >= 400:
            raise self.error(response, response.content)
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(f"target {self.target}: the upstream answered with invalid JSON") from exc

    @asynccontextmanager
    async def open_stream(
        self, path: str, payload: bytes, *, headers: Mapping[str, str], params: Mapping[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        """POST and hand over the response once its headers arrive; errors translated."""
        request = self.client.build_request(
            "POST",
            self.base_url + path,
            content=payload,
            headers=headers,
            params=params,
            timeout=self._timeout(self.timeouts.idle_s),
        )
        with translate_transport_errors(self.target):
            async with asyncio.timeout(self.timeouts.first_byte_s):
                response = await self.client.send(request, stream=True)
        try:
            if response.status_code >= 400:
                with translate_transport_errors(self.target):
                    body = await response.aread()
                raise self.error(response, body)
            with translate_transport_errors(self.target):
                async with asyncio.timeout(self.timeouts.total_s):
                    yield response
        finally:
            await response.aclose()


async def iter_sse(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """Yield ``(event, data)`` for each server-sent event; ``event`` is ``""`` when unnamed.

    Follows the WHATWG rules that matter for LLM APIs: ``\\n``, ``\\r\\n`` or
    ``\\r`` line ends, multi-line ``data`` joined by ``\\n``, comments ignored.
    """
    event, data = "", list[str]()
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "", list[str]()
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
