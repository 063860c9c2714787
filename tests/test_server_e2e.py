"""The real server process, driven by the official openai SDK, in front of a real emulator process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from service.auth import hash_key
from tests.conftest import EMULATOR_KEY
from tests.support.processes import Server, free_port, running

pytestmark = pytest.mark.slow

CLIENT_KEY = "hr-e2e-client-key"


@pytest.fixture(scope="module")
def gateway(emulator_process: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("gateway")
    config = folder / "config.yaml"
    config.write_text(
        f"""
auth:
  api_key_hashes: ["{hash_key(CLIENT_KEY)}"]
targets:
  edge: {{type: fake, reply: "edge answer", context_window: 4096}}
  cloud:
    type: openai
    base_url: {emulator_process.url}/v1
    model: gpt-4o-mini
    api_key_env: E2E_UPSTREAM_KEY
    aliases: [gpt-4o-mini]
    timeouts: {{connect_s: 2, first_byte_s: 10, idle_s: 10, total_s: 30}}
policies:
  - {{type: explicit}}
  - {{type: privacy, on_personal_data: edge}}
  - {{type: default, target: edge}}
"""
    )
    port = free_port()
    args = ["-m", "service.cli", "serve", "--config", str(config), "--port", str(port)]
    env = {"E2E_UPSTREAM_KEY": EMULATOR_KEY}
    with running(args, port=port, ready_path="/readyz", log=folder / "gateway.log", env=env) as server:
        yield server


@pytest.fixture
def sdk(gateway: Server, emulator: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=20) as client:
        yield client


def script(emulator: Server, *behaviours: dict[str, object]) -> None:
    httpx.post(emulator.url + "/_emulator/script", json=list(behaviours)).raise_for_status()


def upstream_requests(emulator: Server) -> list[dict[str, object]]:
    return httpx.get(emulator.url + "/_emulator/requests").json()  # type: ignore[no-any-return]


def test_sdk_non_streaming_through_the_gateway(sdk: openai.OpenAI, emulator: Server) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="cloud", messages=[{"role": "user", "content": "ping"}], temperature=0.2
    )
    completion = raw.parse()

    assert completion.choices[0].message.content == "Echo: ping"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 13
    assert raw.headers["x-route-target"] == "cloud"
    seen = upstream_requests(emulator)[0]
    assert seen["headers"]["authorization"] == f"Bearer {EMULATOR_KEY}"  # type: ignore[index]
    assert seen["body"]["model"] == "gpt-4o-mini"  # type: ignore[index]


def test_sdk_streaming_through_the_gateway_with_usage(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: one two three"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


def test_sdk_auto_routes_to_the_edge_by_default(sdk: openai.OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content == "edge answer"
    assert raw.headers["x-route-reason"] == "default target edge"


def test_upstream_cut_mid_stream_gives_error_event_and_done(gateway: Server, emulator: Server) -> None:
    script(emulator, {"content": "a b c d e", "cut_after": 2})
    body = {"model": "cloud", "messages": [{"role": "user", "content": "x"}], "stream": True}
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}

    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=20) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]

    assert response.status_code == 200
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "upstream_protocol_error"
    assert [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-2]] == ["", "a ", "b "]


def test_sdk_raises_on_the_mid_stream_error(sdk: openai.OpenAI, emulator: Server) -> None:
    script(emulator, {"content": "a b c d e", "cut_after": 1})
    stream = sdk.chat.completions.create(model="cloud", messages=[{"role": "user", "content": "x"}], stream=True)
    with pytest.raises(openai.APIError, match="upstream"):
        list(stream)


def test_sdk_sees_upstream_errors_with_status(sdk: openai.OpenAI, emulator: Server) -> None:
    script(emulator, {"status": 429, "error": "Rate limit reached", "headers": {"retry-after": "5"}})
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="cloud", messages=[{"role": "user", "content": "x"}])
    assert caught.value.response.headers["retry-after"] == "5"


def test_wrong_key_is_401_and_no_upstream_call(gateway: Server, emulator: Server) -> None:
    with (
        openai.OpenAI(base_url=gateway.url + "/v1", api_key="wrong", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.chat.completions.create(model="cloud", messages=[{"role": "user", "content": "x"}])
    missing = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "cloud", "messages": []})
    assert missing.status_code == 401
    assert upstream_requests(emulator) == []


def test_metrics_count_the_traffic(gateway: Server, sdk: openai.OpenAI) -> None:
    sdk.chat.completions.create(model="cloud", messages=[{"role": "user", "content": "count me"}])
    text = httpx.get(gateway.url + "/metrics").text
    assert 'hybrid_router_requests_total{decided_by="explicit",status="200",target="cloud",tenant="default"}' in text
    assert 'hybrid_router_tokens_total{direction="in",target="cloud",tenant="default"}' in text
    assert "hybrid_router_target_ready" in text


def test_logs_are_json_lines_without_prompts_or_keys(gateway: Server, sdk: openai.OpenAI) -> None:
    sdk.chat.completions.create(model="cloud", messages=[{"role": "user", "content": "very private prompt"}])
    lines = [json.loads(line) for line in Path(gateway.log).read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("msg") == "chat completion"]
    assert access
    assert {"request_id", "target", "reason", "latency_ms", "status"} <= set(access[-1])
    log_text = gateway.output()
    assert "very private prompt" not in log_text
    assert EMULATOR_KEY not in log_text
    assert CLIENT_KEY not in log_text
