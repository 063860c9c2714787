"""Turning every failure into OpenAI's error shape at the HTTP boundary.

Handlers are registered on base classes; Starlette walks the exception's MRO
to find one, so every :class:`~router.errors.HybridRouterError` subclass is
covered by one handler. Nothing here ever puts a traceback in a response.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from router.errors import HybridRouterError

__all__ = ["error_response", "install_error_handlers", "openapi_errors"]

log = logging.getLogger("hybrid_router.errors")

_HTTP_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
               405: "invalid_request_error", 429: "rate_limit_error"}  # fmt: skip


def error_response(
    status: int,
    message: str,
    *,
    type_: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _request_headers(request: Request) -> dict[str, str]:
    headers: dict[str, str] = dict(getattr(request.state, "route_headers", {}) or {})
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        headers["x-request-id"] = request_id
    return headers


async def _on_router_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HybridRouterError)
    headers = _request_headers(request)
    if exc.retry_after is not None:
        headers["retry-after"] = str(max(1, round(exc.retry_after)))
    if exc.status_code == 408:
        # The rest of a late body may still arrive; it must not be read as the next request.
        headers["connection"] = "close"
    return error_response(exc.status_code, exc.message, type_=exc.type, code=exc.code, param=exc.param, headers=headers)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Unknown route: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(
        exc.status_code,
        message,
        type_=_HTTP_TYPES.get(exc.status_code, "invalid_request_error"),
        code="not_found" if exc.status_code == 404 else None,
        headers={**_request_headers(request), **(exc.headers or {})},
    )


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    return error_response(400, str(first.get("msg", "invalid request")), type_="invalid_request_error",
                          code="invalid_request", param=param, headers=_request_headers(request))  # fmt: skip


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    request_id = getattr(request.state, "request_id", "-")
    log.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
    return error_response(
        500,
        f"The gateway failed unexpectedly; the error is logged under request id {request_id}.",
        type_="server_error",
        code="internal_error",
        headers=_request_headers(request),
    )


_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

_STATUS_MEANING = {
    400: "Invalid request: `param` names the field.",
    401: "Missing or wrong client key.",
    403: "A routing policy forbids what the request asks for.",
    404: "Unknown model.",
    408: "The body did not arrive within `server.body_timeout_s`.",
    413: "The body is larger than `limits.max_body_bytes`.",
    429: "A rate limit was hit; see `Retry-After`.",
    502: "The target failed.",
    503: "No target can serve, or the gateway is at `server.max_concurrent_requests`; see `Retry-After`.",
    504: "The target did not answer in time.",
}


def openapi_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses, each in OpenAI's error shape."""
    return {
        status: {"description": _STATUS_MEANING[status], "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
        for status in statuses
    }


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HybridRouterError, _on_router_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)
