"""Our provider adapters against the providers' official SDKs, on the same emulators.

Issue #5 asks for plain HTTP plus each provider's auth helper in the request
path unless the full SDK measures as fast. This runs the OpenAI and Anthropic
emulators of ``tests/emulators`` on loopback and, in one process, alternates
requests (concurrency 1) between our adapter and the official SDK's async
client, non-streamed and streamed (a stream is read to its end), reporting
wall-clock p50 / p99 and the client CPU time per request (the part the
gateway would pay on every call).

    python bench/provider_adapters.py [--requests 500]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway_overhead import free_port, percentile, process  # noqa: E402

KEY = "bench-key"
QUESTION = "What is the capital of France?"


async def drain(stream: Any) -> None:
    """Read a stream to its end, whichever client's it is."""
    async for _ in await stream if isinstance(stream, Awaitable) else stream:
        pass


async def measure(calls: dict[str, Callable[[], Awaitable[Any]]], requests: int) -> dict[str, dict[str, float]]:
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    for index in range(requests + 50):
        for name, call in calls.items():
            wall, cpu = time.perf_counter(), time.process_time()
            await call()
            if index >= 50:  # warm-up: connections, lazy imports
                samples[name].append(((time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000))
    return {
        name: {
            "p50": percentile([w for w, _ in rows], 0.5),
            "p99": percentile([w for w, _ in rows], 0.99),
            "cpu": sum(c for _, c in rows) / len(rows),
        }
        for name, rows in samples.items()
    }


async def openai_pair(port: int, requests: int) -> dict[str, dict[str, float]]:
    import openai

    from router.backends.openai_compat import OpenAIBackend
    from router.chat import ChatRequest
    from router.config import OpenAITargetConfig

    config = OpenAITargetConfig(type="openai", base_url=f"http://127.0.0.1:{port}/v1", model="gpt-4o-mini",
                                api_key_env="BENCH_KEY")  # fmt: skip
    ours = OpenAIBackend("cloud", config, environ={"BENCH_KEY": KEY})
    await ours.start()
    sdk = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": QUESTION}]})
    messages: Any = [{"role": "user", "content": QUESTION}]
    options: Any = {"include_usage": True}
    try:
        return await measure(
            {
                "ours (aiohttp)": lambda: ours.complete(request),
                "openai SDK": lambda: sdk.chat.completions.create(model="gpt-4o-mini", messages=messages),
                "ours, streamed": lambda: drain(ours.stream(request)),
                "openai SDK, streamed": lambda: drain(
                    sdk.chat.completions.create(
                        model="gpt-4o-mini", messages=messages, stream=True, stream_options=options
                    )
                ),
            },
            requests,
        )
    finally:
        await ours.aclose()
        await sdk.close()


async def anthropic_pair(port: int, requests: int) -> dict[str, dict[str, float]]:
    import anthropic

    from router.backends.anthropic import AnthropicBackend
    from router.chat import ChatRequest
    from router.config import AnthropicTargetConfig

    config = AnthropicTargetConfig(type="anthropic", base_url=f"http://127.0.0.1:{port}", model="claude-sonnet-4-6",
                                   api_key_env="BENCH_KEY")  # fmt: skip
    ours = AnthropicBackend("claude", config, environ={"BENCH_KEY": KEY})
    await ours.start()
    sdk = anthropic.AsyncAnthropic(base_url=f"http://127.0.0.1:{port}", api_key=KEY, max_retries=0)
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 64})
    messages: Any = [{"role": "user", "content": QUESTION}]
    try:
        return await measure(
            {
                "ours (aiohttp)": lambda: ours.complete(request),
                "anthropic SDK": lambda: sdk.messages.create(
                    model="claude-sonnet-4-6", max_tokens=64, messages=messages
                ),
                "ours, streamed": lambda: drain(ours.stream(request)),
                "anthropic SDK, streamed": lambda: drain(
                    sdk.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=messages, stream=True)
                ),
            },
            requests,
        )
    finally:
        await ours.aclose()
        await sdk.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per client, interleaved")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="hr-bench-"))
    print(f"Provider adapters vs official SDKs ({args.requests} interleaved requests each, concurrency 1)")
    print(f"{'client':<26}{'p50 ms':>9}{'p99 ms':>9}{'client CPU ms/request':>24}")
    for module, pair in (("openai_server", openai_pair), ("anthropic_server", anthropic_pair)):
        port = free_port()
        command = ["-m", f"tests.emulators.{module}", "--port", str(port), "--api-key", KEY]
        with process(command, port, workdir / f"{module}.log"):
            results = asyncio.run(pair(port, args.requests))
        ours, sdk, ours_streamed, sdk_streamed = results.values()
        for name, data in results.items():
            print(f"{name:<26}{data['p50']:>9.3f}{data['p99']:>9.3f}{data['cpu']:>24.3f}")
        print(f"  SDK / ours: p50 {sdk['p50'] / ours['p50']:.2f}x, CPU {sdk['cpu'] / ours['cpu']:.2f}x; streamed: "
              f"p50 {sdk_streamed['p50'] / ours_streamed['p50']:.2f}x, "
              f"CPU {sdk_streamed['cpu'] / ours_streamed['cpu']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
