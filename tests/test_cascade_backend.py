"""CascadeBackend: keep a confident first answer, escalate an unsure one, buffer streams."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from router.backends.base import Backend
from router.backends.cascade import WANT_TOKEN_LOGPROBS, CascadeBackend, confidence, replay
from router.backends.fake import ScriptedBackend, ScriptedReply
from router.chat import ChatChunk, ChatRequest, ChatResult, Usage, make_completion
from router.errors import BackendError
from tests.conftest import cloud_backend, edge_backend


def ask(content: str = "Capital of France?", **extra: object) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": content}], **extra})


def edge_saying(text: str, logprobs: list[float] | None) -> ScriptedBackend:
    return edge_backend(ScriptedReply(text=text, token_logprobs=logprobs, prompt_tokens=7))


def ticking(step: float = 0.5) -> Iterator[float]:
    return (step * i for i in itertools.count())


def cascade(first: Backend, then: Backend | None, threshold: float = -1.0, **extra: Any) -> CascadeBackend:
    clock = ticking()
    return CascadeBackend(first, then, threshold=threshold, clock=lambda: next(clock), **extra)


def content(chunks: list[ChatChunk]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def test_a_confident_answer_is_kept_and_the_cloud_never_asked() -> None:
    edge, cloud = edge_saying("Paris.", [-0.1, -0.3]), cloud_backend()
    backend = cascade(edge, cloud)

    result = await backend.complete(ask())

    assert result.body["choices"][0]["message"]["content"] == "Paris."
    assert cloud.requests == []
    assert edge.requests[0].memo[WANT_TOKEN_LOGPROBS] is True
    assert backend.outcome is not None
    assert (backend.outcome.escalated, backend.outcome.target) == (False, "edge")
    assert backend.outcome.describe() == "kept edge (confidence -0.20 >= -1.00)"


async def test_an_unsure_answer_escalates_and_its_cost_is_recorded() -> None:
    edge, cloud = edge_saying("Lyon, maybe", [-2.5, -1.5]), cloud_backend(ScriptedReply(text="Paris."))
    backend = cascade(edge, cloud)

    result = await backend.complete(ask())

    assert result.body["choices"][0]["message"]["content"] == "Paris."
    assert result.body["model"] == "cloud-model"
    assert [r.prompt_text for r in cloud.requests] == ["Capital of France?"]
    outcome = backend.outcome
    assert outcome is not None
    assert (outcome.escalated, outcome.target, outcome.confidence) == (True, "cloud", -2.0)
    assert outcome.first_seconds == 0.5  # one tick of the fake clock
    assert outcome.first_usage == Usage(7, 2)
    assert outcome.describe() == "escalated edge->cloud (confidence -2.00 < -1.00)"


@pytest.mark.parametrize(("signal", "escalated"), [("mean", False), ("min", True)])
async def test_the_signal_decides_what_unsure_means(signal: str, escalated: bool) -> None:
    # One very unlikely token in an otherwise sure answer: mean -1.73, min -5.
    backend = cascade(edge_saying("Paris.", [-0.1, -0.1, -5.0]), cloud_backend(), threshold=-2.0, signal=signal)

    await backend.complete(ask())

    assert backend.outcome is not None and backend.outcome.escalated is escalated


async def test_an_answer_without_logprobs_is_kept_and_says_so() -> None:
    backend = cascade(edge_saying("Paris.", None), cloud_backend())

    await backend.complete(ask())

    assert backend.outcome is not None and not backend.outcome.escalated
    assert backend.outcome.describe() == "kept edge (no confidence reported)"


async def test_blocked_escalation_keeps_the_unsure_answer_and_says_why() -> None:
    backend = cascade(edge_saying("Lyon", [-3.0]), None, then_name="cloud", blocked="cloud forbidden (personal data)")

    result = await backend.complete(ask())

    assert result.body["choices"][0]["message"]["content"] == "Lyon"
    assert backend.outcome is not None and backend.outcome.target == "edge"
    assert backend.outcome.describe() == (
        "kept edge (confidence -3.00 < -1.00; not escalated: cloud forbidden (personal data))"
    )


def test_a_cascade_without_a_target_must_say_why() -> None:
    with pytest.raises(ValueError, match="blocked"):
        CascadeBackend(edge_backend(), None, threshold=-1.0)


async def test_a_first_target_failure_is_not_escalated() -> None:
    cloud = cloud_backend()
    backend = cascade(edge_backend(ScriptedReply(error=BackendError("model crashed"))), cloud)

    with pytest.raises(BackendError):
        await backend.complete(ask())

    assert backend.outcome is None and cloud.requests == []


async def test_a_kept_stream_is_the_buffered_answer_replayed() -> None:
    edge, cloud = edge_saying("Paris is the capital.", [-0.2]), cloud_backend()
    backend = cascade(edge, cloud)

    chunks = [chunk async for chunk in backend.stream(ask(stream=True))]

    assert content(chunks) == "Paris is the capital."
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert len({c["id"] for c in chunks}) == 1 and all(c["model"] == "edge-model" for c in chunks)
    # Buffered: the first target answered in one piece, never as a stream.
    assert edge.active_streams == 0 and cloud.requests == []


async def test_an_escalated_stream_relays_the_cloud_stream() -> None:
    cloud = cloud_backend(ScriptedReply(text="Paris, of course."))
    backend = cascade(edge_saying("Lyon", [-4.0]), cloud)

    chunks = [chunk async for chunk in backend.stream(ask(stream=True))]
    direct = [chunk async for chunk in cloud.stream(ask(stream=True))]

    assert content(chunks) == content(direct) == "Paris, of course."
    assert [c["choices"] for c in chunks] == [c["choices"] for c in direct]
    assert backend.outcome is not None and backend.outcome.escalated


async def test_closing_an_escalated_stream_early_closes_the_cloud_stream() -> None:
    cloud = cloud_backend(ScriptedReply(text="a long cloud answer"))
    stream = cascade(edge_saying("Lyon", [-4.0]), cloud).stream(ask(stream=True))

    await anext(stream)
    assert cloud.active_streams == 1
    await stream.aclose()

    assert cloud.active_streams == 0


def test_replay_carries_tool_calls_with_their_index() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = make_completion(model="m", content=None, finish_reason="tool_calls", usage=Usage(3, 1), tool_calls=[call])
    chunks = replay(ChatResult(body, Usage(3, 1)))

    assert chunks[1]["choices"][0]["delta"] == {"tool_calls": [{"index": 0, **call}]}
    assert chunks[2]["choices"][0]["finish_reason"] == "tool_calls"
    assert {c["id"] for c in chunks} == {body["id"]}


def test_confidence_signals() -> None:
    assert confidence([-1.0, -3.0]) == -2.0
    assert confidence([-1.0, -3.0], "min") == -3.0
    assert confidence([]) is None and confidence(None) is None
