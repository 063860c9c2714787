"""The one error tree of Hybrid Router.

Every failure that can reach a client is one of these. Each class carries the
HTTP status, OpenAI error ``type`` and ``code`` it is reported with, so the
HTTP layer translates any of them with a single handler registered on the
base class, and third-party errors (httpx, onnxruntime, provider SDKs) are
re-raised as one of these ``from`` the original at the adapter boundary.

    HybridRouterError                      500  (never raised bare)
    ├── ConfigError                        start-up only: bad or missing config
    ├── InvalidRequest                     400  invalid_request_error
    │   ├── ContextLengthExceeded          400  context_length_exceeded
    │   ├── UnknownModel                   404  model_not_found
    │   ├── RequestTimeout                 408  request_timeout
    │   ├── PayloadTooLarge                413  payload_too_large
    │   └── HeadersTooLarge                431  headers_too_large
    ├── AuthenticationFailed               401  invalid_api_key
    ├── PolicyViolation                    403  policy_violation
    ├── RateLimited                        429  rate_limit_exceeded
    │   └── BudgetExhausted                429  budget_exceeded (type insufficient_quota)
    ├── NoTargetAvailable                  503  no_target_available
    ├── GatewayOverloaded                  503  gateway_overloaded
    ├── StateUnavailable                   503  state_unavailable
    └── BackendError                       502  upstream_error           retryable
        ├── BackendBusy                    503  backend_busy             retryable
        ├── CircuitOpen                    503  circuit_open             retryable
        ├── UpstreamTimeout                504  upstream_timeout         retryable
        ├── UpstreamConnectError           502  upstream_connect_error   retryable
        ├── UpstreamRateLimited            429  upstream_rate_limited    retryable
        ├── UpstreamAuthError              502  upstream_auth_error
        ├── UpstreamBadRequest             400  upstream_bad_request
        ├── ContentFiltered                400  content_filter
        └── UpstreamProtocolError          502  upstream_protocol_error

``retryable`` errors (:attr:`HybridRouterError.retryable`) say the request is
not at fault and the same call may succeed later: a plain ``BackendError`` is
an upstream 5xx. Only they are tried again (:mod:`router.resilience`), and
only before the first byte of an answer. The others are never retried: the
request itself was refused (a bad request, a content filter: trying again,
or elsewhere, would get round a provider's safety filter), our credentials
were, or the upstream broke its protocol. An instance may say otherwise
(``retryable=`` in the constructor), e.g. a connection that broke before any
answer arrived.

Messages are written for the caller and must never contain secrets: adapters
build them from status codes and upstream error *messages*, never from
request headers.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "BackendBusy",
    "BackendError",
    "BudgetExhausted",
    "CircuitOpen",
    "ConfigError",
    "ContentFiltered",
    "ContextLengthExceeded",
    "GatewayOverloaded",
    "HeadersTooLarge",
    "HybridRouterError",
    "InvalidRequest",
    "NoTargetAvailable",
    "PayloadTooLarge",
    "PolicyViolation",
    "RateLimited",
    "RequestTimeout",
    "StateUnavailable",
    "UnknownModel",
    "UpstreamAuthError",
    "UpstreamBadRequest",
    "UpstreamConnectError",
    "UpstreamProtocolError",
    "UpstreamRateLimited",
    "UpstreamTimeout",
]


class HybridRouterError(Exception):
    """Base of every error this project raises on purpose.

    >>> err = InvalidRequest("messages must not be empty", param="messages")
    >>> err.status_code, err.type, err.param
    (400, 'invalid_request_error', 'messages')
    """

    status_code: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"
    # Whether the same call may succeed if made again (see the tree above); a class default.
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        # Seconds the caller should wait before retrying; sent as Retry-After.
        self.retry_after = retry_after
        if retryable is not None:
            self.retryable = retryable

    def to_openai(self) -> dict[str, object]:
        """The body OpenAI's API would send for this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class ConfigError(HybridRouterError):
    """The configuration is invalid; raised at start-up, never per request."""

    code = "config_error"


class InvalidRequest(HybridRouterError):
    """The request body or a header is malformed or breaks a limit."""

    status_code = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ContextLengthExceeded(InvalidRequest):
    """The prompt plus the tokens asked for do not fit the target's window."""

    code = "context_length_exceeded"


class UnknownModel(InvalidRequest):
    """``model`` names neither ``auto`` nor a configured target."""

    status_code = 404
    code = "model_not_found"


class RequestTimeout(InvalidRequest):
    """The client did not send its whole body within ``server.body_timeout_s``."""

    status_code = 408
    code = "request_timeout"


class PayloadTooLarge(InvalidRequest):
    """The request body is larger than ``limits.max_body_bytes``."""

    status_code = 413
    code = "payload_too_large"


class HeadersTooLarge(InvalidRequest):
    """The request line and headers exceed ``server.max_header_bytes``."""

    status_code = 431
    code = "headers_too_large"


class AuthenticationFailed(HybridRouterError):
    """No bearer key, or one that matches none of the configured keys."""

    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PolicyViolation(HybridRouterError):
    """A routing policy forbids what the request asks for."""

    status_code = 403
    type = "permission_error"
    code = "policy_violation"


class RateLimited(HybridRouterError):
    """A gateway-side limit was hit; carries ``retry_after``."""

    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExhausted(RateLimited):
    """A spend budget has no room for the request; ``retry_after`` is when its window resets.

    OpenAI reports a spent quota as 429 ``insufficient_quota``; clients that
    handle that already stop retrying at once.
    """

    type = "insufficient_quota"
    code = "budget_exceeded"


class NoTargetAvailable(HybridRouterError):
    """Every target the policies allow is not ready."""

    status_code = 503
    type = "service_unavailable"
    code = "no_target_available"


class GatewayOverloaded(HybridRouterError):
    """``server.max_concurrent_requests`` or ``server.max_connections`` is reached; carries ``retry_after``."""

    status_code = 503
    type = "service_unavailable"
    code = "gateway_overloaded"


class StateUnavailable(HybridRouterError):
    """The shared state store (the SQLite file, Redis) failed or did not answer in time.

    Raised ``from`` the driver's error by :mod:`router.state`; whether a
    request then fails closed or goes on unmetered is the caller's choice.
    """

    status_code = 503
    type = "service_unavailable"
    code = "state_unavailable"


class BackendError(HybridRouterError):
    """A target failed to produce an answer."""

    status_code = 502
    type = "upstream_error"
    code = "upstream_error"
    # An upstream 5xx, or a transport failure nothing more specific names.
    retryable = True


class BackendBusy(BackendError):
    """The target's bounded queue is full; carries ``retry_after``."""

    status_code = 503
    type = "service_unavailable"
    code = "backend_busy"
    retryable = True


class CircuitOpen(BackendError):
    """The target's circuit breaker is open after recent failures; carries ``retry_after`` (the next probe).

    No call was made: the breaker refused it (:mod:`router.resilience.circuit`).
    """

    status_code = 503
    type = "service_unavailable"
    code = "circuit_open"
    retryable = True


class UpstreamTimeout(BackendError):
    """Connect, first-byte or overall deadline passed."""

    status_code = 504
    code = "upstream_timeout"
    retryable = True


class UpstreamConnectError(BackendError):
    """The upstream could not be reached at all."""

    code = "upstream_connect_error"
    retryable = True


class UpstreamRateLimited(BackendError):
    """The upstream throttled us; its ``Retry-After`` is kept."""

    status_code = 429
    type = "rate_limit_error"
    code = "upstream_rate_limited"
    retryable = True


class UpstreamAuthError(BackendError):
    """The upstream rejected *our* credentials: an operator problem, not the caller's."""

    code = "upstream_auth_error"
    retryable = False


class UpstreamBadRequest(BackendError):
    """The upstream refused the request as invalid (a 4xx other than auth and throttling)."""

    status_code = 400
    type = "invalid_request_error"
    code = "upstream_bad_request"
    retryable = False


class ContentFiltered(BackendError):
    """The provider's content filter or safety system blocked the prompt or answer."""

    status_code = 400
    type = "invalid_request_error"
    code = "content_filter"
    retryable = False


class UpstreamProtocolError(BackendError):
    """The upstream answered with something that is not its documented format."""

    code = "upstream_protocol_error"
    retryable = False
