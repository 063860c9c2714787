"""Hot reload in a real `hybrid-router serve` process: a file change, SIGHUP, and a bad file."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.processes import Server, free_port, running

pytestmark = pytest.mark.slow


def write(path: Path, version: str, *, default: str, poll: float) -> None:
    config = {
        "version": version,
        "server": {"reload_poll_s": poll},
        "targets": {
            "edge": {"type": "fake", "reply": "edge answer"},
            "cloud": {"type": "fake", "reply": "cloud answer", "local": False},
        },
        "policies": [{"type": "default", "target": default}],
    }
    staged = path.with_suffix(".new")  # whole, as a deploy tool would
    staged.write_text(yaml.safe_dump(config))
    staged.replace(path)


def route(server: Server) -> tuple[str, str]:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    decision = httpx.post(server.url + "/v1/route", json=body, timeout=5).json()
    return decision["target"], decision["config_version"]


def rejected(server: Server) -> bool:
    return 'hybrid_router_config_reloads_total{result="rejected"} 1.0' in httpx.get(server.url + "/metrics").text


def wait_for(check: Callable[[], bool], server: Server, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.05)


def test_serve_reloads_on_a_file_change_and_on_sighup_and_keeps_its_config_on_a_bad_one(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    write(config, "v1", default="edge", poll=0.2)
    port = free_port()
    args = ["-m", "service.cli", "serve", "--config", str(config), "--port", str(port)]
    with running(args, port=port, ready_path="/readyz", log=tmp_path / "gateway.log") as server:
        assert route(server) == ("edge", "v1")

        write(config, "v2", default="cloud", poll=0.2)
        wait_for(lambda: route(server) == ("cloud", "v2"), server)

        write(config, "v3", default="cloud", poll=0)  # seen by the watcher, which it then turns off
        wait_for(lambda: route(server) == ("cloud", "v3"), server)
        write(config, "v4", default="edge", poll=0)
        time.sleep(1.0)
        assert route(server) == ("cloud", "v3")
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: route(server) == ("edge", "v4"), server)

        config.write_text("targets: [edge: {")
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: rejected(server), server)
        assert route(server) == ("edge", "v4")
        metrics = httpx.get(server.url + "/metrics").text
        assert server.process.poll() is None

    assert 'hybrid_router_config_info{version="v4"} 1.0' in metrics
    assert 'hybrid_router_config_reloads_total{result="ok"} 3.0' in metrics
    log = server.output()
    assert "rejected; still serving v4" in log and "not valid YAML" in log
    # --port applies on every reload, so no reload saw the port change.
    assert "restart" not in log
