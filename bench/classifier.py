"""Routing decision latency: classifier plus policies, per prompt size.

Builds the gateway's router from a config with every classifier feature on
(personal data, language, semantic routes, the difficulty head) and the
policy chain of the README, then times ``Router.decide`` for prompts of
about 16, 128, 512 and 2,000 tokens, each request a different text. It runs
once with the shipped static encoder and once with the full MiniLM encoder,
in the same process, and prints p50 / p99 in milliseconds.

    python bench/classifier.py [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = (16, 128, 512, 2000)
WORDS = [
    "the",
    "quarterly",
    "report",
    "covers",
    "revenue",
    "costs",
    "hiring",
    "plans",
    "for",
    "next",
    "year",
    "while",
    "engineering",
    "teams",
    "migrate",
    "services",
    "to",
    "new",
    "clusters",
    "and",
    "finance",
    "reviews",
    "vendor",
    "contracts",
    "sales",
    "expects",
    "growth",
    "in",
    "europe",
    "and",
    "asia",
    "please",
    "summarise",
    "risks",
    "explain",
    "trade",
    "offs",
    "compute",
    "totals",
    "and",
    "draft",
    "an",
    "email",
    "to",
    "the",
    "board",
    "with",
    "numbers",
]


def prompt(tokens: int, rng: random.Random) -> str:
    # About 1.3 words per token for English prose; a name and a number keep the detector honest.
    words = [rng.choice(WORDS) for _ in range(int(tokens / 1.3))]
    words.insert(rng.randrange(len(words) + 1), f"ticket {rng.randrange(10**6)}")
    return " ".join(words).capitalize() + "?"


def settings(encoder: str) -> Any:
    from service.settings import Settings

    return Settings(
        targets={
            "edge": {"type": "fake", "context_window": 8192},
            "cloud": {"type": "fake", "local": False, "supports": {"tools": True, "json_schema": True, "images": True}},
        },
        policies=[
            {"type": "explicit"},
            {"type": "privacy", "on_personal_data": "edge"},
            {"type": "context_window"},
            {"type": "capability"},
            {"type": "semantic", "routes": {"coding": "cloud", "chitchat": "edge"}},
            {"type": "difficulty", "threshold": 0.3},
            {"type": "default", "target": "edge"},
        ],
        classifier={
            "encoder": encoder,
            "deadline_ms": 1000,
            "detect_language": True,
            "routes": [
                {"name": "coding", "examples": ["Fix this Python bug", "Write a SQL query", "Refactor my function"]},
                {"name": "chitchat", "examples": ["Hi there!", "How are you?", "Tell me a joke"]},
            ],
        },
    )


async def measure(encoder: str, requests: int) -> dict[int, list[float]]:
    from router.chat import ChatRequest
    from service.gateway import Gateway

    gateway = Gateway.from_settings(settings(encoder))
    await gateway.start()
    rng = random.Random(7)
    out: dict[int, list[float]] = {}
    try:
        for size in SIZES:
            texts = [prompt(size, rng) for _ in range(requests + 20)]
            samples = []
            for index, text in enumerate(texts):
                request = ChatRequest.model_validate({"messages": [{"role": "user", "content": text}]})
                started = time.perf_counter()
                decision = await gateway.router.decide(request)
                elapsed = (time.perf_counter() - started) * 1000
                assert decision.target is not None and decision.features is not None
                assert not decision.features.notes, decision.features.notes
                if index >= 20:  # warm-up
                    samples.append(elapsed)
            out[size] = samples
    finally:
        await gateway.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    print(f"Routing decision latency (classifier + 7 policies), {args.requests} distinct requests per size, ms")
    print(f"{'encoder':<10}" + "".join(f"{f'p50@{n}':>10}{f'p99@{n}':>10}" for n in SIZES))
    for encoder in ("static", "minilm"):
        results = asyncio.run(measure(encoder, args.requests))
        row = f"{encoder:<10}"
        for size in SIZES:
            ordered = sorted(results[size])
            row += f"{statistics.median(ordered):>10.2f}{ordered[int(len(ordered) * 0.99)]:>10.2f}"
        print(row)
    print("budget for prompts up to 512 tokens: p50 <= 5 ms, p99 <= 15 ms")


if __name__ == "__main__":
    main()
