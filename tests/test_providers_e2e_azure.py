"""The real gateway process in front of a real Azure OpenAI emulator process, driven by the openai SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.emulators import gateway as e2e
from tests.emulators.azure_openai_server import TEST_API_KEY, TEST_DEPLOYMENT
from tests.support.processes import Server

pytestmark = pytest.mark.slow

# The shared fixtures: where the processes keep their files, and the SDK pointed at the gateway.
folder = e2e.folder
sdk = e2e.sdk

TARGET = "azure"


@pytest.fixture(scope="module")
def upstream(folder: Path) -> Iterator[Server]:
    yield from e2e.emulator("azure_openai_server", folder)


@pytest.fixture(scope="module")
def gateway(upstream: Server, folder: Path) -> Iterator[Server]:
    targets = f"""\
  {TARGET}:
    type: azure_openai
    endpoint: {upstream.url}
    deployment: {TEST_DEPLOYMENT}
    api_key_env: E2E_AZURE_KEY
    timeouts: {e2e.TIMEOUTS}
"""
    yield from e2e.gateway(folder, targets, {"E2E_AZURE_KEY": TEST_API_KEY})


def test_the_target_is_ready(gateway: Server) -> None:
    e2e.check_readiness(gateway, [TARGET], {})


def test_sdk_non_streaming(sdk: openai.OpenAI) -> None:
    e2e.check_answer(sdk, TARGET, usage=(11, 3))


def test_the_request_reaches_the_deployment_with_key_and_api_version(sdk: openai.OpenAI, upstream: Server) -> None:
    sdk.chat.completions.create(model=TARGET, messages=[{"role": "user", "content": "ping"}])
    request = e2e.seen(upstream)[0]
    assert request["deployment"] == TEST_DEPLOYMENT
    assert request["query"] == {"api-version": "2024-10-21"}
    assert request["headers"]["api-key"] == TEST_API_KEY


def test_sdk_streaming_with_usage(sdk: openai.OpenAI) -> None:
    e2e.check_stream(sdk, TARGET)


def test_sdk_tool_call_round_trip(sdk: openai.OpenAI, upstream: Server) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    e2e.check_tool_round_trip(sdk, TARGET, upstream, {"tool_calls": [call]})


def test_upstream_throttling_keeps_retry_after(sdk: openai.OpenAI, upstream: Server) -> None:
    e2e.check_rate_limit(sdk, TARGET, upstream, {"status": 429, "error": "Rate limit", "headers": {"retry-after": "5"}})


def test_content_filters_reach_the_client(sdk: openai.OpenAI, upstream: Server) -> None:
    e2e.script(upstream, {"content_filter": "prompt"}, {"content": "a b c", "content_filter": "completion"})
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model=TARGET, messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "content_filter"
    # After some output, the answer so far, ended the way OpenAI ends a filtered answer.
    partial = sdk.chat.completions.create(model=TARGET, messages=[{"role": "user", "content": "x"}])
    assert (partial.choices[0].message.content, partial.choices[0].finish_reason) == ("a ", "content_filter")


def test_upstream_cut_mid_stream_gives_error_event_and_done(
    gateway: Server, sdk: openai.OpenAI, upstream: Server
) -> None:
    e2e.check_cut_stream(gateway, TARGET, upstream)


def test_logs_hold_no_credentials(gateway: Server, sdk: openai.OpenAI) -> None:
    e2e.check_logs_hold_no(gateway, sdk, TARGET, TEST_API_KEY)
