"""Failover under a failing cloud: this gateway and LiteLLM's router, same upstream, same fallback config.

One chaos upstream process (``tests/support/chaos.py``) serves two clouds on
127.0.0.1: ``/v1`` fails 30% of requests with a mix of kinds (429 with
Retry-After, 503, a reset before the first byte, a first-byte stall, a stall
and a cut mid-stream) and ``/healthy/v1`` never fails. Each gateway has
``cloud`` (the failing one) and ``healthy`` (the baseline), both falling back
to ``edge``, a scripted local answer (our ``type: fake`` target; LiteLLM's
``mock_response``), so the fallback costs the same on both sides and no
model runs. Then, for each gateway in turn, 16 concurrent clients (half the
requests streamed) send to ``cloud`` for ``--seconds`` and to ``healthy`` for
``--healthy-seconds``.

Reported per gateway and cloud: client-visible errors (a clean error before
any output, or a stream that failed after output started, which no gateway
can hide), the share answered by the edge, p50/p99 latency to the whole
answer, and upstream calls per request (from the chaos server's counts).

Same settings on both sides: 3 attempts per request (LiteLLM ``num_retries:
2``), stream first-byte/idle timeout 1 s and whole-answer timeout 2 s
(LiteLLM ``stream_timeout: 1``, ``timeout: 2``); ours has its default retry
budget and circuit (10 consecutive failures, or a 50% error rate over 30 s,
which a 30%-failing cloud rarely reaches). LiteLLM's cooldown counts
failures per minute (``allowed_fails``), so at this failure rate it would
cool the cloud down almost all the time and send nearly everything to the
edge; it runs with ``disable_cooldowns: true`` so that both keep using the
cloud that answers 70% of the time. ``--litellm-cooldown`` runs it with
``allowed_fails: 5, cooldown_time: 15`` instead.

    python bench/failover.py [--seconds 60] [--healthy-seconds 15] [--litellm /tmp/litellm-venv/bin/litellm]

LiteLLM runs from its own virtualenv (``python -m venv /tmp/litellm-venv &&
/tmp/litellm-venv/bin/pip install 'litellm[proxy]'``), never this project's.
Everything binds 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]

OURS = """
server: {{host: 127.0.0.1, reload_poll_s: 0}}
logging: {{level: WARNING}}
targets:
  edge: {{type: fake, reply: "edge says hi", local: true}}
  cloud:
    type: openai
    base_url: http://127.0.0.1:{upstream}/v1
    model: chaos-model
    api_key_env: null
    timeouts: {{connect_s: 1, first_byte_s: 1, idle_s: 1, total_s: 2}}
    fallback: [edge]
  healthy:
    type: openai
    base_url: http://127.0.0.1:{upstream}/healthy/v1
    model: chaos-model
    api_key_env: null
    timeouts: {{connect_s: 1, first_byte_s: 1, idle_s: 1, total_s: 2}}
    fallback: [edge]
policies: [{{type: explicit}}, {{type: default, target: cloud}}]
"""

LITELLM = """
model_list:
  - model_name: cloud
    litellm_params: {{model: openai/chaos-model, api_base: "http://127.0.0.1:{upstream}/v1", api_key: sk-chaos, timeout: 2, stream_timeout: 1}}
  - model_name: healthy
    litellm_params: {{model: openai/chaos-model, api_base: "http://127.0.0.1:{upstream}/healthy/v1", api_key: sk-chaos, timeout: 2, stream_timeout: 1}}
  - model_name: edge
    litellm_params: {{model: openai/edge-model, mock_response: "edge says hi"}}
router_settings:
  num_retries: 2
  fallbacks: [{{cloud: [edge]}}, {{healthy: [edge]}}]
{cooldown}
litellm_settings:
  drop_params: true
  telemetry: false
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def process(args: Sequence[str], port: int, log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """Run ``args`` until the block ends, once ``port`` accepts connections (at most 90 s)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(list(args), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{args[0]} exited:\n{log.read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{args[0]} did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    edge: int = 0
    error_before_output: int = 0
    error_mid_stream: int = 0
    codes: dict[str, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return self.ok + self.error_before_output + self.error_mid_stream

    def count(self, code: str) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1


async def one(session: aiohttp.ClientSession, url: str, model: str, stream: bool, tally: Tally) -> None:
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "What is six times seven?"}]}
    started = time.perf_counter()
    try:
        async with session.post(url, json=body) as response:
            raw = await response.read()
            if response.status != 200:
                tally.error_before_output += 1
                tally.count(str(json.loads(raw).get("error", {}).get("code") or response.status))
                return
            text, error = read_answer(raw, stream)
            served = response.headers.get("x-route-target") or response.headers.get("x-litellm-model-group", "")
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        # A stream the gateway broke off (no [DONE]) counts as a failure after output.
        tally.error_mid_stream += 1
        tally.count(type(exc).__name__)
        return
    if error is not None:
        tally.error_mid_stream += 1
        tally.count(error)
        return
    tally.latencies.append((time.perf_counter() - started) * 1000)
    tally.ok += 1
    tally.edge += text == "edge says hi" or served == "edge"


def read_answer(raw: bytes, stream: bool) -> tuple[str, str | None]:
    """The answer's text, and the error code when the stream ended in an error event or without [DONE]."""
    if not stream:
        return json.loads(raw)["choices"][0]["message"]["content"], None
    events = [block.removeprefix(b"data: ") for block in raw.strip().split(b"\n\n") if block.strip()]
    done = bool(events) and events[-1] == b"[DONE]"
    text = []
    for event in events[:-1] if done else events:
        chunk = json.loads(event)
        if "error" in chunk:
            code = str(chunk["error"].get("code") or "stream_error")
            return "", code if done else f"{code} (no [DONE])"
        for choice in chunk.get("choices") or ():
            text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text), None if done else "no [DONE]"


async def load(url: str, model: str, seconds: float, concurrency: int, headers: dict[str, str], seed: int) -> Tally:
    tally = Tally()
    rng = random.Random(seed)
    stop = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers, connector=connector) as session:

        async def worker() -> None:
            while time.monotonic() < stop:
                await one(session, url, model, rng.random() < 0.5, tally)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


def upstream_stats(port: int) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_chaos/stats", timeout=5) as response:
        stats: dict[str, Any] = json.loads(response.read())
        return stats


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_phase(
    name: str, port: int, model: str, seconds: float, args: argparse.Namespace, headers: dict[str, str], upstream: int
) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    asyncio.run(load(url, model, 3, 4, headers, seed=1))  # warm-up: connections, lazy imports
    mode = "chaos" if model == "cloud" else "healthy"
    before = upstream_stats(upstream)["modes"].get(mode, 0)
    tally = asyncio.run(load(url, model, seconds, args.concurrency, headers, seed=args.seed))
    calls = upstream_stats(upstream)["modes"].get(mode, 0) - before
    row = {
        "gateway": name,
        "cloud": "30% failing" if model == "cloud" else "healthy",
        "requests": tally.requests,
        "requests_per_s": tally.requests / seconds,
        "errors_before_output_pct": 100 * tally.error_before_output / max(1, tally.requests),
        "errors_mid_stream_pct": 100 * tally.error_mid_stream / max(1, tally.requests),
        "edge_answered_pct": 100 * tally.edge / max(1, tally.requests),
        "p50_ms": percentile(tally.latencies, 0.5),
        "p99_ms": percentile(tally.latencies, 0.99),
        "upstream_calls_per_request": calls / max(1, tally.requests),
        "error_codes": tally.codes,
    }
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| gateway | cloud | requests (/s) | errors before output | errors mid-stream | answered by edge | p50 ms | p99 ms | upstream calls / request |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['gateway']} | {r['cloud']} | {r['requests']} ({r['requests_per_s']:.0f}) | {r['errors_before_output_pct']:.2f}% "
            f"| {r['errors_mid_stream_pct']:.2f}% | {r['edge_answered_pct']:.1f}% | {r['p50_ms']:.0f} "
            f"| {r['p99_ms']:.0f} | {r['upstream_calls_per_request']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="load against the failing cloud, per gateway")
    parser.add_argument("--healthy-seconds", type=float, default=15, help="load against the healthy cloud")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--fail-rate", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--litellm", default="/tmp/litellm-venv/bin/litellm", help="the LiteLLM proxy; skipped when absent"
    )
    parser.add_argument(
        "--litellm-cooldown", action="store_true", help="LiteLLM with allowed_fails: 5, cooldown_time: 15"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        upstream = free_port()
        stack.enter_context(process(
            [sys.executable, "-m", "tests.support.chaos", "--port", str(upstream), "--fail-rate", str(args.fail_rate),
             "--seed", str(args.seed)], upstream, work / "chaos.log"))  # fmt: skip

        ours = free_port()
        (work / "ours.yaml").write_text(OURS.format(upstream=upstream))
        with process([sys.executable, "-m", "service.cli", "serve", "--config", str(work / "ours.yaml"),
                      "--port", str(ours)], ours, work / "ours.log"):  # fmt: skip
            rows.append(run_phase("hybrid-router", ours, "cloud", args.seconds, args, {}, upstream))
            rows.append(run_phase("hybrid-router", ours, "healthy", args.healthy_seconds, args, {}, upstream))

        if Path(args.litellm).exists():
            theirs = free_port()
            cooldown = (
                "  allowed_fails: 5\n  cooldown_time: 15" if args.litellm_cooldown else "  disable_cooldowns: true"
            )
            (work / "litellm.yaml").write_text(LITELLM.format(upstream=upstream, cooldown=cooldown))
            key = "sk-bench-" + secrets.token_hex(16)
            env = {"LITELLM_MASTER_KEY": key, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": ""}
            command = [args.litellm, "--config", str(work / "litellm.yaml"), "--host", "127.0.0.1",
                       "--port", str(theirs), "--num_workers", "1"]  # fmt: skip
            with process(command, theirs, work / "litellm.log", env=env):
                auth = {"authorization": f"Bearer {key}"}
                name = "litellm proxy" + (" (cooldowns)" if args.litellm_cooldown else "")
                rows.append(run_phase(name, theirs, "cloud", args.seconds, args, auth, upstream))
                rows.append(run_phase(name, theirs, "healthy", args.healthy_seconds, args, auth, upstream))
        else:
            print(f"LiteLLM not found at {args.litellm}: its rows are skipped", file=sys.stderr)

    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
