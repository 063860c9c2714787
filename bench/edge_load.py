"""The edge target under concurrent load, against llama.cpp's own server on the same GGUF, in the same run.

Both serve OpenAI-style streaming chat completions on loopback; the client
sends N streams at once (distinct prompts, greedy, ``max_tokens`` 96) and
measures, per level N in 1, 2, 4, 8:

* aggregate decode tokens/s: every stream's tokens after its first, over the
  time from the first stream's first token to the last stream's end;
* time to first token (TTFT), p50 and p99 over every stream of every repeat.

Servers, one at a time, each alone on the machine:

* **ours, batched**: the gateway with the edge target pinned
  (``model: edge``), continuous batching on (the default), 2 threads;
* **ours, one at a time**: the same with ``batching: false`` (the previous
  design), at 1 stream for the "no slower than today" check;
* **llama-server**: built from the llama.cpp vendored in the
  llama-cpp-python 0.3.36 sdist (README, "Benchmarks"), ``-np 8`` (continuous
  batching), 2 threads, the Q4_1 GGUF our model is built from.

Then TTFT with a shared ~500-token system prompt, with and without reuse
(ours: ``prefix_cache_tokens`` default against 0; llama-server:
``cache_prompt`` true against false), and memory: the gateway's RSS idle
and at 8 streams, per extra concurrent stream.

    python bench/edge_load.py --llama-server PATH [--repeats 3] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_models.build import locate_gguf  # noqa: E402
from edge_models.catalog import DEFAULT_MODEL, KNOWN_MODELS  # noqa: E402
from tests.support.processes import free_port  # noqa: E402

TOPICS = [
    "a lighthouse keeper", "a lost dog", "the first train to the coast", "a baker in Lyon", "a chess tournament",
    "a storm at sea", "a garden in winter", "a clockmaker's apprentice", "a mountain village", "a jazz pianist",
    "a desert caravan", "an old library", "a river ferry", "a school play", "a night market", "a kite festival",
]  # fmt: skip
SYSTEM = "You are the assistant of Northwind Savings Bank. Follow these rules in every answer. " + " ".join(
    f"Rule {i}: be precise about fees, limits and dates, cite the account type, and never ask for a password."
    for i in range(1, 22)
)


def prompts(count: int, offset: int) -> list[str]:
    return [f"Write a long story about {TOPICS[(offset + i) % len(TOPICS)]}." for i in range(count)]


async def one_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, float]:
    start = time.perf_counter()
    first = last = None
    tokens = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as answer:
        answer.raise_for_status()
        async for line in answer.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                tokens += 1
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    assert first is not None and last is not None, "no token streamed"
    return {"start": start, "first": first, "last": last, "tokens": tokens}


async def level(url: str, model: str, streams: int, repeats: int, max_tokens: int, extra: dict[str, Any]) -> dict:
    ttfts: list[float] = []
    rates: list[float] = []
    async with _client() as client:
        for repeat in range(repeats):
            bodies = [
                {"model": model, "messages": [{"role": "user", "content": p}], "max_tokens": max_tokens,
                 "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, **extra}
                for p in prompts(streams, repeat * streams)
            ]  # fmt: skip
            runs = await asyncio.gather(*(one_stream(client, url, body) for body in bodies))
            ttfts += [(r["first"] - r["start"]) * 1000 for r in runs]
            decoded = sum(max(0.0, r["tokens"] - 1) for r in runs)
            span = max(r["last"] for r in runs) - min(r["first"] for r in runs)
            rates.append(decoded / span if span > 0 else 0.0)
    cuts = statistics.quantiles(ttfts, n=100) if len(ttfts) > 1 else [ttfts[0]] * 99
    return {"decode_tok_s": statistics.median(rates), "ttft_p50_ms": statistics.median(ttfts), "ttft_p99_ms": cuts[98]}


async def prefix_ttft(url: str, model: str, repeats: int, extra: dict[str, Any]) -> float:
    """TTFT of one stream at a time, each with the shared system prompt and its own question (the first warms)."""
    samples = []
    async with _client() as client:
        for i in range(repeats + 1):
            body = {
                "model": model, "max_tokens": 8, "temperature": 0, "stream": True,
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompts(1, i)[0]}],
                **extra,
            }  # fmt: skip
            run = await one_stream(client, url, body)
            if i:
                samples.append((run["first"] - run["start"]) * 1000)
    return statistics.median(samples)


def _client() -> httpx.AsyncClient:
    # A fresh connection per stream: llama-server closes idle keep-alive connections, and a reused one it
    # has closed fails the next request; both servers pay the same loopback connect (well under 1 ms).
    return httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_keepalive_connections=0))


def rss_mb(pid: int) -> float:
    total = 0
    for task in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{task}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@contextmanager
def gateway(folder: Path, name: str, **edge: Any) -> Iterator[tuple[str, int]]:
    values = {
        "targets": {"edge": {"type": "onnx", "threads": 2, "max_queue": 32, **edge}},
        "policies": [{"type": "default", "target": "edge"}],
        "logging": {"level": "WARNING"},
    }
    config = folder / f"{name}.yaml"
    config.write_text(yaml.safe_dump(values))
    port = free_port()
    with _serving([sys.executable, "-m", "service.cli", "serve", "--config", str(config), "--port", str(port)],
                  folder / f"{name}.log", f"http://127.0.0.1:{port}/readyz") as pid:  # fmt: skip
        yield f"http://127.0.0.1:{port}", pid


@contextmanager
def llama_server(binary: str, gguf: str, folder: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    args = [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-t", "2", "-tb", "2",
            "-np", "8", "-c", "16384", "--cont-batching", "--no-webui", "--threads-http", "16"]  # fmt: skip
    with _serving(args, folder / "llama-server.log", f"http://127.0.0.1:{port}/health") as pid:
        yield f"http://127.0.0.1:{port}", pid


@contextmanager
def _serving(args: list[str], log: Path, ready: str) -> Iterator[int]:
    with log.open("wb") as out:
        process = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(ready, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{args[0]} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield process.pid
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-server", required=True, help="the llama-server binary (README, 'Benchmarks')")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    gguf = str(locate_gguf(KNOWN_MODELS[DEFAULT_MODEL]))
    folder = Path(tempfile.mkdtemp(prefix="hr-edge-load-"))
    levels = (1, 2, 4, 8)
    report: dict[str, Any] = {"levels": {}, "prefix_ttft_ms": {}, "memory_mb": {}}

    def run_levels(url: str, model: str, extra: dict[str, Any], which: tuple[int, ...]) -> dict[int, dict]:
        return {n: asyncio.run(level(url, model, n, args.repeats, args.max_tokens, extra)) for n in which}

    with gateway(folder, "batched") as (url, pid):
        asyncio.run(level(url, "edge", 1, 1, 8, {}))  # warm-up
        idle = rss_mb(pid)
        report["levels"]["ours, batched"] = run_levels(url, "edge", {}, levels)
        report["memory_mb"] = {"idle": idle, "after 8 streams": rss_mb(pid)}
        report["prefix_ttft_ms"]["ours, reuse"] = asyncio.run(prefix_ttft(url, "edge", args.repeats * 2, {}))
    with gateway(folder, "no-reuse", prefix_cache_tokens=0) as (url, _):
        asyncio.run(level(url, "edge", 1, 1, 8, {}))
        report["prefix_ttft_ms"]["ours, no reuse"] = asyncio.run(prefix_ttft(url, "edge", args.repeats * 2, {}))
    with gateway(folder, "unbatched", batching=False) as (url, _):
        asyncio.run(level(url, "edge", 1, 1, 8, {}))
        report["levels"]["ours, one at a time"] = run_levels(url, "edge", {}, (1, 4))
    with llama_server(args.llama_server, gguf, folder) as (url, pid):
        asyncio.run(level(url, "gguf", 1, 1, 8, {}))
        report["levels"]["llama-server"] = run_levels(url, "gguf", {}, levels)
        report["memory_mb"]["llama-server after 8 streams"] = rss_mb(pid)
        report["prefix_ttft_ms"]["llama-server, cache_prompt"] = asyncio.run(
            prefix_ttft(url, "gguf", args.repeats * 2, {"cache_prompt": True})
        )
        report["prefix_ttft_ms"]["llama-server, no cache_prompt"] = asyncio.run(
            prefix_ttft(url, "gguf", args.repeats * 2, {"cache_prompt": False})
        )
    print(json.dumps(report, indent=2))
    ours, llama = report["levels"]["ours, batched"], report["levels"]["llama-server"]
    print(
        "\n| streams | ours decode tok/s | llama-server decode tok/s | ratio | ours TTFT p50/p99 ms | llama-server TTFT p50/p99 ms |"
    )
    print("|---|---|---|---|---|---|")
    for n in levels:
        a, b = ours[n], llama[n]
        print(f"| {n} | {a['decode_tok_s']:.0f} | {b['decode_tok_s']:.0f} | x{a['decode_tok_s'] / b['decode_tok_s']:.2f} | "
              f"{a['ttft_p50_ms']:.0f} / {a['ttft_p99_ms']:.0f} | {b['ttft_p50_ms']:.0f} / {b['ttft_p99_ms']:.0f} |")  # fmt: skip
    before = report["levels"]["ours, one at a time"]
    print(f"\n1 stream, batched against one at a time: {ours[1]['decode_tok_s']:.0f} against "
          f"{before[1]['decode_tok_s']:.0f} tok/s; TTFT {ours[1]['ttft_p50_ms']:.0f} against {before[1]['ttft_p50_ms']:.0f} ms")  # fmt: skip
    p = report["prefix_ttft_ms"]
    print(f"shared ~500-token system prompt, TTFT: ours {p['ours, reuse']:.0f} ms with reuse, {p['ours, no reuse']:.0f} ms "
          f"without (x{p['ours, reuse'] / p['ours, no reuse']:.2f}); llama-server {p['llama-server, cache_prompt']:.0f} / "
          f"{p['llama-server, no cache_prompt']:.0f} ms")  # fmt: skip
    m = report["memory_mb"]
    print(f"memory: gateway {m['idle']:.0f} MB idle, {m['after 8 streams']:.0f} MB after 8 streams "
          f"({(m['after 8 streams'] - m['idle']) / 7:.1f} MB per extra stream); "
          f"llama-server {m['llama-server after 8 streams']:.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
