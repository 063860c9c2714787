"""The real gateway process in front of real Anthropic and Google emulator processes, driven by the openai SDK.

The Vertex targets get their OAuth tokens through google-auth from the
emulator's token endpoint, which checks the service account's JWT signature:
one target names the key file in config, the other finds it through
application default credentials (``GOOGLE_APPLICATION_CREDENTIALS``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.auth import hash_key
from tests.support.processes import Server, free_port, running

pytestmark = pytest.mark.slow

CLIENT_KEY = "hr-e2e-anthropic-google-client-key"
ANTHROPIC_KEY = "sk-ant-api03-e2e-secret-0123456789"
GEMINI_KEY = "AIzaSy-e2e-secret-gemini-0123456789"
TARGETS = ["claude", "gemini", "vertex", "vertex-adc"]
TIMEOUTS = "{connect_s: 2, first_byte_s: 10, idle_s: 10, total_s: 30}"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("providers")


@pytest.fixture(scope="module")
def service_account_key(folder: Path) -> rsa.RSAPrivateKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (folder / "sa-public.pem").write_bytes(public)
    return key


def emulator(module: str, folder: Path, *extra: str) -> Iterator[Server]:
    port = free_port()
    args = ["-m", f"tests.emulators.{module}", "--port", str(port), *extra]
    with running(args, port=port, ready_path="/_emulator/requests", log=folder / f"{module}.log") as server:
        yield server


@pytest.fixture(scope="module")
def anthropic_emulator(folder: Path) -> Iterator[Server]:
    yield from emulator("anthropic_server", folder, "--api-key", ANTHROPIC_KEY)


@pytest.fixture(scope="module")
def google_emulator(folder: Path, service_account_key: rsa.RSAPrivateKey) -> Iterator[Server]:
    yield from emulator(
        "google_server", folder, "--api-key", GEMINI_KEY, "--public-key-file", str(folder / "sa-public.pem")
    )


def write_service_account(folder: Path, key: rsa.RSAPrivateKey, token_uri: str) -> Path:
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    info = {
        "type": "service_account",
        "project_id": "proj-e2e",
        "private_key_id": "key-1",
        "private_key": private.decode(),
        "client_email": "gateway@proj-e2e.iam.gserviceaccount.com",
        "client_id": "42",
        "token_uri": token_uri,
    }
    path = folder / "sa.json"
    path.write_text(json.dumps(info))
    return path


@pytest.fixture(scope="module")
def gateway(
    anthropic_emulator: Server,
    google_emulator: Server,
    service_account_key: rsa.RSAPrivateKey,
    folder: Path,
) -> Iterator[Server]:
    credentials = write_service_account(folder, service_account_key, f"{google_emulator.url}/token")
    vertex = f"type: vertex, project: proj-e2e, region: us-central1, model: gemini-2.5-flash, base_url: {google_emulator.url}"
    config = folder / "config.yaml"
    config.write_text(
        f"""
auth:
  api_key_hashes: ["{hash_key(CLIENT_KEY)}"]
targets:
  edge: {{type: fake, reply: "edge answer"}}
  claude:
    type: anthropic
    model: claude-sonnet-4-6
    base_url: {anthropic_emulator.url}
    api_key_env: E2E_ANTHROPIC_KEY
    timeouts: {TIMEOUTS}
  gemini:
    type: gemini
    model: gemini-2.5-flash
    base_url: {google_emulator.url}
    api_key_env: E2E_GEMINI_KEY
    timeouts: {TIMEOUTS}
  gemini-nokey: {{type: gemini, model: gemini-2.5-flash, base_url: {google_emulator.url}, api_key_env: E2E_UNSET_KEY}}
  vertex: {{{vertex}, credentials_file: {credentials}, timeouts: {TIMEOUTS}}}
  vertex-adc: {{{vertex}, timeouts: {TIMEOUTS}}}
  vertex-nocreds: {{{vertex}, credentials_file: {folder / "absent.json"}}}
policies:
  - {{type: explicit}}
  - {{type: default, target: edge}}
"""
    )
    port = free_port()
    args = ["-m", "service.cli", "serve", "--config", str(config), "--port", str(port)]
    env = {
        "E2E_ANTHROPIC_KEY": ANTHROPIC_KEY,
        "E2E_GEMINI_KEY": GEMINI_KEY,
        "GOOGLE_APPLICATION_CREDENTIALS": str(credentials),
        "NO_GCE_CHECK": "True",
    }
    with running(args, port=port, ready_path="/readyz", log=folder / "gateway.log", env=env) as server:
        yield server


@pytest.fixture
def sdk(gateway: Server, anthropic_emulator: Server, google_emulator: Server) -> Iterator[openai.OpenAI]:
    for upstream in (anthropic_emulator, google_emulator):
        httpx.post(upstream.url + "/_emulator/reset").raise_for_status()
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=20) as client:
        yield client


def upstream_for(target: str, anthropic_emulator: Server, google_emulator: Server) -> Server:
    return anthropic_emulator if target == "claude" else google_emulator


def script(upstream: Server, *behaviours: dict[str, object]) -> None:
    httpx.post(upstream.url + "/_emulator/script", json=list(behaviours)).raise_for_status()


def test_readiness_reports_each_target_and_why_not(gateway: Server) -> None:
    targets = httpx.get(gateway.url + "/readyz").json()["targets"]
    for name in TARGETS:
        assert targets[name]["ready"] is True, targets[name]
    assert targets["gemini-nokey"] == {"ready": False, "busy": False, "reason": "no API key: E2E_UNSET_KEY is not set"}
    assert targets["vertex-nocreds"]["ready"] is False
    assert "absent.json" in targets["vertex-nocreds"]["reason"]


@pytest.mark.parametrize("target", TARGETS)
def test_sdk_non_streaming(sdk: openai.OpenAI, target: str) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model=target,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "ping pong"}],
        temperature=0.2,
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Echo: ping pong"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 3)
    assert raw.headers["x-route-target"] == target


@pytest.mark.parametrize("target", TARGETS)
def test_sdk_streaming_with_usage(sdk: openai.OpenAI, target: str) -> None:
    stream = sdk.chat.completions.create(
        model=target,
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: one two three"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


@pytest.mark.parametrize("target", TARGETS)
def test_sdk_tool_call_round_trip(
    sdk: openai.OpenAI, target: str, anthropic_emulator: Server, google_emulator: Server
) -> None:
    upstream = upstream_for(target, anthropic_emulator, google_emulator)
    args_key = "input" if target == "claude" else "args"
    script(
        upstream,
        {"content": "", "tool_calls": [{"name": "get_weather", args_key: {"city": "Oslo"}}]},
        {"content": "Cold."},
    )
    first = sdk.chat.completions.create(
        model=target, messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=TOOLS, tool_choice="required"
    )
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert call.type == "function"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Oslo"})
    second = sdk.chat.completions.create(
        model=target,
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            message.model_dump(exclude_none=True),  # type: ignore[misc]
            {"role": "tool", "tool_call_id": call.id, "content": "-3 C"},
        ],
        tools=TOOLS,
    )
    assert second.choices[0].message.content == "Cold."


@pytest.mark.parametrize("target", TARGETS)
def test_upstream_cut_mid_stream_gives_error_event_and_done(
    gateway: Server, sdk: openai.OpenAI, target: str, anthropic_emulator: Server, google_emulator: Server
) -> None:
    script(upstream_for(target, anthropic_emulator, google_emulator), {"content": "a b c d e", "cut_after": 2})
    body = {"model": target, "messages": [{"role": "user", "content": "x"}], "stream": True}
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=20) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert response.status_code == 200
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "upstream_protocol_error"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-2])
    assert text == "a b "


@pytest.mark.parametrize("target", TARGETS)
def test_sdk_sees_upstream_rate_limits_with_retry_after(
    sdk: openai.OpenAI, target: str, anthropic_emulator: Server, google_emulator: Server
) -> None:
    behaviour: dict[str, object] = {"status": 429, "error": "slow down", "headers": {"retry-after": "5"}}
    if target == "claude":
        behaviour["error_type"] = "rate_limit_error"
    script(upstream_for(target, anthropic_emulator, google_emulator), behaviour)
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model=target, messages=[{"role": "user", "content": "x"}])
    assert caught.value.response.headers["retry-after"] == "5"


def test_upstream_keys_stay_out_of_requests_urls_and_logs(
    gateway: Server, sdk: openai.OpenAI, anthropic_emulator: Server, google_emulator: Server
) -> None:
    for target in TARGETS:
        sdk.chat.completions.create(model=target, messages=[{"role": "user", "content": "secret prompt"}])
    claude_seen = httpx.get(anthropic_emulator.url + "/_emulator/requests").json()[-1]
    assert claude_seen["headers"]["x-api-key"] == ANTHROPIC_KEY
    google_seen = httpx.get(google_emulator.url + "/_emulator/requests").json()
    assert google_seen[0]["headers"]["x-goog-api-key"] == GEMINI_KEY
    assert all("key" not in seen["query"] for seen in google_seen)
    assert all(seen["headers"]["authorization"].startswith("Bearer ya29.") for seen in google_seen[1:])
    log = gateway.output()
    for secret in (ANTHROPIC_KEY, GEMINI_KEY, CLIENT_KEY, "ya29.", "PRIVATE KEY", "secret prompt"):
        assert secret not in log
