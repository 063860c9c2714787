"""Serving the app with uvicorn, so that no client, however slow, can hold the gateway.

uvicorn closes idle keep-alive connections, but nothing bounds a request head
that never ends (slowloris), a body that trickles in after the app has
answered, or a head that grows without limit. Its ``limit_concurrency``
counts open connections as well as requests, so stalled sockets would make
real requests fail. :class:`GuardedHttpToolsProtocol` adds, per connection:

- a head deadline (``server.header_timeout_s``), armed when the connection
  opens and again after each response, disarmed when a request head is
  complete; when it passes the connection is closed;
- a head size cap (``server.max_header_bytes``): 431, then close;
- a body deadline: the app answers 408 when it reads a body that is not in
  within ``server.body_timeout_s`` (``service.chat.read_body``); this protocol
  closes any connection whose body is still incomplete a moment later, whether
  or not the app read it;
- a connection cap (``server.max_connections``): at the cap, the connection
  that has waited longest for its request head is closed to make room; only
  when every connection is busy with a request does a new one get a 503.

The request cap counts requests, not sockets, so it lives in the app
(:class:`service.app.RequestLimit`).

    source = ConfigSource.resolve("config.yaml")
    serve(source.load(), source=source)       # what `hybrid-router serve` runs
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import orjson
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from router.errors import ConfigError, GatewayOverloaded, HeadersTooLarge, HybridRouterError, RequestTimeout
from service.app import create_app, create_metrics_app
from service.auth import AUTO_HOST, config_records, open_access_warning, startup_problems
from service.settings import ConfigSource, ServerSettings, Settings

__all__ = ["GuardedHttpToolsProtocol", "build_servers", "guarded_protocol", "listen_host", "serve"]

log = logging.getLogger("hybrid_router.server")

# The app's own body deadline answers 408 first; this margin keeps the protocol's from racing it.
_BODY_GRACE_S = 1.0


def error_bytes(error: HybridRouterError, *, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 response, in OpenAI's error shape, that closes the connection."""
    body = orjson.dumps(error.to_openai())
    lines = [
        f"HTTP/1.1 {error.status_code} {http.HTTPStatus(error.status_code).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after is not None:
        lines.append(f"retry-after: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head and body deadlines, a head size cap and a connection cap.

    Use :func:`guarded_protocol` to bind it to settings:
    ``uvicorn.Config(app, http=guarded_protocol(settings.server))``.
    """

    limits: ClassVar[ServerSettings] = ServerSettings()
    _last_warned: ClassVar[float] = float("-inf")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._head_since = 0.0
        self._head_bytes = 0

    @property
    def waiting_for_head(self) -> bool:
        """True from opening, or from the last response, until a request head is complete."""
        return self._head_timer is not None

    # Connection cap and head deadline.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._make_room():
            self._warn_refused()
            self._close_with(GatewayOverloaded("The gateway has too many open connections; retry shortly."), 1)
            return
        self._arm_head()

    def _make_room(self) -> bool:
        # Evict the connection that has waited longest for a request head: an idle keep-alive one, or a
        # slowloris; never one whose request is being served.
        waiting = [
            other
            for other in self.connections
            if isinstance(other, GuardedHttpToolsProtocol) and other is not self and other.waiting_for_head
        ]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda other: other._head_since)
        oldest._disarm()
        oldest.transport.close()
        self.connections.discard(oldest)
        return True

    def _warn_refused(self) -> None:
        # Once a minute at most: a flood of connections must not become a flood of log lines.
        now = self.loop.time()
        if now - GuardedHttpToolsProtocol._last_warned >= 60:
            GuardedHttpToolsProtocol._last_warned = now
            log.warning("refusing connections: all %d are serving requests", self.limits.max_connections)

    def _arm_head(self) -> None:
        self._disarm_head()
        self._head_since = self.loop.time()
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _disarm_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def data_received(self, data: bytes) -> None:
        counting = self.waiting_for_head
        super().data_received(data)
        if not counting or not self.waiting_for_head or self.transport.is_closing():
            return
        # httptools buffers a header until it ends, so the head's size is counted from the raw bytes.
        self._head_bytes += len(data)
        if self._head_bytes > self.limits.max_header_bytes:
            limit = self.limits.max_header_bytes
            self._close_with(HeadersTooLarge(f"The request line and headers exceed {limit} bytes."))

    # Body deadline.

    def on_headers_complete(self) -> None:
        self._disarm_head()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            # A head that arrived in one piece escapes the count in data_received; answer it through a cycle.
            app, self.app = self.app, _headers_too_large(self.limits.max_header_bytes)
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        deadline = self.limits.body_timeout_s + _BODY_GRACE_S
        self._body_timer = self.loop.call_later(deadline, self._body_timed_out)

    def on_message_complete(self) -> None:
        self._disarm_body()
        super().on_message_complete()
        if self.cycle is not None and self.cycle.response_complete and not self.transport.is_closing():
            # The app answered before the body was in; the wait for the next head starts now.
            self._arm_head()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            # The app is not answering (it may not read bodies at all): answer for it, and tell it the
            # client is gone so that nothing it sends later reaches the socket.
            cycle.disconnected = True
            cycle.message_event.set()
            seconds = self.limits.body_timeout_s
            self._close_with(RequestTimeout(f"The request body did not arrive within {seconds:g} s."))
        else:
            self.transport.close()

    def _disarm_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    # Between requests, and at the end.

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        # While a body is still coming in, its own deadline runs; the head wait starts once it is in.
        if not pipelined and self._body_timer is None and not self.transport.is_closing():
            self._arm_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _disarm(self) -> None:
        self._disarm_head()
        self._disarm_body()

    def _close_with(self, error: HybridRouterError, retry_after: int | None = None) -> None:
        self._disarm()
        self.transport.write(error_bytes(error, retry_after=retry_after))
        self.transport.close()
        self.connections.discard(self)


def _headers_too_large(limit: int) -> ASGIApp:
    error = HeadersTooLarge(f"The request line and headers exceed {limit} bytes.")
    body = orjson.dumps(error.to_openai())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]  # fmt: skip

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def guarded_protocol(limits: ServerSettings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class bound to ``limits``, for ``uvicorn.Config(http=...)``."""
    return type("GatewayHttpProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


class _Companion(uvicorn.Server):
    """A second server (metrics) that leaves the signals to the main one and stops with it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_servers(settings: Settings, app: ASGIApp, metrics_app: ASGIApp | None = None) -> list[uvicorn.Server]:
    """The main server, then the metrics server when ``server.metrics_port`` is set."""
    server = settings.server
    common: dict[str, Any] = {
        "http": guarded_protocol(server),
        "timeout_keep_alive": server.keep_alive_s,
        # The app serves no WebSocket; an upgrade request is then served as plain HTTP, under the deadlines.
        "ws": "none",
        "log_config": None,
        "access_log": False,
    }
    main = uvicorn.Config(
        app, host=server.host, port=server.port, loop="uvloop", timeout_graceful_shutdown=30, **common
    )
    servers = [uvicorn.Server(main)]
    if metrics_app is not None and server.metrics_port is not None:
        metrics = uvicorn.Config(metrics_app, host="127.0.0.1", port=server.metrics_port, lifespan="off", **common)
        servers.append(_Companion(metrics))
    return servers


async def run_servers(servers: Sequence[uvicorn.Server], sockets: list[socket.socket] | None = None) -> None:
    """Run the companions, then the main server (on ``sockets`` when given) until it exits; the companions stop
    with it."""
    main, *companions = servers
    tasks = [asyncio.create_task(companion.serve()) for companion in companions]
    try:
        for companion, task in zip(companions, tasks, strict=True):
            # uvicorn tells that a server is up only through this flag.
            while not companion.started and not task.done():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        if not any(task.done() for task in tasks):
            await main.serve(sockets=sockets)
    finally:
        for companion in companions:
            companion.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


def _store_has_keys(url: str) -> bool:
    """Whether the state store holds a live client key, asked once before serving (on a store of its own: the
    app's is opened in the serving loop)."""
    if url.startswith("memory://"):
        return False
    from router.errors import StateUnavailable
    from router.state import open_store

    async def ask() -> bool:
        store = open_store(url)
        try:
            return bool(await store.keys.list())
        except StateUnavailable:
            return False
        finally:
            await store.close()

    return asyncio.run(ask())


def listen_host(settings: Settings, environ: Mapping[str, str] = os.environ) -> str:
    """The address ``server.host: auto`` (the container image's default) stands for.

    Every interface (``0.0.0.0``) when client keys guard the gateway (config,
    ``$HYBRID_ROUTER_API_KEYS`` or the state store) or ``auth.allow_unauthenticated``
    says something in front of it does; loopback otherwise, so an image started
    without keys is never an open relay to its cloud keys. Any other value is itself.
    """
    if settings.server.host != AUTO_HOST:
        return settings.server.host
    if config_records(settings.auth, environ) or settings.auth.allow_unauthenticated:
        return "0.0.0.0"  # guarded by keys, or by the operator's word that something in front is
    if _store_has_keys(settings.state.url):
        return "0.0.0.0"
    log.warning(
        "server.host is auto and no client keys are set: serving on 127.0.0.1 only (the app beside it, in the "
        "same network namespace, can call it). Set $%s to serve on every interface.",
        settings.auth.api_keys_env,
    )
    return "127.0.0.1"


def serve(
    settings: Settings,
    *,
    source: ConfigSource | None = None,
    sockets: list[socket.socket] | None = None,
    workers: int = 1,
) -> None:
    """Check that serving is safe, then serve until SIGINT or SIGTERM (``hybrid-router serve``).

    With ``source``, the file ``settings`` came from, SIGHUP or a change to the
    file reloads the config (README, "Hot reload"). ``sockets``: accept on
    these (a worker of :mod:`service.workers`) instead of binding
    ``server.host:port``. ``workers`` > 1 runs that many processes.
    """
    if settings.server.host == AUTO_HOST:
        server = settings.server.model_copy(update={"host": listen_host(settings)})
        settings = settings.model_copy(update={"server": server})
    if workers > 1:
        from service.workers import serve_workers

        serve_workers(settings, source=source, workers=workers)
        return
    app = create_app(settings, source=source, reload_signal=signal.SIGHUP if source is not None else None)
    gateway = app.state.gateway
    stored = not gateway.auth.enabled and _store_has_keys(settings.state.url)
    problems = startup_problems(settings.server, settings.auth, gateway.auth, stored_keys=stored)
    if problems:
        raise ConfigError(" ".join(problems))
    if not gateway.auth.enabled and not stored:
        log.warning(open_access_warning(settings.server.host, settings.server.port, settings.auth))
    metrics_app = create_metrics_app(gateway) if settings.server.metrics_port is not None else None
    servers = build_servers(settings, app, metrics_app)
    with _drained_exit_is_clean(), asyncio.Runner(loop_factory=servers[0].config.get_loop_factory()) as runner:
        runner.run(run_servers(servers, sockets))


@contextlib.contextmanager
def _drained_exit_is_clean() -> Iterator[None]:
    """Exit 0 after a SIGTERM or SIGINT that uvicorn turned into a graceful shutdown.

    uvicorn catches the signal, drains in-flight requests, then raises it once
    more with the handlers it found so that the process dies of it (exit 143):
    a container runtime or supervisor then reads a drained, orderly stop as a
    kill. This handler is what it finds; it takes that second delivery, and
    serving returns normally.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; a caller elsewhere keeps its own
        return
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
