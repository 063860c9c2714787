"""A trickle of chat requests for the ``demo`` profile, so the Grafana dashboard has something to show.

Standard library only. It cycles through prompts that the default policies
send different ways: easy ones (edge), hard ones (the difficulty policy may
pick the cloud), one with personal data (kept on the edge), one pinned to
the cloud, and one that streams; every third request streams.

    python deploy/compose/demo_traffic.py --base-url http://127.0.0.1:8080/v1 --every-s 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sys
import time
import urllib.error
import urllib.request
from typing import Any

PROMPTS: list[dict[str, Any]] = [
    {"content": "What is the capital of France?"},
    {"content": "Prove that there are infinitely many primes, then extend the proof to primes of the form 4k+3."},
    {"content": "Say hello in Spanish."},
    {"content": "My email is jo@example.com, please write me a two-line reminder to renew my passport."},
    {"content": "Summarise the causes of the 2008 financial crisis in three bullet points.", "model": "cloud"},
    {"content": "Write a Python function that merges two sorted lists, with a docstring and tests."},
]


def send(base_url: str, key: str, prompt: dict[str, Any], *, stream: bool, timeout: float) -> str:
    """One chat request; returns the ``x-route-target`` header and the reason, or the error."""
    body = {"model": prompt.get("model", "auto"), "max_tokens": 48, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": prompt["content"]}]}  # fmt: skip
    if stream:
        body["stream_options"] = {"include_usage": True}
    request = urllib.request.Request(
        base_url.rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()  # a stream too: read to its [DONE]
            route = f"{response.headers.get('x-route-target')}: {response.headers.get('x-route-reason')}"
            return f"{response.status} {route}"
    except urllib.error.HTTPError as exc:
        return f"{exc.code} {exc.read()[:200].decode(errors='replace')}"
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        return f"no answer: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--api-key", default="unused", help="a client key, where the gateway requires one")
    parser.add_argument("--every-s", type=float, default=3.0, help="pause between requests")
    parser.add_argument("--count", type=int, default=0, help="stop after this many requests; 0: run until stopped")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    for n in itertools.count(1):
        prompt = PROMPTS[(n - 1) % len(PROMPTS)]
        print(send(args.base_url, args.api_key, prompt, stream=n % 3 == 0, timeout=args.timeout_s), flush=True)
        if args.count and n >= args.count:
            return 0
        time.sleep(args.every_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
