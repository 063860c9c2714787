from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from router.backends.base import Capabilities
from router.backends.fake import ScriptedBackend, ScriptedReply
from service.app import create_app
from service.settings import Settings
from tests.emulators.openai_server import EmulatorState
from tests.emulators.openai_server import create_app as create_emulator
from tests.support.processes import Server, free_port, running

DEFAULT_POLICIES: list[dict[str, Any]] = [
    {"type": "explicit"},
    {"type": "privacy", "on_personal_data": "edge"},
    {"type": "context_window"},
    {"type": "capability"},
    {"type": "default", "target": "edge"},
]


def make_settings(**overrides: Any) -> Settings:
    """Settings with a scripted edge and cloud and the README's policy chain."""
    values: dict[str, Any] = {
        "targets": {
            "edge": {"type": "fake", "reply": "edge says hi", "context_window": 2048, "quality": 0.3},
            "cloud": {"type": "fake", "reply": "cloud says hi", "local": False, "quality": 0.9,
                      "supports": {"tools": True, "json_schema": True, "images": True},
                      "price_per_mtok": {"input": 1.0, "output": 2.0}},
        },
        "policies": DEFAULT_POLICIES,
    }  # fmt: skip
    values.update(overrides)
    return Settings(**values)


def edge_backend(reply: ScriptedReply | None = None, **kwargs: Any) -> ScriptedBackend:
    return ScriptedBackend(
        "edge",
        reply or ScriptedReply(text="edge says hi"),
        model="edge-model",
        capabilities=Capabilities(context_window=2048, local=True),
        **kwargs,
    )


def cloud_backend(reply: ScriptedReply | None = None, **kwargs: Any) -> ScriptedBackend:
    return ScriptedBackend(
        "cloud",
        reply or ScriptedReply(text="cloud says hi"),
        model="cloud-model",
        capabilities=Capabilities(tools=True, json_schema=True, images=True, context_window=128_000),
        **kwargs,
    )


@pytest.fixture
def backends() -> dict[str, ScriptedBackend]:
    return {"edge": edge_backend(), "cloud": cloud_backend()}


ClientFactory = Callable[..., TestClient]


@pytest.fixture
def client_for() -> Iterator[ClientFactory]:
    """Build a started TestClient for given settings/backends; closed after the test."""
    opened: list[TestClient] = []

    def factory(settings: Settings | None = None, **kwargs: Any) -> TestClient:
        kwargs.setdefault("registry", CollectorRegistry())
        client = TestClient(create_app(settings or make_settings(), **kwargs), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(client_for: ClientFactory, backends: dict[str, ScriptedBackend]) -> TestClient:
    return client_for(make_settings(), backends=backends)


def chat_body(content: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture
def emulator_state() -> EmulatorState:
    return EmulatorState(api_key="sk-test-emulator-key-0123456789")


@pytest.fixture(scope="session")
def emulator_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real OpenAI emulator process on loopback, shared by the end-to-end tests."""
    port = free_port()
    log = tmp_path_factory.mktemp("emulator") / "emulator.log"
    args = ["-m", "tests.emulators.openai_server", "--port", str(port), "--api-key", "sk-test-emulator-key-0123456789"]
    with running(args, port=port, ready_path="/v1/models", log=log) as server:
        yield server


@pytest.fixture
def emulator(emulator_process: Server) -> Server:
    import httpx

    httpx.post(emulator_process.url + "/_emulator/reset")
    return emulator_process


EMULATOR_KEY = "sk-test-emulator-key-0123456789"


@pytest.fixture(scope="session")
def edge_model_dir() -> Path:
    """The built default edge model; `make setup` builds it (tests never build it themselves)."""
    from edge_models.catalog import DEFAULT_MODEL, DEFAULT_PRECISION, model_dir

    folder = model_dir(DEFAULT_MODEL, DEFAULT_PRECISION)
    if not (folder / "genai_config.json").is_file():
        pytest.fail(f"the edge model is not built at {folder}: run `make setup` (hybrid-router edge build)")
    return folder


__all__ = ["create_emulator"]
