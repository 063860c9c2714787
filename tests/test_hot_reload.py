"""Hot reload, in-process: a new config is validated and swapped in whole, or rejected while the old one serves."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import yaml
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from router.backends.fake import ScriptedBackend, ScriptedReply
from service.app import create_app
from service.auth import hash_key
from service.gateway import Gateway
from service.settings import ConfigSource
from tests.conftest import chat_body, cloud_backend, edge_backend

BASE: dict[str, Any] = {
    "version": "v1",
    "server": {"reload_poll_s": 0},
    "targets": {
        "edge": {"type": "fake", "reply": "edge says hi", "context_window": 2048},
        "cloud": {"type": "fake", "reply": "cloud says hi", "local": False},
    },
    "policies": [{"type": "explicit"}, {"type": "default", "target": "edge"}],
}


def config(version: str = "v2", **changes: Any) -> dict[str, Any]:
    """BASE with ``version`` and top-level sections replaced."""
    out = copy.deepcopy(BASE)
    out.update(version=version, **changes)
    return out


def with_target(name: str, **changes: Any) -> dict[str, Any]:
    targets = copy.deepcopy(BASE["targets"])
    targets[name].update(changes)
    return targets


def default_to(target: str, *before: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "explicit"}, *before, {"type": "default", "target": target}]


@dataclass
class Live:
    path: Path
    app: FastAPI
    client: httpx.AsyncClient
    registry: CollectorRegistry

    @property
    def gateway(self) -> Gateway:
        return cast(Gateway, self.app.state.gateway)

    def backend(self, name: str) -> ScriptedBackend:
        return cast(ScriptedBackend, self.gateway.backends[name])

    def write(self, content: dict[str, Any] | str) -> None:
        # Whole, as a deploy tool would: the watcher must not see a half-written file.
        staged = self.path.with_suffix(".new")
        staged.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        staged.replace(self.path)

    async def route(self, **headers: str) -> dict[str, Any]:
        response = await self.client.post("/v1/route", json=chat_body(), headers=headers)
        assert response.status_code == 200, response.text
        return cast(dict[str, Any], response.json())

    async def answer(self, model: str = "auto", **headers: str) -> httpx.Response:
        return await self.client.post("/v1/chat/completions", json=chat_body(model=model), headers=headers)

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


@asynccontextmanager
async def serving(tmp_path: Path, content: dict[str, Any] = BASE, **app_options: Any) -> AsyncIterator[Live]:
    """The app over a config file, its lifespan running (gateway started, file watched), driven in-process."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(content))
    registry = CollectorRegistry()
    app = create_app(source=ConfigSource(path), registry=registry, environ={}, **app_options)
    transport = httpx.ASGITransport(app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield Live(path, app, client, registry)


async def eventually(check: Callable[[], object]) -> None:
    async with asyncio.timeout(5):
        while not check():
            await asyncio.sleep(0.01)


async def test_a_policy_change_swaps_decisions_and_keeps_the_targets_running(tmp_path: Path) -> None:
    async with serving(tmp_path) as live:
        before = await live.route()
        edge, cloud = live.backend("edge"), live.backend("cloud")
        classifier = live.gateway.router.classifier
        edge.started = cloud.started = False  # a restart would set it again

        live.write(config(policies=default_to("cloud")))
        result = await live.gateway.reload()
        after = await live.route()
        answer = await live.answer()

    assert (before["target"], before["config_version"]) == ("edge", "v1")
    assert result.ok and result.started == () and set(result.kept) == {"edge", "cloud"}
    assert (after["target"], after["config_version"]) == ("cloud", "v2")
    assert answer.json()["choices"][0]["message"]["content"] == "cloud says hi"
    assert live.backend("edge") is edge and live.backend("cloud") is cloud
    assert not edge.started and not cloud.started
    assert live.gateway.router.classifier is classifier and not result.classifier_loaded
    assert live.metric("hybrid_router_config_reloads_total", result="ok") == 1
    assert live.metric("hybrid_router_config_reloads_total", result="rejected") == 0
    assert live.metric("hybrid_router_config_info", version="v2") == 1
    assert live.metric("hybrid_router_config_info", version="v1") is None


async def test_a_target_config_change_restarts_only_that_target(tmp_path: Path) -> None:
    async with serving(tmp_path) as live:
        edge, old_cloud = live.backend("edge"), live.backend("cloud")
        edge.started = False

        live.write(config(targets=with_target("cloud", reply="new cloud")))
        result = await live.gateway.reload()
        new_cloud = live.backend("cloud")
        answer = await live.answer("cloud")
        await eventually(lambda: old_cloud.closed)
        assert live.backend("edge") is edge and not edge.started and not edge.closed

    assert result.ok and result.started == ("cloud",) and result.kept == ("edge",)
    assert new_cloud is not old_cloud and new_cloud.started
    assert answer.json()["choices"][0]["message"]["content"] == "new cloud"


async def test_a_profile_change_does_not_restart_the_target(tmp_path: Path) -> None:
    # Price, quality, expected latency and aliases are the router's; the edge model must not reload for them.
    async with serving(tmp_path) as live:
        edge = live.backend("edge")
        live.write(config(targets=with_target("edge", price_per_mtok={"input": 3.0}, aliases=["small"])))
        result = await live.gateway.reload()
        pinned = await live.answer("small")
        assert live.backend("edge") is edge and not edge.closed

    assert result.ok and result.started == ()
    assert live.gateway.router.profiles["edge"].price_input == 3.0
    assert pinned.headers["x-route-target"] == "edge"


async def test_added_and_removed_targets_start_and_close(tmp_path: Path) -> None:
    targets = copy.deepcopy(BASE["targets"])
    spare = targets["spare"] = {"type": "fake", "reply": "spare"}
    del targets["cloud"]
    async with serving(tmp_path) as live:
        cloud = live.backend("cloud")
        live.write(config(targets=targets))
        result = await live.gateway.reload()
        await eventually(lambda: cloud.closed)
        ready = (await live.client.get("/readyz")).json()["targets"]
        models = [model["id"] for model in (await live.client.get("/v1/models")).json()["data"]]

    assert spare and result.started == ("spare",) and live.backend("spare").started
    assert set(ready) == {"edge", "spare"}
    assert models == ["auto", "edge", "spare"]
    assert live.metric("hybrid_router_target_ready", target="spare") == 1
    assert live.metric("hybrid_router_target_ready", target="cloud") is None


BAD_CONFIGS = {
    "invalid YAML": ("targets: [edge: {", "not valid YAML"),
    "unknown policy": (config(policies=[{"type": "nightshift"}]), "unknown policy type 'nightshift'"),
    "bad value": (config(targets=with_target("edge", quality=2)), "targets.edge.quality"),
    "unknown key": (config(limits={"max_mesages": 3}), "limits.max_mesages"),
    "unknown target": (config(policies=default_to("gpu")), "gpu"),
    "open metrics": (config(server={"metrics_auth": True}), "metrics_auth is true but no client keys"),
}


@pytest.mark.parametrize(("content", "says"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
async def test_a_bad_config_is_rejected_logged_and_counted_and_the_old_one_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: dict[str, Any] | str, says: str
) -> None:
    caplog.set_level(logging.INFO, logger="hybrid_router")
    async with serving(tmp_path) as live:
        edge = live.backend("edge")
        live.write(content)
        result = await live.gateway.reload()
        after = await live.route()
        answer = await live.answer()
        assert live.backend("edge") is edge and not edge.closed

    assert not result.ok and result.error is not None and says in result.error
    assert (after["target"], after["config_version"]) == ("edge", "v1")
    assert answer.json()["choices"][0]["message"]["content"] == "edge says hi"
    assert live.metric("hybrid_router_config_reloads_total", result="rejected") == 1
    assert live.metric("hybrid_router_config_last_reload_successful") == 0
    assert live.metric("hybrid_router_config_info", version="v1") == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("rejected; still serving v1" in message and says in message for message in errors), errors


async def test_a_good_config_after_a_bad_one_is_applied(tmp_path: Path) -> None:
    async with serving(tmp_path) as live:
        live.write("version: [")
        rejected = await live.gateway.reload()
        live.write(config("v3"))
        applied = await live.gateway.reload()

    assert not rejected.ok and applied.ok and live.gateway.router.config_version == "v3"
    assert live.metric("hybrid_router_config_last_reload_successful") == 1


async def test_an_unchanged_config_changes_nothing(tmp_path: Path) -> None:
    async with serving(tmp_path) as live:
        runtime = live.gateway.runtime
        result = await live.gateway.reload(trigger="SIGHUP")

    assert result.ok and not result.changed and live.gateway.runtime is runtime


async def test_a_stream_in_flight_finishes_on_the_config_it_started_with(tmp_path: Path) -> None:
    slow = ScriptedReply(text="one two three four five", piece_delay_s=0.05)
    edge = edge_backend(slow)
    async with serving(tmp_path, backends={"edge": edge, "cloud": cloud_backend()}) as live:
        body = chat_body(stream=True)
        streaming = asyncio.create_task(live.client.post("/v1/chat/completions", json=body))
        await eventually(lambda: edge.active_streams == 1)

        # The edge target changes too: a new backend serves new requests, the old one finishes this stream.
        live.write(config(targets=with_target("edge", reply="new edge"), policies=default_to("cloud")))
        result = await live.gateway.reload()
        during = await live.route()
        closed_during = edge.closed
        response = await streaming
        await eventually(lambda: edge.closed)

    assert result.ok and result.started == ("edge",)
    assert (during["target"], during["config_version"]) == ("cloud", "v2")
    assert not closed_during
    assert response.headers["x-route-target"] == "edge"
    events = [block.removeprefix("data: ") for block in response.text.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in map(json.loads, events[:-1]) if c["choices"])
    assert text == "one two three four five"
    assert live.backend("edge") is not edge and live.gateway.runtime.users == 0


async def test_settings_that_need_a_restart_keep_their_values_and_the_rest_applies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hybrid_router")
    async with serving(tmp_path) as live:
        live.write(config(server={"port": 9999, "reload_poll_s": 0}, limits={"max_messages": 1}))
        result = await live.gateway.reload()
        two = await live.client.post("/v1/route", json={"messages": [{"role": "user", "content": "a"}] * 2})

    assert result.ok and result.restart_only == ("server.port",)
    assert live.gateway.settings.server.port == 8080 and live.gateway.router.config_version == "v2"
    assert two.status_code == 400
    assert any("server.port changed but only take effect on a restart" in r.getMessage() for r in caplog.records)


async def test_a_change_that_needs_a_restart_is_named_even_when_nothing_else_changed(tmp_path: Path) -> None:
    async with serving(tmp_path) as live:
        live.write(config("v1", server={"host": "127.0.0.2", "reload_poll_s": 0}))
        result = await live.gateway.reload()

    assert result.ok and not result.changed and result.restart_only == ("server.host",)
    assert live.gateway.settings.server.host == "127.0.0.1"


async def test_client_keys_change_live(tmp_path: Path) -> None:
    async with serving(tmp_path) as live:
        open_before = await live.answer()
        live.write(config(auth={"api_key_hashes": [hash_key("new-key")]}))
        await live.gateway.reload()
        refused = await live.answer()
        allowed = await live.answer(authorization="Bearer new-key")

    assert open_before.status_code == 200
    assert refused.status_code == 401 and allowed.status_code == 200


async def test_sticky_sessions_survive_a_reload_that_keeps_their_options(tmp_path: Path) -> None:
    sticky = {"type": "sticky", "ttl_s": 600}
    session = {"x-session-id": "s-1"}
    async with serving(tmp_path, config("v1", policies=default_to("edge", sticky))) as live:
        await live.answer("cloud", **session)  # the conversation escalated to the cloud
        live.write(config("v2", policies=default_to("edge", sticky, {"type": "context_window"})))
        await live.gateway.reload()
        kept = await live.route(**session)
        live.write(config("v3", policies=default_to("edge", {**sticky, "ttl_s": 60})))
        await live.gateway.reload()
        fresh = await live.route(**session)

    assert (kept["target"], kept["decided_by"]) == ("cloud", "sticky")
    assert fresh["target"] == "edge"


async def test_the_classifier_is_rebuilt_only_when_its_config_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(tmp_path) as live:
        first = live.gateway.router.classifier
        live.write(config(classifier={"deadline_ms": 123}))
        result = await live.gateway.reload()
        await live.route()

    assert result.classifier_loaded and live.gateway.router.classifier is not first
    assert not any("before start()" in record.getMessage() for record in caplog.records)


async def test_the_watcher_reloads_each_new_content_of_the_file_once(tmp_path: Path) -> None:
    polled = config("v1", server={"reload_poll_s": 0.02})
    async with serving(tmp_path, polled) as live:
        live.write(config("v2", server={"reload_poll_s": 0.02}, policies=default_to("cloud")))
        await eventually(lambda: live.gateway.router.config_version == "v2")
        after = await live.route()
        live.path.touch()
        live.write("version: [")
        await eventually(lambda: live.metric("hybrid_router_config_reloads_total", result="rejected") == 1)
        await asyncio.sleep(0.2)  # ten polls of the same bad file

    assert after["target"] == "cloud"
    assert live.metric("hybrid_router_config_reloads_total", result="ok") == 1
    assert live.metric("hybrid_router_config_reloads_total", result="rejected") == 1
    assert live.gateway.router.config_version == "v2"


async def test_reloading_a_gateway_built_from_settings_alone_is_rejected() -> None:
    from tests.conftest import make_settings

    gateway = Gateway.from_settings(make_settings(), registry=CollectorRegistry())
    result = await gateway.reload()
    assert not result.ok and result.error is not None and "nothing to re-read" in result.error
