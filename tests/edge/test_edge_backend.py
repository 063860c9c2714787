"""The edge target with the real ONNX model (built by `make setup`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_models.runtime import EdgeModel
from router.backends.edge import EdgeBackend
from router.chat import ChatRequest
from router.config import OnnxTargetConfig
from router.errors import BackendBusy, ConfigError, ContextLengthExceeded

pytestmark = pytest.mark.model


@pytest.fixture(scope="session")
def shared_model(edge_model_dir: Path) -> EdgeModel:
    return EdgeModel.load(edge_model_dir, threads=2)


@pytest.fixture
async def edge(shared_model: EdgeModel, edge_model_dir: Path) -> AsyncIterator[EdgeBackend]:
    backend = make_backend(shared_model, edge_model_dir)
    await backend.start()
    yield backend
    await backend.aclose()


def make_backend(model: EdgeModel, folder: Path, **config: object) -> EdgeBackend:
    cfg = OnnxTargetConfig.model_validate({"type": "onnx", "model": str(folder), **config})
    return EdgeBackend("edge", cfg, loader=lambda _folder, _threads: model)


def ask(content: str, **extra: object) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": content}], **extra})


async def test_greedy_answer_is_deterministic_and_right(edge: EdgeBackend) -> None:
    first = await edge.complete(ask("What is the capital of France?", temperature=0))
    second = await edge.complete(ask("What is the capital of France?", temperature=0))

    answer = first.body["choices"][0]["message"]["content"]
    assert "Paris" in answer
    assert answer == second.body["choices"][0]["message"]["content"]
    assert first.body["choices"][0]["finish_reason"] == "stop"
    assert first.usage.prompt_tokens == len(
        edge.engine.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    )
    assert first.body["usage"]["completion_tokens"] == first.usage.completion_tokens > 0


async def test_stream_chunks_rebuild_the_answer_and_end_with_usage(edge: EdgeBackend) -> None:
    request = ask("What is the capital of France?", temperature=0)
    chunks = [chunk async for chunk in edge.stream(request)]
    whole = await edge.complete(ask("What is the capital of France?", temperature=0))

    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole.body["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == whole.body["usage"]


async def test_max_tokens_stops_with_length(edge: EdgeBackend) -> None:
    result = await edge.complete(ask("Write a long story about a dragon.", max_tokens=5, temperature=0))

    assert result.body["choices"][0]["finish_reason"] == "length"
    assert result.usage.completion_tokens == 5


async def test_stop_sequence_cuts_the_answer(edge: EdgeBackend) -> None:
    full = await edge.complete(ask("What is the capital of France?", temperature=0))
    text = full.body["choices"][0]["message"]["content"]
    stop = " of "
    assert stop in text

    cut = await edge.complete(ask("What is the capital of France?", temperature=0, stop=[stop]))
    streamed = [c async for c in edge.stream(ask("What is the capital of France?", temperature=0, stop=stop))]

    assert cut.body["choices"][0]["message"]["content"] == text.split(stop)[0]
    assert cut.body["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in streamed if c["choices"]) == text.split(stop)[0]


async def test_seeded_sampling_repeats(edge: EdgeBackend) -> None:
    options = {"temperature": 0.9, "top_p": 0.95, "seed": 1234, "max_tokens": 24}
    a = await edge.complete(ask("Name a colour.", **options))
    b = await edge.complete(ask("Name a colour.", **options))
    assert a.body["choices"][0]["message"]["content"] == b.body["choices"][0]["message"]["content"]


async def test_multibyte_text_streams_without_broken_characters(edge: EdgeBackend) -> None:
    request = ask("Translate to Japanese: good morning, my friend", temperature=0, max_tokens=40)
    chunks = [c async for c in edge.stream(request)]
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert "\ufffd" not in "".join(pieces)
    for piece in pieces:
        piece.encode("utf-8")


async def test_closing_the_stream_cancels_and_frees_the_slot(edge: EdgeBackend) -> None:
    stream = edge.stream(ask("Write a very long essay about the ocean.", max_tokens=400, temperature=0))
    await anext(stream)
    await anext(stream)
    assert edge.stats()["active_generations"] == 1

    await asyncio.wait_for(stream.aclose(), timeout=1.0)

    assert edge.stats()["active_generations"] == 0
    # The slot is usable again straight away.
    result = await asyncio.wait_for(edge.complete(ask("Hi", max_tokens=3)), timeout=10)
    assert result.usage.completion_tokens == 3


async def test_cancelling_a_non_streaming_request_frees_the_slot(edge: EdgeBackend) -> None:
    task = asyncio.create_task(edge.complete(ask("Write a very long essay about the ocean.", max_tokens=400)))
    while edge.stats()["active_generations"] == 0:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=1.0)
    assert edge.stats()["active_generations"] == 0


async def test_full_queue_reports_busy_then_refuses_with_retry_after(
    shared_model: EdgeModel, edge_model_dir: Path
) -> None:
    edge = make_backend(shared_model, edge_model_dir, max_concurrency=1, max_queue=1)
    await edge.start()
    long = ask("Write a very long essay about mountains.", max_tokens=300)
    running = [asyncio.create_task(edge.complete(long)) for _ in range(2)]
    while edge.stats() != {"queue_depth": 1.0, "active_generations": 1.0, "max_concurrency": 1.0}:
        await asyncio.sleep(0.01)

    state = edge.readiness()
    assert (state.ready, state.busy, state.reason) == (True, True, "generation queue full")
    with pytest.raises(BackendBusy) as caught:
        await edge.complete(ask("one more"))
    assert caught.value.retry_after is not None and caught.value.retry_after >= 1

    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    assert edge.stats() == {"queue_depth": 0.0, "active_generations": 0.0, "max_concurrency": 1.0}
    assert not edge.readiness().busy
    await edge.aclose()


async def test_prompt_longer_than_the_window_is_a_clear_400(edge: EdgeBackend) -> None:
    with pytest.raises(ContextLengthExceeded) as caught:
        await edge.complete(ask("word " * 9000))
    assert caught.value.status_code == 400
    assert "window is 8192" in caught.value.message


def test_token_counter_matches_generation(edge_model_dir: Path, shared_model: EdgeModel) -> None:
    backend = make_backend(shared_model, edge_model_dir)
    asyncio.run(backend.start())
    request = ask("Count me")
    assert backend.token_counter is not None
    assert backend.token_counter.count(request) == len(
        shared_model.encode_chat([{"role": "user", "content": "Count me"}])
    )
    assert backend.token_counter.name.startswith("tokenizer:")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("/nonexistent/model", "targets.edge.model: model folder /nonexistent/model does not exist"),
        ("no-such-model", "known models: smollm2-135m-instruct"),
    ],
)
def test_missing_model_is_a_clear_start_up_error(model: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EdgeBackend("edge", OnnxTargetConfig.model_validate({"type": "onnx", "model": model}))


def test_unbuilt_default_model_says_how_to_build_it(tmp_path: Path) -> None:
    config = OnnxTargetConfig.model_validate({"type": "onnx", "models_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="build it with `hybrid-router edge build --precision"):
        EdgeBackend("edge", config)


def test_corrupt_model_folder_is_a_clear_error(tmp_path: Path, edge_model_dir: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    with pytest.raises(ConfigError, match="genai_config.json is missing"):
        EdgeBackend("edge", OnnxTargetConfig.model_validate({"type": "onnx", "model": str(folder)}))

    for item in edge_model_dir.iterdir():
        if item.suffix != ".data":
            (folder / item.name).write_bytes(item.read_bytes())
    (folder / "model.onnx.data").write_bytes(b"truncated")
    backend = EdgeBackend("edge", OnnxTargetConfig.model_validate({"type": "onnx", "model": str(folder)}))
    with pytest.raises(ConfigError, match="cannot load the model"):
        asyncio.run(backend.start())

    (folder / "genai_config.json").write_text(json.dumps({"model": {}}))
    backend = EdgeBackend("edge", OnnxTargetConfig.model_validate({"type": "onnx", "model": str(folder)}))
    with pytest.raises(ConfigError, match="cannot load the model"):
        asyncio.run(backend.start())


async def test_a_request_without_sampling_gets_the_models_recommended_settings(edge: EdgeBackend) -> None:
    # SmolLM2's generation config (temperature 0.2, top_p 0.9, top_k 50), not OpenAI's 1.0.
    question = "Write a short poem about the sea."
    texts = set()
    for seed in range(3):
        implicit = await edge.complete(ask(question, seed=seed, max_tokens=24))
        explicit = await edge.complete(ask(question, seed=seed, max_tokens=24, temperature=0.2, top_p=0.9, top_k=50))
        openai = await edge.complete(ask(question, seed=seed, max_tokens=24, temperature=1.0, top_p=1.0))
        text = implicit.body["choices"][0]["message"]["content"]
        assert text == explicit.body["choices"][0]["message"]["content"]
        assert text != openai.body["choices"][0]["message"]["content"]
        texts.add(text)
    assert len(texts) > 1  # sampled, not greedy


async def test_the_targets_sampling_overrides_the_models(shared_model: EdgeModel, edge_model_dir: Path) -> None:
    question = "Write a short poem about the sea."
    greedy_target = make_backend(shared_model, edge_model_dir, temperature=0)
    await greedy_target.start()
    try:
        by_target = await greedy_target.complete(ask(question, seed=7, max_tokens=24))
        greedy = await greedy_target.complete(ask(question, seed=99, max_tokens=24, temperature=0))
        sampled = await greedy_target.complete(ask(question, seed=7, max_tokens=24, temperature=1.0, top_k=0))
    finally:
        await greedy_target.aclose()
    text = by_target.body["choices"][0]["message"]["content"]
    assert text == greedy.body["choices"][0]["message"]["content"]
    # The request's own temperature still wins over the target's.
    assert sampled.body["choices"][0]["message"]["content"] != text
