"""The Anthropic and Google emulators judged by the official SDKs, and our request bodies by the SDKs' types.

Two directions:

* the ``anthropic`` and ``google-genai`` clients (and google-auth, for Vertex
  tokens) talk to the emulators and must parse every answer, streams and
  error bodies included; raw answers are also validated strictly against the
  SDKs' response models, which the SDKs themselves only read leniently;
* the bodies our adapters send are checked against the SDKs' request types:
  Anthropic's TypedDicts key by key (unknown or missing fields, literals,
  nesting), Google's pydantic models with their camelCase aliases and
  ``extra="forbid"``, and the SDK's own request converter for where each
  field belongs. Finally each SDK sends our translated request itself.
"""

from __future__ import annotations

import collections.abc
import json
import types as pytypes
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import anthropic
import httpx
import pydantic
import pytest
import typing_extensions
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming, MessageCreateParamsStreaming
from google import genai
from google.genai import _api_client, _common, errors, models
from google.genai import types as gtypes
from google.oauth2.credentials import Credentials

from router.backends.anthropic import AnthropicBackend
from router.backends.gemini import GeminiBackend
from router.backends.vertex import VertexBackend
from router.chat import ChatRequest
from router.config import AnthropicTargetConfig, GeminiTargetConfig, VertexTargetConfig
from tests.emulators import anthropic_server, google_server
from tests.support.loopback import serving_in_thread

ANTHROPIC_KEY = "sk-ant-api03-conformance-0123456789"
GEMINI_KEY = "AIzaSy-conformance-0123456789"
VERTEX_TOKEN = "ya29.conformance-token-0123456789"
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALLS = [
    {"id": "toolu_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
     "extra_content": {"google": {"thought_signature": "c2lnbmF0dXJl"}}},
    {"id": "toolu_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
]  # fmt: skip
RICH_MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "developer", "content": "Use metric units."},
    {"role": "user", "content": [
        {"type": "text", "text": "What is in this picture, and the weather in Oslo and Rome?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}},
    ]},
    {"role": "assistant", "content": "Let me check.", "tool_calls": CALLS},
    {"role": "tool", "tool_call_id": "toolu_a", "content": '{"celsius": 3}'},
    {"role": "tool", "tool_call_id": "toolu_b", "content": "warm"},
    {"role": "assistant", "content": "Oslo is cold, Rome warm."},
    {"role": "user", "content": "Thanks! Anything else?"},
]  # fmt: skip
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}
JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA}}


def rich_request(**extra: Any) -> ChatRequest:
    values = {"messages": RICH_MESSAGES, "tools": [TOOL], "stop": ["END"], "max_tokens": 200, "user": "u-1", **extra}
    return ChatRequest.model_validate(values)


# --- a strict check of a value against an SDK TypedDict ---------------------------------------


def typed_problems(value: object, tp: Any, path: str = "$") -> list[str]:
    """Where ``value`` breaks ``tp``: unknown or missing keys, wrong literals, types or nesting.

    pydantic's TypeAdapter is no judge here: it ignores unknown keys of a
    TypedDict and validates ``Iterable`` fields lazily, so it accepts bodies
    the API refuses.
    """
    origin, args = get_origin(tp), get_args(tp)
    if tp in (Any, object):
        return []
    if origin in (typing.Annotated, typing.Required, typing.NotRequired):
        return typed_problems(value, args[0], path)
    if tp is type(None):
        return [] if value is None else [f"{path}: expected null"]
    if origin is Literal:
        return [] if value in args else [f"{path}: {value!r} is not one of {args}"]
    if origin in (Union, pytypes.UnionType):
        results = [typed_problems(value, arm, path) for arm in args]
        if any(not r for r in results):
            return []
        # Report the closest arm: one whose shape matches here and that breaks deeper down.
        deeper = [r for r in results if not any(p.startswith(f"{path}: ") for p in r)]
        return min(deeper or results, key=len)
    if typing_extensions.is_typeddict(tp):
        return _typed_dict_problems(value, tp, path)
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence):
        if not isinstance(value, list):
            return [f"{path}: expected an array"]
        return [p for i, item in enumerate(value) for p in typed_problems(item, args[0], f"{path}[{i}]")]
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            return [f"{path}: expected an object"]
        return [p for k, v in value.items() for p in typed_problems(v, args[1], f"{path}.{k}")]
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return [f"{path}: {tp.__name__} is a response model, not a request param"]
    return _scalar_problems(value, tp, path)


def _typed_dict_problems(value: object, tp: Any, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({tp.__name__})"]
    hints = get_type_hints(tp, include_extras=True)
    problems = [f"{path}.{key}: unknown field of {tp.__name__}" for key in value if key not in hints]
    # With postponed annotations the SDK's Required[...] markers are not in __required_keys__.
    required = set(tp.__required_keys__) | {k for k, hint in hints.items() if get_origin(hint) is typing.Required}
    problems += [f"{path}.{key}: required by {tp.__name__}" for key in sorted(required) if key not in value]
    for key, item in value.items():
        if key in hints:
            problems += typed_problems(item, hints[key], f"{path}.{key}")
    return problems


def _scalar_problems(value: object, tp: Any, path: str) -> list[str]:
    checks: dict[Any, bool] = {
        str: isinstance(value, str),
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
    }
    if tp in checks:
        return [] if checks[tp] else [f"{path}: expected {tp.__name__}, got {value!r}"]
    # Files (typing.IO, os.PathLike) and anything else cannot come from JSON.
    return [f"{path}: {value!r} cannot be a {tp!r}"]


def test_the_typed_dict_check_can_fail() -> None:
    good = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert typed_problems(good, MessageCreateParamsNonStreaming) == []
    misspelt = {**good, "stop_sequence": ["x"]}
    assert typed_problems(misspelt, MessageCreateParamsNonStreaming) == [
        "$.stop_sequence: unknown field of MessageCreateParamsNonStreaming"
    ]
    missing = {k: v for k, v in good.items() if k != "max_tokens"}
    assert typed_problems(missing, MessageCreateParamsNonStreaming) == [
        "$.max_tokens: required by MessageCreateParamsNonStreaming"
    ]
    nested = {**good, "tools": [{"name": "f", "input_scheme": {"type": "object"}}]}
    assert typed_problems(nested, MessageCreateParamsNonStreaming)
    bad_block = {**good, "messages": [{"role": "user", "content": [{"type": "txt", "text": "hi"}]}]}
    assert typed_problems(bad_block, MessageCreateParamsNonStreaming)


# --- Anthropic: the emulator, judged by the SDK ------------------------------------------------


@pytest.fixture(scope="module")
def anthropic_emulator() -> Iterator[tuple[str, anthropic_server.EmulatorState]]:
    state = anthropic_server.EmulatorState(api_key=ANTHROPIC_KEY)
    with serving_in_thread(anthropic_server.create_app(state)) as url:
        yield url, state


@pytest.fixture
def claude(anthropic_emulator: tuple[str, anthropic_server.EmulatorState]) -> Iterator[anthropic.Anthropic]:
    url, state = anthropic_emulator
    state.script.clear()
    state.requests.clear()
    with anthropic.Anthropic(base_url=url, api_key=ANTHROPIC_KEY, max_retries=0, timeout=10) as client:
        yield client


def anthropic_state(emulator: tuple[str, anthropic_server.EmulatorState]) -> anthropic_server.EmulatorState:
    return emulator[1]


def test_anthropic_sdk_parses_a_message_and_it_validates_strictly(
    claude: anthropic.Anthropic, anthropic_emulator: tuple[str, anthropic_server.EmulatorState]
) -> None:
    raw = claude.messages.with_raw_response.create(
        model="claude-sonnet-4-6",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "hello there"}],
    )
    message = raw.parse()
    assert message.content[0].type == "text"
    assert message.content[0].text == "Echo: hello there"
    assert (message.stop_reason, message.usage.output_tokens) == ("end_turn", 3)
    Message.model_validate(raw.http_response.json())
    seen = anthropic_state(anthropic_emulator).requests[0]["headers"]
    assert seen["authorization"] == f"Bearer {ANTHROPIC_KEY}"
    assert seen["anthropic-version"]


def test_anthropic_sdk_stream_helper_accumulates_text_and_tool_input(
    claude: anthropic.Anthropic, anthropic_emulator: tuple[str, anthropic_server.EmulatorState]
) -> None:
    call = {"name": "get_weather", "input": {"city": "Paris"}, "id": "toolu_1"}
    anthropic_state(anthropic_emulator).script.add({"content": "Checking now", "tool_calls": [call]})
    with claude.messages.stream(
        model="claude-sonnet-4-6", max_tokens=100, messages=[{"role": "user", "content": "weather?"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Checking now"
    assert [block.type for block in final.content] == ["text", "tool_use"]
    tool_use = final.content[1]
    assert tool_use.type == "tool_use"
    assert (tool_use.id, tool_use.name, tool_use.input) == ("toolu_1", "get_weather", {"city": "Paris"})
    assert (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens) == ("tool_use", 1, 3)


def test_anthropic_stream_events_validate_strictly_and_in_order(
    anthropic_emulator: tuple[str, anthropic_server.EmulatorState],
) -> None:
    url, state = anthropic_emulator
    state.script.clear()
    body = {"model": "m", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "a b"}]}
    headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", url + "/v1/messages", json=body, headers=headers, timeout=10) as response:
        raw = response.read().decode()
    assert "[DONE]" not in raw
    adapter = pydantic.TypeAdapter(RawMessageStreamEvent)
    names = []
    for block in raw.strip().split("\n\n"):
        event_line, data_line = block.split("\n")
        name, data = event_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        names.append(name)
        if name != "ping":
            adapter.validate_python(data)
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert "ping" in names


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        ({"status": 429, "error_type": "rate_limit_error", "error": "slow", "headers": {"retry-after": "7"}}, anthropic.RateLimitError),
        ({"status": 529, "error_type": "overloaded_error", "error": "Overloaded"}, anthropic.OverloadedError),
        ({"status": 500, "error_type": "api_error", "error": "boom"}, anthropic.InternalServerError),
    ],
)  # fmt: skip
def test_anthropic_sdk_reads_error_bodies(
    claude: anthropic.Anthropic,
    anthropic_emulator: tuple[str, anthropic_server.EmulatorState],
    behaviour: dict[str, Any],
    error: type[anthropic.APIStatusError],
) -> None:
    anthropic_state(anthropic_emulator).script.add(behaviour)
    with pytest.raises(error) as caught:
        claude.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == behaviour["status"]
    assert caught.value.body["error"]["type"] == behaviour["error_type"]  # type: ignore[index]
    assert behaviour["error"] in caught.value.message
    assert caught.value.request_id and caught.value.request_id.startswith("req_")


def test_anthropic_sdk_rejects_a_wrong_key_and_raises_on_a_stream_error_event(
    anthropic_emulator: tuple[str, anthropic_server.EmulatorState], claude: anthropic.Anthropic
) -> None:
    url, state = anthropic_emulator
    with (
        anthropic.Anthropic(base_url=url, api_key="sk-ant-wrong-key-000000", max_retries=0) as wrong,
        pytest.raises(anthropic.AuthenticationError),
    ):
        wrong.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    state.script.add(
        {"content": "a b c", "error_event_after": 1, "error_type": "overloaded_error", "error": "Overloaded"}
    )
    events = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        for event in claude.messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}], stream=True
        ):
            events.append(event.type)
    assert caught.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert events[0] == "message_start"


# --- Anthropic: our request bodies, judged by the SDK's types -----------------------------------


def claude_backend(version: str = "2026-10-21", **extra: Any) -> AnthropicBackend:
    values = {"type": "anthropic", "model": "claude-sonnet-4-6", "anthropic_version": version, **extra}
    return AnthropicBackend("claude", AnthropicTargetConfig.model_validate(values), environ={"ANTHROPIC_API_KEY": "k"})


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"tool_choice": "none"},
        {"tool_choice": "required", "parallel_tool_calls": False},
        {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        {"response_format": JSON_SCHEMA_FORMAT, "temperature": 0.3, "top_p": 0.5},
    ],
)
def test_our_anthropic_bodies_match_the_sdk_request_types(extra: dict[str, Any]) -> None:
    backend = claude_backend()
    request = rich_request(**extra)
    assert typed_problems(backend.payload(request, stream=False), MessageCreateParamsNonStreaming) == []
    assert typed_problems(backend.payload(request, stream=True), MessageCreateParamsStreaming) == []


def test_sampling_fields_are_the_only_extras_on_version_2023_06_01() -> None:
    """SDK 2.14 describes version 2026-10-21, which removed them; 2023-06-01 still documents them."""
    body = claude_backend("2023-06-01").payload(rich_request(temperature=0.3, top_k=4), stream=False)
    assert typed_problems(body, MessageCreateParamsNonStreaming) == [
        "$.temperature: unknown field of MessageCreateParamsNonStreaming",
        "$.top_k: unknown field of MessageCreateParamsNonStreaming",
    ]


def test_the_anthropic_sdk_sends_our_body_and_the_emulator_accepts_it(
    claude: anthropic.Anthropic, anthropic_emulator: tuple[str, anthropic_server.EmulatorState]
) -> None:
    body = claude_backend().payload(rich_request(tool_choice="auto"), stream=False)
    message = claude.messages.create(**body)  # an unknown top-level field would be a TypeError here
    assert message.content[0].type == "text"
    assert anthropic_state(anthropic_emulator).requests[-1]["body"] == body


# --- Google: the emulator, judged by google-genai -----------------------------------------------


@pytest.fixture(scope="module")
def google_emulator() -> Iterator[tuple[str, google_server.EmulatorState]]:
    state = google_server.EmulatorState(api_key=GEMINI_KEY)
    state.tokens.add(VERTEX_TOKEN)
    with serving_in_thread(google_server.create_app(state)) as url:
        yield url, state


@pytest.fixture
def google_url(google_emulator: tuple[str, google_server.EmulatorState]) -> str:
    url, state = google_emulator
    state.script.clear()
    state.requests.clear()
    return url


def options(url: str, **extra: Any) -> gtypes.HttpOptions:
    return gtypes.HttpOptions(base_url=url, retry_options=gtypes.HttpRetryOptions(attempts=1), timeout=10_000, **extra)


@pytest.fixture
def gemini(google_url: str) -> Iterator[genai.Client]:
    with genai.Client(api_key=GEMINI_KEY, http_options=options(google_url)) as client:
        yield client


@pytest.fixture
def vertex(google_url: str) -> Iterator[genai.Client]:
    credentials = Credentials(token=VERTEX_TOKEN)
    http_options = options(google_url, api_version="v1")
    with genai.Client(
        vertexai=True, project="proj-1", location="us-central1", credentials=credentials, http_options=http_options
    ) as client:
        yield client


def strict_response(raw: bytes | str) -> gtypes.GenerateContentResponse:
    """The wire JSON parsed by its camelCase names, unknown fields refused."""
    return gtypes.GenerateContentResponse.model_validate_json(raw)


def test_genai_parses_an_answer_and_it_validates_strictly(gemini: genai.Client, google_url: str) -> None:
    config = gtypes.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=50)
    response = gemini.models.generate_content(model="gemini-2.5-flash", contents="hello there", config=config)
    assert response.text == "Echo: hello there"
    assert response.candidates and response.candidates[0].finish_reason == gtypes.FinishReason.STOP
    assert response.usage_metadata and response.usage_metadata.candidates_token_count == 3
    raw = httpx.post(
        google_url + "/v1beta/models/gemini-2.5-flash:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        headers={"x-goog-api-key": GEMINI_KEY},
    )
    assert strict_response(raw.content).text == "Echo: hi"


def test_genai_streams_text_and_function_calls(
    gemini: genai.Client, google_emulator: tuple[str, google_server.EmulatorState]
) -> None:
    google_emulator[1].script.add(
        {
            "content": "Let me see",
            "tool_calls": [{"name": "get_weather", "args": {"city": "Oslo"}, "thought_signature": "c2ln"}],
        }
    )
    chunks = list(gemini.models.generate_content_stream(model="gemini-2.5-flash", contents="weather?"))
    text = "".join(
        chunk.text or ""
        for chunk in chunks
        if chunk.candidates
        and chunk.candidates[0].content
        and chunk.candidates[0].content.parts
        and chunk.candidates[0].content.parts[0].text
    )
    assert text == "Let me see"
    last = chunks[-1]
    assert last.function_calls and last.function_calls[0].args == {"city": "Oslo"}
    assert last.candidates and last.candidates[0].content and last.candidates[0].content.parts
    assert last.candidates[0].content.parts[0].thought_signature == b"sig"
    assert last.candidates[0].finish_reason == gtypes.FinishReason.STOP
    assert google_emulator[1].requests[-1]["query"] == {"alt": "sse"}


def test_sse_framing_and_json_array_stream_validate_strictly(google_url: str) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "one two"}]}]}
    headers = {"x-goog-api-key": GEMINI_KEY}
    path = google_url + "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    sse = httpx.post(path, params={"alt": "sse"}, json=body, headers=headers).content
    assert sse.endswith(b"\r\n\r\n")
    events = [strict_response(event.removeprefix(b"data: ")) for event in sse.split(b"\r\n\r\n") if event]
    array = json.loads(httpx.post(path, json=body, headers=headers).content)
    assert [strict_response(json.dumps(item)).text for item in array] == [e.text for e in events]
    assert "".join(e.text or "" for e in events) == "Echo: one two"


def test_genai_reads_blocked_prompts_and_safety_stops(
    gemini: genai.Client, google_emulator: tuple[str, google_server.EmulatorState]
) -> None:
    google_emulator[1].script.add({"block_reason": "SAFETY"}, {"finish_reason": "SAFETY", "content": ""})
    blocked = gemini.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert blocked.prompt_feedback and blocked.prompt_feedback.block_reason == gtypes.BlockedReason.SAFETY
    withheld = gemini.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert withheld.candidates and withheld.candidates[0].finish_reason == gtypes.FinishReason.SAFETY


@pytest.mark.parametrize(
    ("behaviour", "status", "name"),
    [
        ({"status": 429, "error": "Resource exhausted", "retry_delay": "7s"}, 429, "RESOURCE_EXHAUSTED"),
        ({"status": 500, "error": "Internal error"}, 500, "INTERNAL"),
        ({"status": 503, "error": "The model is overloaded."}, 503, "UNAVAILABLE"),
    ],
)
def test_genai_reads_error_bodies(
    gemini: genai.Client,
    google_emulator: tuple[str, google_server.EmulatorState],
    behaviour: dict[str, Any],
    status: int,
    name: str,
) -> None:
    google_emulator[1].script.add(behaviour)
    with pytest.raises(errors.APIError) as caught:
        gemini.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert (caught.value.code, caught.value.status, caught.value.message) == (status, name, behaviour["error"])


def test_genai_sees_wrong_and_missing_keys_as_google_does(google_url: str) -> None:
    with (
        genai.Client(api_key="AIza-wrong-0000000000", http_options=options(google_url)) as wrong,
        pytest.raises(errors.ClientError) as caught,
    ):
        wrong.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert (caught.value.code, caught.value.status) == (400, "INVALID_ARGUMENT")
    assert caught.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    missing = httpx.post(google_url + "/v1beta/models/gemini-2.5-flash:generateContent", json={"contents": []})
    assert (missing.status_code, missing.json()["error"]["status"]) == (403, "PERMISSION_DENIED")


def test_genai_vertex_mode_with_a_bearer_token(
    vertex: genai.Client, google_emulator: tuple[str, google_server.EmulatorState]
) -> None:
    response = vertex.models.generate_content(model="gemini-2.5-flash", contents="hi vertex")
    assert response.text == "Echo: hi vertex"
    chunks = list(vertex.models.generate_content_stream(model="gemini-2.5-flash", contents="one two"))
    assert "".join(c.text or "" for c in chunks) == "Echo: one two"
    seen = google_emulator[1].requests[-1]
    assert (
        seen["path"]
        == "/v1/projects/proj-1/locations/us-central1/publishers/google/models/gemini-2.5-flash:streamGenerateContent"
    )
    assert seen["headers"]["authorization"] == f"Bearer {VERTEX_TOKEN}"


# --- Google: our request bodies, judged by google-genai's types ---------------------------------

# What the SDK's models parse each top-level field of a generateContent body as.
GOOGLE_FIELDS: dict[str, Any] = {
    "contents": list[gtypes.Content],
    "systemInstruction": gtypes.Content,
    "tools": list[gtypes.Tool],
    "toolConfig": gtypes.ToolConfig,
    "generationConfig": gtypes.GenerationConfig,
}


def parse_google_body(body: dict[str, Any]) -> dict[str, Any]:
    """Each field parsed strictly by the SDK's model; the dump must give back exactly what we sent."""
    assert set(body) <= set(GOOGLE_FIELDS), f"unknown top-level fields: {set(body) - set(GOOGLE_FIELDS)}"
    parsed = {}
    for name, value in body.items():
        adapter = pydantic.TypeAdapter(GOOGLE_FIELDS[name])
        model = adapter.validate_json(json.dumps(value))
        assert adapter.dump_python(model, mode="json", by_alias=True, exclude_none=True) == value, name
        parsed[name] = model
    return parsed


def sdk_wire(parsed: dict[str, Any], *, vertex: bool) -> dict[str, Any]:
    """The body google-genai's own converter writes for the same request."""
    config = gtypes.GenerateContentConfig(
        **(parsed["generationConfig"].model_dump(exclude_none=True) if "generationConfig" in parsed else {}),
        system_instruction=parsed.get("systemInstruction"),
        tools=parsed.get("tools"),
        tool_config=parsed.get("toolConfig"),
    )
    params = gtypes._GenerateContentParameters(model="gemini-2.5-flash", contents=parsed["contents"], config=config)
    if vertex:
        client = _api_client.BaseApiClient(
            vertexai=True, project="p", location="us-central1", credentials=Credentials(token="t")
        )
        wire = models._GenerateContentParameters_to_vertex(client, params)
    else:
        wire = models._GenerateContentParameters_to_mldev(_api_client.BaseApiClient(api_key="k"), params)
    converted: dict[str, Any] = json.loads(json.dumps(_common.convert_to_dict(wire), default=str))
    converted.pop("_url", None)
    return converted


def gemini_backend() -> GeminiBackend:
    return GeminiBackend(
        "gemini", GeminiTargetConfig(type="gemini", model="gemini-2.5-flash"), environ={"GEMINI_API_KEY": "k"}
    )


def vertex_backend() -> VertexBackend:
    config = VertexTargetConfig(type="vertex", project="p", region="us-central1", model="gemini-2.5-flash")
    return VertexBackend("vertex", config, tokens=None)


GOOGLE_VARIANTS = [
    {},
    {"tool_choice": "required"},
    {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"response_format": JSON_SCHEMA_FORMAT, "temperature": 0.3, "top_p": 0.5, "top_k": 8, "seed": 1,
     "presence_penalty": 0.1, "frequency_penalty": 0.2},
    {"response_format": {"type": "json_object"}},
]  # fmt: skip


@pytest.mark.parametrize("extra", GOOGLE_VARIANTS)
@pytest.mark.parametrize("kind", ["gemini", "vertex"])
def test_our_google_bodies_match_the_sdk_models_and_converter(kind: str, extra: dict[str, Any]) -> None:
    body = (gemini_backend() if kind == "gemini" else vertex_backend()).payload(rich_request(**extra))
    parsed = parse_google_body(body)
    assert {c.role for c in parsed["contents"]} == {"user", "model"}
    wire = sdk_wire(parsed, vertex=kind == "vertex")
    assert set(wire) == set(body)
    assert wire.get("generationConfig") == body.get("generationConfig")
    assert wire.get("systemInstruction") == body.get("systemInstruction")


def test_the_google_check_can_fail() -> None:
    body = gemini_backend().payload(rich_request())
    for broken in (
        {**body, "system_prompt": {"parts": [{"text": "x"}]}},
        {**body, "generationConfig": {"max_tokens": 5}},
        {**body, "contents": [{"role": "user", "parts": [{"txt": "hi"}]}]},
        {**body, "tools": [{"functionDeclarations": [{"name": "f", "parameterJsonSchema": {}}]}]},
    ):
        with pytest.raises((AssertionError, pydantic.ValidationError)):
            parse_google_body(broken)


def test_genai_sends_our_translated_request_and_the_emulator_accepts_it(
    gemini: genai.Client, vertex: genai.Client
) -> None:
    body = gemini_backend().payload(rich_request(tool_choice="auto", temperature=0.2))
    parsed = parse_google_body(body)
    config = gtypes.GenerateContentConfig(
        **parsed["generationConfig"].model_dump(exclude_none=True),
        system_instruction=parsed["systemInstruction"],
        tools=parsed["tools"],
        tool_config=parsed["toolConfig"],
    )
    for client in (gemini, vertex):
        response = client.models.generate_content(model="gemini-2.5-flash", contents=parsed["contents"], config=config)
        assert response.text == "Echo: Thanks! Anything else?"
