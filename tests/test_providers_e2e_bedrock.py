"""The real gateway process in front of a real Bedrock emulator process, driven by the openai SDK.

The target finds its credentials through botocore's standard chain (env vars
here, shared files disabled) and the emulator verifies every SigV4
signature, so a 200 proves the signing end to end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.emulators import gateway as e2e
from tests.emulators.bedrock_server import TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY
from tests.support.processes import Server

pytestmark = pytest.mark.slow

# The shared fixtures: where the processes keep their files, and the SDK pointed at the gateway.
folder = e2e.folder
sdk = e2e.sdk

TARGET = "bedrock"
MODEL_ID = "meta.llama3-70b-instruct-v1:0"


@pytest.fixture(scope="module")
def upstream(folder: Path) -> Iterator[Server]:
    yield from e2e.emulator("bedrock_server", folder)


@pytest.fixture(scope="module")
def gateway(upstream: Server, folder: Path) -> Iterator[Server]:
    targets = f"""\
  {TARGET}:
    type: bedrock
    region: {TEST_REGION}
    model_id: {MODEL_ID}
    endpoint_url: {upstream.url}
    timeouts: {e2e.TIMEOUTS}
  json-capable: {{type: fake, reply: "{{}}", local: false, supports: {{json_schema: true}}}}
"""
    env = {
        "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
        "AWS_SESSION_TOKEN": "",
        "AWS_CONFIG_FILE": str(folder / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(folder / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    yield from e2e.gateway(folder, targets, env, policies="  - {type: capability}\n")


def test_the_target_is_ready(gateway: Server) -> None:
    e2e.check_readiness(gateway, [TARGET], {})


def test_sdk_non_streaming(sdk: openai.OpenAI) -> None:
    e2e.check_answer(sdk, TARGET, usage=(4, 3))


def test_the_request_is_signed_from_the_env_credential_chain(sdk: openai.OpenAI, upstream: Server) -> None:
    sdk.chat.completions.create(
        model=TARGET, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "ping"}]
    )
    request = e2e.seen(upstream)[0]
    assert request["path"] == "/model/meta.llama3-70b-instruct-v1%3A0/converse"
    assert f"Credential={TEST_ACCESS_KEY}/" in request["headers"]["authorization"]
    assert request["body"]["system"] == [{"text": "Be brief."}]


def test_sdk_streaming_with_usage(sdk: openai.OpenAI) -> None:
    e2e.check_stream(sdk, TARGET)


def test_sdk_tool_call_round_trip(sdk: openai.OpenAI, upstream: Server) -> None:
    call = {"id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}
    e2e.check_tool_round_trip(sdk, TARGET, upstream, {"tool_calls": [call]})


def test_upstream_throttling_keeps_retry_after(sdk: openai.OpenAI, upstream: Server) -> None:
    throttled = {"error_type": "ThrottlingException", "error": "Too many requests", "headers": {"retry-after": "5"}}
    e2e.check_rate_limit(sdk, TARGET, upstream, throttled)


def test_guardrails_reach_the_client_as_content_filter(sdk: openai.OpenAI, upstream: Server) -> None:
    e2e.script(
        upstream,
        {"content": "", "stop_reason": "guardrail_intervened"},
        {"content": "Sorry, I cannot help.", "stop_reason": "guardrail_intervened"},
    )
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model=TARGET, messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "content_filter"
    # With a guardrail's own message as output, the client gets it, finished as OpenAI finishes a filtered answer.
    answer = sdk.chat.completions.create(model=TARGET, messages=[{"role": "user", "content": "x"}])
    assert (answer.choices[0].message.content, answer.choices[0].finish_reason) == (
        "Sorry, I cannot help.",
        "content_filter",
    )


def test_json_requests_are_routed_away_from_bedrock(sdk: openai.OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "x"}], response_format={"type": "json_object"}
    )
    assert raw.headers["x-route-target"] == "json-capable"


def test_upstream_cut_mid_stream_gives_error_event_and_done(
    gateway: Server, sdk: openai.OpenAI, upstream: Server
) -> None:
    e2e.check_cut_stream(gateway, TARGET, upstream)


def test_logs_hold_no_credentials(gateway: Server, sdk: openai.OpenAI) -> None:
    e2e.check_logs_hold_no(gateway, sdk, TARGET, TEST_SECRET_KEY)
