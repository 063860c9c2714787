"""Property: a personal value planted in any field or part of any request never reaches the cloud.

Hypothesis builds requests with every kind of field the OpenAI API has (and
some it does not), plants one personal value in one string slot (a value, a
dict key, a tool schema enum, a URL query, a tool-call argument...), and
sends the request through the gateway with ``on_personal_data`` set to
``edge`` and to ``redact``. The cloud backend records what it receives, and
must never have received the value.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from router.backends.fake import ScriptedBackend, ScriptedReply
from service.app import create_app
from tests.conftest import cloud_backend, edge_backend, make_settings

VALUES = {
    "email": "jo.smith@example.com",
    "phone": "+1 415-555-0132",
    "payment_card": "4111 1111 1111 1111",
    "ssn": "078-05-1120",
    "iban": "GB82 WEST 1234 5698 7654 32",
    "openai_key": "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx",
    "aws_key_id": "AKIAIOSFODNN7EXAMPLE",
    "ip_address": "203.0.113.42",
}
PLANT = "\x00PLANT\x00"

words = st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta", "route", "model", "tide", "ocean", "seven", "blue"]), min_size=1,
                 max_size=4).map(" ".join)  # fmt: skip


def slot(value: str = "") -> st.SearchStrategy[str]:
    return words


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """A chat request with a random selection of every field kind; strings are plantable slots."""
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": draw(st.sampled_from(["system", "developer"])), "content": draw(words)})
    for _ in range(draw(st.integers(1, 3))):
        user: dict[str, Any] = {"role": "user"}
        if draw(st.booleans()):
            user["content"] = draw(words)
        else:
            parts: list[dict[str, Any]] = [{"type": "text", "text": draw(words)}]
            if draw(st.booleans()):
                parts.append({"type": "image_url", "image_url": {"url": f"https://img.example/{draw(words)}.png?q=x"}})
            if draw(st.booleans()):
                parts.append({"type": "file", "file": {"filename": f"{draw(words)}.pdf", "file_id": "file-1"}})
            user["content"] = parts
        if draw(st.booleans()):
            user["name"] = "someone"
        if draw(st.booleans()):
            user["x_client_note"] = draw(words)
        messages.append(user)
        if draw(st.booleans()):
            arguments = json.dumps({"to": draw(words), "note": draw(words)})
            assistant: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "send", "arguments": arguments}}]}  # fmt: skip
            if draw(st.booleans()):
                assistant["content"] = [{"type": "refusal", "refusal": draw(words)}]
            if draw(st.booleans()):
                assistant["function_call"] = {"name": "legacy", "arguments": json.dumps({"q": draw(words)})}
            messages.append(assistant)
            messages.append({"role": "tool", "tool_call_id": "call_1", "content": draw(words)})
    if messages[-1]["role"] != "user":
        messages.append({"role": "user", "content": draw(words)})
    body: dict[str, Any] = {"model": "auto", "messages": messages}
    optional: dict[str, Any] = {
        "user": draw(words),
        "metadata": {"team": draw(words), draw(st.sampled_from(["k1", "owner"])): draw(words)},
        "stop": [draw(words)],
        "prediction": {"type": "content", "content": draw(words)},
        "tools": [{"type": "function", "function": {"name": "send", "description": draw(words), "parameters": {
            "type": "object", "properties": {"to": {"type": "string", "description": draw(words),
                                                    "default": draw(words), "enum": [draw(words)]}}}}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
            "type": "object", "description": draw(words)}}},
        "x_vendor_option": {"note": draw(words)},
    }  # fmt: skip
    for key, value in optional.items():
        if draw(st.booleans()):
            body[key] = value
    return body


def string_slots(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], bool]]:
    """Every (path, is_key): a string value to plant into, or a dict to add a planted key to.

    Left out: ``model`` (never forwarded: the target's own model replaces it)
    and the API's enumerations (``role``, ``type``), which a request cannot
    carry free text in and still be valid.
    """
    if isinstance(node, dict):
        yield path, True
        for key, value in node.items():
            if key not in ("role", "type", "model"):
                yield from string_slots(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from string_slots(value, (*path, index))
    elif isinstance(node, str):
        yield path, False


def plant(body: dict[str, Any], where: tuple[tuple[Any, ...], bool], value: str) -> dict[str, Any]:
    body = json.loads(json.dumps(body))
    path, is_key = where
    if is_key:
        container = body
        for part in path:
            container = container[part]
        container[f"note {value}"] = "planted as a key"
        return body
    parent = body
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if last == "arguments":
        arguments = json.loads(parent[last])
        arguments[next(iter(arguments))] = f"see {value} now"
        parent[last] = json.dumps(arguments)
    elif last == "url":
        parent[last] = parent[last].replace("q=x", f"q={value.replace('@', '%40').replace(' ', '+')}")
    else:
        parent[last] = f"{parent[last]} {value} end"
    return body


@pytest.fixture(scope="module")
def gateways() -> Iterator[dict[str, tuple[TestClient, ScriptedBackend]]]:
    out: dict[str, tuple[TestClient, ScriptedBackend]] = {}
    clients = []
    for mode in ("edge", "redact"):
        cloud = cloud_backend(ScriptedReply(text="cloud says hi"))
        policies = [{"type": "privacy", "on_personal_data": mode}, {"type": "default", "target": "cloud"}]
        app = create_app(
            make_settings(policies=policies),
            backends={"edge": edge_backend(), "cloud": cloud},
            registry=CollectorRegistry(),
        )
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        out[mode] = (client, cloud)
    yield out
    for client in clients:
        client.__exit__(None, None, None)


def received(cloud: ScriptedBackend) -> str:
    return "\n".join(request.model_dump_json() for request in cloud.requests)


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=requests(), data=st.data())
def test_a_planted_value_never_reaches_the_cloud(
    gateways: dict[str, tuple[TestClient, ScriptedBackend]], body: dict[str, Any], data: st.DataObject
) -> None:
    slots = sorted(set(string_slots(body)), key=repr)
    where = data.draw(st.sampled_from(slots), label="slot")
    kind = data.draw(st.sampled_from(sorted(VALUES)), label="kind")
    value = VALUES[kind]
    planted = plant(body, where, value)
    forms = {value, value.replace("@", "%40").replace(" ", "+"), json.dumps(value)[1:-1]}
    for mode, (client, cloud) in gateways.items():
        cloud.requests.clear()
        response = client.post("/v1/chat/completions", json=planted)
        assert response.status_code == 200, (mode, response.text)
        sent = received(cloud)
        leaked = [form for form in forms if form in sent]
        assert not leaked, f"{mode}: {kind} planted at {where} reached the cloud"
        if mode == "edge":
            assert not cloud.requests, "with on_personal_data: edge the request stays local"
        else:
            assert response.headers["x-route-target"] == "cloud"
