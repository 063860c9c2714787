"""Does one hostile prompt stall the gateway? ``/healthz`` latency while adversarial prompts are classified.

Starts the gateway (real uvicorn on 127.0.0.1, scripted targets, the
README's policy chain with ``privacy: redact``) and measures ``/healthz``
every 10 ms: first on an idle gateway (the baseline), then while four
clients keep sending ~60 KB prompts built to make personal-data regexes
backtrack (base64-alphabet runs ending in padding, repeated ``eyJ``, digit
runs with separators, ``@`` and ``%`` runs, capitalised-word runs...) to
``/v1/route``. Prints p50 / p99 / max for both phases and for the hostile
requests themselves, and how many hostile requests failed closed (the
classifier's deadline passed, so personal data was assumed).

    python bench/hostile_prompts.py [--seconds 20] [--kb 60]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.processes import free_port, running  # noqa: E402

CONFIG = """
targets:
  edge: {type: fake, reply: "edge says hi", context_window: 2048}
  cloud: {type: fake, reply: "cloud says hi", local: false}
policies:
  - {type: explicit}
  - {type: privacy, on_personal_data: redact}
  - {type: context_window}
  - {type: default, target: cloud}
limits: {max_prompt_chars: 400000}
logging: {level: WARNING}
"""


def hostile_prompts(size: int) -> dict[str, str]:
    def fill(unit: str, tail: str = "") -> str:
        return unit * (size // len(unit)) + tail

    return {
        "base64 run + padding": fill("A", "=="),
        "mixed base64 + padding": fill("aB3+/9zQ", "="),
        "repeated eyJ": fill("eyJ"),
        "repeated eyJ.": fill("eyJhbGciOi."),
        "digits and spaces": fill("1 "),
        "digits and dashes": fill("12-"),
        "digits and dots": fill("1."),
        "colons and hex": fill("a:"),
        "@ run": fill("@"),
        "a@ run": fill("a@"),
        "dotted local part": fill("a.", "@"),
        "% run": fill("%4"),
        "sk- run": fill("sk-"),
        "AKIA run": fill("AKIA"),
        "capitalised words": fill("Aa "),
        "titles and names": fill("Mr. Aa "),
        "street-like": fill("12 Aa "),
        "unterminated PEM": "-----BEGIN PRIVATE KEY-----\n" + fill("A"),
        "password cues": fill("password= "),
    }


def summary(samples: list[float]) -> str:
    if not samples:
        return "no samples"
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered):7.1f} ms  p99 {p99:7.1f} ms  max {ordered[-1]:7.1f} ms  (n={len(ordered)})"


async def probe_health(session: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> list[float]:
    samples = []
    while not stop.is_set():
        started = time.perf_counter()
        async with session.get(url + "/healthz") as response:
            await response.read()
        samples.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.01)
    return samples


async def attack(
    session: aiohttp.ClientSession, url: str, prompts: list[str], offset: int, stop: asyncio.Event
) -> tuple[list[float], int, int]:
    samples, failed_closed, index = [], 0, offset
    while not stop.is_set():
        body = {"messages": [{"role": "user", "content": prompts[index % len(prompts)]}]}
        index += 1
        started = time.perf_counter()
        async with session.post(url + "/v1/route", json=body) as response:
            decision = await response.json()
        samples.append((time.perf_counter() - started) * 1000)
        if (decision.get("features") or {}).get("personal_data", {}).get("error") == "deadline":
            failed_closed += 1
    return samples, failed_closed, len(samples)


async def measure(url: str, seconds: float, size: int) -> None:
    prompts = hostile_prompts(size * 1024)
    async with aiohttp.ClientSession() as session:
        stop = asyncio.Event()
        baseline = asyncio.create_task(probe_health(session, url, stop))
        await asyncio.sleep(min(5.0, seconds / 4))
        stop.set()
        idle = await baseline

        stop = asyncio.Event()
        health = asyncio.create_task(probe_health(session, url, stop))
        attackers = [asyncio.create_task(attack(session, url, list(prompts.values()), i * 5, stop)) for i in range(4)]
        await asyncio.sleep(seconds)
        stop.set()
        loaded = await health
        results = await asyncio.gather(*attackers)

    routes = [sample for samples, _, _ in results for sample in samples]
    failed = sum(count for _, count, _ in results)
    total = sum(n for _, _, n in results)
    print(f"hostile prompts: {len(prompts)} kinds, {size} KB each, 4 concurrent senders, {seconds:g} s")
    print(f"/healthz idle:            {summary(idle)}")
    print(f"/healthz under attack:    {summary(loaded)}")
    print(f"/v1/route, hostile:       {summary(routes)}")
    print(f"hostile requests that failed closed (deadline): {failed} of {total}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--kb", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.yaml"
        config.write_text(CONFIG)
        port = free_port()
        serve = ["-m", "service.cli", "serve", "--config", str(config), "--port", str(port)]
        with running(serve, port=port, ready_path="/healthz", log=Path(folder) / "server.log") as server:
            asyncio.run(measure(server.url, args.seconds, args.kb))


if __name__ == "__main__":
    main()
