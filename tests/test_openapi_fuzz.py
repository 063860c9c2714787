"""Schemathesis against the app's own OpenAPI: generated requests, valid and not, never get a 500 or an
undocumented status, and every answer matches its documented content type and schema.

The app runs in-process with scripted targets. The run is bounded and
derandomized (same examples every time), so it is a regression test, not a
search: it takes seconds, and a failure names the request that caused it.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Iterator

import aiohttp
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from prometheus_client import CollectorRegistry
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.auth import hash_key
from tests.conftest import cloud_backend, edge_backend, make_settings
from tests.emulators.openai_server import EmulatorState
from tests.emulators.openai_server import create_app as create_emulator
from tests.support.loopback import serving_in_thread

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
KEY = "hr-fuzz-client-key"
UPSTREAM_KEY = "sk-fuzz-upstream-key"
FUZZ = settings(
    max_examples=120,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def open_gateway() -> Iterator[schemathesis.BaseSchema]:
    """No client keys, as on loopback: generated bodies reach validation, routing and the targets."""
    app = create_app(
        make_settings(), backends={"edge": edge_backend(), "cloud": cloud_backend()}, registry=CollectorRegistry()
    )
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    shutdown_lifespans()


@pytest.fixture(scope="module")
def keyed_gateway() -> Iterator[schemathesis.BaseSchema]:
    """Client keys and ``server.metrics_auth``: the 401s must be documented too."""
    settings = make_settings(auth={"api_key_hashes": [hash_key(KEY)]}, server={"metrics_auth": True})
    app = create_app(
        settings, backends={"edge": edge_backend(), "cloud": cloud_backend()}, registry=CollectorRegistry()
    )
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    shutdown_lifespans()


@pytest.fixture(scope="module")
def forwarding_gateway() -> Iterator[schemathesis.BaseSchema]:
    """A real OpenAI adapter in front of the OpenAI emulator, forwarding unknown fields: whatever the gateway
    accepts must survive being encoded for an upstream."""
    with serving_in_thread(create_emulator(EmulatorState(api_key=UPSTREAM_KEY))) as url:
        cloud = {"type": "openai", "base_url": url + "/v1", "model": "gpt-4o-mini", "api_key_env": "FUZZ_UPSTREAM_KEY",
                 "forward_unknown_fields": True}  # fmt: skip
        settings = make_settings(targets={"cloud": cloud}, policies=[{"type": "default", "target": "cloud"}])
        options = {"cloud": {"environ": {"FUZZ_UPSTREAM_KEY": UPSTREAM_KEY}}}
        app = create_app(settings, backend_options=options, registry=CollectorRegistry())
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
        shutdown_lifespans()
        close_orphaned_sessions()


def close_orphaned_sessions() -> None:
    """Close upstream pools that outlived the app's lifespan under schemathesis' ASGI portal.

    Under this fuzz run (and nowhere else: the lifespan, hot-reload and e2e tests check
    their pools close) one adapter pool is started a second time on the portal's loop
    and never closed; left to the garbage collector it fails whichever test runs next.
    """
    # The heap holds whatever other tests imported (torch's deprecated shims warn on isinstance).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        orphans = [t for t in gc.get_objects() if isinstance(t, aiohttp.ClientSession) and not t.closed]
    for session in orphans:
        asyncio.run(session.close())


OPERATIONS = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/route"),
    ("GET", "/v1/models"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
]
# Bodies are where the surface is; the GET operations take no input, so one mode covers them.
MODES = {"POST": list(GenerationMode), "GET": [GenerationMode.POSITIVE]}
CASES = [(method, path, mode) for method, path in OPERATIONS for mode in MODES[method]]


def fuzz(schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode, examples: int) -> None:
    # Driven through Hypothesis directly rather than schemathesis' pytest plugin, which does not support
    # the pytest in use here.
    operation = schema[path][method]

    @settings(FUZZ, max_examples=examples)
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS)

    check()


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=lambda value: getattr(value, "value", value))
def test_open_gateway_conforms(
    open_gateway: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    fuzz(open_gateway, method, path, mode, examples=150 if method == "POST" else 20)


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=lambda value: getattr(value, "value", value))
def test_keyed_gateway_conforms(
    keyed_gateway: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    fuzz(keyed_gateway, method, path, mode, examples=30 if method == "POST" else 10)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/route"])
def test_forwarding_gateway_conforms(forwarding_gateway: schemathesis.BaseSchema, path: str) -> None:
    fuzz(forwarding_gateway, "POST", path, GenerationMode.POSITIVE, examples=80)


def test_every_operation_is_documented(open_gateway: schemathesis.BaseSchema) -> None:
    operations = {(result.ok().method.upper(), result.ok().path) for result in open_gateway.get_all_operations()}
    assert operations == set(OPERATIONS)
