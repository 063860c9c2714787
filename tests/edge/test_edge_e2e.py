"""`hybrid-router serve` on its embedded defaults answers from the real local model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.processes import Server, free_port, running

pytestmark = [pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module")
def default_gateway(edge_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("OPENAI_API_KEY", "HYBRID_ROUTER_CONFIG")}
    log = tmp_path_factory.mktemp("default-gateway") / "gateway.log"
    with running(["-m", "service.cli", "serve", "--port", str(port)], port=port, ready_path="/readyz", log=log,
                 env={**env, "OPENAI_API_KEY": ""}) as server:  # fmt: skip
        yield server


@pytest.fixture
def sdk(default_gateway: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=default_gateway.url + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
        yield client


def test_readiness_on_defaults(default_gateway: Server) -> None:
    body = httpx.get(default_gateway.url + "/readyz").json()
    assert body["status"] == "ready"
    assert body["targets"]["edge"]["ready"] is True
    # Without client keys nobody sees why a target is not ready (it names an env var); the start-up log says.
    assert body["targets"]["cloud"] == {"ready": False, "busy": False, "reason": "not ready"}
    assert "target cloud: no API key: OPENAI_API_KEY is not set" in default_gateway.output()


def test_sdk_non_streaming_edge(sdk: openai.OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="edge", messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0
    )
    completion = raw.parse()
    assert "Paris" in (completion.choices[0].message.content or "")
    assert completion.model == "smollm2-135m-instruct"
    assert raw.headers["x-route-target"] == "edge"
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_sdk_streaming_auto_routes_to_edge(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0


def test_personal_data_pinned_to_the_cloud_is_refused(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.PermissionDeniedError, match="personal data"):
        sdk.chat.completions.create(model="cloud", messages=[{"role": "user", "content": "my email is a@b.co"}])


def test_prompt_too_long_for_the_edge_with_no_cloud_is_503(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="auto", messages=[{"role": "user", "content": "word " * 9000}])
    assert caught.value.status_code == 503
    assert "cloud not ready (no API key: OPENAI_API_KEY is not set)" in str(caught.value)
    assert "edge forbidden" in str(caught.value)
