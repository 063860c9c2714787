"""The small endpoints: models, liveness, readiness, metrics."""

from __future__ import annotations

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from service.gateway import Gateway

__all__ = ["healthz", "list_models", "metrics", "readyz"]


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def list_models(request: Request) -> Response:
    """``auto`` plus each target, in OpenAI's model-list shape with routing extras."""
    gateway: Gateway = request.app.state.gateway
    gateway.auth.check(request.headers.get("authorization"))
    data = [{"id": "auto", "object": "model", "created": 0, "owned_by": "hybrid-router"}]
    for name, backend in gateway.backends.items():
        state = backend.readiness()
        data.append(
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "hybrid-router",
                "upstream_model": backend.model,
                "local": backend.capabilities.local,
                "ready": state.can_serve,
                "aliases": list(gateway.router.profiles[name].aliases),
            }
        )
    return _json({"object": "list", "data": data})


async def healthz(request: Request) -> Response:
    return _json({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Each target's readiness; 503 when no target can serve."""
    gateway: Gateway = request.app.state.gateway
    targets = {}
    for name, backend in gateway.backends.items():
        state = backend.readiness()
        targets[name] = {"ready": state.ready, "busy": state.busy, "reason": state.reason, **state.detail}
    serving = any(t["ready"] and not t["busy"] for t in targets.values())
    return _json({"status": "ready" if serving else "unavailable", "targets": targets}, 200 if serving else 503)


async def metrics(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)
