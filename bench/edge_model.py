"""The local model's speed against llama.cpp on the very same GGUF.

For prompts of 16, 128 and 512 tokens, each generating exactly 128 tokens,
it measures time to first token, decode tokens/s, load time and peak
resident memory, for every ONNX precision and for llama.cpp
(llama-cpp-python) with the same thread count, in one run, and prints
ours / llama.cpp. Each engine runs in its own process, so peak memory is its
own. Every run uses a distinct prompt (a different first sentence), because
llama-cpp-python reuses the KV cache of an identical prompt prefix.

It also measures memory read bandwidth (numpy, same thread count) and reports how close each
engine's decode gets to the bandwidth bound: batch-1 decoding reads every
weight once per token (the embedding table excepted: a step gathers one row
of it), so tokens/s cannot exceed bandwidth / those bytes. The GGUF's tied
embedding is also its output matrix, so all of it counts there.

    python bench/edge_model.py [--threads 2] [--rounds 3] [--repeats 2] [--precisions int4,int8,fp32]

llama.cpp needs the bench extra, built for this CPU (see the README).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT_TOKENS = (16, 128, 512)
NEW_TOKENS = 128
FILLER = (
    "The harbour town woke slowly. Fishing boats rocked against the pier while gulls argued over scraps. "
    "A baker opened her shutters and the smell of bread drifted down the cobbled street. Children ran past "
    "the old lighthouse, whose keeper had retired years ago, and the tide pulled at the rocks below. "
    "Merchants arrived with crates of apples, copper pots and bolts of bright cloth from the cities inland. "
)


def prompts(tokenize: Any, run: int) -> dict[int, str]:
    """Texts of exactly n tokens, unique per run from the first token on."""
    out = {}
    base = f"{run * 7919 % 10007} stories begin here. " + FILLER * 40
    ids = tokenize(base)
    for n in PROMPT_TOKENS:
        out[n] = ids[:n]
    return out


def peak_rss_mb() -> float:
    # VmHWM belongs to this process's own address space. ru_maxrss does not:
    # Linux carries it over from the parent across fork and exec, so every
    # worker would report the parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def onnx_bytes_per_token(folder: Path) -> int:
    """Weight bytes one decode step reads: every initializer, except tables
    that are only gathered from (the token embedding), of which a step reads one row."""
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    consumers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    gathered_only = {"Gather", "GatherBlockQuantized"}
    return sum(
        math.prod(init.dims) * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        for init in model.graph.initializer
        if not consumers.get(init.name, gathered_only) <= gathered_only
    )


def worker_onnx(folder: str, threads: int, repeats: int) -> dict[str, Any]:
    from edge_models.runtime import EdgeModel

    started = time.perf_counter()
    model = EdgeModel.load(Path(folder), threads=threads)
    load_s = time.perf_counter() - started
    og = __import__("onnxruntime_genai")
    results: dict[int, list[tuple[float, float]]] = {n: [] for n in PROMPT_TOKENS}
    for run in range(repeats + 1):
        for n, ids in prompts(lambda text: list(model.encode(text)), run).items():
            params = og.GeneratorParams(model.model)
            params.set_search_options(max_length=n + NEW_TOKENS, min_length=n + NEW_TOKENS, do_sample=False)
            generator = og.Generator(model.model, params)
            t0 = time.perf_counter()
            generator.append_tokens(ids)
            generator.generate_next_token()
            first = time.perf_counter()
            count = 1
            while not generator.is_done():
                generator.generate_next_token()
                count += 1
            end = time.perf_counter()
            if run:  # run 0 warms caches and thread pools
                results[n].append((first - t0, (count - 1) / (end - first)))
    return {
        "load_s": load_s,
        "peak_rss_mb": peak_rss_mb(),
        "results": results,
        "weight_bytes": onnx_bytes_per_token(Path(folder)),
    }


def worker_llama(gguf: str, threads: int, repeats: int) -> dict[str, Any]:
    from llama_cpp import Llama

    started = time.perf_counter()
    llm = Llama(model_path=gguf, n_threads=threads, n_threads_batch=threads, n_ctx=2048, verbose=False)
    load_s = time.perf_counter() - started
    results: dict[int, list[tuple[float, float]]] = {n: [] for n in PROMPT_TOKENS}
    for run in range(repeats + 1):
        for n, ids in prompts(lambda text: llm.tokenize(text.encode(), add_bos=False), run).items():
            t0 = time.perf_counter()
            first = None
            count = 0
            for _ in llm.generate(ids, temp=0.0, top_k=1, reset=True, logits_processor=None):
                count += 1
                if first is None:
                    first = time.perf_counter()
                if count >= NEW_TOKENS:
                    break
            end = time.perf_counter()
            assert first is not None
            if run:
                results[n].append((first - t0, (count - 1) / (end - first)))
    return {
        "load_s": load_s,
        "peak_rss_mb": peak_rss_mb(),
        "results": results,
        "weight_bytes": Path(gguf).stat().st_size,
    }


def memory_bandwidth_gbs(threads: int) -> float:
    """Read bandwidth with as many threads as the engines use (numpy's sum
    releases the GIL), best of five passes over 512 MB: far past any cache."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    data = np.ones(512 * 1024 * 1024 // 8)
    parts = np.array_split(data, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(5):
            t0 = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = max(best, data.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def run_worker(kind: str, target: str, threads: int, repeats: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", kind, "--target", target, "--threads", str(threads),
               "--repeats", str(repeats)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="measured runs per engine per round")
    parser.add_argument("--rounds", type=int, default=3, help="turns each engine takes, interleaved")
    parser.add_argument("--precisions", default="int4,int8,fp32")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        fn = worker_onnx if args.worker == "onnx" else worker_llama
        print(json.dumps(fn(args.target, args.threads, args.repeats)))
        return

    from edge_models.build import build_model, locate_gguf
    from edge_models.catalog import DEFAULT_MODEL, DEFAULT_PRECISION, KNOWN_MODELS

    gguf = str(locate_gguf(KNOWN_MODELS[DEFAULT_MODEL]))
    targets = {
        f"onnx {precision}": ("onnx", str(build_model(DEFAULT_MODEL, precision, progress=lambda line: None).folder))  # type: ignore[arg-type]
        for precision in args.precisions.split(",")
    }
    try:
        import llama_cpp  # noqa: F401

        targets["llama.cpp Q4_1"] = ("llama", gguf)
    except ImportError:
        print("llama-cpp-python is not installed: no llama.cpp baseline (see README, 'Edge model benchmark')")
    # Engines take turns, round after round, so a slow spell on this shared
    # machine lands on all of them instead of skewing one engine's numbers.
    engines: dict[str, dict[str, Any]] = {}
    for _ in range(args.rounds):
        for name, (kind, target) in targets.items():
            data = run_worker(kind, target, args.threads, args.repeats)
            if name not in engines:
                engines[name] = data
                continue
            merged = engines[name]
            merged["load_s"] = min(merged["load_s"], data["load_s"])
            merged["peak_rss_mb"] = max(merged["peak_rss_mb"], data["peak_rss_mb"])
            for n, runs in data["results"].items():
                merged["results"][n] += runs
    bandwidth = memory_bandwidth_gbs(args.threads)

    print(f"Edge model benchmark: SmolLM2-135M-Instruct, {args.threads} threads, {NEW_TOKENS} new tokens, "
          f"median of {args.rounds} interleaved rounds x {args.repeats} runs, distinct prompts")  # fmt: skip
    print(f"memory read bandwidth (numpy, {args.threads} threads): {bandwidth:.1f} GB/s")
    header = f"{'engine':<16}{'load s':>8}{'peak MB':>9}" + "".join(
        f"{f'ttft@{n} ms':>13}{f'tok/s@{n}':>11}" for n in PROMPT_TOKENS
    ) + f"{'MB/token':>10}{'% of bound':>12}"  # fmt: skip
    print(header)
    summary: dict[str, dict[int, tuple[float, float]]] = {}
    for name, data in engines.items():
        medians = {
            int(n): (statistics.median(t for t, _ in runs) * 1000, statistics.median(r for _, r in runs))
            for n, runs in data["results"].items()
        }
        summary[name] = medians
        bound = bandwidth * 1e9 / data["weight_bytes"]
        line = f"{name:<16}{data['load_s']:>8.2f}{data['peak_rss_mb']:>9.0f}"
        line += "".join(f"{medians[n][0]:>13.1f}{medians[n][1]:>11.1f}" for n in PROMPT_TOKENS)
        line += f"{data['weight_bytes'] / 1e6:>10.0f}{medians[16][1] / bound * 100:>11.0f}%"
        print(line)
    baseline = summary.get("llama.cpp Q4_1")
    if baseline:
        print("ours / llama.cpp (decode: higher is better; time to first token: lower is better):")
        for name, medians in summary.items():
            if name.startswith("onnx"):
                parts = [f"decode@{n} {medians[n][1] / baseline[n][1]:.2f}x  ttft@{n} {medians[n][0] / baseline[n][0]:.2f}x"
                         for n in PROMPT_TOKENS]  # fmt: skip
                marker = " (default)" if name == f"onnx {DEFAULT_PRECISION}" else ""
                print(f"  {name}{marker}: " + "   ".join(parts))


if __name__ == "__main__":
    main()
