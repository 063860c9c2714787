"""The cascade through the HTTP API: answers, headers, buffered streams, privacy and metrics."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi.testclient import TestClient

from router.backends.fake import ScriptedBackend, ScriptedReply
from router.chat import ChatRequest
from tests.conftest import ClientFactory, chat_body, cloud_backend, edge_backend, make_settings
from tests.test_metrics import scrape

CASCADE = {"type": "cascade", "threshold": -1.0}


def serve(
    client_for: ClientFactory, edge_logprobs: list[float], *, privacy: str = "edge", **edge_reply: Any
) -> tuple[TestClient, ScriptedBackend, ScriptedBackend]:
    edge = edge_backend(ScriptedReply(text="edge guess", token_logprobs=edge_logprobs, **edge_reply))

    def echo(request: ChatRequest) -> ScriptedReply:
        return ScriptedReply(text=f"cloud answer to {request.messages[-1].text()}")

    cloud = cloud_backend()
    cloud.script = echo
    settings = make_settings(policies=[{"type": "explicit"}, {"type": "privacy", "on_personal_data": privacy}, CASCADE])
    return client_for(settings, backends={"edge": edge, "cloud": cloud}), edge, cloud


def streamed_text(body: str) -> str:
    events = [json.loads(part[6:]) for part in body.split("\n\n") if part.startswith("data: {")]
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])


def test_a_confident_edge_answer_is_served_and_the_headers_say_kept(client_for: ClientFactory) -> None:
    client, _, cloud = serve(client_for, [-0.25, -0.75])

    response = client.post("/v1/chat/completions", json=chat_body("Capital of France?"))

    assert response.json()["choices"][0]["message"]["content"] == "edge guess"
    assert response.headers["x-route-target"] == "edge"
    assert response.headers["x-route-cascade"] == "kept edge (confidence -0.50 >= -1.00)"
    assert response.headers["x-route-reason"] == "edge first; cloud if its mean token logprob < -1.00"
    assert cloud.requests == []


def test_an_unsure_edge_answer_is_escalated_and_the_headers_say_so(client_for: ClientFactory) -> None:
    client, edge, cloud = serve(client_for, [-1.5, -2.5])

    response = client.post("/v1/chat/completions", json=chat_body("Capital of France?"))

    assert response.json()["choices"][0]["message"]["content"] == "cloud answer to Capital of France?"
    assert response.json()["model"] == "cloud-model"
    assert response.headers["x-route-target"] == "cloud"
    assert response.headers["x-route-cascade"] == "escalated edge->cloud (confidence -2.00 < -1.00)"
    assert len(edge.requests) == len(cloud.requests) == 1


def test_a_streamed_kept_answer_arrives_after_the_check(client_for: ClientFactory) -> None:
    client, edge, cloud = serve(client_for, [-0.1])

    response = client.post("/v1/chat/completions", json=chat_body("Hi", stream=True))

    assert streamed_text(response.text) == "edge guess"
    assert response.text.endswith("data: [DONE]\n\n")
    assert response.headers["x-route-cascade"] == "kept edge (confidence -0.10 >= -1.00)"
    assert edge.active_streams == 0 and cloud.requests == []


def test_a_streamed_escalation_relays_the_cloud_stream(client_for: ClientFactory) -> None:
    client, _, cloud = serve(client_for, [-3.0])

    response = client.post("/v1/chat/completions", json=chat_body("Hi", stream=True))

    assert streamed_text(response.text) == "cloud answer to Hi"
    assert response.headers["x-route-target"] == "cloud"
    assert response.headers["x-route-cascade"] == "escalated edge->cloud (confidence -3.00 < -1.00)"
    assert cloud.active_streams == 0


def test_personal_data_is_answered_locally_however_unsure(client_for: ClientFactory) -> None:
    client, _, cloud = serve(client_for, [-3.0])

    response = client.post("/v1/chat/completions", json=chat_body("Mail ann@example.com the plan"))

    assert response.json()["choices"][0]["message"]["content"] == "edge guess"
    assert response.headers["x-route-target"] == "edge"
    assert response.headers["x-route-cascade"] == (
        "kept edge (confidence -3.00 < -1.00; not escalated: cloud forbidden "
        "(personal data (email) must stay on this machine))"
    )
    assert cloud.requests == []


def test_an_escalation_is_redacted_when_privacy_says_redact(client_for: ClientFactory) -> None:
    client, edge, cloud = serve(client_for, [-3.0], privacy="redact")

    response = client.post("/v1/chat/completions", json=chat_body("Mail ann@example.com the plan"))

    assert edge.requests[0].messages[-1].text() == "Mail ann@example.com the plan"
    assert re.fullmatch(r"Mail <EMAIL_1_[a-z0-9]{6}> the plan", cloud.requests[0].messages[-1].text())
    assert response.json()["choices"][0]["message"]["content"] == "cloud answer to Mail ann@example.com the plan"


def test_escalations_and_the_wasted_edge_time_are_counted(client_for: ClientFactory) -> None:
    client, _, _ = serve(client_for, [-3.0], delay_s=0.05, prompt_tokens=11)

    escalated = client.post("/v1/chat/completions", json=chat_body("Hi"))
    streamed = client.post("/v1/chat/completions", json=chat_body("Hi", stream=True))

    assert escalated.status_code == streamed.status_code == 200
    m = scrape(client)
    assert m["hybrid_router_cascade_escalations_total"] == {(("from", "edge"), ("to", "cloud")): 2.0}
    assert m["hybrid_router_cascade_escalated_edge_seconds_count"] == {(("target", "edge"),): 2.0}
    assert m["hybrid_router_cascade_escalated_edge_seconds_sum"][(("target", "edge"),)] >= 0.1
    # The edge's wasted tokens are counted against the edge; the answer's against the cloud.
    assert m["hybrid_router_tokens_total"][(("direction", "in"), ("target", "edge"), ("tenant", "default"))] == 22
    assert m["hybrid_router_tokens_total"][(("direction", "out"), ("target", "edge"), ("tenant", "default"))] == 4
    assert m["hybrid_router_requests_total"] == {
        (("decided_by", "cascade"), ("status", "200"), ("target", "cloud"), ("tenant", "default")): 2.0
    }
    # The client waited for the edge too: that time is in the request's latency.
    latency = m["hybrid_router_request_duration_seconds_sum"]
    assert latency[(("stream", "false"), ("target", "cloud"))] >= 0.05
    assert latency[(("stream", "true"), ("target", "cloud"))] >= 0.05


def test_kept_answers_are_counted(client_for: ClientFactory) -> None:
    client, _, _ = serve(client_for, [-0.1])

    client.post("/v1/chat/completions", json=chat_body("Hi"))
    client.post("/v1/chat/completions", json=chat_body("Mail ann@example.com the plan"))

    m = scrape(client)
    assert m["hybrid_router_cascade_kept_total"] == {(("target", "edge"),): 2.0}
    assert "hybrid_router_cascade_escalations_total" not in m


def test_route_dry_run_shows_the_cascade(client_for: ClientFactory) -> None:
    client, _, _ = serve(client_for, [-0.1])

    route = client.post("/v1/route", json=chat_body("Hi")).json()

    assert route["target"] == "edge"
    assert route["cascade"] == {"first": "edge", "then": "cloud", "signal": "mean", "threshold": -1.0}
