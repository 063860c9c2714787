"""The outgoing surface: every string an upstream would receive, each addressed by its path."""

from __future__ import annotations

from typing import Any

from router.chat import ChatRequest
from router.classify.classifier import WINDOW, RequestClassifier, detect_in_windows
from router.classify.personal_data import PatternDetector
from router.features import Span
from router.surface import outgoing_surface


def surface_of(body: dict[str, Any]) -> dict[str, str]:
    return {field.label: field.text for field in outgoing_surface(ChatRequest.model_validate(body)).fields}


def test_every_field_the_issue_lists_is_on_the_surface() -> None:
    labels = surface_of(
        {
            "model": "auto",
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "name": "ann", "content": [
                    {"type": "text", "text": "t"},
                    {"type": "image_url", "image_url": {"url": "https://x.io/a.png?u=a%40b.io", "detail": "low"}},
                    {"type": "file", "file": {"filename": "cv-ann.pdf", "file_data": "data:application/pdf;base64,AAAA"}},
                ], "x_custom": "per-message extra"},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}],
                 "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}],
                 "function_call": {"name": "g", "arguments": "{}"}},
                {"role": "tool", "tool_call_id": "c1", "content": "result"},
            ],
            "user": "u", "metadata": {"k": "v"}, "stop": ["s1", "s2"], "prediction": {"type": "content", "content": "p"},
            "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {
                "type": "object", "properties": {"to": {"type": "string", "description": "pd", "default": "dv",
                                                        "enum": ["e1"]}}}}}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"description": "rd"}}},
            "some_future_field": {"nested": ["deep"]},
            "seed": 4111111111111111,
        }
    )  # fmt: skip
    assert labels == {
        "messages[0].content": "sys",
        "messages[1].content[0].text": "t",
        "messages[1].content[1].image_url.url": "https://x.io/a.png?u=a%40b.io",
        "messages[1].content[2].file.filename": "cv-ann.pdf",
        "messages[1].name": "ann",
        "messages[1].x_custom (key)": "x_custom",
        "messages[1].x_custom": "per-message extra",
        "messages[2].content[0].refusal": "no",
        "messages[2].tool_calls[0].id": "c1",
        "messages[2].tool_calls[0].function.name": "f",
        "messages[2].tool_calls[0].function.arguments": '{"a": 1}',
        "messages[2].function_call.name": "g",
        "messages[2].function_call.arguments": "{}",
        "messages[3].content": "result",
        "messages[3].tool_call_id": "c1",
        "stop[0]": "s1",
        "stop[1]": "s2",
        "user": "u",
        "response_format.json_schema.name": "n",
        "response_format.json_schema.schema.description": "rd",
        "tools[0].function.name": "f",
        "tools[0].function.description": "d",
        "tools[0].function.parameters.properties.to (key)": "to",
        "tools[0].function.parameters.properties.to.description": "pd",
        "tools[0].function.parameters.properties.to.default": "dv",
        "tools[0].function.parameters.properties.to.enum[0]": "e1",
        "metadata.k (key)": "k",
        "metadata.k": "v",
        "prediction.content": "p",
        "some_future_field (key)": "some_future_field",
        "some_future_field.nested (key)": "nested",
        "some_future_field.nested[0]": "deep",
    }


def test_bytes_are_reported_uninspectable_not_scanned() -> None:
    request = ChatRequest.model_validate(
        {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0="}}]}]}
    )  # fmt: skip
    surface = outgoing_surface(request)
    assert [(item.field, item.kind) for item in surface.uninspectable] == [
        ("messages[0].content[0].image_url.url", "image"),
        ("messages[0].content[1].input_audio.data", "audio"),
        ("messages[0].content[2].file.file_data", "file"),
    ]
    assert "iVBOR" not in surface.text and "UklGR" not in surface.text


def test_large_integers_in_free_form_places_are_scanned_but_sampling_numbers_are_not() -> None:
    labels = surface_of(
        {"messages": [{"role": "user", "content": "hi"}], "seed": 4111111111111111, "max_tokens": 100000,
         "metadata": {"account": 4111111111111111, "small": 42}}
    )  # fmt: skip
    assert labels["metadata.account"] == "4111111111111111"
    assert "metadata.small" not in labels and "seed" not in labels and "max_tokens" not in labels


def test_locate_cuts_a_span_that_crosses_fields_into_one_piece_per_field() -> None:
    surface = outgoing_surface(
        ChatRequest.model_validate({"messages": [{"role": "user", "content": "ab"}, {"role": "user", "content": "cd"}]})
    )
    assert surface.text == "ab\ncd"
    pieces = surface.locate([Span("person_name", 1, 4, 0.7)])
    assert [(p.field, p.start, p.end) for p in pieces] == [("messages[0].content", 1, 2), ("messages[1].content", 0, 1)]


def test_windowed_detection_finds_what_one_pass_finds_on_long_text() -> None:
    detector = PatternDetector()
    filler = "lorem ipsum dolor sit amet " * 200
    values = ["jo@example.com", "+1 415-555-0132", "4111 1111 1111 1111", "078-05-1120"]
    # Put values right on and around every window border.
    text, positions = "", []
    for index in range(12):
        text += filler[: WINDOW // 3 - len(text) % (WINDOW // 3) - 3] + " "
        positions.append(len(text))
        text += values[index % len(values)] + " "
    one_pass = [(s.kind, s.start, s.end) for s in detector.detect(text)]
    windowed = [(s.kind, s.start, s.end) for s in detect_in_windows(detector, text, window=4096)]
    assert sorted(windowed) == sorted(one_pass)
    assert len(one_pass) == 12


async def test_classifier_reads_the_whole_surface_and_locates_spans_on_fields() -> None:
    request = ChatRequest.model_validate(
        {"messages": [{"role": "user", "content": "hello"}], "user": "jo@example.com",
         "tools": [{"type": "function", "function": {"name": "f", "description": "call +1 415-555-0132"}}]}
    )  # fmt: skip
    features = await RequestClassifier().classify(request)
    assert features.personal_data.found
    assert sorted((s.kind, s.field) for s in features.personal_data.spans) == [
        ("email", "user"),
        ("phone", "tools[0].function.description"),
    ]
