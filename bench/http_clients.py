"""Which async HTTP client the gateway should use for its upstream calls.

Runs the same POST against ``bench/upstream.py`` with httpx and aiohttp,
alternating, at concurrency 1 (latency) and 32 (throughput), in one process.
This measurement is why ``router/backends/http.py`` uses aiohttp.

    python bench/http_clients.py [--requests 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import uvloop

ROOT = Path(__file__).resolve().parents[1]
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
HEADERS = {"content-type": "application/json"}


async def with_httpx(url: str, requests: int, concurrency: int) -> list[float]:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(limits=limits) as client:

        async def one() -> float:
            started = time.perf_counter()
            (await client.post(url, content=BODY, headers=HEADERS)).json()
            return time.perf_counter() - started

        return await _drive(one, requests, concurrency)


async def with_aiohttp(url: str, requests: int, concurrency: int) -> list[float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:

        async def one() -> float:
            started = time.perf_counter()
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                await response.json(content_type=None)
            return time.perf_counter() - started

        return await _drive(one, requests, concurrency)


async def _drive(one, requests: int, concurrency: int) -> list[float]:  # type: ignore[no-untyped-def]
    gate = asyncio.Semaphore(concurrency)

    async def gated() -> float:
        async with gate:
            return await one()  # type: ignore[no-any-return]

    await asyncio.gather(*(gated() for _ in range(100)))
    started = time.perf_counter()
    samples = await asyncio.gather(*(gated() for _ in range(requests)))
    samples.append(time.perf_counter() - started)  # the last item is the wall time
    return list(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=4000)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    upstream = subprocess.Popen([sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(port)])
    try:
        time.sleep(1.0)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        results: dict[tuple[str, int], list[float]] = {}
        for _ in range(2):
            for concurrency in (1, 32):
                for name, fn in (("httpx", with_httpx), ("aiohttp", with_aiohttp)):
                    samples = uvloop.run(fn(url, args.requests, concurrency))
                    results.setdefault((name, concurrency), []).extend(samples[:-1])
                    results.setdefault((name, concurrency, "rps"), []).append(args.requests / samples[-1])  # type: ignore[index]
        for concurrency in (1, 32):
            print(f"concurrency {concurrency}:")
            for name in ("httpx", "aiohttp"):
                lat = sorted(results[(name, concurrency)])
                rps = statistics.fmean(results[(name, concurrency, "rps")])  # type: ignore[index]
                print(
                    f"  {name:<8} {rps:8.0f} req/s   p50 {lat[len(lat) // 2] * 1000:6.3f} ms   p99 {lat[int(len(lat) * 0.99)] * 1000:6.3f} ms"
                )
            ratio = statistics.fmean(results[("aiohttp", concurrency, "rps")]) / statistics.fmean(
                results[("httpx", concurrency, "rps")]
            )  # type: ignore[index]
            print(f"  aiohttp / httpx throughput: {ratio:.1f}x")
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    main()
