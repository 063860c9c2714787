"""Client keys: optional, hashed, compared in constant time, checked before any upstream call."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.auth import KeyChecker, hash_key
from service.settings import AuthSettings
from tests.conftest import ClientFactory, chat_body, make_settings
from tests.support.loopback import handler_app, serving_in_thread

KEY = "hr-client-key-0123456789"


@pytest.fixture
def upstream_calls() -> list[Request]:
    return []


@pytest.fixture
def keyed_client(client_for: ClientFactory, upstream_calls: list[Request]) -> Iterator[TestClient]:
    async def handler(request: Request) -> Response:
        upstream_calls.append(request)
        return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})  # fmt: skip

    with serving_in_thread(handler_app(handler)) as url:
        settings = make_settings(
            auth={"api_key_hashes": [hash_key(KEY)]},
            targets={"cloud": {"type": "openai", "base_url": url + "/v1", "model": "m"}},
            policies=[{"type": "default", "target": "cloud"}],
        )
        yield client_for(settings)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Basic " + KEY, "Bearer wrong-key", "Bearer " + KEY + "x", KEY],
)
def test_missing_or_wrong_key_is_401_and_nothing_goes_upstream(keyed_client, upstream_calls, authorization) -> None:  # type: ignore[no-untyped-def]
    headers = {} if authorization is None else {"authorization": authorization}

    for path in ("/v1/chat/completions", "/v1/route"):
        response = keyed_client.post(path, json=chat_body(), headers=headers)
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["type"] == "authentication_error"
        assert error["code"] == "invalid_api_key"
        assert KEY not in response.text
    assert keyed_client.get("/v1/models", headers=headers).status_code == 401
    assert upstream_calls == []


def test_right_key_passes(keyed_client, upstream_calls) -> None:  # type: ignore[no-untyped-def]
    response = keyed_client.post("/v1/chat/completions", json=chat_body(), headers={"authorization": f"Bearer {KEY}"})

    assert response.status_code == 200
    assert len(upstream_calls) == 1
    # The client's key is never forwarded upstream.
    assert KEY not in upstream_calls[0].headers.get("authorization", "")


def test_probes_need_no_key(keyed_client) -> None:  # type: ignore[no-untyped-def]
    assert keyed_client.get("/healthz").status_code == 200
    assert keyed_client.get("/metrics").status_code == 200


def test_keys_from_env_are_hashed_and_accepted() -> None:
    checker = KeyChecker.from_settings(AuthSettings(), environ={"HYBRID_ROUTER_API_KEYS": "one-key, two-key"})

    assert checker.enabled
    checker.check("Bearer two-key")
    checker.check("bearer one-key")


def test_no_keys_means_open() -> None:
    KeyChecker().check(None)


def test_malformed_hash_in_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="sha256"):
        AuthSettings(api_key_hashes=["md5:abc"])
