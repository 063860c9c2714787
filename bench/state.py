"""What spend control costs and whether it holds: added latency, --workers throughput, overshoot at a budget's edge.

Three measurements, each against a baseline in the same run:

1. **added latency**: one client, requests one after another, round-robin
   over four gateways that differ only in limits: none, budgets and rate
   limits on SQLite, the same on Redis (admission leases on, the default),
   and on Redis with ``state.lease_fraction: 0`` (a store call per request).
   The target is a scripted cloud (no delay), so what differs is admission,
   the hold and its settlement. Reported: p50/p99 per gateway and the p50
   over no limits.
2. **throughput**: ``serve --workers 1`` against ``--workers 2`` (limits on,
   SQLite), 32 keep-alive connections from a client process for a fixed time,
   alternated twice (A B A B) to spread the machine's noise.
3. **overshoot**: 50 concurrent requests at a budget's edge, split between two
   gateway processes sharing the store, on SQLite and on Redis; and 200
   requests, 50 at a time, at the edge of a budget large enough for leases
   (Redis): what the store charged minus the budget (0 means none).

    python bench/state.py [--requests 2000] [--seconds 8]

Redis is a ``redis-server`` started on a free port with persistence off.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gateway_overhead import free_port, throughput_python  # noqa: E402
from state_store import redis_server  # noqa: E402

from router.state import BudgetScope, open_store  # noqa: E402

KEY = "sk-bench-state"
BODY = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 8}


def config(
    url: str | None, tenant: str, limits: dict[str, float] | None, delay_s: float = 0.0, **state: Any
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "targets": {
            "edge": {"type": "fake", "reply": "edge says hi"},
            "cloud": {"type": "fake", "reply": "cloud says hi", "local": False, "delay_s": delay_s,
                      "price_per_mtok": {"input": 1000.0, "output": 1000.0}},
        },
        "policies": [{"type": "default", "target": "cloud"}],
        "auth": {"keys": [{"hash": "sha256:" + hashlib.sha256(KEY.encode()).hexdigest(), "tenant": tenant}]},
        "logging": {"level": "WARNING"},
    }  # fmt: skip
    if url is not None:
        values["state"] = {"url": url, **state}
    if limits is not None:
        values["tenants"] = {tenant: {"limits": limits}}
    return values


@contextmanager
def gateway(values: dict[str, Any], folder: Path, name: str, workers: int = 1) -> Iterator[str]:
    file = folder / f"{name}.yaml"
    file.write_text(yaml.safe_dump(values))
    port = free_port()
    log = (folder / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(file), "--port", str(port),
         "--workers", str(workers)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"gateway {name} did not start:\n{(folder / f'{name}.log').read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def added_latency(urls: dict[str, str], requests: int) -> dict[str, dict[str, float]]:
    samples: dict[str, list[float]] = {name: [] for name in urls}
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=30) as client:
        for index in range(requests + requests // 10):
            for name, url in urls.items():
                start = time.perf_counter()
                answer = client.post(url + "/v1/chat/completions", json=BODY, headers=headers)
                elapsed = (time.perf_counter() - start) * 1000
                if answer.status_code != 200:
                    raise SystemExit(f"{name}: {answer.status_code} {answer.text}")
                if index >= requests // 10:  # the first tenth warms up
                    samples[name].append(elapsed)
    out = {}
    for name, values in samples.items():
        cuts = statistics.quantiles(values, n=100)
        out[name] = {"p50_ms": statistics.median(values), "p99_ms": cuts[98]}
    return out


async def overshoot(urls: list[str], store_url: str, tenant: str, budget: float, count: int) -> dict[str, float]:
    headers = {"authorization": f"Bearer {KEY}"}
    at_once = asyncio.Semaphore(50)

    async def send(client: httpx.AsyncClient, i: int) -> httpx.Response:
        async with at_once:
            return await client.post(urls[i % 2] + "/v1/chat/completions", json=BODY, headers=headers)

    async with httpx.AsyncClient(timeout=30) as client:
        answers = await asyncio.gather(*(send(client, i) for i in range(count)))
    store = open_store(store_url)
    try:
        for _ in range(100):
            usage = await store.budgets.usage(BudgetScope(f"tenant:{tenant}", "day", budget))
            if usage.held_usd == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        await store.close()
    ok = sum(a.status_code == 200 for a in answers)
    return {"requests": count, "answered": ok, "refused": sum(a.status_code == 429 for a in answers), "charged_usd": usage.spent_usd,
            "budget_usd": budget, "overshoot_usd": max(0.0, usage.spent_usd - budget)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per gateway for the latency")
    parser.add_argument("--seconds", type=int, default=8, help="each throughput run")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="hr-bench-state-"))
    limits = {"requests_per_minute": 10**7, "tokens_per_minute": 10**9, "usd_per_day": 10**6, "usd_per_month": 10**7}
    report: dict[str, Any] = {}
    with redis_server() as redis_url, ExitStack() as stack:
        sqlite_url = f"sqlite:///{folder / 'state.db'}"
        urls = {
            "no limits": stack.enter_context(gateway(config(None, "t0", None), folder, "none")),
            "sqlite": stack.enter_context(gateway(config(sqlite_url, "t1", limits), folder, "sqlite")),
            "redis": stack.enter_context(gateway(config(redis_url, "t2", limits), folder, "redis")),
            "redis, no leases": stack.enter_context(
                gateway(config(redis_url, "t3", limits, lease_fraction=0), folder, "redis-no-leases")
            ),
        }
        report["latency"] = added_latency(urls, args.requests)
        base = report["latency"]["no limits"]["p50_ms"]
        for name in ("sqlite", "redis", "redis, no leases"):
            report["latency"][name]["added_p50_ms"] = report["latency"][name]["p50_ms"] - base
        stack.close()

        body = json.dumps(BODY)
        runs: dict[int, list[float]] = {1: [], 2: []}
        for workers in (1, 2, 1, 2):
            name = f"workers{workers}-{len(runs[workers])}"
            # The load client sends no key: its requests are the tenant "default", with the same limits.
            values = config(sqlite_url, "default", limits)
            del values["auth"]
            with gateway(values, folder, name, workers=workers) as url:
                port = int(url.rsplit(":", 1)[1])
                code = throughput_python(port, args.seconds, body, folder)
                runs[workers].append(code["rps"])
        report["throughput_rps"] = {f"workers {w}": statistics.mean(v) for w, v in runs.items()}
        report["throughput_rps"]["ratio"] = (
            report["throughput_rps"]["workers 2"] / report["throughput_rps"]["workers 1"]
        )

        report["overshoot"] = {}
        # At the edge of a $0.10 budget (each request may cost $0.018), and of a $0.80 one that leases
        # can cover (5% of it is over two requests' worth): 50 at once, then 200 requests 50 at a time.
        runs = (("sqlite", f"sqlite:///{folder / 'edge.db'}", 0.1, 50), ("redis", redis_url, 0.1, 50),
                ("redis, leased", redis_url, 0.8, 200))  # fmt: skip
        for kind, url, budget, count in runs:
            tenant = "t" + uuid.uuid4().hex[:8]
            values = config(url, tenant, {"usd_per_day": budget}, delay_s=0.05)
            name = kind.replace(", ", "-")
            with gateway(values, folder, f"{name}-a") as a, gateway(values, folder, f"{name}-b") as b:
                report["overshoot"][kind] = asyncio.run(overshoot([a, b], url, tenant, budget, count))
    print(json.dumps(report, indent=2))
    lat = report["latency"]
    print(f"\nadded latency, p50 over no limits: SQLite {lat['sqlite']['added_p50_ms']:+.3f} ms, "
          f"Redis {lat['redis']['added_p50_ms']:+.3f} ms (leases on, the default; off: "
          f"{lat['redis, no leases']['added_p50_ms']:+.3f} ms) (no limits p50 {base:.3f} ms)")  # fmt: skip
    rps = report["throughput_rps"]
    print(f"throughput: --workers 1 {rps['workers 1']:.0f} req/s, --workers 2 {rps['workers 2']:.0f} req/s "
          f"(x{rps['ratio']:.2f})")  # fmt: skip
    for kind, row in report["overshoot"].items():
        print(f"overshoot ({kind}, {row['requests']} requests 50 at a time, 2 processes): ${row['overshoot_usd']:.6f} "
              f"({row['answered']} answered, {row['refused']} refused, ${row['charged_usd']:.4f} of ${row['budget_usd']})")  # fmt: skip
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
