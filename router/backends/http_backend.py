"""The backend shell every cloud adapter shares, around one pooled :class:`HttpUpstream`.

An adapter says four things: what to send for a request
(:meth:`HttpBackend.exchange`), how to read a non-streamed answer
(:meth:`~HttpBackend.read_answer`), how its stream is framed
(:meth:`~HttpBackend.events`) and how to translate it
(:meth:`~HttpBackend.translator`). Everything else is here, once:

* start and close, readiness (a credential problem the adapter reports, or
  not started) and the in-flight gauge, which a call gives back however it
  ends: answered, failed, cancelled, or a stream closed early;
* the one wrapper that names the target in every error the adapter raises
  and scrubs the target's credentials out of its message, so translation
  code stays pure and never needs the name;
* the one path to the upstream, :meth:`HttpBackend._call`: per-target
  retries and a circuit breaker belong around it, and
  :meth:`~HttpBackend.on_error` already sees every failure.

>>> from router.backends.openai_compat import OpenAIBackend
>>> from router.config import OpenAITargetConfig
>>> config = OpenAITargetConfig(type="openai", base_url="http://127.0.0.1:9", model="m")
>>> backend = OpenAIBackend("cloud", config)
>>> backend.readiness().reason, backend.stats(), backend.token_counter
('not started', {'inflight': 0.0}, None)
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from router.backends._relay import SseEvent, Translator, iter_sse, relay
from router.backends.base import Capabilities, Readiness
from router.backends.http import HttpUpstream, UpstreamStream, read_error, scrub
from router.chat import ChatChunk, ChatRequest, ChatResult
from router.config import Timeouts
from router.errors import HybridRouterError
from router.tokens import TokenCounter

__all__ = ["Exchange", "HttpBackend", "PooledConfig", "SseBackend"]

E = TypeVar("E")


class PooledConfig(Protocol):
    """What every cloud target's config says about its connection pool."""

    @property
    def timeouts(self) -> Timeouts: ...

    @property
    def max_connections(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Exchange:
    """One upstream call: the path, the encoded JSON body, and this request's own headers (credentials)."""

    path: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] | None = None


class HttpBackend(abc.ABC, Generic[E]):
    """A :class:`~router.backends.base.Backend` that answers through one cloud API over HTTP.

    ``E`` is the type of one stream event, as :meth:`events` frames them.
    """

    # A cloud target's tokenizer is not available here; the router estimates.
    token_counter: TokenCounter | None = None

    def __init__(
        self,
        name: str,
        config: PooledConfig,
        *,
        model: str,
        base_url: str,
        capabilities: Capabilities,
        headers: Mapping[str, str] | None = None,
        encoded_paths: bool = False,
    ) -> None:
        self.name = name
        self.model = model
        self.capabilities = capabilities
        self._inflight = 0
        self._http = HttpUpstream(
            base_url,
            timeouts=config.timeouts,
            max_connections=config.max_connections,
            headers={"content-type": "application/json", **(headers or {})},
            read_error=self.read_error,
            encoded_paths=encoded_paths,
        )

    # --- what an adapter says -----------------------------------------------------------------

    @abc.abstractmethod
    async def exchange(self, request: ChatRequest, *, stream: bool) -> Exchange:
        """The call that answers ``request``; raises InvalidRequest for what the provider cannot express."""

    @abc.abstractmethod
    def read_answer(self, body: Any, request: ChatRequest) -> ChatResult:
        """The ``chat.completion`` for a non-streamed answer (decoded JSON)."""

    @abc.abstractmethod
    def events(self, response: UpstreamStream) -> AsyncIterator[E]:
        """The stream's events as they arrive (SSE, AWS event-stream)."""

    @abc.abstractmethod
    def translator(self, request: ChatRequest) -> Translator[E]:
        """A fresh translator for one stream."""

    def read_error(self, status: int, headers: Mapping[str, str], body: bytes) -> HybridRouterError:
        """Our error for an error answer; providers with their own error bodies override it."""
        return read_error(status, headers, body)

    def problem(self) -> str | None:
        """Why the target cannot serve at all (a missing credential); None when it can."""
        return None

    def secrets(self) -> Iterable[str]:
        """The credentials in use, which no error message may show."""
        return ()

    def on_error(self, error: HybridRouterError) -> None:
        """Called with each error a call ends in (already named); e.g. to drop a rejected token."""

    # --- the backend contract -----------------------------------------------------------------

    async def start(self) -> None:
        self._http.start()

    async def aclose(self) -> None:
        await self._http.aclose()

    def readiness(self) -> Readiness:
        if (problem := self.problem()) is not None:
            return Readiness(ready=False, reason=problem)
        if not self._http.started:
            return Readiness(ready=False, reason="not started")
        return Readiness(ready=True)

    def stats(self) -> Mapping[str, float]:
        return {"inflight": float(self._inflight)}

    async def complete(self, request: ChatRequest) -> ChatResult:
        with self._call():
            exchange = await self.exchange(request, stream=False)
            body = await self._http.post_json(
                exchange.path, exchange.body, headers=exchange.headers, params=exchange.params
            )
            return self.read_answer(body, request)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        with self._call():
            exchange = await self.exchange(request, stream=True)
            async with self._http.open_stream(
                exchange.path, exchange.body, headers=exchange.headers, params=exchange.params
            ) as response:
                async for chunk in relay(self.events(response), self.translator(request)):
                    yield chunk

    @contextmanager
    def _call(self) -> Iterator[None]:
        """One call's slot in the in-flight gauge, and the one place its errors get the target's name."""
        self._inflight += 1
        try:
            yield
        except HybridRouterError as exc:
            self._name(exc)
            self.on_error(exc)
            raise
        finally:
            self._inflight -= 1

    def _name(self, exc: HybridRouterError) -> None:
        # In place, so the traceback and the ``from`` chain stay as they were raised.
        message = scrub(exc.message, self.secrets())
        prefix = f"target {self.name}: "
        exc.message = message if message.startswith(prefix) else prefix + message
        exc.args = (exc.message,)


class SseBackend(HttpBackend[SseEvent]):
    """An :class:`HttpBackend` whose upstream streams server-sent events, as most LLM APIs do."""

    def events(self, response: UpstreamStream) -> AsyncIterator[SseEvent]:
        return iter_sse(response.lines())
