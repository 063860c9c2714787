"""The serving model version in /v1/models, /v1/route, the metrics and the policies' target views."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from edge_models.distill.registry import Registry
from router.backends.edge import EdgeBackend
from router.backends.versions import ModelVersion, StudentCard
from router.policies.base import RoutingContext, Verdict
from router.router import Router
from service.gateway import Gateway
from tests.conftest import ClientFactory, chat_body, cloud_backend, make_settings
from tests.conftest import edge_backend as scripted_edge
from tests.edge.swapping import FakeLoader, ask, edge_backend, fake_model_folder, write_version
from tests.test_metrics import scrape


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    root = tmp_path / "registry"
    write_version(root, "v1")
    Registry(root).promote("v1")
    return root


@pytest.fixture
def edge(tmp_path: Path, registry: Path) -> EdgeBackend:
    loader = FakeLoader({"base": "base model here", "v1": "student one here"})
    return edge_backend(fake_model_folder(tmp_path / "base"), loader, registry=registry, registry_poll_s=3600)


@pytest.fixture
def client(client_for: ClientFactory, edge: EdgeBackend) -> TestClient:
    return client_for(make_settings(), backends={"edge": edge, "cloud": cloud_backend()})


def models(client: TestClient) -> dict[str, dict[str, Any]]:
    return {entry["id"]: entry for entry in client.get("/v1/models").json()["data"]}


def test_models_list_shows_the_serving_version(client: TestClient, edge: EdgeBackend) -> None:
    listed = models(client)
    assert (listed["edge"]["version"], listed["edge"]["parent"]) == ("v1", "smollm2-135m-instruct")
    assert "version" not in listed["cloud"] and "version" not in listed["auto"]

    assert client.portal is not None
    client.portal.call(edge.swap, None)

    assert (models(client)["edge"]["version"], models(client)["edge"]["parent"]) == ("base", None)


def test_route_and_trail_name_the_chosen_targets_version(client: TestClient) -> None:
    edge = client.post("/v1/route", json=chat_body(model="edge")).json()
    cloud = client.post("/v1/route", json=chat_body(model="cloud")).json()

    assert (edge["target"], edge["model_version"]) == ("edge", "v1")
    assert cloud["target"] == "cloud" and "model_version" not in cloud
    answered = client.post("/v1/chat/completions", json=chat_body(model="edge"))
    assert answered.json()["choices"][0]["message"]["content"] == "student one here"


def test_metrics_show_the_version_and_count_swaps(client: TestClient, edge: EdgeBackend) -> None:
    m = scrape(client)
    assert m["hybrid_router_edge_model_info"] == {(("target", "edge"), ("version", "v1")): 1.0}
    assert m["hybrid_router_edge_model_swaps_total"] == {
        (("outcome", "ok"), ("target", "edge")): 0.0,
        (("outcome", "failed"), ("target", "edge")): 0.0,
    }

    assert client.portal is not None
    client.portal.call(edge.swap, None)
    client.portal.call(edge.swap, Path("/nonexistent/v9"))

    m = scrape(client)
    assert m["hybrid_router_edge_model_info"] == {(("target", "edge"), ("version", "base")): 1.0}
    swaps = m["hybrid_router_edge_model_swaps_total"]
    assert swaps[(("outcome", "ok"), ("target", "edge"))] == 1.0
    assert swaps[(("outcome", "failed"), ("target", "edge"))] == 1.0


async def test_a_config_reload_refreshes_the_registry_at_once(edge: EdgeBackend, registry: Path) -> None:
    settings = make_settings()
    gateway = Gateway(settings, backends={"edge": edge, "cloud": cloud_backend()}, registry=CollectorRegistry())
    await gateway.start()
    served = edge.model_version()
    assert served is not None and served.version == "v1"

    Registry(registry).rollback()
    result = await gateway.reload(settings)

    assert result.ok
    served = edge.model_version()
    assert served is not None and served.version == "base"
    await gateway.aclose()


class Spy:
    """A policy that keeps the edge target's view of each request."""

    name = "spy"

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, StudentCard | None]] = []

    def evaluate(self, ctx: RoutingContext) -> Verdict:
        view = ctx.targets["edge"]
        self.seen.append((view.version, view.student))
        return Verdict(reason="looked")


async def test_policies_see_the_student_card_of_each_requests_moment() -> None:
    card = StudentCard("v2", tasks=frozenset({"banking77"}), gate_threshold=-0.3, gate_signal="mean")
    edge = scripted_edge(version=ModelVersion("v1"))
    spy = Spy()
    router = Router(backends={"edge": edge, "cloud": cloud_backend()}, policies=[spy])

    first = await router.decide(ask())
    edge.version = ModelVersion("v2", parent="smollm2-135m-instruct", student=card)
    second = await router.decide(ask())

    assert spy.seen == [("v1", None), ("v2", card)]
    assert (first.model_version, second.model_version) == ("v1", "v2")
    assert second.to_dict()["model_version"] == "v2"
    assert spy.seen[1][1] is not None and "banking77" in spy.seen[1][1].tasks
