"""How much the gateway adds on top of its upstream.

Starts ``bench/upstream.py`` (a canned OpenAI-compatible upstream) and the
gateway in front of it, with the README's policy chain active, then:

1. latency at concurrency 1: direct and through the gateway, interleaved
   request by request so both see the same machine noise; non-streaming
   (whole response) and streaming (time to first content event);
2. throughput at concurrency 32 for a fixed time, with ``wrk`` when it is
   installed (``apt-get install wrk``) and a Python client otherwise;
3. the gateway's resident memory after the load.

Everything runs on 127.0.0.1 and stops by itself.

    python bench/gateway_overhead.py [--requests 2000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BODY = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "What is the capital of France?"}]})
STREAM_BODY = json.dumps(
    {"model": "auto", "messages": [{"role": "user", "content": "What is the capital of France?"}], "stream": True}
)
# LiteLLM proxy 1.108.7, one worker, measured on this 2-core machine class (issue #2).
LITELLM = {"added_p50_ms": 11.5, "added_p99_ms": 18.0, "rps": 67.0, "stream_rps": 35.0, "rss_mb": 450.0}

CONFIG = """
targets:
  edge: {{type: fake, reply: "edge", context_window: 8192}}
  cloud:
    type: openai
    base_url: http://127.0.0.1:{port}/v1
    model: bench-model
    context_window: 128000
    supports: {{tools: true, json_schema: true, images: true}}
policies:
  - {{type: explicit}}
  - {{type: privacy, on_personal_data: edge}}
  - {{type: context_window}}
  - {{type: capability}}
  - {{type: default, target: cloud}}
logging: {{level: WARNING}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def process(args: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{args} exited:\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{args} did not start:\n{log.read_text()}") from None
                time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed_request(conn: http.client.HTTPConnection, body: str, stream: bool) -> float:
    """Seconds to the whole answer, or to the first content event when streaming."""
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"status {response.status}: {response.read()[:300]!r}")
    if not stream:
        response.read()
        return time.perf_counter() - started
    first = None
    while line := response.readline():
        if first is None and line.startswith(b"data: {") and _has_content(line[6:]):
            first = time.perf_counter() - started
    response.read()
    assert first is not None
    return first


def _has_content(data: bytes) -> bool:
    choices = json.loads(data).get("choices") or [{}]
    return bool(choices[0].get("delta", {}).get("content"))


def latency(direct_port: int, gateway_port: int, requests: int, stream: bool) -> dict[str, dict[str, float]]:
    body = STREAM_BODY if stream else BODY
    conns = {
        "direct": http.client.HTTPConnection("127.0.0.1", direct_port),
        "gateway": http.client.HTTPConnection("127.0.0.1", gateway_port),
    }
    samples: dict[str, list[float]] = {"direct": [], "gateway": []}
    for _ in range(50):  # warm-up: connections, caches, JIT-free but lazy imports
        for conn in conns.values():
            timed_request(conn, body, stream)
    for _ in range(requests):
        for name, conn in conns.items():
            samples[name].append(timed_request(conn, body, stream) * 1000)
    out = {name: {f"p{int(q * 100)}": percentile(v, q) for q in (0.5, 0.9, 0.99)} for name, v in samples.items()}
    out["added"] = {key: out["gateway"][key] - out["direct"][key] for key in out["direct"]}
    out["gateway"]["mean"] = statistics.fmean(samples["gateway"])
    return out


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = {body}
"""


def throughput_wrk(port: int, seconds: int, body: str, workdir: Path) -> dict[str, float]:
    script = workdir / f"post-{abs(hash(body))}.lua"
    script.write_text(WRK_SCRIPT.format(body=json.dumps(body)))
    result = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", "-s", str(script), f"http://127.0.0.1:{port}/v1/chat/completions"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    out = result.stdout
    rps = float(out.split("Requests/sec:")[1].split()[0])
    errors = 0.0
    for line in out.splitlines():
        if "Non-2xx or 3xx responses" in line:
            errors += float(line.split(":")[1])
        if "Socket errors" in line:
            errors += sum(float(part.split()[1]) for part in line.split(":")[1].split(","))
    p99 = next((line.split()[1] for line in out.splitlines() if line.strip().startswith("99%")), "?")
    return {"rps": rps, "errors": errors, "p99": p99}  # type: ignore[dict-item]


def throughput_python(port: int, seconds: int, body: str, workdir: Path) -> dict[str, float]:
    """Fallback without wrk: 32 keep-alive connections from one asyncio client process."""
    code = f"""
import asyncio, json, time
async def worker(stop, counts):
    reader, writer = await asyncio.open_connection("127.0.0.1", {port})
    payload = {body!r}.encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\\r\\nhost: x\\r\\ncontent-type: application/json\\r\\n"
               b"content-length: " + str(len(payload)).encode() + b"\\r\\n\\r\\n" + payload)
    while time.monotonic() < stop:
        writer.write(request)
        head = await reader.readuntil(b"\\r\\n\\r\\n")
        status = int(head.split(b" ", 2)[1])
        length = None
        chunked = False
        for line in head.split(b"\\r\\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
            if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                chunked = True
        if chunked:
            while True:
                size = int((await reader.readuntil(b"\\r\\n")).strip(), 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            await reader.readexactly(length or 0)
        counts[0 if status == 200 else 1] += 1
async def main():
    counts = [0, 0]
    stop = time.monotonic() + {seconds}
    await asyncio.gather(*(worker(stop, counts) for _ in range(32)))
    print(json.dumps({{"rps": counts[0] / {seconds}, "errors": counts[1], "p99": "n/a"}}))
asyncio.run(main())
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per path at concurrency 1")
    parser.add_argument("--seconds", type=int, default=10, help="duration of each throughput run")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="hr-bench-"))
    upstream_port, gateway_port = free_port(), free_port()
    config = workdir / "config.yaml"
    config.write_text(CONFIG.format(port=upstream_port))
    throughput: Callable[[int, int, str, Path], dict[str, float]] = (
        throughput_wrk if shutil.which("wrk") else throughput_python
    )
    tool = "wrk -t1 -c32" if shutil.which("wrk") else "python asyncio client, 32 connections"

    with process(["bench/upstream.py", "--port", str(upstream_port)], upstream_port, workdir / "upstream.log"), \
         process(["-m", "service.cli", "serve", "--config", str(config), "--port", str(gateway_port)],
                 gateway_port, workdir / "gateway.log") as gateway:  # fmt: skip
        lat = latency(upstream_port, gateway_port, args.requests, stream=False)
        ttft = latency(upstream_port, gateway_port, args.requests, stream=True)
        rps = {
            "direct": throughput(upstream_port, args.seconds, BODY, workdir),
            "gateway": throughput(gateway_port, args.seconds, BODY, workdir),
            "gateway_stream": throughput(gateway_port, args.seconds, STREAM_BODY, workdir),
        }
        memory = rss_mb(gateway.pid)

    def row(label: str, data: dict[str, float]) -> str:
        return f"  {label:<22} p50 {data['p50']:7.3f}  p90 {data['p90']:7.3f}  p99 {data['p99']:7.3f}"

    print(f"Gateway overhead benchmark ({args.requests} interleaved requests per path, concurrency 1; ms)")
    print("non-streaming, whole response:")
    print(row("direct to upstream", lat["direct"]))
    print(row("through the gateway", lat["gateway"]))
    print(row("added by the gateway", lat["added"]))
    print("streaming, time to first token:")
    print(row("direct to upstream", ttft["direct"]))
    print(row("through the gateway", ttft["gateway"]))
    print(row("added by the gateway", ttft["added"]))
    print(f"throughput at concurrency 32 for {args.seconds}s ({tool}):")
    for name, data in rps.items():
        print(f"  {name:<22} {data['rps']:8.0f} req/s   errors {data['errors']:.0f}   p99 {data['p99']}")
    print(f"gateway resident memory after load: {memory:.0f} MB")
    print("ratios against LiteLLM proxy 1.108.7 measured on the same machine class (issue #2; higher = better):")
    print(f"  added p50:        {LITELLM['added_p50_ms'] / max(lat['added']['p50'], 1e-3):6.1f}x lower")
    print(f"  added p99:        {LITELLM['added_p99_ms'] / max(lat['added']['p99'], 1e-3):6.1f}x lower")
    print(f"  throughput:       {rps['gateway']['rps'] / LITELLM['rps']:6.1f}x higher")
    print(f"  stream throughput:{rps['gateway_stream']['rps'] / LITELLM['stream_rps']:6.1f}x higher")
    print(f"  memory:           {LITELLM['rss_mb'] / memory:6.1f}x lower")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
