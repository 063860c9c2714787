"""The edge target swaps distilled versions live (fake engines; tests/edge/test_swap_model.py has the real model)."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_models.distill.prefix import system_hash
from edge_models.distill.registry import Registry
from router.backends.edge import EdgeBackend
from router.backends.versions import StudentCard
from router.config import OnnxTargetConfig
from tests.edge.swapping import FakeLoader, answer, ask, edge_backend, fake_model_folder, write_version

LONG_PROMPT = "You label banking messages with one of 77 intents. " * 8
ALIAS = "Task 3f2a9c1e."


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return fake_model_folder(tmp_path / "base")


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    root = tmp_path / "registry"
    write_version(root, "v1", aliases={system_hash(LONG_PROMPT): ALIAS})
    write_version(root, "v2", tasks=("banking77", "tickets"))
    return root


@pytest.fixture
def loader() -> FakeLoader:
    return FakeLoader({"base": "base model here", "v1": "student one here", "v2": "student two here"})


def version(edge: EdgeBackend) -> str | None:
    served = edge.model_version()
    return served.version if served else None


async def wait_for_version(edge: EdgeBackend, wanted: str) -> None:
    async with asyncio.timeout(5):
        while version(edge) != wanted:
            await asyncio.sleep(0.01)


async def test_a_swap_serves_the_new_version_with_its_card(base: Path, registry: Path, loader: FakeLoader) -> None:
    edge = edge_backend(base, loader)
    await edge.start()
    assert answer(await edge.complete(ask())) == "base model here"
    assert edge.model_version() is not None and version(edge) == "base"

    result = await edge.swap(registry / "v2")

    assert (result.ok, result.version, result.previous, result.changed) == (True, "v2", "base", True)
    assert answer(await edge.complete(ask())) == "student two here"
    served = edge.model_version()
    assert served is not None and served.parent == "smollm2-135m-instruct"
    assert served.student == StudentCard(
        "v2", frozenset({"banking77", "tickets"}), frozenset(), -0.25, "min", holdout_accuracy=0.91, gate_coverage=0.8
    )
    assert edge.readiness().detail["version"] == "v2"
    assert edge.swap_counts() == {"ok": 1, "failed": 0}
    await edge.aclose()


async def test_an_in_flight_stream_finishes_on_the_old_model_which_is_then_freed(
    base: Path, registry: Path, loader: FakeLoader
) -> None:
    loader.hold["base"] = hold = threading.Event()
    edge = edge_backend(base, loader)
    await edge.start()
    old = weakref.ref(loader.loaded[0])
    stream = edge.stream(ask())
    first = await anext(stream)
    assert first["choices"][0]["delta"]["content"] == "base"

    assert (await edge.swap(registry / "v1")).ok
    assert answer(await edge.complete(ask())) == "student one here"
    hold.set()
    rest = [chunk async for chunk in stream]

    text = "".join(c["choices"][0]["delta"].get("content", "") for c in rest if c["choices"])
    assert text == " model here"
    assert rest[-1]["usage"]["completion_tokens"] == 3
    loader.loaded.clear()
    del stream, first, rest
    gc.collect()
    assert old() is None, "the old engine outlived its last generation"
    await edge.aclose()


async def test_a_model_that_does_not_load_keeps_the_old_one_serving(
    base: Path, registry: Path, loader: FakeLoader
) -> None:
    loader.broken.add("v2")
    edge = edge_backend(base, loader)
    await edge.start()

    result = await edge.swap(registry / "v2")

    assert (result.ok, result.version, result.previous, result.changed) == (False, "base", "base", False)
    assert result.error is not None and "corrupt model.onnx" in result.error
    assert answer(await edge.complete(ask())) == "base model here"
    assert edge.swap_counts() == {"ok": 0, "failed": 1}
    state = edge.readiness()
    assert state.can_serve and "version v2 not served" in str(state.detail["distilled"])
    # A good swap afterwards clears the complaint.
    assert (await edge.swap(registry / "v1")).ok
    assert "distilled" not in edge.readiness().detail
    await edge.aclose()


async def test_a_model_that_answers_nothing_fails_its_smoke_test(base: Path, registry: Path) -> None:
    loader = FakeLoader({"base": "base model here", "v1": ""})
    edge = edge_backend(base, loader)
    await edge.start()

    result = await edge.swap(registry / "v1")

    assert not result.ok and "smoke test failed" in str(result.error)
    assert version(edge) == "base"
    await edge.aclose()


async def test_the_registry_poll_follows_promote_and_rollback(base: Path, registry: Path, loader: FakeLoader) -> None:
    edge = edge_backend(base, loader, registry=registry, registry_poll_s=0.02)
    await edge.start()
    assert version(edge) == "base"
    pointer = Registry(registry)

    pointer.promote("v1")
    await wait_for_version(edge, "v1")
    pointer.promote("v2")
    await wait_for_version(edge, "v2")
    assert answer(await edge.complete(ask())) == "student two here"
    pointer.rollback()
    await wait_for_version(edge, "v1")
    pointer.rollback()
    await wait_for_version(edge, "base")

    assert edge.swap_counts() == {"ok": 4, "failed": 0}
    await edge.aclose()
    assert edge._watcher is None


async def test_a_broken_promotion_is_tried_once_per_change_and_refresh_retries(
    base: Path, registry: Path, loader: FakeLoader
) -> None:
    loader.broken.add("v2")
    edge = edge_backend(base, loader, registry=registry, registry_poll_s=0.02)
    await edge.start()

    Registry(registry).promote("v2")
    async with asyncio.timeout(5):
        while edge.swap_counts()["failed"] == 0:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert edge.swap_counts() == {"ok": 0, "failed": 1}

    loader.broken.clear()
    result = await edge.refresh()
    assert result is not None and result.ok and result.version == "v2"
    assert await edge.refresh() is None
    await edge.aclose()


async def test_start_serves_the_promoted_version(base: Path, registry: Path, loader: FakeLoader) -> None:
    Registry(registry).promote("v1")
    edge = edge_backend(base, loader, registry=registry)
    await edge.start()

    assert version(edge) == "v1"
    assert answer(await edge.complete(ask())) == "student one here"
    assert edge.token_counter is not None and edge.token_counter.name == "tokenizer:base@v1"
    await edge.aclose()


async def test_start_with_a_broken_promoted_version_serves_the_base_and_says_so(
    base: Path, registry: Path, loader: FakeLoader
) -> None:
    Registry(registry).promote("v1")
    loader.broken.add("v1")
    edge = edge_backend(base, loader, registry=registry)
    await edge.start()

    assert version(edge) == "base"
    state = edge.readiness()
    assert state.can_serve
    assert state.detail["distilled"] == (
        f"version v1 not served: cannot load the model in {registry / 'v1'}: corrupt model.onnx; serving base"
    )
    assert edge.swap_counts()["failed"] == 1
    await edge.aclose()


async def test_the_student_sees_its_alias_and_the_count_matches(base: Path, registry: Path, loader: FakeLoader) -> None:
    edge = edge_backend(base, loader)
    await edge.start()
    request = ask("my card has not arrived", system=LONG_PROMPT)
    assert edge.token_counter is not None
    base_count = edge.token_counter.count(request)

    await edge.swap(registry / "v1")
    assert edge.token_counter is not None
    student_count = edge.token_counter.count(request)
    result = await edge.complete(request)

    student = loader.loaded[-1]
    assert student.encoded[-1] == [
        {"role": "system", "content": ALIAS},
        {"role": "user", "content": "my card has not arrived"},
    ]
    assert (
        student_count
        == result.usage.prompt_tokens
        == 9  # "<system> Task 3f2a9c1e. <user> my card has not arrived": one fake id per word
    )
    assert base_count > student_count + 60
    # Another system prompt is left as it is.
    other = ask("hi", system="You are terse.")
    await edge.complete(other)
    assert student.encoded[-1][0] == {"role": "system", "content": "You are terse."}
    await edge.aclose()


async def test_ids_counted_before_a_swap_are_not_reused_by_the_next_model(
    base: Path, registry: Path, loader: FakeLoader
) -> None:
    edge = edge_backend(base, loader)
    await edge.start()
    request = ask("my card has not arrived", system=LONG_PROMPT)
    assert edge.token_counter is not None
    counted = edge.token_counter.count(request)

    await edge.swap(registry / "v1")
    result = await edge.complete(request)

    assert result.usage.prompt_tokens < counted
    assert loader.loaded[-1].encoded[-1][0]["content"] == ALIAS
    await edge.aclose()


async def test_aclose_during_a_swap_leaves_nothing_serving(base: Path, registry: Path, loader: FakeLoader) -> None:
    edge = edge_backend(base, loader)
    await edge.start()
    swapping = asyncio.create_task(edge.swap(registry / "v1"))
    await asyncio.sleep(0)
    await edge.aclose()
    result = await swapping

    assert edge.model_version() is None
    assert not edge.readiness().ready
    assert (result.ok, result.error) == (False, "target closed")


def test_a_distilled_model_path_needs_a_registry(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="distilled: true with a model path needs `registry:`"):
        OnnxTargetConfig.model_validate({"type": "onnx", "model": str(tmp_path), "distilled": True})
    config = OnnxTargetConfig.model_validate(
        {"type": "onnx", "model": str(tmp_path), "distilled": True, "registry": str(tmp_path / "r")}
    )
    assert config.registry_poll_s == 5.0


def test_a_built_model_has_a_default_registry(tmp_path: Path, loader: FakeLoader) -> None:
    fake_model_folder(tmp_path / "smollm2-135m-instruct-int8")
    config = OnnxTargetConfig.model_validate({"type": "onnx", "models_dir": str(tmp_path), "distilled": True})

    edge = EdgeBackend("edge", config, loader=loader)

    assert edge.registry is not None and edge.registry.root == tmp_path / "distilled" / "smollm2-135m-instruct"
    assert EdgeBackend("edge", config.model_copy(update={"distilled": False})).registry is None
