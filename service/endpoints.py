"""The small endpoints: models, liveness, readiness, metrics."""

from __future__ import annotations

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from router.backends.base import Backend, Readiness
from router.backends.versions import model_version
from service.gateway import Runtime

__all__ = ["healthz", "list_models", "metrics", "readyz"]


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def list_models(request: Request) -> Response:
    """``auto`` plus each target, in OpenAI's model-list shape with routing extras."""
    gateway: Runtime = request.app.state.gateway.runtime  # one config throughout
    await gateway.clients.identify(request.headers.get("authorization"))
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
                **_version_fields(backend),
            }
        )
    return _json({"object": "list", "data": data})


def _version_fields(backend: Backend) -> dict[str, object]:
    """The serving version of a target that has versions ("base", or a distilled "v3" and its parent)."""
    serving = model_version(backend)
    if serving is None:
        return {}
    return {"version": serving.version, "parent": serving.parent}


async def healthz(request: Request) -> Response:
    return _json({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Each target's readiness; 503 when no target can serve.

    Anyone may ask (probes carry no key), so by default each target says only
    ready, busy or not ready: backends' own reasons name env vars and model
    paths. A caller with a valid client key gets those reasons and details.
    """
    gateway: Runtime = request.app.state.gateway.runtime  # one config throughout
    private = await gateway.clients.authenticated(request.headers.get("authorization"))
    targets = {}
    for name, backend in gateway.backends.items():
        state = backend.readiness()
        if private:
            targets[name] = {"ready": state.ready, "busy": state.busy, "reason": state.reason, **state.detail}
        else:
            targets[name] = {"ready": state.ready, "busy": state.busy, "reason": _public_reason(state)}
    serving = any(t["ready"] and not t["busy"] for t in targets.values())
    return _json({"status": "ready" if serving else "unavailable", "targets": targets}, 200 if serving else 503)


def _public_reason(state: Readiness) -> str:
    if not state.ready:
        return "not ready"
    return "busy" if state.busy else "ready"


async def metrics(request: Request) -> Response:
    """Prometheus text. Labels are config names, policy names, statuses and error codes, never paths or env
    var names; ``server.metrics_auth`` puts it behind a client key."""
    gateway: Runtime = request.app.state.gateway.runtime  # one config throughout
    if gateway.settings.server.metrics_auth:
        await gateway.clients.identify(request.headers.get("authorization"))
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)
