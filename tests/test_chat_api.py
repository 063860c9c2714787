"""POST /v1/chat/completions, driven in-process with scripted targets."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from router.backends.fake import ScriptedBackend, ScriptedReply
from router.errors import UpstreamRateLimited
from tests.conftest import ClientFactory, chat_body, cloud_backend, edge_backend, make_settings


def sse_events(text: str) -> list[str]:
    return [block[len("data: ") :] for block in text.strip().split("\n\n")]


def test_non_streaming_answer_has_openai_shape_and_route_headers(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=chat_body())

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "edge says hi"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert response.headers["x-route-target"] == "edge"
    assert response.headers["x-route-reason"] == "default target edge"
    assert float(response.headers["x-route-decision-ms"]) >= 0
    assert len(response.headers["x-request-id"]) == 32


def test_incoming_request_id_is_kept_when_well_formed(client: TestClient) -> None:
    kept = client.post("/v1/chat/completions", json=chat_body(), headers={"x-request-id": "req-42"})
    replaced = client.post("/v1/chat/completions", json=chat_body(), headers={"x-request-id": "bad id; drop"})

    assert kept.headers["x-request-id"] == "req-42"
    assert replaced.headers["x-request-id"] != "bad id; drop"


def test_stream_is_sse_ending_in_done_with_usage_when_asked(client: TestClient) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True})
    response = client.post("/v1/chat/completions", json=body)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-route-target"] == "edge"
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "edge says hi"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 3


def test_stream_without_include_usage_has_no_usage_chunk(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=chat_body(stream=True))

    chunks = [json.loads(e) for e in sse_events(response.text)[:-1]]
    assert all(c["choices"] for c in chunks)
    assert not any("usage" in c for c in chunks)


def test_content_parts_and_unknown_fields_are_accepted(
    client: TestClient, backends: dict[str, ScriptedBackend]
) -> None:
    body = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}]}
        ],
        "some_future_field": {"nested": True},
        "max_completion_tokens": 12,
        "temperature": 0.3,
        "top_p": 0.5,
        "stop": ["\n"],
        "seed": 7,
        "n": 1,
        "user": "u-1",
    }
    response = client.post("/v1/chat/completions", json=body)

    assert response.status_code == 200
    seen = backends["edge"].requests[-1]
    assert seen.prompt_text == "part one\ntwo"
    assert seen.effective_max_tokens == 12
    assert seen.model_extra == {"some_future_field": {"nested": True}}


def test_pinned_model_goes_to_that_target(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=chat_body(model="cloud"))

    assert response.status_code == 200
    assert response.headers["x-route-target"] == "cloud"
    assert response.headers["x-route-reason"] == "pinned by request (model=cloud)"
    assert response.json()["model"] == "cloud-model"


def test_pin_forbidden_by_policy_is_403_with_the_policy_reason(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=chat_body("mail me at jane@example.com", model="cloud"))

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["type"] == "permission_error"
    assert error["code"] == "policy_violation"
    assert "privacy" in error["message"]
    assert "personal data (email)" in error["message"]
    assert "jane@example.com" not in error["message"]


def test_personal_data_stays_on_edge_in_auto_mode(client: TestClient, backends: dict[str, ScriptedBackend]) -> None:
    body = chat_body(
        "my card is 4111 1111 1111 1111, use tools", tools=[{"type": "function", "function": {"name": "f"}}]
    )
    response = client.post("/v1/chat/completions", json=body)

    # Tools would need the cloud, but personal data must stay local: nothing is allowed.
    assert response.status_code == 403
    assert backends["cloud"].requests == []


def test_tools_go_to_a_target_that_supports_them(client: TestClient, backends: dict[str, ScriptedBackend]) -> None:
    body = chat_body("What's the weather?", tools=[{"type": "function", "function": {"name": "weather"}}])
    response = client.post("/v1/chat/completions", json=body)

    assert response.headers["x-route-target"] == "cloud"
    assert response.headers["x-route-reason"] == "request needs tools"
    assert backends["cloud"].requests[0].tools == [{"type": "function", "function": {"name": "weather"}}]


def test_long_prompt_goes_to_cloud(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=chat_body("word " * 3000))

    assert response.headers["x-route-target"] == "cloud"
    assert response.headers["x-route-reason"].startswith("prompt too long for edge")


def test_cloud_not_ready_is_skipped_and_the_reason_says_so(client_for: ClientFactory) -> None:
    from router.backends.base import Readiness

    cloud = cloud_backend(ready=Readiness(ready=False, reason="no API key: OPENAI_API_KEY is not set"))
    settings = make_settings(policies=[{"type": "explicit"}, {"type": "weighted", "quality": 10}])
    client = client_for(settings, backends={"edge": edge_backend(), "cloud": cloud})

    response = client.post("/v1/chat/completions", json=chat_body())

    assert response.status_code == 200
    assert response.headers["x-route-target"] == "edge"
    assert response.headers["x-route-reason"] == ("cloud not ready (no API key: OPENAI_API_KEY is not set); using edge")


def test_upstream_error_before_output_keeps_its_status_and_retry_after(client_for: ClientFactory) -> None:
    failing = edge_backend(ScriptedReply(error=UpstreamRateLimited("target edge: slow down", retry_after=7)))
    client = client_for(make_settings(), backends={"edge": failing, "cloud": cloud_backend()})

    for stream in (False, True):
        response = client.post("/v1/chat/completions", json=chat_body(stream=stream))
        assert response.status_code == 429
        assert response.headers["retry-after"] == "7"
        assert response.headers["x-route-target"] == "edge"
        assert response.json()["error"]["code"] == "upstream_rate_limited"


def test_stream_failing_midway_ends_with_error_event_and_done(client_for: ClientFactory) -> None:
    reply = ScriptedReply(text="one two three four", fail_after=2, error=UpstreamRateLimited("target edge: cut"))
    client = client_for(make_settings(), backends={"edge": edge_backend(reply), "cloud": cloud_backend()})

    response = client.post("/v1/chat/completions", json=chat_body(stream=True))

    events = sse_events(response.text)
    assert response.status_code == 200
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "upstream_rate_limited"
    assert error["message"] == "target edge: cut"
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-2]]
    assert contents == ["", "one", " two"]


def test_deadline_turns_a_stalled_target_into_504(client_for: ClientFactory) -> None:
    slow = edge_backend(ScriptedReply(delay_s=5))
    settings = make_settings(limits={"request_timeout_s": 0.2})
    client = client_for(settings, backends={"edge": slow, "cloud": cloud_backend()})

    response = client.post("/v1/chat/completions", json=chat_body())

    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


def test_stream_deadline_mid_stream_sends_error_event(client_for: ClientFactory) -> None:
    slow = edge_backend(ScriptedReply(text="a b c d e f", piece_delay_s=0.1))
    client = client_for(
        make_settings(limits={"request_timeout_s": 0.25}), backends={"edge": slow, "cloud": cloud_backend()}
    )

    events = sse_events(client.post("/v1/chat/completions", json=chat_body(stream=True)).text)

    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize("path", ["/v1/models", "/v1/route"])
def test_models_and_route_answer(client: TestClient, path: str) -> None:
    response = client.get(path) if path == "/v1/models" else client.post(path, json=chat_body())
    assert response.status_code == 200


def test_models_lists_auto_and_targets(client: TestClient) -> None:
    data = client.get("/v1/models").json()["data"]

    assert [m["id"] for m in data] == ["auto", "edge", "cloud"]
    assert data[1]["local"] is True
    assert data[2]["local"] is False
