"""Real gateway and emulator processes for the provider end-to-end files, and the checks they all run.

Each ``tests/test_providers_e2e_<provider>.py`` starts its provider's
emulator (its ``upstream`` fixture) and a gateway in front of it (its
``gateway`` fixture), real processes on loopback, imports the ``folder`` and
``sdk`` fixtures from here, drives the gateway with the official ``openai``
SDK, and runs the checks below, so every provider is held to the same
client-visible behaviour.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from service.auth import hash_key
from tests.support.processes import Server, free_port, running

__all__ = [
    "CLIENT_KEY",
    "TIMEOUTS",
    "TOOLS",
    "check_answer",
    "check_cut_stream",
    "check_logs_hold_no",
    "check_rate_limit",
    "check_stream",
    "check_tool_round_trip",
    "emulator",
    "gateway",
    "check_readiness",
    "folder",
    "script",
    "sdk",
    "seen",
]

CLIENT_KEY = "hr-e2e-provider-client-key"
TIMEOUTS = "{connect_s: 2, first_byte_s: 10, idle_s: 10, total_s: 30}"
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """Where the module's processes keep their config and logs."""
    return tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])


@pytest.fixture
def sdk(gateway: Server, upstream: Server) -> Iterator[openai.OpenAI]:
    """The openai SDK pointed at the module's gateway, its upstream's script and record cleared."""
    httpx.post(upstream.url + "/_emulator/reset").raise_for_status()
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=20) as client:
        yield client


def emulator(module: str, folder: Path, *args: str) -> Iterator[Server]:
    """``python -m tests.emulators.<module>`` on a free port, until the generator closes."""
    port = free_port()
    command = ["-m", f"tests.emulators.{module}", "--port", str(port), *args]
    with running(command, port=port, ready_path="/_emulator/requests", log=folder / f"{module}.log") as server:
        yield server


def gateway(folder: Path, targets: str, env: Mapping[str, str], policies: str = "") -> Iterator[Server]:
    """The gateway with an ``edge`` fake plus ``targets`` (YAML lines under ``targets:``), explicit routing."""
    config = folder / "config.yaml"
    config.write_text(
        f"""
auth:
  api_key_hashes: ["{hash_key(CLIENT_KEY)}"]
targets:
  edge: {{type: fake, reply: "edge answer"}}
{targets}
policies:
  - {{type: explicit}}
{policies}  - {{type: default, target: edge}}
"""
    )
    port = free_port()
    command = ["-m", "service.cli", "serve", "--config", str(config), "--port", str(port)]
    with running(command, port=port, ready_path="/readyz", log=folder / "gateway.log", env=env) as server:
        yield server


def script(upstream: Server, *behaviours: Mapping[str, object]) -> None:
    httpx.post(upstream.url + "/_emulator/script", json=list(behaviours)).raise_for_status()


def seen(upstream: Server) -> list[dict[str, Any]]:
    return httpx.get(upstream.url + "/_emulator/requests").json()  # type: ignore[no-any-return]


def check_readiness(gateway: Server, ready: list[str], not_ready: Mapping[str, str]) -> None:
    """The ``ready`` targets are ready; each of ``not_ready`` is not, and says why (a part of the reason)."""
    # The reasons name env vars and files, so only a caller with a client key sees them.
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    targets = httpx.get(gateway.url + "/readyz", headers=headers).json()["targets"]
    for name in ready:
        assert targets[name]["ready"] is True, targets[name]
    for name, reason in not_ready.items():
        assert targets[name]["ready"] is False
        assert reason in targets[name]["reason"]


def check_answer(sdk: openai.OpenAI, target: str, *, usage: tuple[int, int] | None = None) -> None:
    """A non-streamed answer with a system prompt, routed to ``target``, with its usage."""
    raw = sdk.chat.completions.with_raw_response.create(
        model=target,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "ping pong"}],
        temperature=0.2,
    )
    completion = raw.parse()
    assert raw.headers["x-route-target"] == target
    assert completion.choices[0].message.content == "Echo: ping pong"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    if usage is not None:
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == usage


def check_stream(sdk: openai.OpenAI, target: str) -> None:
    """A streamed answer: the text, one ``stop``, and the usage chunk the client asked for."""
    chunks = list(
        sdk.chat.completions.create(
            model=target,
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: one two three"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


def check_tool_round_trip(sdk: openai.OpenAI, target: str, upstream: Server, call: Mapping[str, object]) -> None:
    """The upstream calls get_weather (scripted as ``call``), the client answers, the upstream finishes."""
    script(upstream, call, {"content": "Cold."})
    question = {"role": "user", "content": "Weather in Oslo?"}
    first = sdk.chat.completions.create(model=target, messages=[question], tools=TOOLS, tool_choice="required")  # type: ignore[list-item, arg-type]
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None
    tool_call = message.tool_calls[0]
    assert tool_call.type == "function"
    assert (tool_call.function.name, json.loads(tool_call.function.arguments)) == ("get_weather", {"city": "Oslo"})
    second = sdk.chat.completions.create(
        model=target,
        messages=[
            question,
            message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": tool_call.id, "content": "-3 C"},
        ],  # type: ignore[list-item]
        tools=TOOLS,  # type: ignore[arg-type]
    )
    assert second.choices[0].message.content == "Cold."


def check_rate_limit(sdk: openai.OpenAI, target: str, upstream: Server, behaviour: Mapping[str, object]) -> None:
    """An upstream 429 reaches the client as a 429 with the upstream's ``Retry-After`` (scripted as 5)."""
    script(upstream, behaviour)
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model=target, messages=[{"role": "user", "content": "x"}])
    assert caught.value.response.headers["retry-after"] == "5"


def check_cut_stream(gateway: Server, target: str, upstream: Server) -> None:
    """An upstream dropping the stream mid-way: what arrived, then an SSE error event and ``[DONE]``."""
    script(upstream, {"content": "a b c d e", "cut_after": 2})
    body = {"model": target, "messages": [{"role": "user", "content": "x"}], "stream": True}
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=20) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert response.status_code == 200
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "upstream_protocol_error"
    assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-2]) == "a b "


def check_logs_hold_no(gateway: Server, sdk: openai.OpenAI, target: str, *secrets: str) -> None:
    """After a request with a private prompt, the gateway's log holds no secret and not the prompt."""
    sdk.chat.completions.create(model=target, messages=[{"role": "user", "content": "private prompt"}])
    log = gateway.output()
    assert "chat completion" in log
    for secret in (*secrets, CLIENT_KEY, "private prompt"):
        assert secret not in log
