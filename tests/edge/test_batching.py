"""Continuous batching on the real edge model (edge_models/batching.py), against onnxruntime-genai's Generator."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_models.batching import BatchedEngine, BatchedRequest, Outcome
from edge_models.runtime import EdgeModel, SamplingOptions
from router.backends.edge import EdgeBackend
from router.config import OnnxTargetConfig
from tests.edge.swapping import answer, ask

QUESTIONS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "List three uses of a paperclip.",
    "Explain photosynthesis to a child.",
]
SYSTEM = "You are the support assistant of a small bank. Answer in one short sentence. " * 12


@pytest.fixture(scope="module")
def model(edge_model_dir: Path) -> EdgeModel:
    return EdgeModel.load(edge_model_dir, threads=2)


@pytest.fixture
def engine(model: EdgeModel) -> Iterator[BatchedEngine]:
    batch = BatchedEngine(
        model.folder, model.tokenizer, eos=model.eos_token_ids, context_length=model.context_length,
        vocab_size=model.vocab_size, max_batch=4, threads=2,
    )  # fmt: skip
    yield batch
    batch.close()


def prompt(model: EdgeModel, question: str, system: str | None = None) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return [int(t) for t in model.encode_chat(messages)]


@dataclass
class Answer:
    outcome: Outcome
    text: str

    def __getattr__(self, name: str) -> object:
        return getattr(self.outcome, name)


def run_all(
    engine: BatchedEngine, jobs: list[tuple[list[int], SamplingOptions]], *, logprobs: bool = False
) -> list[Any]:
    """Submit every job at once and wait for all: each answer's text and outcome."""
    texts: list[list[str]] = [[] for _ in jobs]
    outcomes: list[Outcome | None] = [None] * len(jobs)
    done = [threading.Event() for _ in jobs]
    for index, (ids, options) in enumerate(jobs):

        def on_done(outcome: Outcome, index: int = index) -> None:
            outcomes[index] = outcome
            done[index].set()

        engine.submit(BatchedRequest(ids, options, texts[index].append, on_done, logprobs=logprobs))
    for event in done:
        assert event.wait(120)
    return [Answer(o, "".join(pieces)) for o, pieces in zip(outcomes, texts, strict=True) if o is not None]


def reference(model: EdgeModel, ids: list[int], options: SamplingOptions) -> tuple[str, list[float]]:
    import numpy as np

    generation = model.generate(np.asarray(ids, np.int32), options, logprobs=True)
    return "".join(generation), list(generation.token_logprobs or [])


def test_four_requests_in_one_batch_answer_as_each_would_alone(model: EdgeModel, engine: BatchedEngine) -> None:
    greedy = SamplingOptions(40)
    jobs = [(prompt(model, q), greedy) for q in QUESTIONS]

    outcomes = run_all(engine, jobs, logprobs=True)

    for (ids, _), outcome in zip(jobs, outcomes, strict=True):
        text, logprobs = reference(model, ids, greedy)
        # A batch of four runs other matrix kernels than one row does: the logits agree to float noise, so a
        # greedy answer may part from the lone one where two tokens nearly tie, but not at its start.
        assert outcome.text[:12] == text[:12]
        assert outcome.token_logprobs[:2] == pytest.approx(logprobs[:2], abs=1e-2)
        assert outcome.prompt_tokens == len(ids) and outcome.completion_tokens <= 40
    assert engine.steps < sum(o.completion_tokens for o in outcomes)  # rows shared decode steps


def test_a_request_alone_answers_exactly_as_the_generator(model: EdgeModel, engine: BatchedEngine) -> None:
    greedy = SamplingOptions(40)
    for question in QUESTIONS[:2]:
        ids = prompt(model, question)
        alone = run_all(engine, [(ids, greedy)], logprobs=True)[0]
        text, logprobs = reference(model, ids, greedy)
        assert alone.text == text
        assert alone.token_logprobs == pytest.approx(logprobs, abs=1e-3)


def test_requests_join_a_running_batch_and_leave_it(model: EdgeModel, engine: BatchedEngine) -> None:
    long, short = SamplingOptions(60), SamplingOptions(5)
    first = run_all(engine, [(prompt(model, QUESTIONS[1]), long), (prompt(model, QUESTIONS[2]), short)])
    assert [o.finish_reason for o in first] == ["length", "length"]
    assert [o.completion_tokens for o in first] == [60, 5]
    assert first[0].text[:12] == reference(model, prompt(model, QUESTIONS[1]), long)[0][:12]


def test_each_request_keeps_its_own_stop_sequences_budget_and_seed(model: EdgeModel, engine: BatchedEngine) -> None:
    ids = prompt(model, QUESTIONS[0])
    seeded = SamplingOptions(24, temperature=0.8, top_p=0.9, seed=7)
    alone = run_all(engine, [(prompt(model, QUESTIONS[1]), seeded)])[0]
    together = run_all(
        engine,
        [(ids, SamplingOptions(30, stop=["Paris"])), (prompt(model, QUESTIONS[1]), seeded), (ids, SamplingOptions(3))],
    )
    stopped, sampled, short = together
    assert (stopped.finish_reason, stopped.text) == ("stop", "The capital of France is ")
    # The same seed draws the same numbers: alone, the same answer; in a batch, logits that differ by float
    # noise may tip a draw later on, but not the start.
    assert run_all(engine, [(prompt(model, QUESTIONS[1]), seeded)])[0].text == alone.text
    assert sampled.text[:12] == alone.text[:12]
    assert (short.finish_reason, short.completion_tokens) == ("length", 3)
    other_seed = run_all(
        engine, [(prompt(model, QUESTIONS[1]), SamplingOptions(24, temperature=0.8, top_p=0.9, seed=8))]
    )[0]
    assert other_seed.text != alone.text


def test_a_cancelled_request_leaves_within_a_step_and_the_others_go_on(model: EdgeModel, engine: BatchedEngine) -> None:
    cancel = threading.Event()
    pieces: list[str] = []
    ended = threading.Event()
    outcome: list[Outcome] = []

    def on_piece(text: str) -> None:
        pieces.append(text)
        if len(pieces) == 3:
            cancel.set()

    def on_done(result: Outcome) -> None:
        outcome.append(result)
        ended.set()

    engine.submit(BatchedRequest(prompt(model, QUESTIONS[3]), SamplingOptions(200), on_piece, on_done, cancel=cancel))
    other = run_all(engine, [(prompt(model, QUESTIONS[1]), SamplingOptions(30))])[0]
    assert ended.wait(30)
    assert outcome[0].cancelled and outcome[0].finish_reason is None
    assert outcome[0].completion_tokens <= 5
    assert (other.finish_reason, other.completion_tokens) == ("length", 30)


def test_a_shared_system_prompt_is_prefilled_once(model: EdgeModel, engine: BatchedEngine) -> None:
    greedy = SamplingOptions(12)
    first_ids, second_ids = prompt(model, "How do I open an account?", SYSTEM), prompt(model, "Hello", SYSTEM)
    first = run_all(engine, [(first_ids, greedy)])[0]
    second = run_all(engine, [(second_ids, greedy)])[0]

    shared = next(i for i, (a, b) in enumerate(zip(first_ids, second_ids, strict=False)) if a != b)
    assert first.cached_prompt_tokens == 0
    assert second.cached_prompt_tokens == shared > 150
    assert second.text == reference(model, second_ids, greedy)[0]
    # A conversation's next turn reuses the earlier turns, the answer included.
    turn = prompt(model, "Hello", SYSTEM)
    third = run_all(engine, [(turn, greedy)])[0]
    assert third.cached_prompt_tokens == len(turn) - 2


async def test_the_edge_target_serves_through_the_batch(edge_model_dir: Path) -> None:
    config = OnnxTargetConfig.model_validate({"type": "onnx", "model": str(edge_model_dir), "threads": 2})
    edge = EdgeBackend("edge", config)
    await edge.start()
    try:
        results = await asyncio.gather(*(edge.complete(ask(q, max_tokens=24, temperature=0)) for q in QUESTIONS))
        assert "Paris" in answer(results[0])
        assert edge.max_concurrency == 8
        stats = edge.stats()
        assert {"batch_size", "prefix_cached_tokens"} <= set(stats)
        chunks = [chunk async for chunk in edge.stream(ask(QUESTIONS[0], max_tokens=24, temperature=0))]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text == answer(results[0])
        assert chunks[-1]["usage"]["completion_tokens"] == results[0].usage.completion_tokens
    finally:
        await edge.aclose()
