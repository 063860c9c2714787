"""Live swaps with the real ONNX model: a "v1" is the base model's files under a registry, with a manifest."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

import pytest

from edge_models.distill.prefix import system_hash
from edge_models.distill.registry import Registry
from router.backends.edge import EdgeBackend
from router.config import OnnxTargetConfig
from tests.edge.swapping import answer, ask, write_version

pytestmark = pytest.mark.model

LONG_PROMPT = "You label banking messages with one of 77 intents, answering with the intent's name only. " * 6
ALIAS = "Task 3f2a9c1e."


@pytest.fixture
def registry(tmp_path: Path, edge_model_dir: Path) -> Path:
    root = tmp_path / "registry"
    write_version(root, "v1", aliases={system_hash(LONG_PROMPT): ALIAS}, files_from=edge_model_dir)
    broken = root / "v2"
    broken.mkdir()
    for item in edge_model_dir.iterdir():
        if item.suffix not in (".onnx", ".data"):
            (broken / item.name).symlink_to(item)
    (broken / "model.onnx").write_bytes(b"\x08\x07 not a protobuf")
    return root


def real_edge(edge_model_dir: Path, registry: Path, **config: object) -> EdgeBackend:
    values = {"type": "onnx", "model": str(edge_model_dir), "distilled": True, "registry": str(registry)}
    return EdgeBackend("edge", OnnxTargetConfig.model_validate({**values, "threads": 2, **config}))


async def test_the_promoted_version_serves_with_its_alias(edge_model_dir: Path, registry: Path) -> None:
    Registry(registry).promote("v1")
    edge = real_edge(edge_model_dir, registry)
    await edge.start()
    served = edge.model_version()
    assert served is not None and served.version == "v1"
    assert edge.readiness().detail["model"] == str(registry / "v1")

    request = ask("my card has not arrived", system=LONG_PROMPT, max_tokens=8, temperature=0)
    assert edge.token_counter is not None
    counted = edge.token_counter.count(request)
    result = await edge.complete(request)

    engine = edge.engine
    as_student = engine.encode_chat(
        [{"role": "system", "content": ALIAS}, {"role": "user", "content": request.messages[1].text()}]
    )
    as_sent = engine.encode_chat(
        [{"role": "system", "content": LONG_PROMPT}, {"role": "user", "content": request.messages[1].text()}]
    )
    assert counted == result.usage.prompt_tokens == len(as_student)
    assert len(as_sent) > len(as_student) + 100
    assert "Paris" in answer(await edge.complete(ask("What is the capital of France?", temperature=0)))
    await edge.aclose()


async def test_a_stream_in_flight_keeps_the_old_model_until_it_ends(edge_model_dir: Path, registry: Path) -> None:
    edge = real_edge(edge_model_dir, registry, registry_poll_s=3600, max_concurrency=2)
    await edge.start()
    old = weakref.ref(edge.engine)
    stream = edge.stream(ask("Write a very long essay about the ocean.", max_tokens=120, temperature=0))
    await anext(stream)

    Registry(registry).promote("v1")
    result = await edge.refresh()
    assert result is not None and (result.ok, result.version, result.previous) == (True, "v1", "base")
    assert edge.engine is not old()
    # Answered by v1 meanwhile; the stream still runs on the base model.
    assert (await edge.complete(ask("Hi", max_tokens=3))).usage.completion_tokens == 3
    assert old() is not None

    chunks = [chunk async for chunk in stream]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 10
    del stream, chunks
    await asyncio.sleep(0)
    gc.collect()
    assert old() is None, "the swapped-out model outlived its last generation"
    await edge.aclose()


async def test_a_corrupt_version_is_refused_and_the_serving_one_stays(edge_model_dir: Path, registry: Path) -> None:
    Registry(registry).promote("v1")
    edge = real_edge(edge_model_dir, registry, registry_poll_s=3600)
    await edge.start()

    Registry(registry).promote("v2")
    result = await edge.refresh()

    assert result is not None and not result.ok and result.version == "v1"
    assert "cannot load the model" in str(result.error)
    assert edge.swap_counts() == {"ok": 0, "failed": 1}
    assert "version v2 not served" in str(edge.readiness().detail["distilled"])
    assert (await edge.complete(ask("Hi", max_tokens=3))).usage.completion_tokens == 3
    await edge.aclose()
