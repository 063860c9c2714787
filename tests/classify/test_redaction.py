"""Reversible redaction: out with placeholders, back with the values, streams included."""

from __future__ import annotations

import json

import pytest

from router.backends.fake import ScriptedBackend, ScriptedReply
from router.chat import ChatRequest
from router.classify.personal_data import PatternDetector, Span
from router.classify.redaction import RedactingBackend, Redactor, StreamRestorer, redact_request


def test_same_value_same_placeholder_and_round_trip() -> None:
    redactor = Redactor()
    text = "mail a@b.io, then a@b.io again, or c@d.io"
    spans = PatternDetector().detect(text)
    safe = redactor.redact(text, spans)
    assert safe == "mail <EMAIL_1>, then <EMAIL_1> again, or <EMAIL_2>"
    assert redactor.restore(safe) == text


def test_unknown_placeholders_are_left_alone() -> None:
    redactor = Redactor()
    redactor.redact("x@y.io", [Span("email", 0, 6)])
    assert redactor.restore("<EMAIL_9> and <EMAIL_1>") == "<EMAIL_9> and x@y.io"


@pytest.mark.parametrize("cut", range(1, 12))
def test_stream_restorer_handles_placeholders_split_anywhere(cut: int) -> None:
    redactor = Redactor()
    redactor.redact("call +1 415-555-0132", [Span("phone", 5, 20)])
    answer = "I'll ring <PHONE_1> now."
    start = answer.index("<")
    pieces = (
        [answer[: start + cut], answer[start + cut :]]
        if cut < 10
        else [answer[:start], "<", "PHONE", "_1", ">", " now."]
    )
    restorer = StreamRestorer(redactor)
    out = "".join(restorer.feed(p) for p in pieces) + restorer.flush()
    assert out == "I'll ring +1 415-555-0132 now."


def test_stream_restorer_releases_text_that_only_looked_like_a_placeholder() -> None:
    redactor = Redactor()
    redactor.redact("a@b.io", [Span("email", 0, 6)])
    restorer = StreamRestorer(redactor)
    assert restorer.feed("x <EM") == "x "
    assert restorer.feed("PHASIS is odd") == "<EMPHASIS is odd"


def test_redact_request_covers_parts_and_tool_arguments() -> None:
    request = ChatRequest.model_validate(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "I am jo@example.com"}]},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "1", "type": "function", "function": {"name": "mail", "arguments": '{"to": "jo@example.com"}'}}]},
                {"role": "tool", "tool_call_id": "1", "content": "sent to jo@example.com"},
            ]
        }
    )  # fmt: skip
    redactor = Redactor()
    safe = redact_request(request, PatternDetector(), redactor)
    dumped = safe.model_dump_json()
    assert "jo@example.com" not in dumped
    assert dumped.count("<EMAIL_1>") == 3
    assert request.messages[1].content[0]["text"] == "I am jo@example.com"  # type: ignore[index]


async def test_redacting_backend_hides_values_upstream_and_restores_answers() -> None:
    def echo(request: ChatRequest) -> ScriptedReply:
        text = request.messages[-1].text()
        return ScriptedReply(text=f"Noted: {text}", pieces=["Noted: ", text[:9], text[9:]])

    inner = ScriptedBackend("cloud", echo)
    backend = RedactingBackend(inner, PatternDetector())
    request = ChatRequest.model_validate(
        {"messages": [{"role": "user", "content": "SSN 078-05-1120, mail jo@example.com"}]}
    )

    result = await backend.complete(request)
    chunks = [c async for c in backend.stream(request)]

    seen = [r.messages[-1].text() for r in inner.requests]
    assert seen == ["SSN <SSN_1>, mail <EMAIL_1>"] * 2
    assert result.body["choices"][0]["message"]["content"] == "Noted: SSN 078-05-1120, mail jo@example.com"
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert streamed == "Noted: SSN 078-05-1120, mail jo@example.com"
    assert json.dumps(chunks).count("<") == 0
