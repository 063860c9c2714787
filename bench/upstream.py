"""A minimal, fast OpenAI-compatible upstream for the gateway benchmark.

A raw asyncio protocol with httptools' parser and canned answers, so the
upstream costs next to nothing and the benchmark measures the gateway. It
answers every ``POST`` with a fixed ``chat.completion``, or a fixed SSE
stream when the body asks for ``"stream": true``.

    python bench/upstream.py --port 9101
"""

from __future__ import annotations

import argparse
import asyncio
import json

import httptools
import uvloop

USAGE = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}


def _response(body: bytes, content_type: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type + b"\r\ncontent-length: " + str(len(body)).encode()
    return head + b"\r\nconnection: keep-alive\r\n\r\n" + body


def _canned() -> tuple[bytes, bytes]:
    completion = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "The capital of France is Paris."},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": USAGE,
    }  # fmt: skip
    events = []
    for piece in ["", "The", " capital", " of", " France", " is", " Paris", "."]:
        delta = {"role": "assistant", "content": piece} if piece == "" else {"content": piece}
        events.append({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
                       "model": "bench-model", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})  # fmt: skip
    events.append({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
                   "model": "bench-model", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})  # fmt: skip
    events.append({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
                   "model": "bench-model", "choices": [], "usage": USAGE})  # fmt: skip
    sse = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    return _response(json.dumps(completion).encode(), b"application/json"), _response(sse, b"text/event-stream")


JSON_ANSWER, SSE_ANSWER = _canned()


class _Connection(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.body).replace(b" ", b"")
        self.body = []
        self.transport.write(SSE_ANSWER if b'"stream":true' in body else JSON_ANSWER)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Connection, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
