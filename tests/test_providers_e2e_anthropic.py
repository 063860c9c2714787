"""The real gateway process in front of a real Anthropic emulator process, driven by the openai SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.emulators import gateway as e2e
from tests.support.processes import Server

pytestmark = pytest.mark.slow

# The shared fixtures: where the processes keep their files, and the SDK pointed at the gateway.
folder = e2e.folder
sdk = e2e.sdk

TARGET = "claude"
ANTHROPIC_KEY = "sk-ant-api03-e2e-secret-0123456789"


@pytest.fixture(scope="module")
def upstream(folder: Path) -> Iterator[Server]:
    yield from e2e.emulator("anthropic_server", folder, "--api-key", ANTHROPIC_KEY)


@pytest.fixture(scope="module")
def gateway(upstream: Server, folder: Path) -> Iterator[Server]:
    targets = f"""\
  {TARGET}:
    type: anthropic
    model: claude-sonnet-4-6
    base_url: {upstream.url}
    api_key_env: E2E_ANTHROPIC_KEY
    timeouts: {e2e.TIMEOUTS}
  claude-nokey: {{type: anthropic, model: claude-sonnet-4-6, base_url: {upstream.url}, api_key_env: E2E_UNSET_KEY}}
"""
    yield from e2e.gateway(folder, targets, {"E2E_ANTHROPIC_KEY": ANTHROPIC_KEY})


def test_readiness_reports_the_target_and_why_not(gateway: Server) -> None:
    e2e.check_readiness(gateway, [TARGET], {"claude-nokey": "no API key: E2E_UNSET_KEY is not set"})


def test_sdk_non_streaming(sdk: openai.OpenAI) -> None:
    e2e.check_answer(sdk, TARGET, usage=(4, 3))


def test_sdk_streaming_with_usage(sdk: openai.OpenAI) -> None:
    e2e.check_stream(sdk, TARGET)


def test_sdk_tool_call_round_trip(sdk: openai.OpenAI, upstream: Server) -> None:
    call = {"name": "get_weather", "input": {"city": "Oslo"}}
    e2e.check_tool_round_trip(sdk, TARGET, upstream, {"content": "", "tool_calls": [call]})


def test_upstream_rate_limits_keep_retry_after(sdk: openai.OpenAI, upstream: Server) -> None:
    limited = {"status": 429, "error_type": "rate_limit_error", "error": "slow down", "headers": {"retry-after": "5"}}
    e2e.check_rate_limit(sdk, TARGET, upstream, limited)


def test_upstream_cut_mid_stream_gives_error_event_and_done(
    gateway: Server, sdk: openai.OpenAI, upstream: Server
) -> None:
    e2e.check_cut_stream(gateway, TARGET, upstream)


def test_the_key_travels_in_its_header_and_stays_out_of_logs(
    gateway: Server, sdk: openai.OpenAI, upstream: Server
) -> None:
    e2e.check_logs_hold_no(gateway, sdk, TARGET, ANTHROPIC_KEY)
    assert e2e.seen(upstream)[-1]["headers"]["x-api-key"] == ANTHROPIC_KEY
