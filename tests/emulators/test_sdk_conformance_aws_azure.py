"""The Bedrock and Azure OpenAI emulators, and our adapters' requests, judged by the official SDKs.

* boto3's ``bedrock-runtime`` client and openai's ``AzureOpenAI`` client talk to
  the emulators and must parse every answer, streams and errors included;
* the Bedrock emulator must accept boto3's SigV4 signatures and reject a wrong
  secret, an unknown key and the wrong service scope;
* our adapters' request bodies must validate against botocore's service model
  for ``bedrock-runtime`` (and serialise exactly as botocore would) and against
  openai's own request types; each check is shown to fail on a wrong field.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import botocore.exceptions
import httpx
import openai
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.serialize import create_serializer
from botocore.session import get_session
from openai.types.chat.completion_create_params import (
    CompletionCreateParamsNonStreaming,
    CompletionCreateParamsStreaming,
)
from pydantic import BaseModel, ConfigDict, ValidationError

from router.backends.azure_openai import AzureOpenAIBackend
from router.backends.bedrock import converse_body, converse_path
from router.chat import ChatRequest
from router.config import AzureOpenAITargetConfig
from tests.emulators import azure_openai_server, bedrock_server
from tests.emulators.azure_openai_server import TEST_API_KEY, TEST_DEPLOYMENT, TEST_TOKEN, AzureEmulatorState
from tests.emulators.bedrock_server import (
    TEST_ACCESS_KEY,
    TEST_REGION,
    TEST_SECRET_KEY,
    BedrockEmulatorState,
    validate_converse,
)
from tests.support.loopback import serving_in_thread

MODEL_ID = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n not really").decode()
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
RICH_MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "What is in this picture, and the weather?"},
                                 {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
    {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    {"role": "user", "content": "Thanks. Summarise."},
]  # fmt: skip


def rich_request(**extra: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {
            "messages": RICH_MESSAGES,
            "tools": TOOLS,
            "temperature": 0.4,
            "top_p": 0.9,
            "max_tokens": 64,
            "stop": ["END"],
            **extra,
        }
    )


# --- Bedrock: boto3 against the emulator ----------------------------------------------------------


@pytest.fixture(scope="module")
def bedrock_state() -> BedrockEmulatorState:
    return BedrockEmulatorState()


@pytest.fixture(scope="module")
def bedrock_url(bedrock_state: BedrockEmulatorState) -> Iterator[str]:
    with serving_in_thread(bedrock_server.create_app(bedrock_state)) as url:
        yield url


@pytest.fixture
def state(bedrock_state: BedrockEmulatorState) -> BedrockEmulatorState:
    bedrock_state.script.clear()
    bedrock_state.requests.clear()
    return bedrock_state


@pytest.fixture
def boto_client() -> Iterator[Callable[..., Any]]:
    """Makes boto3 Bedrock Runtime clients, closed after the test (an open pool warns when collected)."""
    clients: list[Any] = []

    def make(url: str, secret: str = TEST_SECRET_KEY, key: str = TEST_ACCESS_KEY) -> Any:
        client = boto3.client(
            "bedrock-runtime",
            endpoint_url=url,
            region_name=TEST_REGION,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_boto3_converse_is_accepted_and_parsed(
    boto_client: Callable[..., Any], bedrock_url: str, state: BedrockEmulatorState
) -> None:
    response = boto_client(bedrock_url).converse(
        modelId=MODEL_ID,
        system=[{"text": "Be brief."}],
        messages=[{"role": "user", "content": [{"text": "hello there"}]}],
        inferenceConfig={"maxTokens": 10, "temperature": 0.2, "stopSequences": ["zzz"]},
    )
    assert response["output"]["message"]["content"] == [{"text": "Echo: hello there"}]
    assert response["stopReason"] == "end_turn"
    assert response["usage"] == {"inputTokens": 4, "outputTokens": 3, "totalTokens": 7}
    # boto3 percent-encodes the model id once in the path; the emulator verified its signature over it.
    assert state.requests[0]["path"] == "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"


@pytest.mark.parametrize("behaviour", [{}, {"split": 4}, {"coalesce": True}])
def test_boto3_converse_stream_parses_every_event(
    boto_client: Callable[..., Any], bedrock_url: str, state: BedrockEmulatorState, behaviour: dict[str, Any]
) -> None:
    call = {"id": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}
    state.script.add({"content": "Let me look.", "tool_calls": [call], **behaviour})
    response = boto_client(bedrock_url).converse_stream(
        modelId=MODEL_ID,
        messages=[{"role": "user", "content": [{"text": "Weather?"}]}],
        toolConfig={"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}]},
    )
    events = list(response["stream"])

    kinds = [next(iter(event)) for event in events]
    assert kinds[0] == "messageStart"
    assert kinds[-2:] == ["messageStop", "metadata"]
    text = "".join(e["contentBlockDelta"]["delta"].get("text", "") for e in events if "contentBlockDelta" in e)
    assert text == "Let me look."
    start = next(e["contentBlockStart"] for e in events if "contentBlockStart" in e)
    assert start["start"]["toolUse"] == {"toolUseId": "tooluse_1", "name": "get_weather"}
    arguments = "".join(
        e["contentBlockDelta"]["delta"]["toolUse"]["input"]
        for e in events
        if "contentBlockDelta" in e and "toolUse" in e["contentBlockDelta"]["delta"]
    )
    assert json.loads(arguments) == {"city": "Paris"}
    assert events[-2]["messageStop"]["stopReason"] == "tool_use"
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 5 + 3


def test_boto3_parses_tool_use_answers(
    boto_client: Callable[..., Any], bedrock_url: str, state: BedrockEmulatorState
) -> None:
    state.script.add({"tool_calls": [{"id": "t1", "name": "get_weather", "input": {"city": "Oslo"}}]})
    response = boto_client(bedrock_url).converse(modelId=MODEL_ID, messages=[{"role": "user", "content": [{"text": "x"}]}],
        toolConfig={"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}]})  # fmt: skip
    assert response["output"]["message"]["content"] == [
        {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Oslo"}}}
    ]
    assert response["stopReason"] == "tool_use"


@pytest.mark.parametrize(
    ("error_type", "status"),
    [
        ("ThrottlingException", 429),
        ("ValidationException", 400),
        ("AccessDeniedException", 403),
        ("ModelTimeoutException", 408),
        ("InternalServerException", 500),
        ("ServiceUnavailableException", 503),
    ],
)
def test_boto3_reads_the_error_type_header(
    boto_client: Callable[..., Any], bedrock_url: str, state: BedrockEmulatorState, error_type: str, status: int
) -> None:
    state.script.add({"error_type": error_type, "error": "emulated"})
    client = boto_client(bedrock_url)
    with pytest.raises(getattr(client.exceptions, error_type)) as caught:
        client.converse(modelId=MODEL_ID, messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert caught.value.response["Error"] == {"Message": "emulated", "Code": error_type}
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status


def test_boto3_raises_exception_events_from_the_stream(
    boto_client: Callable[..., Any], bedrock_url: str, state: BedrockEmulatorState
) -> None:
    state.script.add({"content": "a b c", "exception": {"type": "throttlingException", "message": "slow", "after": 1}})
    response = boto_client(bedrock_url).converse_stream(
        modelId=MODEL_ID, messages=[{"role": "user", "content": [{"text": "x"}]}]
    )
    with pytest.raises(botocore.exceptions.EventStreamError) as caught:
        list(response["stream"])
    response["stream"].close()
    assert caught.value.response["Error"]["Code"] == "throttlingException"


@pytest.mark.parametrize(
    ("key", "secret", "code"),
    [
        (TEST_ACCESS_KEY, "wrongSecret/0123456789abcdefghijklmnopqr", "InvalidSignatureException"),
        ("AKIAUNKNOWNKEY000000", TEST_SECRET_KEY, "UnrecognizedClientException"),
    ],
)
def test_the_emulator_rejects_bad_signatures(
    boto_client: Callable[..., Any], bedrock_url: str, key: str, secret: str, code: str
) -> None:
    client = boto_client(bedrock_url, secret=secret, key=key)
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.converse(modelId=MODEL_ID, messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert caught.value.response["Error"]["Code"] == code
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def signed_post(url: str, path: str, body: bytes, *, service: str = "bedrock") -> httpx.Response:
    request = AWSRequest(method="POST", url=url + path, data=body, headers={"content-type": "application/json"})
    SigV4Auth(Credentials(TEST_ACCESS_KEY, TEST_SECRET_KEY), service, TEST_REGION).add_auth(request)
    # httpx would decode %3A; send the path exactly as signed.
    raw = httpx.URL(url).copy_with(raw_path=path.encode())
    return httpx.post(raw, content=body, headers=dict(request.headers.items()))


def test_the_emulator_rejects_the_wrong_signing_service_and_unsigned_requests(bedrock_url: str) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": [{"text": "x"}]}]}).encode()
    path = converse_path(MODEL_ID, stream=False)
    assert signed_post(bedrock_url, path, body).status_code == 200
    wrong = signed_post(bedrock_url, path, body, service="bedrock-runtime")
    assert wrong.status_code == 403
    assert wrong.headers["x-amzn-ErrorType"].startswith("InvalidSignatureException:")
    assert "correct service: 'bedrock'" in wrong.json()["message"]
    unsigned = httpx.post(bedrock_url + "/model/m/converse", content=body)
    assert unsigned.status_code == 403
    assert unsigned.headers["x-amzn-ErrorType"].startswith("MissingAuthenticationTokenException")


def test_the_emulator_validates_bodies_like_bedrock(bedrock_url: str) -> None:
    path = converse_path(MODEL_ID, stream=False)
    wrong_field = signed_post(bedrock_url, path, b'{"messages": [{"role": "user", "content": [{"txt": "x"}]}]}')
    assert wrong_field.status_code == 400
    assert 'Unknown parameter in messages[0].content[0]: "txt"' in wrong_field.json()["message"]
    two_users = {
        "messages": [{"role": "user", "content": [{"text": "a"}]}, {"role": "user", "content": [{"text": "b"}]}]
    }
    not_alternating = signed_post(bedrock_url, path, json.dumps(two_users).encode())
    assert not_alternating.status_code == 400
    assert "alternate" in not_alternating.json()["message"]


# --- Bedrock: our request bodies against botocore's service model ---------------------------------


def converse_params(body: dict[str, Any]) -> dict[str, Any]:
    """REST-JSON body -> boto3-style params: modelId from the path, blobs as bytes."""
    params = copy.deepcopy({"modelId": MODEL_ID, **body})
    for message in params["messages"]:
        for block in message["content"]:
            if "image" in block:
                block["image"]["source"]["bytes"] = base64.b64decode(block["image"]["source"]["bytes"])
    return params


@pytest.mark.parametrize(
    "tool_choice", [None, "auto", "required", "none", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_our_converse_bodies_validate_and_serialise_as_botocore_would(tool_choice: object) -> None:
    body = converse_body(rich_request(tool_choice=tool_choice))
    assert validate_converse(MODEL_ID, body) == []
    assert validate_converse(MODEL_ID, body, stream=True) == []

    operation = get_session().get_service_model("bedrock-runtime").operation_model("Converse")
    serialised = create_serializer("rest-json").serialize_to_request(converse_params(body), operation)
    assert json.loads(serialised["body"]) == body
    assert serialised["url_path"] == converse_path(MODEL_ID, stream=False)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.update(inferenceConfiguration=b.pop("inferenceConfig")),
        lambda b: b["inferenceConfig"].update(max_tokens=b["inferenceConfig"].pop("maxTokens")),
        lambda b: b["toolConfig"]["tools"][0]["toolSpec"].update(parameters={}),
        lambda b: b["messages"][0]["content"].append({"text": ["not", "a", "string"]}),
        lambda b: b["messages"][1]["content"][1]["toolUse"].update(arguments="{}"),
        lambda b: b.update(system="Be brief."),
    ],
    ids=["inferenceConfig", "maxTokens", "toolSpec", "text", "toolUse", "system"],
)
def test_the_service_model_check_fails_on_a_wrong_field_or_shape(mutate: Any) -> None:
    body = converse_body(rich_request())
    mutate(body)
    assert validate_converse(MODEL_ID, body) != []


# --- Azure: openai.AzureOpenAI against the emulator -----------------------------------------------


@pytest.fixture(scope="module")
def azure_state() -> AzureEmulatorState:
    return AzureEmulatorState()


@pytest.fixture(scope="module")
def azure_url(azure_state: AzureEmulatorState) -> Iterator[str]:
    with serving_in_thread(azure_openai_server.create_app(azure_state)) as url:
        yield url


@pytest.fixture
def azure(azure_state: AzureEmulatorState) -> AzureEmulatorState:
    azure_state.script.clear()
    azure_state.requests.clear()
    return azure_state


def azure_client(url: str, **auth: Any) -> openai.AzureOpenAI:
    credentials = auth or {"api_key": TEST_API_KEY}
    return openai.AzureOpenAI(azure_endpoint=url, api_version="2024-10-21", max_retries=0, timeout=10, **credentials)


def test_azure_sdk_parses_answers(azure_url: str, azure: AzureEmulatorState) -> None:
    with azure_client(azure_url) as client:
        completion = client.chat.completions.create(
            model=TEST_DEPLOYMENT, messages=[{"role": "user", "content": "hello"}], temperature=0.2
        )
    assert completion.choices[0].message.content == "Echo: hello"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 13
    seen = azure.requests[0]
    assert seen["query"] == {"api-version": "2024-10-21"}
    assert seen["headers"]["api-key"] == TEST_API_KEY


def test_azure_sdk_parses_streams_including_the_prompt_filter_chunk(azure_url: str, azure: AzureEmulatorState) -> None:
    azure.script.add({"chunks": ["Hel", "lo"], "annotations": True})
    with azure_client(azure_url, azure_ad_token=TEST_TOKEN) as client:
        chunks = list(
            client.chat.completions.create(
                model=TEST_DEPLOYMENT,
                messages=[{"role": "user", "content": "x"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert chunks[0].choices == []
    assert chunks[0].model_extra is not None and "prompt_filter_results" in chunks[0].model_extra
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].delta) == "Hello"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
    assert azure.requests[0]["headers"]["authorization"] == f"Bearer {TEST_TOKEN}"


def test_azure_sdk_parses_tool_calls_and_filtered_answers(azure_url: str, azure: AzureEmulatorState) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    azure.script.add({"tool_calls": [call]}, {"content": "a b c", "content_filter": "completion"})
    with azure_client(azure_url) as client:
        tools = client.chat.completions.create(
            model=TEST_DEPLOYMENT,
            messages=[{"role": "user", "content": "x"}],
            tools=TOOLS,  # type: ignore[arg-type]
        )
        filtered = client.chat.completions.create(model=TEST_DEPLOYMENT, messages=[{"role": "user", "content": "x"}])
    tool_calls = tools.choices[0].message.tool_calls
    assert tool_calls is not None and tool_calls[0].function.arguments == '{"city":"Oslo"}'  # type: ignore[union-attr]
    assert filtered.choices[0].finish_reason == "content_filter"


def test_azure_sdk_maps_the_emulators_errors(azure_url: str, azure: AzureEmulatorState) -> None:
    azure.script.add(
        {"status": 429, "error": "Please retry after 6 seconds.", "headers": {"retry-after": "6"}},
        {"content_filter": "prompt"},
    )
    messages = [{"role": "user", "content": "x"}]
    with azure_client(azure_url) as client:
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model=TEST_DEPLOYMENT, messages=messages)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError) as filtered:
            client.chat.completions.create(model=TEST_DEPLOYMENT, messages=messages)  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-deployment", messages=messages)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError, match="Unrecognized request argument supplied: top_k"):
            client.chat.completions.create(model=TEST_DEPLOYMENT, messages=messages, extra_body={"top_k": 3})  # type: ignore[arg-type]
    assert limited.value.response.headers["retry-after"] == "6"
    assert filtered.value.code == "content_filter"
    with azure_client(azure_url, api_key="wrong-key") as bad, pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=TEST_DEPLOYMENT, messages=messages)  # type: ignore[arg-type]


def test_a_missing_api_version_is_404(azure_url: str, azure: AzureEmulatorState) -> None:
    response = httpx.post(
        f"{azure_url}/openai/deployments/{TEST_DEPLOYMENT}/chat/completions",
        json={"messages": [{"role": "user", "content": "x"}]},
        headers={"api-key": TEST_API_KEY},
    )
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "404", "message": "Resource not found"}}


# --- Azure: our request bodies against openai's request types -------------------------------------


class _NonStreaming(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: CompletionCreateParamsNonStreaming


class _Streaming(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: CompletionCreateParamsStreaming


def _drain(value: Any) -> Any:
    """Iterate pydantic's lazy validators (openai types use Iterable[...]) so every item is checked."""
    if isinstance(value, dict):
        return {key: _drain(item) for key, item in value.items()}
    if isinstance(value, list | tuple) or type(value).__name__ == "ValidatorIterator":
        return [_drain(item) for item in value]
    return value


def validate_openai(body: dict[str, Any]) -> None:
    model = _Streaming if body.get("stream") else _NonStreaming
    _drain(model(params=body).params)  # type: ignore[arg-type]


def azure_payload(stream: bool, **extra: Any) -> dict[str, Any]:
    config = AzureOpenAITargetConfig(type="azure_openai", endpoint="https://r.openai.azure.com", deployment="d")  # type: ignore[arg-type]
    backend = AzureOpenAIBackend("azure", config, environ={"AZURE_OPENAI_API_KEY": "k"})
    schema = {"name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}
    request = rich_request(response_format={"type": "json_schema", "json_schema": schema}, **extra)
    return backend.payload(request, stream=stream)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "tool_choice", ["auto", "required", "none", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_our_azure_bodies_validate_against_openais_request_types(stream: bool, tool_choice: object) -> None:
    validate_openai(azure_payload(stream, tool_choice=tool_choice))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.update(max_token=b.pop("max_tokens")),
        lambda b: b["messages"][2].update(tool_call=b["messages"][2].pop("tool_calls")),
        lambda b: b["messages"][2].update(tool_calls={"id": "call_1"}),
        lambda b: b["messages"][3].pop("tool_call_id"),
        lambda b: b["tools"][0]["function"].update(params=b["tools"][0]["function"].pop("parameters")),
        lambda b: b.update(stream="yes"),
    ],
    ids=["max_tokens", "tool_calls-name", "tool_calls-shape", "tool_call_id", "parameters", "stream"],
)
def test_the_openai_type_check_fails_on_a_wrong_field_or_shape(mutate: Any) -> None:
    body = azure_payload(False)
    mutate(body)
    with pytest.raises(ValidationError):
        validate_openai(body)
