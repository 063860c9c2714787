"""The whole distillation loop, through the gateway, on Banking77: capture -> train -> eval -> promote -> serve.

The application's prompt: a system prompt naming the task and the 77 intent
labels, the customer's message as the user turn, the label as the answer; the
requests carry ``x-task: banking77``. The cloud is a local emulator of OpenAI's
chat API that answers with the dataset's own label: **a perfect teacher**, so
the teacher's accuracy is 100% and the clients' accuracy is measured against it.

Data: ``../shared/data/banking77/train.csv`` (CC-BY-4.0). The official test split
is kept back; the validation split is the gateway's own permanent holdout
(a fixed 10% slice of prompt-hash space, ``edge_models/distill/rows.py``), which
the capture store flags and training never sees.

Steps, each timed on this machine:

1. **capture**: every training-split row is sent through the gateway (capture
   on); the base model is not competent, so the cloud answers and the store
   keeps the answers;
2. **train**: ``hybrid-router distill train`` on the capture folder while a
   light stream of requests keeps flowing through the gateway (p99 latency
   of those, against the same stream before training);
3. **eval**: ``hybrid-router distill eval`` on the holdout, candidate against the
   base model (the paired test and the guards decide), gate calibrated;
4. **promote**: ``hybrid-router distill promote``; the gateway swaps the model live;
5. **serve**: the other half of the validation split, never sent before (the
   student was judged and its gate calibrated on the captured half): the
   route's cloud share, the edge's accuracy on what it kept, and the accuracy
   of what clients got.

    python bench/distill_banking77.py [--time-budget 35m] [--work DIR]
    python bench/distill_banking77.py --curve [--plot docs/distill_banking77_curve.png]

``--curve`` trains on 250, 500, 1,000, 2,000 and 4,000 captured rows and scores
each student on the holdout, for the README's learning curve.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from edge_models.distill.rows import is_holdout  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "banking77"
TASK = "banking77"
CURVE_ROWS = (250, 500, 1000, 2000, 4000)


def system_prompt(labels: Sequence[str]) -> str:
    return (
        "You are the intent classifier of a bank's customer-service assistant. Read the customer's message "
        "and answer with exactly one intent label from this list, and nothing else:\n" + "\n".join(labels)
    )


def load_rows() -> tuple[str, list[tuple[str, str]]]:
    labels = json.loads((DATA / "categories.json").read_text())
    with (DATA / "train.csv").open() as handle:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(handle)]
    return system_prompt(labels), rows


def messages_for(system: str, text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


# -- the teacher: an OpenAI-format emulator answering with the dataset's label ---------------------


def run_teacher(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    _, rows = load_rows()
    answers = dict(rows)

    async def chat(request: Request) -> Response:
        body = await request.json()
        user = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        label = answers.get(user, "unknown")
        created = int(time.time())
        usage = {"prompt_tokens": 600, "completion_tokens": 4, "total_tokens": 604}
        if body.get("stream"):

            async def events() -> Any:
                base = {"id": "chatcmpl-teacher", "object": "chat.completion.chunk", "created": created,
                        "model": "teacher"}  # fmt: skip
                first = {"index": 0, "delta": {"role": "assistant", "content": label}, "finish_reason": None}
                yield f"data: {json.dumps({**base, 'choices': [first]})}\n\n"
                last = {"index": 0, "delta": {}, "finish_reason": "stop"}
                yield f"data: {json.dumps({**base, 'choices': [last]})}\n\n"
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        message = {"role": "assistant", "content": label}
        return JSONResponse({"id": "chatcmpl-teacher", "object": "chat.completion", "created": created,
                             "model": "teacher", "usage": usage,
                             "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})  # fmt: skip

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# -- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def gateway_config(work: Path, port: int, teacher_port: int) -> Path:
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "targets": {
            "edge": {"type": "onnx", "distilled": True, "registry": str(work / "registry"), "registry_poll_s": 1.0},
            "cloud": {
                "type": "openai",
                "base_url": f"http://127.0.0.1:{teacher_port}/v1",
                "model": "teacher",
                "price_per_mtok": {"input": 0.15, "output": 0.60},
            },
        },
        "policies": [
            {"type": "explicit"},
            # No privacy policy here: Banking77 has no personal data to keep local, and its
            # fail-closed classifier deadline, missed under this load on 2 cores, would send
            # requests to the base edge model, whose generation then starves the classifier.
            {"type": "distilled", "shadow_rate": 0.05},
            {"type": "default", "target": "cloud"},
        ],
        "distill": {"capture": {"enabled": True, "dir": str(work / "data"), "tasks": [TASK]}},
    }
    path = work / "gateway.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def hybrid_router(*args: str, log: Path | None = None) -> float:
    """Run the CLI; its wall time in seconds."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "service.cli", *args]
    out = log.open("w") if log else None
    try:
        subprocess.run(command, cwd=ROOT, check=True, stdout=out, stderr=subprocess.STDOUT if out else None)
    finally:
        if out:
            out.close()
    return time.perf_counter() - started


# -- traffic -------------------------------------------------------------------------------------


async def send_all(url: str, system: str, rows: Sequence[tuple[str, str]], concurrency: int) -> list[dict[str, Any]]:
    """Every row through the gateway; per row: label, answer, target, escalated, latency."""
    results: list[dict[str, Any]] = [{} for _ in rows]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(rows)):
        queue.put_nowait(index)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                text, label = rows[index]
                results[index] = await one(client, system, text, label)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def one(client: httpx.AsyncClient, system: str, text: str, label: str) -> dict[str, Any]:
    body = {"model": "auto", "messages": messages_for(system, text), "max_tokens": 24, "temperature": 0}
    started = time.perf_counter()
    response = await client.post("/v1/chat/completions", json=body, headers={"x-task": TASK})
    latency = time.perf_counter() - started
    if response.status_code != 200:
        return {"label": label, "answer": None, "target": None, "status": response.status_code, "latency_s": latency}
    answer = response.json()["choices"][0]["message"]["content"] or ""
    return {
        "label": label,
        "answer": answer.strip(),
        "target": response.headers.get("x-route-target"),
        "escalated": response.headers.get("x-route-cascade", "").startswith("escalated"),
        "status": 200,
        "latency_s": latency,
    }


class Trickle:
    """A light, steady stream of holdout requests (one at a time) while something else runs."""

    def __init__(self, url: str, system: str, rows: Sequence[tuple[str, str]]) -> None:
        self.url, self.system, self.rows = url, system, list(rows)
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def loop() -> None:
            async with httpx.AsyncClient(base_url=self.url, timeout=120) as client:
                index = 0
                while not self.stop.is_set():
                    text, label = self.rows[index % len(self.rows)]
                    index += 1
                    result = await one(client, self.system, text, label)
                    if result["status"] == 200:
                        self.latencies.append(result["latency_s"])
                    await asyncio.sleep(0.5)

        asyncio.run(loop())

    def __enter__(self) -> Trickle:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=150)


def p(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summarise(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in results if r.get("status") == 200]
    edge = [r for r in ok if r["target"] == "edge"]
    right = sum(r["answer"] == r["label"] for r in ok)
    return {
        "requests": len(results),
        "answered": len(ok),
        "cloud_share": round(1 - len(edge) / max(1, len(ok)), 4),
        "edge_kept": len(edge),
        "edge_kept_accuracy": round(sum(r["answer"] == r["label"] for r in edge) / max(1, len(edge)), 4),
        "client_accuracy": round(right / max(1, len(results)), 4),
        "latency_p50_ms": round(p([r["latency_s"] for r in ok], 0.5) * 1000, 1),
        "latency_p99_ms": round(p([r["latency_s"] for r in ok], 0.99) * 1000, 1),
    }


# -- the loop ------------------------------------------------------------------------------------


def run_loop(args: argparse.Namespace) -> dict[str, Any]:
    system, rows = load_rows()
    held = [is_holdout(messages_for(system, text)) for text, _ in rows]
    train = [row for row, out in zip(rows, held, strict=True) if not out]
    holdout = [row for row, out in zip(rows, held, strict=True) if out]
    random.Random(0).shuffle(holdout)
    if args.smoke:
        # A plumbing check: few rows, a short training, no targets to meet.
        train, holdout = train[: args.smoke], holdout[: max(80, args.smoke // 2)]
    # Half the validation split is application traffic before training (captured: the holdout the
    # student is judged and its gate calibrated on); the other half is sent only after promotion,
    # so the served numbers are measured on messages nothing was fitted or calibrated to.
    holdout, fresh = holdout[: len(holdout) // 2], holdout[len(holdout) // 2 :]
    work = Path(args.work or tempfile.mkdtemp(prefix="distill-b77-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"train_rows_sent": len(train), "holdout_rows_captured": len(holdout),
                              "fresh_rows": len(fresh), "teacher": "perfect (label)"}  # fmt: skip
    teacher_port, port = free_port(), free_port()
    teacher = subprocess.Popen([sys.executable, __file__, "--teacher", str(teacher_port)], cwd=ROOT)
    config = gateway_config(work, port, teacher_port)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    gateway_log = (work / "gateway.log").open("w")
    gateway = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--config", str(config)], cwd=ROOT,
                               env=env, stdout=gateway_log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    steps: dict[str, float] = {}
    try:
        wait_ready(url + "/readyz")
        probe = holdout[: args.probe_rows]

        print(f"[0] before: {len(probe)} holdout rows through the gateway (base model)", flush=True)
        before = asyncio.run(send_all(url, system, probe, args.concurrency))
        report["before"] = summarise(before)
        t = time.perf_counter()
        # All the traffic, as an application would send it: the store flags the holdout slice itself.
        traffic = train + holdout
        random.Random(1).shuffle(traffic)
        print(f"[1] capture: {len(traffic)} rows through the gateway", flush=True)
        asyncio.run(send_all(url, system, traffic, args.concurrency))
        steps["capture"] = time.perf_counter() - t
        hybrid_router("distill", "data", "stats", "--dir", str(work / "data"), "--json", log=work / "stats.json")

        print("[2] train (with a trickle of requests through the gateway)", flush=True)
        with Trickle(url, system, probe) as quiet:
            time.sleep(15)
        with Trickle(url, system, probe) as busy:
            steps["train"] = hybrid_router(
                "distill", "train", "--data", str(work / "data"), "--registry", str(work / "registry"),
                "--time-budget", args.time_budget, "--epochs", str(args.epochs),
                "--snapshot-rows", *map(str, CURVE_ROWS),
                *(["--max-rows", str(args.max_rows)] if args.max_rows else []),
            )  # fmt: skip
        report["latency_while_training"] = {
            "before_p50_ms": round(p(quiet.latencies, 0.5) * 1000, 1),
            "before_p99_ms": round(p(quiet.latencies, 0.99) * 1000, 1),
            "during_p50_ms": round(p(busy.latencies, 0.5) * 1000, 1),
            "during_p99_ms": round(p(busy.latencies, 0.99) * 1000, 1),
            "requests_during": len(busy.latencies),
        }
        candidate = work / "registry" / "v1"

        print("[3] eval: candidate against the base model on the holdout", flush=True)
        eval_json = work / "eval.json"
        steps["eval"] = hybrid_router("distill", "eval", "--model", str(candidate), "--data", str(work / "data"),
                                      "--compare", "base", "--record", "--compare-rows", str(args.compare_rows),
                                      "--target-accuracy", str(args.gate_target),
                                      "--out", str(eval_json), log=work / "eval.log")  # fmt: skip
        report["eval"] = json.loads(eval_json.read_text())
        manifest = json.loads((candidate / "distill.json").read_text())
        report["student"] = {"holdout_exact_match": manifest["metrics"]["holdout"]["exact_match"],
                             "holdout_rows": manifest["metrics"]["holdout"]["rows"],
                             "base_exact_match_paired": manifest["metrics"]["current"]["exact_match"],
                             "gate": manifest["gate"], "training": manifest["training"],
                             "seconds": manifest["seconds"]}  # fmt: skip

        print("[4] promote", flush=True)
        t = time.perf_counter()
        # The judgement refuses a student that forgets general chat (the guards); --force-promote
        # serves it anyway, to measure the routing half of the loop, and the report says so.
        forced = not report["eval"]["promotable"]
        report["promotion"] = "forced past a refusal" if forced else "promotable"
        if forced and not (args.force_promote or args.smoke):
            print(f"not promotable, stopping (use --force-promote to go on): {report['eval']['reason']}", flush=True)
            return _finish(report, steps, started, work)
        hybrid_router(
            "distill", "promote", "v1", "--registry", str(work / "registry"), *(["--force"] if forced else [])
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            models = httpx.get(url + "/v1/models").json()["data"]
            if any(m.get("version") == "v1" for m in models):
                break
            time.sleep(0.5)
        steps["promote"] = time.perf_counter() - t

        print(f"[5] serve: {len(fresh)} validation rows never sent before, through the gateway", flush=True)
        t = time.perf_counter()
        after = asyncio.run(send_all(url, system, fresh, args.concurrency))
        steps["serve"] = time.perf_counter() - t
        report["after"] = summarise(after)
        report["metrics"] = [
            line for line in httpx.get(url + "/metrics").text.splitlines() if line.startswith("hybrid_router_distill")
        ]
    finally:
        gateway.terminate()
        teacher.terminate()
        gateway.wait(timeout=30)
        teacher.wait(timeout=30)
        gateway_log.close()
    _finish(report, steps, started, work)
    if not args.no_curve:
        report["curve"] = curve_from_snapshots(work / "registry" / "v1", args.eval_rows)
        if args.plot:
            plot(report["curve"], Path(args.plot))
    return report


def _finish(report: dict[str, Any], steps: dict[str, float], started: float, work: Path) -> dict[str, Any]:
    steps["total"] = time.perf_counter() - started
    report["seconds"] = {k: round(v, 1) for k, v in steps.items()}
    report["work"] = str(work)
    return report


# -- the curve -----------------------------------------------------------------------------------


def curve_from_snapshots(student: Path, eval_rows: int) -> list[dict[str, Any]]:
    """Holdout accuracy of the adapter saved after 250, 500, ... rows of the loop's own training run.

    Each snapshot is merged into the base model and scored greedily with torch
    (fp32) on the first ``eval_rows`` holdout rows, through the same prompt
    aliases the student is served with. The learning rate had not decayed at
    the early snapshots, so they understate a run that stops there.
    """
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edge_models.distill.manifest import StudentManifest
    from edge_models.distill.pipeline import base_hf_folder
    from edge_models.distill.prefix import student_messages
    from edge_models.distill.train import LORA_TARGETS, TrainOptions

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    manifest = StudentManifest.load(student)
    options = TrainOptions(data=[], base_hf=Path(), work=Path())
    system, rows = load_rows()
    holdout = [(t, lab) for t, lab in rows if is_holdout(messages_for(system, t))][:eval_rows]
    hf = base_hf_folder()
    tokenizer = AutoTokenizer.from_pretrained(hf)
    points = []
    snapshots = sorted((student / "snapshots").glob("rows-*.pt"), key=lambda f: int(f.stem.split("-")[1]))
    for snapshot in snapshots:
        base = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
        config = LoraConfig(r=options.lora_rank, lora_alpha=options.lora_alpha, target_modules=list(LORA_TARGETS),
                            task_type="CAUSAL_LM")  # fmt: skip
        model = get_peft_model(base, config)
        set_peft_model_state_dict(model, torch.load(snapshot, weights_only=True))
        model = model.merge_and_unload().eval()
        right = 0
        with torch.inference_mode():
            for text, label in holdout:
                messages = student_messages(messages_for(system, text), manifest.prompt_aliases)
                ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True)  # fmt: skip
                out = model.generate(**ids, max_new_tokens=24, do_sample=False)
                answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
                right += answer.strip() == label
        points.append({"rows": int(snapshot.stem.split("-")[1]), "accuracy": round(right / len(holdout), 4)})
        print(json.dumps(points[-1]), flush=True)
    return points


def plot(points: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.6), dpi=120)
    axis.plot([pt["rows"] for pt in points], [100 * pt["accuracy"] for pt in points], marker="o")
    axis.set_xscale("log")
    axis.set_xticks([pt["rows"] for pt in points], [f"{pt['rows']:,}" for pt in points])
    axis.minorticks_off()
    axis.set_xlabel("training rows (captured cloud answers)")
    axis.set_ylabel("exact-match accuracy on the holdout (%)")
    axis.set_ylim(0, 100)
    axis.grid(alpha=0.3)
    axis.set_title("SmolLM2-135M distilled on Banking77 (77 intents), CPU, LoRA")
    figure.tight_layout()
    figure.savefig(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help="keep everything here (default: a temporary folder)")
    parser.add_argument("--time-budget", default="42m")
    parser.add_argument("--max-rows", type=int)
    # Two at a time: more saturates the 2 cores, the classifier misses its deadline and capture refuses
    # the request as possibly personal (fail closed).
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--probe-rows", type=int, default=200, help="holdout rows sent before training")
    parser.add_argument("--epochs", type=float, default=1.5, help="passes over the captured rows, within the budget")
    parser.add_argument("--smoke", type=int, help="only this many training rows: a quick plumbing check")
    parser.add_argument(
        "--force-promote", action="store_true", help="serve the student even if its judgement refused it"
    )
    parser.add_argument("--no-curve", action="store_true", help="skip the learning curve from the run's snapshots")
    parser.add_argument("--compare-rows", type=int, default=200, help="holdout rows of the paired test vs base")
    parser.add_argument("--gate-target", type=float, default=0.97,
                        help="the route accuracy (edge kept + cloud for the rest) the gate is calibrated to keep")  # fmt: skip
    parser.add_argument("--eval-rows", type=int, default=300, help="holdout rows each curve point is scored on")
    parser.add_argument("--plot")
    parser.add_argument("--out", help="write the report JSON here too")
    args = parser.parse_args()
    if args.teacher:
        run_teacher(args.teacher)
        return 0
    report = run_loop(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
