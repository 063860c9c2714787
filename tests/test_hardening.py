"""Safe defaults, in-process: no open relay, no private details to anonymous callers, caps and ceilings.

The same protections over real sockets are in tests/test_hardening_server.py
and tests/test_slowloris.py.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from router.backends.base import Readiness
from router.backends.fake import ScriptedReply
from router.errors import ConfigError
from service.app import create_app, create_metrics_app
from service.auth import KeyChecker, hash_key, is_loopback, startup_problems
from service.cli import main
from service.server import listen_host, serve
from service.settings import AuthSettings, LimitSettings, ServerSettings, Settings, load_settings
from tests.conftest import ClientFactory, chat_body, cloud_backend, edge_backend, make_settings
from tests.test_errors import assert_openai_error

KEY = "hr-hardening-client-key"
KEYED = {"api_key_hashes": [hash_key(KEY)]}
BEARER = {"authorization": f"Bearer {KEY}"}


# --- No open relay ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "gateway.internal", ""])
def test_a_public_address_without_keys_is_refused_with_what_to_do(host: str) -> None:
    problems = startup_problems(ServerSettings(host=host), AuthSettings(), KeyChecker())

    assert len(problems) == 1
    problem = problems[0]
    assert f"refusing to serve on {host}:8080 without client keys" in problem
    for remedy in ("$HYBRID_ROUTER_API_KEYS", "hybrid-router auth hash KEY", "auth.api_key_hashes", "127.0.0.1",
                   "auth.allow_unauthenticated: true", "HYBRID_ROUTER_AUTH__ALLOW_UNAUTHENTICATED=true"):  # fmt: skip
        assert remedy in problem


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_without_keys_is_allowed(host: str) -> None:
    assert is_loopback(host)
    assert startup_problems(ServerSettings(host=host), AuthSettings(), KeyChecker()) == []


def test_keys_or_the_explicit_opt_in_allow_a_public_address() -> None:
    public = ServerSettings(host="0.0.0.0")
    keyed = KeyChecker.from_settings(AuthSettings(), environ={"HYBRID_ROUTER_API_KEYS": KEY})

    assert startup_problems(public, AuthSettings(), keyed) == []
    assert startup_problems(public, AuthSettings(allow_unauthenticated=True), KeyChecker()) == []


def test_metrics_auth_without_keys_is_a_problem() -> None:
    problems = startup_problems(ServerSettings(metrics_auth=True), AuthSettings(), KeyChecker())
    assert len(problems) == 1
    assert problems[0].startswith("server.metrics_auth is true but no client keys are configured")


def test_serve_refuses_before_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYBRID_ROUTER_API_KEYS", raising=False)
    with pytest.raises(ConfigError, match="refusing to serve on 0.0.0.0:8080"):
        serve(make_settings(server={"host": "0.0.0.0"}))


CONFIG = """
server: {host: 0.0.0.0}
targets:
  edge: {type: fake}
policies:
  - {type: default, target: edge}
"""


@pytest.fixture
def public_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("HYBRID_ROUTER_API_KEYS", raising=False)
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


def test_cli_serve_refuses_a_public_address_without_keys(
    public_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--config", str(public_config)]) == 2
    assert "config error: refusing to serve on 0.0.0.0:8080 without client keys" in capsys.readouterr().err


def test_cli_serve_host_flag_is_checked_too(public_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    public_config.write_text(CONFIG.replace("0.0.0.0", "127.0.0.1"))
    assert main(["serve", "--config", str(public_config), "--host", "::"]) == 2
    assert "refusing to serve on :::8080" in capsys.readouterr().err


def test_config_check_reports_the_open_relay(public_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(public_config)]) == 2
    err = capsys.readouterr().err
    assert f"config error: {public_config}: refusing to serve on 0.0.0.0:8080 without client keys" in err


def test_config_check_passes_with_keys_or_the_opt_in(
    public_config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYBRID_ROUTER_API_KEYS", KEY)
    assert main(["config", "check", str(public_config)]) == 0
    assert "auth:     client keys required on 0.0.0.0:8080" in capsys.readouterr().out

    monkeypatch.delenv("HYBRID_ROUTER_API_KEYS")
    public_config.write_text(CONFIG + "auth: {allow_unauthenticated: true}\n")
    assert main(["config", "check", str(public_config)]) == 0
    assert "warning:  no client keys configured: anyone who can reach it" in capsys.readouterr().out


def test_config_check_warns_on_loopback_without_keys(public_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    public_config.write_text(CONFIG.replace("0.0.0.0", "127.0.0.1"))
    assert main(["config", "check", str(public_config)]) == 0
    assert "warning:  no client keys configured: any local process can use the gateway" in capsys.readouterr().out


ROOT = Path(__file__).resolve().parents[1]


def test_the_image_opens_only_behind_keys_and_compose_stays_on_loopback() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    instructions = "\n".join(line for line in dockerfile.splitlines() if not line.startswith("#"))
    image_host = re.search(r"HYBRID_ROUTER_SERVER__HOST=(\S+)", instructions)
    assert image_host is not None
    image = Settings.model_validate({"targets": {"edge": {"type": "fake"}}, "server": {"host": image_host.group(1)}})
    # Without keys the image listens on loopback only; with them, on every interface.
    assert listen_host(image, environ={}) == "127.0.0.1"
    assert listen_host(image, environ={"HYBRID_ROUTER_API_KEYS": KEY}) == "0.0.0.0"
    assert "HYBRID_ROUTER_API_KEYS" in dockerfile

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    gateway = services["hybrid-router"]
    assert is_loopback(gateway["environment"]["HYBRID_ROUTER_SERVER__HOST"])
    # The sidecar's namespace (the app's) does not publish it; only the keyed replicas' balancer is published.
    assert not any(str(port).endswith(":8080") for port in services["app"].get("ports", []))
    for name, service in services.items():
        if any(str(port).endswith(":8080") for port in service.get("ports", [])):
            assert service.get("profiles") == ["replicas"], name


def test_the_example_config_lists_every_safety_setting_with_its_default() -> None:
    example = ROOT / "deploy" / "config.example.yaml"
    settings = load_settings(example)
    text = example.read_text()
    assert settings.server == ServerSettings()
    assert settings.auth == AuthSettings()
    assert settings.limits == LimitSettings()
    for section in (ServerSettings, AuthSettings, LimitSettings):
        for name in section.model_fields:
            assert f"  {name}:" in text, name


# --- Nothing private for anonymous callers ---------------------------------------------------------------------

PRIVATE = ("HYBRID_TEST_UNSET_KEY", "/opt/models/secret-model", "MODEL_DIR_ENV")


def _backends() -> dict[str, Any]:
    edge = edge_backend(ready=Readiness(True, reason="model loaded", detail={"model": "/opt/models/secret-model"}))
    cloud = cloud_backend(ready=Readiness(False, reason="no API key: HYBRID_TEST_UNSET_KEY is not set"))
    return {"edge": edge, "cloud": cloud}


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": KEY}])
def test_readyz_tells_anonymous_callers_only_the_state(client_for: ClientFactory, headers: dict[str, str]) -> None:
    client = client_for(make_settings(auth=KEYED), backends=_backends())

    response = client.get("/readyz", headers=headers)

    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "targets": {
            "edge": {"ready": True, "busy": False, "reason": "ready"},
            "cloud": {"ready": False, "busy": False, "reason": "not ready"},
        },
    }
    assert not any(secret in response.text for secret in PRIVATE)


def test_readyz_without_configured_keys_shows_no_details_to_anyone(client_for: ClientFactory) -> None:
    client = client_for(make_settings(), backends=_backends())
    response = client.get("/readyz", headers=BEARER)
    assert not any(secret in response.text for secret in PRIVATE)
    assert response.json()["targets"]["cloud"]["reason"] == "not ready"


def test_readyz_shows_details_to_a_caller_with_a_client_key(client_for: ClientFactory) -> None:
    client = client_for(make_settings(auth=KEYED), backends=_backends())

    targets = client.get("/readyz", headers=BEARER).json()["targets"]

    assert targets["cloud"]["reason"] == "no API key: HYBRID_TEST_UNSET_KEY is not set"
    assert targets["edge"]["model"] == "/opt/models/secret-model"


def test_busy_is_public(client_for: ClientFactory) -> None:
    busy = edge_backend(ready=Readiness(True, busy=True, reason="generation queue full", detail={"retry_after": 3}))
    client = client_for(make_settings(), backends={"edge": busy, "cloud": cloud_backend()})
    assert client.get("/readyz").json()["targets"]["edge"] == {"ready": True, "busy": True, "reason": "busy"}


def test_metric_labels_carry_no_paths_or_env_names(client_for: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYBRID_TEST_UNSET_KEY", raising=False)
    settings = make_settings(
        targets={
            "edge": {"type": "fake", "reply": "hi"},
            "cloud": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m",
                      "api_key_env": "HYBRID_TEST_UNSET_KEY"},
        },
        policies=[{"type": "explicit"}, {"type": "default", "target": "edge"}],
    )  # fmt: skip
    client = client_for(settings)
    client.post("/v1/chat/completions", json=chat_body())
    client.post("/v1/chat/completions", json=chat_body(model="cloud"))
    client.post("/v1/chat/completions", json=chat_body(model="/opt/models/x"))
    client.post("/v1/chat/completions", content=b"{nope")

    text = client.get("/metrics").text
    labels = {
        value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        for value in sample.labels.values()
    }
    assert labels
    assert not any("/" in value or "\\" in value or "_KEY" in value or "ENV" in value for value in labels), labels
    assert not any(secret in text for secret in PRIVATE)


def test_metrics_auth_requires_a_client_key(client_for: ClientFactory) -> None:
    client = client_for(make_settings(auth=KEYED, server={"metrics_auth": True}))

    anonymous = client.get("/metrics")
    wrong = client.get("/metrics", headers={"authorization": "Bearer wrong"})
    keyed = client.get("/metrics", headers=BEARER)

    for response in (anonymous, wrong):
        assert response.status_code == 401
        assert assert_openai_error(response.json())["code"] == "invalid_api_key"
    assert keyed.status_code == 200
    assert "hybrid_router_target_ready" in keyed.text
    # Probes stay open: an orchestrator carries no key.
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_with_a_metrics_port_the_main_app_does_not_serve_metrics(client_for: ClientFactory) -> None:
    settings = make_settings(server={"metrics_port": 9109})
    client = client_for(settings)
    assert client.get("/metrics").status_code == 404
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]

    with TestClient(create_metrics_app(client.app.state.gateway)) as scraper:  # type: ignore[attr-defined]
        scraped = scraper.get("/metrics")
        other = scraper.get("/v1/models")
    assert scraped.status_code == 200
    assert "hybrid_router_target_ready" in scraped.text
    assert other.status_code == 404


def test_metrics_port_must_differ_from_the_port() -> None:
    with pytest.raises(ValueError, match="metrics_port must differ from port"):
        ServerSettings(port=8080, metrics_port=8080)


# --- max_tokens ceiling and numbers no encoder can carry -------------------------------------------------------


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/route"])
def test_max_tokens_above_the_ceiling_is_400_naming_it(client_for: ClientFactory, field: str, path: str) -> None:
    client = client_for(make_settings(limits={"max_tokens_ceiling": 1000}))

    at_ceiling = client.post(path, json=chat_body(**{field: 1000}))
    above = client.post(path, json=chat_body(**{field: 1001}))

    assert at_ceiling.status_code == 200
    assert above.status_code == 400
    error = assert_openai_error(above.json())
    assert error["param"] == field
    assert error["code"] == "max_tokens_too_large"
    assert "1000" in str(error["message"])


HUGE = "1" + "0" * 30


@pytest.mark.parametrize(
    ("fragment", "param"),
    [
        (f'"max_tokens": {HUGE}', "max_tokens"),
        (f'"max_completion_tokens": {HUGE}', "max_completion_tokens"),
        (f'"seed": {HUGE}', "seed"),
        (f'"seed": -{HUGE}', "seed"),
        (f'"top_k": {HUGE}', "top_k"),
        (f'"n": {HUGE}', "n"),
        (f'"metadata": {{"a": [1, {{"b": {HUGE}}}]}}', "metadata.a.1.b"),
        (f'"some_unknown_field": {HUGE}', "some_unknown_field"),
        (f'"logit_bias": {{"50256": -{HUGE}}}', "logit_bias.50256"),
        (f'"stream_options": {{"include_usage": true, "x": {HUGE}}}', "stream_options.x"),
        ('"tools": [{"type": "function", "function": {"name": "f", "parameters": {"maximum": 1e999}}}]',
         "tools.0.function.parameters.maximum"),
        ('"whatever": NaN', "whatever"),
        ('"whatever": -Infinity', "whatever"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/route"])
def test_numbers_no_json_encoder_can_carry_are_400_never_500(client: Any, fragment: str, param: str, path: str) -> None:
    body = '{"messages": [{"role": "user", "content": "hi"}], ' + fragment + "}"

    response = client.post(path, content=body, headers={"content-type": "application/json"})

    assert response.status_code == 400, response.text
    error = assert_openai_error(response.json())
    assert error["param"] == param


@pytest.mark.parametrize(
    "fragment",
    [
        f'"messages": [{{"role": "user", "content": "hi", "extra": {HUGE}}}]',
        f'"messages": [{{"role": "user", "content": [{{"type": "text", "text": "hi", "n": {HUGE}}}]}}]',
        f'"messages": [{{"role": "assistant", "content": "a", "tool_calls": [{{"id": {HUGE}}}]}}, '
        '{"role": "user", "content": "b"}]',
    ],
)
def test_huge_numbers_inside_messages_are_400(client: Any, fragment: str) -> None:
    response = client.post("/v1/route", content="{" + fragment + "}", headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert str(assert_openai_error(response.json())["param"]).startswith("messages.")


def test_the_largest_64_bit_numbers_are_accepted(client: Any) -> None:
    body = chat_body(seed=2**63 - 1, metadata={"big": 2**64 - 1, "small": -(2**63)}, top_k=2**63 - 1)
    assert client.post("/v1/route", json=body).status_code == 200
    assert client.post("/v1/chat/completions", json=body).status_code == 200


# --- Body deadline and request cap -----------------------------------------------------------------------------


async def _call(app: FastAPI, path: str, receive: Any, method: str = "POST") -> tuple[int, dict[str, str], bytes]:
    """One raw ASGI request, so a test controls exactly when (and whether) the body arrives."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json"), (b"content-length", b"100")]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 8080), "scheme": "http", "root_path": ""}  # fmt: skip
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


async def test_a_body_that_does_not_arrive_in_time_is_408_and_closes(tmp_path: Path) -> None:
    app = create_app(make_settings(server={"body_timeout_s": 0.2}), registry=CollectorRegistry())
    chunks = [{"type": "http.request", "body": b'{"messages": [', "more_body": True}]

    async def receive() -> dict[str, Any]:
        if chunks:
            return chunks.pop()
        await asyncio.sleep(30)
        raise AssertionError("the gateway waited past its body deadline")

    for path in ("/v1/chat/completions", "/v1/route"):
        chunks.append({"type": "http.request", "body": b'{"messages": [', "more_body": True})
        status, headers, body = await _call(app, path, receive)
        assert status == 408
        assert headers["connection"] == "close"
        error = assert_openai_error(httpx.Response(200, content=body).json())
        assert error["code"] == "request_timeout"
        assert error["type"] == "invalid_request_error"


async def _lifespan(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway") as client,
    ):
        yield client


async def test_over_the_request_cap_is_503_with_retry_after_and_probes_still_answer() -> None:
    slow = edge_backend(ScriptedReply(text="slow", delay_s=0.3))
    app = create_app(
        make_settings(server={"max_concurrent_requests": 1}),
        backends={"edge": slow, "cloud": cloud_backend()},
        registry=CollectorRegistry(),
    )
    async for client in _lifespan(app):
        first = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        while not slow.requests:
            await asyncio.sleep(0.01)

        refused = await client.post("/v1/chat/completions", json=chat_body())
        models = await client.get("/v1/models")
        probes = [await client.get(path) for path in ("/healthz", "/readyz", "/metrics")]
        served = await first
        after = await client.post("/v1/chat/completions", json=chat_body())

    for response in (refused, models):
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        error = assert_openai_error(response.json())
        assert error["code"] == "gateway_overloaded"
        assert error["type"] == "service_unavailable"
    assert [probe.status_code for probe in probes] == [200, 200, 200]
    assert served.status_code == 200
    assert after.status_code == 200


# --- OpenAPI ----------------------------------------------------------------------------------------------------


def test_openapi_documents_the_chat_body_and_every_status(client: Any) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/route"):
        operation = spec["paths"][path]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert schema["required"] == ["messages"]
        assert schema["properties"]["max_tokens"]["anyOf"][0]["maximum"] == 32768
        assert "$defs" not in str(schema)
        assert {"400", "401", "408", "413", "503"} <= set(operation["responses"])
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert set(chat) == {"200", "400", "401", "403", "404", "408", "413", "429", "502", "503", "504"}
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
