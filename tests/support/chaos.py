"""A chaos upstream: an OpenAI chat-completions server on 127.0.0.1 that fails on cue.

Raw asyncio rather than a web framework, because the failures that matter
live below HTTP: a reset before the first byte, a stream cut without its
terminating chunk, a socket that goes quiet. Each request takes the next
:class:`Fault` from the script (a list, used up in order, then ``default``;
or a function of the request's number), so a test says exactly what the
upstream does on each call, retries included::

    async with ChaosUpstream([Fault.status(429, retry_after=0), Fault.ok()]) as upstream:
        ...  # base_url=upstream.url: the first call is throttled, the retry answers

Faults (``kind``):

* ``ok``: a full answer, streamed (SSE, chunked, usage chunk, ``[DONE]``) or whole;
* ``status``: an error answer in OpenAI's shape, with ``Retry-After`` when set;
* ``reset``: the request is read, then the connection is reset (RST) before any byte;
* ``stall_first_byte``: nothing is sent for ``stall_s``, then the connection closes;
* ``stall_mid_stream``: ``after_chunks`` content chunks (a non-streamed answer: half its
  body), then nothing for ``stall_s``;
* ``cut_mid_stream``: the same, then the connection closes without finishing the body.

A connection refused is a closed port (:func:`closed_port_url`): a listener
cannot refuse one connection and accept the next.

Paths ending in ``/chat/completions`` are served; a path starting with
``/healthy/`` always gets ``ok`` (a healthy cloud beside the failing one, for
the benchmark). ``GET /_chaos/stats`` answers with the counts per fault kind.
Run alone for the benchmark: ``python -m tests.support.chaos --port P --fail-rate 0.3``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = ["MIXED_FAULTS", "ChaosUpstream", "Fault", "closed_port_url", "mixed_script"]

FaultKind = Literal["ok", "status", "reset", "stall_first_byte", "stall_mid_stream", "cut_mid_stream"]
_ERROR_TYPES = {429: "rate_limit_error", 500: "server_error", 502: "server_error", 503: "server_error"}
_WORDS = ["The", " answer", " is", " forty", "-two", "."]


@dataclass(frozen=True)
class Fault:
    """What the upstream does with one request."""

    kind: FaultKind = "ok"
    status: int = 200
    retry_after: float | None = None
    stall_s: float = 30.0
    after_chunks: int = 2
    # Seconds before the first byte of an answer (ok and the mid-stream kinds), and between chunks.
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0

    @classmethod
    def ok(cls, *, delay_s: float = 0.0, chunk_delay_s: float = 0.0) -> Fault:
        return cls("ok", delay_s=delay_s, chunk_delay_s=chunk_delay_s)

    @classmethod
    def error(cls, status: int, *, retry_after: float | None = None) -> Fault:
        return cls("status", status=status, retry_after=retry_after)

    @property
    def label(self) -> str:
        return f"status_{self.status}" if self.kind == "status" else self.kind


Script = Sequence[Fault] | Callable[[int], Fault]


def mixed_script(fail_rate: float, faults: Sequence[Fault], *, seed: int = 0, ok: Fault | None = None) -> Script:
    """Each request fails with probability ``fail_rate``, with a fault drawn evenly from ``faults``."""
    rng = random.Random(seed)
    healthy = ok or Fault.ok()

    def pick(_: int) -> Fault:
        return rng.choice(faults) if rng.random() < fail_rate else healthy

    return pick


# The benchmark's failure mix: each kind a retryable failure before the first byte, or a mid-stream one.
MIXED_FAULTS: tuple[Fault, ...] = (
    Fault.error(429, retry_after=0.2),
    Fault.error(503),
    Fault("reset"),
    Fault("stall_first_byte", stall_s=5.0),
    Fault("stall_mid_stream", stall_s=5.0),
    Fault("cut_mid_stream"),
)


def closed_port_url() -> str:
    """A base URL on a loopback port nothing listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    return f"http://127.0.0.1:{port}/v1"


@dataclass
class ChaosUpstream:
    """The chaos server; ``async with`` serves it on a free loopback port (:attr:`url` ends in ``/v1``)."""

    script: Script = ()
    default: Fault = field(default_factory=Fault.ok)
    # What every request on a /healthy/ path gets.
    healthy: Fault = field(default_factory=Fault.ok)
    model: str = "chaos-model"
    port: int = 0
    requests: int = 0
    # Counts per fault label, and per path mode ("chaos" / "healthy").
    served: Counter[str] = field(default_factory=Counter)
    modes: Counter[str] = field(default_factory=Counter)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> ChaosUpstream:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        # Stalls end, idle keep-alive reads fail: every handler returns by itself (none is cancelled).
        self._closing.set()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def stall(self, seconds: float) -> None:
        """Wait ``seconds``, or until the server closes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    def next_fault(self, mode: str) -> Fault:
        index = self.requests
        self.requests += 1
        self.modes[mode] += 1
        if mode == "healthy":
            return self.healthy
        if callable(self.script):
            return self.script(index)
        chaos_index = self.modes["chaos"] - 1
        return self.script[chaos_index] if chaos_index < len(self.script) else self.default

    # --- one connection ------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while not self._closing.is_set() and await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection is done."""
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if method == "GET" and path.startswith("/_chaos/stats"):
            stats = {"requests": self.requests, "served": dict(self.served), "modes": dict(self.modes)}
            await _send(writer, 200, orjson.dumps(stats))
            return True
        if not path.split("?")[0].endswith("/chat/completions"):
            await _send(writer, 404, _error_body(404, f"no route {path}"))
            return True
        payload: dict[str, Any] = orjson.loads(body) if body else {}
        self.bodies.append(payload)
        fault = self.next_fault("healthy" if path.startswith("/healthy/") else "chaos")
        self.served[fault.label] += 1
        return await self._answer(fault, payload, writer)

    async def _answer(self, fault: Fault, payload: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        if fault.kind == "status":
            extra = {"retry-after": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            await _send(writer, fault.status, _error_body(fault.status, "chaos says no"), extra)
            return True
        if fault.kind == "reset":
            _reset(writer)
            return False
        if fault.kind == "stall_first_byte":
            await self.stall(fault.stall_s)
            return False
        await asyncio.sleep(fault.delay_s)
        if payload.get("stream"):
            return await self._stream(fault, writer)
        return await self._whole(fault, writer)

    async def _whole(self, fault: Fault, writer: asyncio.StreamWriter) -> bool:
        body = orjson.dumps(_completion(self.model))
        if fault.kind == "ok":
            await _send(writer, 200, body)
            return True
        head = _head(200, {"content-type": "application/json", "content-length": str(len(body))})
        writer.write(head + body[: len(body) // 2])
        await writer.drain()
        return await self._break(fault, writer)

    async def _stream(self, fault: Fault, writer: asyncio.StreamWriter) -> bool:
        writer.write(_head(200, {"content-type": "text/event-stream", "transfer-encoding": "chunked"}))
        events = _stream_events(self.model)
        cut = fault.after_chunks + 1 if fault.kind != "ok" else len(events)  # +1: the role chunk
        for event in events[:cut]:
            writer.write(_chunked(event))
            await writer.drain()
            if fault.chunk_delay_s:
                await asyncio.sleep(fault.chunk_delay_s)
        if fault.kind != "ok":
            return await self._break(fault, writer)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def _break(self, fault: Fault, writer: asyncio.StreamWriter) -> bool:
        if fault.kind == "stall_mid_stream":
            await self.stall(fault.stall_s)
        writer.transport.abort()
        return False


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} CHAOS"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send(writer: asyncio.StreamWriter, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
    headers = {"content-type": "application/json", "content-length": str(len(body)), **(extra or {})}
    writer.write(_head(status, headers) + body)
    await writer.drain()


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _error_body(status: int, message: str) -> bytes:
    error = {"message": message, "type": _ERROR_TYPES.get(status, "invalid_request_error"), "code": None}
    return orjson.dumps({"error": error})


def _completion(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-chaos",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "".join(_WORDS)}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": len(_WORDS), "total_tokens": 5 + len(_WORDS)},
    }


def _stream_events(model: str) -> list[bytes]:
    base = {"id": "chatcmpl-chaos", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": word}) for word in _WORDS]
    chunks.append(chunk({}, "stop"))
    usage = {"prompt_tokens": 5, "completion_tokens": len(_WORDS), "total_tokens": 5 + len(_WORDS)}
    chunks.append({**base, "choices": [], "usage": usage})
    return [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]


def main() -> None:  # pragma: no cover - the benchmark's upstream process
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fail-rate", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds before a healthy answer's first byte")
    parser.add_argument("--chunk-delay", type=float, default=0.005, help="seconds between stream chunks")
    args = parser.parse_args()
    ok = Fault.ok(delay_s=args.delay, chunk_delay_s=args.chunk_delay)
    faults = [
        Fault(f.kind, f.status, f.retry_after, f.stall_s, f.after_chunks, args.delay, args.chunk_delay)
        for f in MIXED_FAULTS
    ]
    script = mixed_script(args.fail_rate, faults, seed=args.seed, ok=ok)
    upstream = ChaosUpstream(script, healthy=ok, port=args.port)

    async def serve() -> None:
        async with upstream:
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
