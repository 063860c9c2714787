"""Every failure reaches the client in OpenAI's error shape with the right status."""

from __future__ import annotations

import inspect

import pytest
from fastapi.testclient import TestClient

import router.errors as errors_module
from router.backends.fake import ScriptedReply
from router.errors import HybridRouterError
from tests.conftest import ClientFactory, chat_body, cloud_backend, edge_backend, make_settings

ALL_ERRORS = [
    cls
    for _, cls in inspect.getmembers(errors_module, inspect.isclass)
    if issubclass(cls, HybridRouterError) and cls not in (HybridRouterError, errors_module.ConfigError)
]

EXPECTED_STATUS = {
    "InvalidRequest": 400, "ContextLengthExceeded": 400, "UnknownModel": 404, "PayloadTooLarge": 413,
    "AuthenticationFailed": 401, "PolicyViolation": 403, "RateLimited": 429, "BudgetExhausted": 429, "NoTargetAvailable": 503,
    "BackendError": 502, "BackendBusy": 503, "UpstreamTimeout": 504, "UpstreamConnectError": 502,
    "UpstreamRateLimited": 429, "UpstreamAuthError": 502, "UpstreamBadRequest": 400, "ContentFiltered": 400,
    "UpstreamProtocolError": 502, "RequestTimeout": 408, "HeadersTooLarge": 431, "GatewayOverloaded": 503,
    "CircuitOpen": 503, "StateUnavailable": 503,
}  # fmt: skip


def assert_openai_error(body: dict[str, object]) -> dict[str, object]:
    assert set(body) == {"error"}
    error = body["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert "Traceback" not in error["message"]
    return error


def test_every_error_class_has_an_expected_status() -> None:
    assert {cls.__name__ for cls in ALL_ERRORS} == set(EXPECTED_STATUS)


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda cls: cls.__name__)
def test_each_router_error_is_translated_with_its_status(
    client_for: ClientFactory, cls: type[HybridRouterError]
) -> None:
    failing = edge_backend(ScriptedReply(error=cls("it broke", retry_after=3)))
    client = client_for(make_settings(), backends={"edge": failing, "cloud": cloud_backend()})

    response = client.post("/v1/chat/completions", json=chat_body())

    assert response.status_code == EXPECTED_STATUS[cls.__name__]
    error = assert_openai_error(response.json())
    assert error["message"] == "it broke"
    assert error["type"] == cls.type
    assert error["code"] == cls.code
    assert response.headers["retry-after"] == "3"
    assert response.headers["x-request-id"]


def test_unexpected_exception_is_a_500_without_traceback(client_for: ClientFactory) -> None:
    def explode(_: object) -> ScriptedReply:
        raise ZeroDivisionError("secret internals")

    client = client_for(make_settings(), backends={"edge": edge_backend(explode), "cloud": cloud_backend()})  # type: ignore[arg-type]

    response = client.post("/v1/chat/completions", json=chat_body())

    assert response.status_code == 500
    error = assert_openai_error(response.json())
    assert "secret internals" not in error["message"]
    assert response.headers["x-request-id"] in error["message"]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (b"", None, "empty"),
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'{"messages": []}', "messages", "at least 1"),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', "messages.0.role", "Input should be"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": 9}', "temperature", "less than or equal"),
        (b'{"messages": [{"role": "user", "content": "x"}], "n": 2}', "n", "less than or equal"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens", "greater than"),
        (b'{"messages": [{"role": "user", "content": [{"text": "no type"}]}]}', "messages.0.content", "type"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stop": [""]}', "stop", "empty"),
    ],
)
def test_bad_input_is_400_naming_the_param(client: TestClient, body: bytes, param: str | None, fragment: str) -> None:
    response = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 400
    error = assert_openai_error(response.json())
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert fragment in str(error["message"])


def test_unknown_model_is_404_listing_valid_models(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=chat_body(model="gpt-9"))

    assert response.status_code == 404
    error = assert_openai_error(response.json())
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert "auto, edge, cloud" in str(error["message"])


def test_unknown_route_and_method_are_openai_errors(client: TestClient) -> None:
    missing = client.get("/v1/nothing")
    wrong_method = client.get("/v1/chat/completions")

    assert missing.status_code == 404
    assert assert_openai_error(missing.json())["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert_openai_error(wrong_method.json())


def test_body_over_the_limit_is_413(client_for: ClientFactory) -> None:
    client = client_for(make_settings(limits={"max_body_bytes": 2048}))

    declared = client.post("/v1/chat/completions", json=chat_body("x" * 5000))

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}]}'

    undeclared = client.post("/v1/chat/completions", content=chunks())

    for response in (declared, undeclared):
        assert response.status_code == 413
        assert assert_openai_error(response.json())["code"] == "payload_too_large"


def test_message_and_prompt_limits(client_for: ClientFactory) -> None:
    client = client_for(make_settings(limits={"max_messages": 2, "max_prompt_chars": 50}))

    too_many = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}] * 3})
    too_long = client.post("/v1/chat/completions", json=chat_body("z" * 51))

    assert too_many.status_code == 400
    assert too_many.json()["error"]["param"] == "messages"
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "prompt_too_long"


def test_no_target_allowed_is_403(client_for: ClientFactory) -> None:
    settings = make_settings(policies=[{"type": "privacy", "on_personal_data": "reject"}])
    client = client_for(settings, backends={"edge": edge_backend(), "cloud": cloud_backend()})

    response = client.post("/v1/chat/completions", json=chat_body("SSN 123-45-6789"))

    assert response.status_code == 403
    error = assert_openai_error(response.json())
    assert "personal data (ssn): rejected" in str(error["message"])
    assert "123-45-6789" not in response.text
