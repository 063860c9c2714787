"""The real gateway process in front of a real Google emulator process as Vertex AI, driven by the openai SDK.

The targets get their OAuth tokens through google-auth from the emulator's
token endpoint, which checks the service account's JWT signature: one target
names the key file in config, the other finds it through application default
credentials (``GOOGLE_APPLICATION_CREDENTIALS``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.emulators import gateway as e2e
from tests.emulators.google_server import ServiceAccount
from tests.support.processes import Server

pytestmark = pytest.mark.slow

# The shared fixtures: where the processes keep their files, and the SDK pointed at the gateway.
folder = e2e.folder
sdk = e2e.sdk

TARGETS = ["vertex", "vertex-adc"]


@pytest.fixture(scope="module")
def account() -> ServiceAccount:
    return ServiceAccount.generate()


@pytest.fixture(scope="module")
def upstream(folder: Path, account: ServiceAccount) -> Iterator[Server]:
    (folder / "sa-public.pem").write_text(account.public_pem)
    yield from e2e.emulator("google_server", folder, "--public-key-file", str(folder / "sa-public.pem"))


@pytest.fixture(scope="module")
def gateway(upstream: Server, account: ServiceAccount, folder: Path) -> Iterator[Server]:
    credentials = account.write(folder, f"{upstream.url}/token", project="proj-e2e")
    vertex = f"type: vertex, project: proj-e2e, region: us-central1, model: gemini-2.5-flash, base_url: {upstream.url}"
    targets = f"""\
  vertex: {{{vertex}, credentials_file: {credentials}, timeouts: {e2e.TIMEOUTS}}}
  vertex-adc: {{{vertex}, timeouts: {e2e.TIMEOUTS}}}
  vertex-nocreds: {{{vertex}, credentials_file: {folder / "absent.json"}}}
"""
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(credentials), "NO_GCE_CHECK": "True"}
    yield from e2e.gateway(folder, targets, env)


def test_readiness_reports_each_target_and_why_not(gateway: Server) -> None:
    e2e.check_readiness(gateway, TARGETS, {"vertex-nocreds": "absent.json"})


@pytest.mark.parametrize("target", TARGETS)
def test_sdk_non_streaming(sdk: openai.OpenAI, target: str) -> None:
    e2e.check_answer(sdk, target, usage=(4, 3))


@pytest.mark.parametrize("target", TARGETS)
def test_sdk_streaming_with_usage(sdk: openai.OpenAI, target: str) -> None:
    e2e.check_stream(sdk, target)


@pytest.mark.parametrize("target", TARGETS)
def test_sdk_tool_call_round_trip(sdk: openai.OpenAI, target: str, upstream: Server) -> None:
    call = {"name": "get_weather", "args": {"city": "Oslo"}}
    e2e.check_tool_round_trip(sdk, target, upstream, {"content": "", "tool_calls": [call]})


@pytest.mark.parametrize("target", TARGETS)
def test_upstream_rate_limits_keep_retry_after(sdk: openai.OpenAI, target: str, upstream: Server) -> None:
    e2e.check_rate_limit(sdk, target, upstream, {"status": 429, "error": "slow down", "headers": {"retry-after": "5"}})


@pytest.mark.parametrize("target", TARGETS)
def test_upstream_cut_mid_stream_gives_error_event_and_done(
    gateway: Server, sdk: openai.OpenAI, target: str, upstream: Server
) -> None:
    e2e.check_cut_stream(gateway, target, upstream)


def test_tokens_travel_as_bearer_headers_and_stay_out_of_logs(
    gateway: Server, sdk: openai.OpenAI, upstream: Server
) -> None:
    for target in TARGETS:
        e2e.check_logs_hold_no(gateway, sdk, target, "ya29.", "PRIVATE KEY")
    assert all(request["headers"]["authorization"].startswith("Bearer ya29.") for request in e2e.seen(upstream))
