"""The real gateway process in front of real Azure OpenAI and Bedrock emulator processes, driven by the openai SDK.

The Bedrock target finds its credentials through botocore's standard chain
(env vars here, shared files disabled) and the emulator verifies every SigV4
signature, so a 200 proves the signing end to end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from service.auth import hash_key
from tests.emulators.azure_openai_server import TEST_API_KEY, TEST_DEPLOYMENT
from tests.emulators.bedrock_server import TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY
from tests.support.processes import Server, free_port, running

pytestmark = pytest.mark.slow

CLIENT_KEY = "hr-e2e-provider-client-key"
MODEL_ID = "meta.llama3-70b-instruct-v1:0"
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def emulator(module: str, folder: Path) -> Iterator[Server]:
    port = free_port()
    args = ["-m", f"tests.emulators.{module}", "--port", str(port)]
    with running(args, port=port, ready_path="/_emulator/requests", log=folder / f"{module}.log") as server:
        yield server


@pytest.fixture(scope="module")
def azure_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from emulator("azure_openai_server", tmp_path_factory.mktemp("azure"))


@pytest.fixture(scope="module")
def bedrock_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from emulator("bedrock_server", tmp_path_factory.mktemp("bedrock"))


@pytest.fixture(scope="module")
def gateway(
    azure_emulator: Server, bedrock_emulator: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("gateway")
    config = folder / "config.yaml"
    config.write_text(
        f"""
auth:
  api_key_hashes: ["{hash_key(CLIENT_KEY)}"]
targets:
  edge: {{type: fake, reply: "edge answer"}}
  azure:
    type: azure_openai
    endpoint: {azure_emulator.url}
    deployment: {TEST_DEPLOYMENT}
    api_key_env: E2E_AZURE_KEY
    timeouts: {{connect_s: 2, first_byte_s: 10, idle_s: 10, total_s: 30}}
  bedrock:
    type: bedrock
    region: {TEST_REGION}
    model_id: {MODEL_ID}
    endpoint_url: {bedrock_emulator.url}
    timeouts: {{connect_s: 2, first_byte_s: 10, idle_s: 10, total_s: 30}}
policies:
  - {{type: explicit}}
  - {{type: capability}}
  - {{type: default, target: edge}}
"""
    )
    port = free_port()
    env = {
        "E2E_AZURE_KEY": TEST_API_KEY,
        "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
        "AWS_SESSION_TOKEN": "",
        "AWS_CONFIG_FILE": str(folder / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(folder / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    args = ["-m", "service.cli", "serve", "--config", str(config), "--port", str(port)]
    with running(args, port=port, ready_path="/readyz", log=folder / "gateway.log", env=env) as server:
        yield server


@pytest.fixture
def sdk(gateway: Server, azure_emulator: Server, bedrock_emulator: Server) -> Iterator[openai.OpenAI]:
    for upstream in (azure_emulator, bedrock_emulator):
        httpx.post(upstream.url + "/_emulator/reset").raise_for_status()
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=20) as client:
        yield client


def script(upstream: Server, *behaviours: dict[str, object]) -> None:
    httpx.post(upstream.url + "/_emulator/script", json=list(behaviours)).raise_for_status()


def seen(upstream: Server) -> list[dict[str, object]]:
    return httpx.get(upstream.url + "/_emulator/requests").json()  # type: ignore[no-any-return]


def stream_events(gateway: Server, target: str) -> list[str]:
    body = {"model": target, "messages": [{"role": "user", "content": "x"}], "stream": True}
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=20) as response:
        assert response.status_code == 200
        return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_both_targets_are_ready(gateway: Server) -> None:
    targets = httpx.get(gateway.url + "/readyz").json()["targets"]
    assert targets["azure"]["ready"] is True
    assert targets["bedrock"]["ready"] is True


@pytest.mark.parametrize("target", ["azure", "bedrock"])
def test_sdk_non_streaming_with_a_system_prompt(sdk: openai.OpenAI, target: str) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model=target,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "ping"}],
        temperature=0.2,
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Echo: ping"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert raw.headers["x-route-target"] == target


def test_azure_request_reaches_the_deployment_with_key_and_api_version(
    sdk: openai.OpenAI, azure_emulator: Server
) -> None:
    sdk.chat.completions.create(model="azure", messages=[{"role": "user", "content": "ping"}])
    request = seen(azure_emulator)[0]
    assert request["deployment"] == TEST_DEPLOYMENT
    assert request["query"] == {"api-version": "2024-10-21"}
    assert request["headers"]["api-key"] == TEST_API_KEY  # type: ignore[index]


def test_bedrock_request_is_signed_from_the_env_credential_chain(sdk: openai.OpenAI, bedrock_emulator: Server) -> None:
    sdk.chat.completions.create(
        model="bedrock", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "ping"}]
    )
    request = seen(bedrock_emulator)[0]
    assert request["path"] == "/model/meta.llama3-70b-instruct-v1%3A0/converse"
    assert f"Credential={TEST_ACCESS_KEY}/" in request["headers"]["authorization"]  # type: ignore[index]
    assert request["body"]["system"] == [{"text": "Be brief."}]  # type: ignore[index]


@pytest.mark.parametrize("target", ["azure", "bedrock"])
def test_sdk_streaming_with_usage(sdk: openai.OpenAI, target: str) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model=target,
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: one two three"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


@pytest.mark.parametrize("target", ["azure", "bedrock"])
def test_sdk_tool_call_round_trip(
    sdk: openai.OpenAI, target: str, azure_emulator: Server, bedrock_emulator: Server
) -> None:
    if target == "azure":
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
        script(azure_emulator, {"tool_calls": [call]}, {"content": "It is 21 degrees."})
    else:
        script(bedrock_emulator, {"tool_calls": [{"id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]},
               {"content": "It is 21 degrees."})  # fmt: skip
    messages: list[dict[str, object]] = [{"role": "user", "content": "Weather in Paris?"}]
    first = sdk.chat.completions.create(model=target, messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    tool_calls = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls"
    assert tool_calls is not None and json.loads(tool_calls[0].function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": "call_1", "content": "21C"},
    ]
    second = sdk.chat.completions.create(model=target, messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    assert second.choices[0].message.content == "It is 21 degrees."


@pytest.mark.parametrize("target", ["azure", "bedrock"])
def test_upstream_throttling_keeps_retry_after(
    sdk: openai.OpenAI, target: str, azure_emulator: Server, bedrock_emulator: Server
) -> None:
    if target == "azure":
        script(azure_emulator, {"status": 429, "error": "Rate limit", "headers": {"retry-after": "3"}})
    else:
        script(
            bedrock_emulator,
            {"error_type": "ThrottlingException", "message": "Too many requests", "headers": {"retry-after": "3"}},
        )
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model=target, messages=[{"role": "user", "content": "x"}])
    assert caught.value.response.headers["retry-after"] == "3"


def test_content_filters_reach_the_client_as_content_filter_errors(
    sdk: openai.OpenAI, azure_emulator: Server, bedrock_emulator: Server
) -> None:
    script(azure_emulator, {"content_filter": "prompt"})
    script(bedrock_emulator, {"stop_reason": "guardrail_intervened"})
    for target in ("azure", "bedrock"):
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.chat.completions.create(model=target, messages=[{"role": "user", "content": "x"}])
        assert caught.value.code == "content_filter"


def test_json_schema_requests_are_not_routed_to_bedrock(sdk: openai.OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "x"}], response_format={"type": "json_object"}
    )
    assert raw.headers["x-route-target"] == "azure"


@pytest.mark.parametrize("target", ["azure", "bedrock"])
def test_upstream_cut_mid_stream_gives_error_event_and_done(
    gateway: Server, sdk: openai.OpenAI, target: str, azure_emulator: Server, bedrock_emulator: Server
) -> None:
    script(azure_emulator if target == "azure" else bedrock_emulator, {"content": "a b c d e", "cut_after": 2})
    events = stream_events(gateway, target)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "upstream_protocol_error"
    assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-2]) == "a b "


def test_logs_hold_no_credentials(gateway: Server, sdk: openai.OpenAI) -> None:
    for target in ("azure", "bedrock"):
        sdk.chat.completions.create(model=target, messages=[{"role": "user", "content": "private prompt"}])
    log = gateway.output()
    assert "chat completion" in log
    for secret in (TEST_API_KEY, TEST_SECRET_KEY, CLIENT_KEY, "private prompt"):
        assert secret not in log
