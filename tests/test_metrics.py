"""The Prometheus metrics the issue names, with their hybrid_router_ prefix."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ClientFactory, chat_body, cloud_backend, edge_backend, make_settings


def scrape(client: TestClient) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_chat_traffic_moves_every_metric(client_for: ClientFactory) -> None:
    client = client_for(make_settings(), backends={"edge": edge_backend(), "cloud": cloud_backend()})
    client.post("/v1/chat/completions", json=chat_body())
    client.post("/v1/chat/completions", json=chat_body(model="cloud", stream=True))
    client.post("/v1/chat/completions", json=chat_body(model="nope"))

    m = scrape(client)
    assert m["hybrid_router_requests_total"] == {
        (("decided_by", "default"), ("status", "200"), ("target", "edge"), ("tenant", "default")): 1.0,
        (("decided_by", "explicit"), ("status", "200"), ("target", "cloud"), ("tenant", "default")): 1.0,
        (("decided_by", "router"), ("status", "404"), ("target", "none"), ("tenant", "default")): 1.0,
    }
    assert m["hybrid_router_request_duration_seconds_count"][(("stream", "false"), ("target", "edge"))] == 1
    assert m["hybrid_router_request_duration_seconds_count"][(("stream", "true"), ("target", "cloud"))] == 1
    assert m["hybrid_router_time_to_first_token_seconds_count"][(("target", "cloud"),)] == 1
    assert m["hybrid_router_routing_decision_seconds_count"][()] == 3
    assert m["hybrid_router_tokens_total"][(("direction", "out"), ("target", "cloud"), ("tenant", "default"))] == 3
    # The cloud target's price table: $1 in, $2 out per million tokens.
    tokens_in = m["hybrid_router_tokens_total"][(("direction", "in"), ("target", "cloud"), ("tenant", "default"))]
    cost = m["hybrid_router_cost_usd_total"][(("target", "cloud"), ("tenant", "default"))]
    assert cost == (tokens_in * 1 + 3 * 2) / 1e6
    assert m["hybrid_router_in_flight_requests"][()] == 0
    assert m["hybrid_router_target_ready"] == {(("target", "edge"),): 1.0, (("target", "cloud"),): 1.0}


def test_upstream_errors_are_counted_by_kind(client_for: ClientFactory) -> None:
    from router.backends.fake import ScriptedReply
    from router.errors import UpstreamTimeout

    failing = edge_backend(ScriptedReply(error=UpstreamTimeout("slow")))
    client = client_for(make_settings(), backends={"edge": failing, "cloud": cloud_backend()})
    client.post("/v1/chat/completions", json=chat_body())

    errors = scrape(client)["hybrid_router_upstream_errors_total"]
    assert errors == {(("kind", "upstream_timeout"), ("target", "edge")): 1.0}


def test_each_app_has_its_own_registry(client_for: ClientFactory) -> None:
    registry = CollectorRegistry()
    first = client_for(make_settings(), backends={"edge": edge_backend(), "cloud": cloud_backend()}, registry=registry)
    second = client_for(make_settings(), backends={"edge": edge_backend(), "cloud": cloud_backend()})
    first.post("/v1/chat/completions", json=chat_body())

    assert "hybrid_router_requests_total" in scrape(first)
    assert scrape(second).get("hybrid_router_requests_total", {}) == {}
