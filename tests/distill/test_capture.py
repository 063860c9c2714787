"""Capture of cloud answers: each qualification rule, selection, sampling, and the gateway wiring."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edge_models.distill.rows import read_rows
from edge_models.distill.store import DatasetStore
from router.backends.fake import ScriptedReply
from router.chat import ChatRequest
from router.classify.personal_data import FixedDetector, PatternDetector
from router.features import Features, PersonalData, RouteMatch, Span, Uninspectable
from router.tasks import TASK_TAG, tag_task, task_of
from service.capture import (
    Answer,
    AnswerCollector,
    BackgroundWriter,
    Capturer,
    CaptureSettings,
    InlineWriter,
    sample_point,
)
from service.gateway import Gateway
from service.settings import Settings
from tests.conftest import ClientFactory, chat_body, cloud_backend, edge_backend, make_settings
from tests.test_metrics import scrape

# Unit level: a Capturer over a real store, with the detector and writer faked.

STOP = Answer("Paris is the capital of France.", "stop", model="cloud-model")


def request(content: str = "What is the capital of France?", **extra: Any) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": content}], **extra})


def features(*, personal: PersonalData | None = None, route: str | None = None, has_images: bool = False) -> Features:
    return Features(
        prompt_tokens=8,
        token_counter="fixed",
        prompt_chars=30,
        message_count=1,
        max_tokens=None,
        wants_tools=False,
        wants_json=False,
        has_images=has_images,
        stream=False,
        personal_data=personal or PersonalData(found=False),
        semantic=RouteMatch(route, 0.9, route) if route else None,
    )


class Counts(list[str]):
    def __call__(self, outcome: str) -> None:
        self.append(outcome)


@pytest.fixture
def counts() -> Counts:
    return Counts()


@pytest.fixture
def store(tmp_path: Path) -> DatasetStore:
    return DatasetStore(tmp_path / "data", retention_days=None)


def capturer(store: DatasetStore, counts: Counts, detector: Any = None, **settings: Any) -> Capturer:
    return Capturer(
        CaptureSettings(enabled=True, dir=store.root, **settings),
        store=store,
        detector=detector or FixedDetector(),
        local_targets={"edge"},
        count=counts,
        writer=InlineWriter(),
    )


def test_a_qualifying_cloud_answer_is_stored_with_its_metadata(store: DatasetStore, counts: Counts) -> None:
    chat = request(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital?"}])
    tag_task(chat, "geo")

    assert capturer(store, counts).consider(chat, STOP, target="cloud", features=features(route="facts")) == "queued"

    assert counts == ["stored"]
    [row] = list(read_rows(store.root))
    assert row["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital?"},
        {"role": "assistant", "content": STOP.text},
    ]
    meta = row["metadata"]
    assert (meta["task"], meta["route"], meta["target"], meta["model"], meta["tenant"]) == (
        "geo", "facts", "cloud", "cloud-model", None,
    )  # fmt: skip


def test_the_same_answer_twice_is_a_duplicate(store: DatasetStore, counts: Counts) -> None:
    capture = capturer(store, counts)
    capture.consider(request(), STOP, target="cloud", features=features())
    capture.consider(request(), STOP, target="cloud", features=features())
    assert counts == ["stored", "duplicate"]


@pytest.mark.parametrize(
    ("chat", "answer", "target", "feats", "outcome"),
    [
        (request(), STOP, "edge", features(), "local"),
        (request(), Answer("cut off", "length"), "cloud", features(), "not_stop"),
        (request(), Answer("", "content_filter"), "cloud", features(), "not_stop"),
        (request(), Answer("   ", "stop"), "cloud", features(), "empty"),
        (request(tools=[{"type": "function", "function": {"name": "f"}}]), STOP, "cloud", features(), "tools"),
        (request(functions=[{"name": "f"}]), STOP, "cloud", features(), "tools"),
        (request(), Answer(None, "stop", tool_calls=True), "cloud", features(), "tools"),
        (
            ChatRequest.model_validate({"messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function"}]},
                {"role": "tool", "tool_call_id": "1", "content": "sunny"},
            ]}),
            STOP, "cloud", features(), "tools",
        ),
        (
            request([{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "x"}}]),
            STOP, "cloud", features(has_images=True), "images",
        ),
        (request([{"type": "input_audio", "input_audio": {"data": "AAAA"}}]), STOP, "cloud", features(), "images"),
        (
            request(),
            STOP,
            "cloud",
            features(personal=PersonalData(found=True, spans=(Span("email", 0, 5),))),
            "personal_data",
        ),
        # A detector that failed or ran out of time: personal data assumed.
        (request(), STOP, "cloud", features(personal=PersonalData(found=True, error="deadline")), "personal_data"),
        (
            request(),
            STOP,
            "cloud",
            features(personal=PersonalData(found=False, uninspectable=(Uninspectable("metadata.x", "file"),))),
            "personal_data",
        ),
        (request(), STOP, "cloud", None, "personal_data"),  # no features: nothing was checked
    ],
    ids=[
        "local", "length", "content_filter", "empty", "tools", "functions", "answer_tool_calls",
        "tool_messages", "image", "audio", "request_personal_data", "detector_failed", "uninspectable",
        "no_features",
    ],
)  # fmt: skip
def test_each_rule_rules_out_with_its_outcome(
    store: DatasetStore,
    counts: Counts,
    chat: ChatRequest,
    answer: Answer,
    target: str,
    feats: Features | None,
    outcome: str,
) -> None:
    assert capturer(store, counts).consider(chat, answer, target=target, features=feats) == outcome
    assert counts == [outcome]
    assert store.files() == []


def test_text_only_parts_are_captured_as_their_text(store: DatasetStore, counts: Counts) -> None:
    chat = request([{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}])
    capturer(store, counts).consider(chat, STOP, target="cloud", features=features())

    [row] = list(read_rows(store.root))
    assert row["messages"][0] == {"role": "user", "content": "part one\ntwo"}


def test_personal_data_in_the_answer_blocks_capture(store: DatasetStore, counts: Counts) -> None:
    # The classifier's own detector, as the gateway passes it.
    capture = capturer(store, counts, detector=PatternDetector())
    answer = Answer("Write to jane.doe@example.com for details.", "stop")

    assert capture.consider(request(), answer, target="cloud", features=features()) == "queued"

    assert counts == ["personal_data"]
    assert store.files() == []


@pytest.mark.parametrize(
    ("selectors", "task", "route", "selected"),
    [
        ({}, None, None, True),
        ({"tasks": ["triage"]}, "triage", None, True),
        ({"tasks": ["triage"]}, "summary", None, False),
        ({"tasks": ["triage"]}, None, None, False),
        ({"routes": ["billing"]}, None, "billing", True),
        ({"routes": ["billing"]}, None, "sales", False),
        ({"tasks": ["triage"], "routes": ["billing"]}, "other", "billing", True),
        ({"tenants": ["acme"]}, "triage", "billing", False),
    ],
)
def test_selection_by_task_or_route(
    store: DatasetStore,
    counts: Counts,
    selectors: dict[str, list[str]],
    task: str | None,
    route: str | None,
    selected: bool,
) -> None:
    chat = request()
    tag_task(chat, task)
    capturer(store, counts, **selectors).consider(chat, STOP, target="cloud", features=features(route=route))
    assert counts == (["stored"] if selected else ["not_selected"])


def test_selection_by_tenant(store: DatasetStore, counts: Counts) -> None:
    capture = capturer(store, counts, tenants=["acme"])
    capture.consider(request("one"), STOP, target="cloud", features=features(), tenant="acme")
    capture.consider(request("two"), STOP, target="cloud", features=features(), tenant="other")
    assert counts == ["stored", "not_selected"]
    [row] = list(read_rows(store.root))
    assert row["metadata"]["tenant"] == "acme"


def test_sample_rate_keeps_about_that_share_and_the_same_prompts_every_time(tmp_path: Path, counts: Counts) -> None:
    chats = [request(f"question number {i}") for i in range(400)]
    first = capturer(DatasetStore(tmp_path / "a"), counts, sample_rate=0.25)
    for chat in chats:
        first.consider(chat, STOP, target="cloud", features=features())
    kept = counts.count("stored")
    assert 60 < kept < 140
    assert counts.count("sampled_out") == 400 - kept

    again = Counts()
    second = capturer(DatasetStore(tmp_path / "b"), again, sample_rate=0.25)
    for chat in chats:
        second.consider(chat, STOP, target="cloud", features=features())
    assert again == counts  # a retry of a prompt is sampled exactly as the first try was


def test_sample_rate_zero_keeps_nothing(store: DatasetStore, counts: Counts) -> None:
    capturer(store, counts, sample_rate=0.0).consider(request(), STOP, target="cloud", features=features())
    assert counts == ["sampled_out"]


def test_an_injected_sampler_is_used(store: DatasetStore, counts: Counts) -> None:
    capture = Capturer(
        CaptureSettings(enabled=True, sample_rate=0.5), store=store, detector=FixedDetector(),
        count=counts, writer=InlineWriter(), sample=lambda digest: 0.9,
    )  # fmt: skip
    capture.consider(request(), STOP, target="cloud", features=features())
    assert counts == ["sampled_out"]
    assert 0 <= sample_point("f" * 64) < 1


def test_the_row_cap_stops_capture(tmp_path: Path, counts: Counts) -> None:
    capture = capturer(DatasetStore(tmp_path / "d", max_rows=1), counts)
    capture.consider(request("one"), STOP, target="cloud", features=features())
    capture.consider(request("two"), STOP, target="cloud", features=features())
    assert counts == ["stored", "full"]


def test_a_failing_detector_is_counted_and_logged_once(
    store: DatasetStore, counts: Counts, caplog: pytest.LogCaptureFixture
) -> None:
    capture = capturer(store, counts, detector=FixedDetector(error=RuntimeError("boom")))
    with caplog.at_level(logging.WARNING, logger="hybrid_router.capture"):
        for i in range(3):
            capture.consider(request(f"q{i}"), STOP, target="cloud", features=features())

    assert counts == ["error"] * 3
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    assert store.files() == []


def test_a_full_backlog_drops_and_counts(store: DatasetStore, counts: Counts) -> None:
    capture = Capturer(
        CaptureSettings(enabled=True), store=store, detector=FixedDetector(),
        count=counts, writer=BackgroundWriter(max_backlog=0),
    )  # fmt: skip
    assert capture.consider(request(), STOP, target="cloud", features=features()) == "error"
    assert counts == ["error"]


def test_the_background_writer_runs_jobs_in_order_off_the_caller_thread() -> None:
    import threading

    writer = BackgroundWriter()
    seen: list[tuple[int, bool]] = []
    for i in range(20):
        assert writer.submit(lambda i=i: seen.append((i, threading.current_thread() is threading.main_thread())))
    assert writer.flush(5)
    writer.close()

    assert seen == [(i, False) for i in range(20)]
    assert writer.submit(lambda: seen.append((99, False)))  # started again, as an app restarted
    assert writer.flush(5)
    writer.close()
    assert seen[-1] == (99, False)


def test_a_streamed_answer_is_assembled_from_its_chunks() -> None:
    collector = AnswerCollector()
    for chunk in [
        {"model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
        {"model": "m", "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
        {"model": "m", "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]},
        {"model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]:
        collector.feed(chunk)
    assert collector.answer() == Answer("Hello", "stop", model="m", tool_calls=False)


def test_task_tags_come_from_the_header_else_metadata_and_must_be_safe() -> None:
    chat = request(metadata={"task": "from-body"})
    tag_task(chat, "from-header")
    assert task_of(chat) == chat.memo[TASK_TAG] == "from-header"

    chat = request(metadata={"task": "from-body"})
    tag_task(chat, "bad header; drop")
    assert task_of(chat) == "from-body"

    for bad in ({"task": "x" * 65}, {"task": 7}, {"task": "a b"}, "not an object"):
        chat = request(metadata=bad)
        tag_task(chat, None)
        assert task_of(chat) is None


def test_task_selectors_must_be_valid_tags() -> None:
    with pytest.raises(ValueError, match="is not a task tag"):
        CaptureSettings(tasks=["has space"])


# Gateway level: the app, scripted targets, and the store on disk.


def capture_settings(tmp_path: Path, **capture: Any) -> Settings:
    return make_settings(distill={"capture": {"enabled": True, "dir": str(tmp_path / "data"), **capture}})


def flush(client: TestClient) -> None:
    gateway: Gateway = client.app.state.gateway  # type: ignore[attr-defined]
    assert gateway.runtime.capturer is not None
    assert gateway.runtime.capturer.flush(10)


def stored(tmp_path: Path) -> list[dict[str, Any]]:
    return list(read_rows(tmp_path / "data")) if (tmp_path / "data").exists() else []


def test_capture_is_off_by_default(client_for: ClientFactory, tmp_path: Path) -> None:
    settings = make_settings()
    assert settings.distill.capture.enabled is False
    client = client_for(settings, backends={"edge": edge_backend(), "cloud": cloud_backend()})

    assert client.post("/v1/chat/completions", json=chat_body(model="cloud")).status_code == 200

    assert client.app.state.gateway.runtime.capturer is None  # type: ignore[attr-defined]
    assert "hybrid_router_distill_capture_total" not in scrape(client)


def test_cloud_answers_are_captured_and_counted(client_for: ClientFactory, tmp_path: Path) -> None:
    client = client_for(capture_settings(tmp_path), backends={"edge": edge_backend(), "cloud": cloud_backend()})

    assert client.post("/v1/chat/completions", json=chat_body("Hello cloud", model="cloud")).status_code == 200
    assert client.post("/v1/chat/completions", json=chat_body("Hello edge")).status_code == 200
    flush(client)

    [row] = stored(tmp_path)
    assert row["messages"] == [
        {"role": "user", "content": "Hello cloud"},
        {"role": "assistant", "content": "cloud says hi"},
    ]
    assert (row["metadata"]["target"], row["metadata"]["model"]) == ("cloud", "cloud-model")
    counted = scrape(client)["hybrid_router_distill_capture_total"]
    assert counted == {(("outcome", "stored"),): 1.0, (("outcome", "local"),): 1.0}


def test_streamed_cloud_answers_are_captured_once_complete(client_for: ClientFactory, tmp_path: Path) -> None:
    cut = cloud_backend(ScriptedReply(text="never finished", fail_after=1))
    client = client_for(capture_settings(tmp_path), backends={"edge": edge_backend(), "cloud": cloud_backend()})
    broken = client_for(capture_settings(tmp_path / "b"), backends={"edge": edge_backend(), "cloud": cut})

    response = client.post("/v1/chat/completions", json=chat_body("Stream it", model="cloud", stream=True))
    assert response.status_code == 200
    broken.post("/v1/chat/completions", json=chat_body("Stream it", model="cloud", stream=True))
    flush(client)
    flush(broken)

    [row] = stored(tmp_path)
    assert row["messages"][-1] == {"role": "assistant", "content": "cloud says hi"}
    assert stored(tmp_path / "b") == []


def test_selection_by_x_task_header_and_metadata_task(client_for: ClientFactory, tmp_path: Path) -> None:
    client = client_for(
        capture_settings(tmp_path, tasks=["triage"]), backends={"edge": edge_backend(), "cloud": cloud_backend()}
    )

    client.post("/v1/chat/completions", json=chat_body("by header", model="cloud"), headers={"x-task": "triage"})
    client.post("/v1/chat/completions", json=chat_body("by body", model="cloud", metadata={"task": "triage"}))
    client.post("/v1/chat/completions", json=chat_body("other task", model="cloud"), headers={"x-task": "other"})
    client.post("/v1/chat/completions", json=chat_body("no task", model="cloud"))
    flush(client)

    rows = stored(tmp_path)
    assert sorted(r["messages"][0]["content"] for r in rows) == ["by body", "by header"]
    assert {r["metadata"]["task"] for r in rows} == {"triage"}
    assert scrape(client)["hybrid_router_distill_capture_total"][(("outcome", "not_selected"),)] == 2


def test_personal_data_in_the_cloud_answer_is_not_captured(client_for: ClientFactory, tmp_path: Path) -> None:
    leaky = cloud_backend(ScriptedReply(text="Sure, mail jane.doe@example.com or call +1 415-555-0100."))
    client = client_for(capture_settings(tmp_path), backends={"edge": edge_backend(), "cloud": leaky})

    assert client.post("/v1/chat/completions", json=chat_body("Who to contact?", model="cloud")).status_code == 200
    flush(client)

    assert stored(tmp_path) == []
    assert scrape(client)["hybrid_router_distill_capture_total"] == {(("outcome", "personal_data"),): 1.0}


def test_tool_requests_and_truncated_answers_are_not_captured(client_for: ClientFactory, tmp_path: Path) -> None:
    truncated = cloud_backend(
        lambda chat: ScriptedReply(finish_reason="length" if "long" in chat.prompt_text else "stop")
    )
    client = client_for(capture_settings(tmp_path), backends={"edge": edge_backend(), "cloud": truncated})

    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert client.post("/v1/chat/completions", json=chat_body("use tools", tools=tools)).status_code == 200
    assert client.post("/v1/chat/completions", json=chat_body("a long one", model="cloud")).status_code == 200
    flush(client)

    assert stored(tmp_path) == []
    counted = scrape(client)["hybrid_router_distill_capture_total"]
    assert counted == {(("outcome", "tools"),): 1.0, (("outcome", "not_stop"),): 1.0}


def test_a_failing_store_never_touches_the_client_response(client_for: ClientFactory, tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    settings = make_settings(distill={"capture": {"enabled": True, "dir": str(blocked)}})
    client = client_for(settings, backends={"edge": edge_backend(), "cloud": cloud_backend()})

    plain = client.post("/v1/chat/completions", json=chat_body(model="cloud"))
    streamed = client.post("/v1/chat/completions", json=chat_body("again", model="cloud", stream=True))
    flush(client)

    assert plain.status_code == 200
    assert plain.json()["choices"][0]["message"]["content"] == "cloud says hi"
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    assert scrape(client)["hybrid_router_distill_capture_total"] == {(("outcome", "error"),): 2.0}


def test_capture_settings_load_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HYBRID_ROUTER_DISTILL__CAPTURE__ENABLED", "true")
    monkeypatch.setenv("HYBRID_ROUTER_DISTILL__CAPTURE__SAMPLE_RATE", "0.5")
    settings = Settings(targets={"e": {"type": "fake"}})
    assert settings.distill.capture.enabled is True
    assert settings.distill.capture.sample_rate == 0.5
    assert settings.distill.capture.dir.parts[-2:] == ("distill", "data")


async def test_a_reload_keeps_the_store_and_applies_the_new_limits(tmp_path: Path) -> None:
    gateway = Gateway(capture_settings(tmp_path), backends={"edge": edge_backend(), "cloud": cloud_backend()})
    await gateway.start()
    try:
        first = gateway.runtime.capturer
        assert (await gateway.reload(capture_settings(tmp_path, max_rows=5, retention_days=None))).ok
        second = gateway.runtime.capturer
        assert first is not None and second is not None and second is not first
        assert second.store is first.store
        assert (second.store.max_rows, second.store.retention_days) == (5, None)

        assert (await gateway.reload(make_settings())).ok
        assert gateway.runtime.capturer is None
    finally:
        await gateway.aclose()
