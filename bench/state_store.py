"""What one call to the shared state costs: reserve+settle and one rate acquire, on SQLite and on Redis.

One client, calls one after another (the latency a request pays on
admission and completion, not the stores' throughput). SQLite writes a
temporary WAL file; Redis is a ``redis-server`` started on a free port with
persistence off (``--redis-url`` measures an existing one instead).

    python bench/state_store.py [--calls 2000] [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from router.state import BudgetScope, RateScope, Reservation, StateStore, open_store


async def timed(call: Callable[[int], Awaitable[None]], calls: int) -> tuple[float, float]:
    """p50 and p99 in milliseconds, after a warm-up of a tenth of the calls."""
    for index in range(calls // 10):
        await call(index)
    samples = []
    for index in range(calls):
        start = time.perf_counter()
        await call(index)
        samples.append((time.perf_counter() - start) * 1000)
    cuts = statistics.quantiles(samples, n=100)
    return statistics.median(samples), cuts[98]


async def measure(name: str, store: StateStore, calls: int) -> None:
    scopes = [BudgetScope("key:bench", "day", 1e9), BudgetScope("tenant:bench", "month", 1e9)]
    limits = [RateScope("key:bench", 10**9, 10**12), RateScope("tenant:bench", 10**9, 10**12)]

    async def reserve_settle(index: int) -> None:
        hold = await store.budgets.reserve(scopes, 0.01, request_id=f"r{index}", ttl_s=60)
        assert isinstance(hold, Reservation)
        await store.budgets.settle(hold, 0.005)

    async def acquire(index: int) -> None:
        assert (await store.rates.acquire(limits, tokens=100)).allowed

    try:
        for label, call in (("reserve+settle (2 scopes)", reserve_settle), ("rate acquire (2 scopes)", acquire)):
            p50, p99 = await timed(call, calls)
            print(f"{name:7} {label:27} p50 {p50:6.3f} ms   p99 {p99:6.3f} ms")
    finally:
        await store.close()


@contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server), or pass --redis-url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait()


async def main(calls: int, redis_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        await measure("sqlite", open_store(f"sqlite:///{Path(folder) / 'state.db'}"), calls)
    if redis_url:
        await measure("redis", open_store(redis_url, namespace=f"bench-{uuid.uuid4().hex[:8]}"), calls)
    else:
        with redis_server() as url:
            await measure("redis", open_store(url), calls)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--redis-url")
    options = parser.parse_args()
    asyncio.run(main(options.calls, options.redis_url))
