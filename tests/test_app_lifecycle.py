"""The app factory does no work; the lifespan starts and stops the targets."""

from __future__ import annotations

import subprocess
import sys

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from service.app import create_app
from tests.conftest import cloud_backend, edge_backend, make_settings


def test_creating_the_app_starts_nothing_and_the_lifespan_starts_and_stops_targets() -> None:
    edge, cloud = edge_backend(), cloud_backend()
    app = create_app(make_settings(), backends={"edge": edge, "cloud": cloud}, registry=CollectorRegistry())

    assert not edge.started and not cloud.started
    with TestClient(app) as client:
        assert edge.started and cloud.started
        assert client.get("/healthz").json() == {"status": "ok"}
    assert edge.closed and cloud.closed


def test_importing_the_packages_does_no_heavy_work() -> None:
    code = (
        "import sys, service.app, service.cli, router.router, router.backends.edge, edge_models.build;"
        "print(','.join(m for m in ('torch', 'transformers', 'onnxruntime_genai', 'onnxruntime') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_readyz_is_503_when_no_target_can_serve() -> None:
    from router.backends.base import Readiness

    edge = edge_backend(ready=Readiness(False, reason="model not loaded"))
    cloud = cloud_backend(ready=Readiness(False, reason="no API key"))
    app = create_app(make_settings(), backends={"edge": edge, "cloud": cloud}, registry=CollectorRegistry())
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    # Without a client key, readiness says only what state each target is in (tests/test_hardening.py has why).
    assert response.json() == {
        "status": "unavailable",
        "targets": {
            "edge": {"ready": False, "busy": False, "reason": "not ready"},
            "cloud": {"ready": False, "busy": False, "reason": "not ready"},
        },
    }
