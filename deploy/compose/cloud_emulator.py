"""A stand-in for an OpenAI-compatible cloud, for docker-compose.yml's ``demo`` profile.

Standard library only, so it runs in any Python 3.11 image (the stack runs it
in the gateway's own image, where tests/ is not copied). It speaks OpenAI's
wire format for what the gateway sends:

* ``POST /v1/chat/completions``: ``Authorization: Bearer <key>`` (checked when
  ``--api-key`` or ``$CLOUD_EMULATOR_API_KEY`` is set), a ``chat.completion``
  body, or with ``stream: true`` an SSE stream of ``chat.completion.chunk``
  events ending in ``data: [DONE]``, plus a usage chunk when
  ``stream_options.include_usage`` is set; ``max_tokens`` /
  ``max_completion_tokens`` cut the answer (``finish_reason: length``);
* ``GET /v1/models`` and ``GET /healthz``;
* errors as ``{"error": {"message", "type", "param", "code"}}``.

It answers ``"Cloud emulator says: <last user message>"``, one word per
token, after ``--latency-ms`` and with ``--token-ms`` between tokens, so the
dashboard's latency and time-to-first-token panels tell cloud from edge.

    python deploy/compose/cloud_emulator.py --host 0.0.0.0 --port 8080 --api-key sk-demo
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "gpt-4o-mini"
MAX_BODY_BYTES = 4 * 1024 * 1024


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": type_, "param": None, "code": code}}


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                parts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
                return " ".join(str(p.get("text", "")) for p in parts)
            return str(content or "")
    return ""


class Answer:
    """One answer's words, usage and its two wire forms."""

    def __init__(self, body: dict[str, Any]) -> None:
        words = f"Cloud emulator says: {last_user_text(body)}".split()
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        self.finish = "stop"
        if isinstance(limit, int) and 0 < limit < len(words):
            words, self.finish = words[:limit], "length"
        self.pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        prompt = sum(len(json.dumps(m)) for m in body.get("messages") or []) // 4 + 1
        self.usage = {"prompt_tokens": prompt, "completion_tokens": len(self.pieces),
                      "total_tokens": prompt + len(self.pieces)}  # fmt: skip
        self.model = str(body.get("model") or MODEL)
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def completion(self) -> dict[str, Any]:
        message = {"role": "assistant", "content": "".join(self.pieces), "refusal": None}
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish, "logprobs": None}],
                "usage": self.usage, "system_fingerprint": "fp_cloud_emulator"}  # fmt: skip

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "system_fingerprint": "fp_cloud_emulator", "choices": choices, **extra}  # fmt: skip
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def _delta(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        return self._event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra)

    def events(self, include_usage: bool, token_s: float) -> Iterator[bytes]:
        extra = {"usage": None} if include_usage else {}
        yield self._delta({"role": "assistant", "content": "", "refusal": None}, **extra)
        for piece in self.pieces:
            time.sleep(token_s)
            yield self._delta({"content": piece}, **extra)
        yield self._delta({}, self.finish, **extra)
        if include_usage:
            yield self._event([], usage=self.usage)
        yield b"data: [DONE]\n\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the gateway pools its upstream connections
    server: EmulatorServer

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._json(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "emulator"}]})
        else:
            self._json(404, ApiError(404, f"Unknown path {self.path}").body)

    def do_POST(self) -> None:
        try:
            body = self._read_chat()
        except ApiError as exc:
            self._json(exc.status, exc.body)
            return
        time.sleep(self.server.latency_s)
        answer = Answer(body)
        if not body.get("stream"):
            self._json(200, answer.completion())
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        try:
            for event in answer.events(include_usage, self.server.token_s):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the caller went away mid-stream

    def _read_chat(self) -> dict[str, Any]:
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(413, "Request body too large.")
        raw = self.rfile.read(length)
        if self.path != "/v1/chat/completions":
            raise ApiError(404, f"Unknown path {self.path}")
        key = self.server.api_key
        given = self.headers.get("authorization", "")
        if key is not None and given != f"Bearer {key}":
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            raise ApiError(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            raise ApiError(400, "'messages' must be a non-empty array.")
        return body

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: one line per request would drown the stack's logs


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], *, api_key: str | None, latency_s: float, token_s: float) -> None:
        super().__init__(address, Handler)
        self.api_key, self.latency_s, self.token_s = api_key, latency_s, token_s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("CLOUD_EMULATOR_API_KEY"),
        help="the Bearer key callers must send (default $CLOUD_EMULATOR_API_KEY; unset: any)",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="wait before answering")
    parser.add_argument("--token-ms", type=float, default=0.0, help="wait before each streamed token")
    args = parser.parse_args(argv)
    server = EmulatorServer((args.host, args.port), api_key=args.api_key or None,
                            latency_s=args.latency_ms / 1000, token_s=args.token_ms / 1000)  # fmt: skip
    # `docker stop` sends SIGTERM; shutdown() must run off the serving thread.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"cloud emulator on http://{args.host}:{server.server_port}/v1", flush=True)
    with server:
        server.serve_forever()


if __name__ == "__main__":
    main()
