"""Every backend the contract suite runs over, with its emulator and what it declares it supports.

Like SQLAlchemy's dialect requirements, each :class:`ContractTarget` says
which parts of the contract apply to it (:class:`Supports`), how to script its
upstream, which upstream answers make which of our errors (its
:class:`ErrorCase` table) and what a content-filter stop looks like on its
wire. ``tests/backends/test_contract.py`` runs the same cases over all of them.

A new provider joins by adding one target here; scripting uses the fields
every emulator shares (:class:`tests.emulators.scripting.Behaviour`), so a
target only spells out what is its provider's own.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from router.backends.anthropic import AnthropicBackend
from router.backends.azure_openai import AzureOpenAIBackend
from router.backends.base import Backend
from router.backends.bedrock import BedrockBackend
from router.backends.fake import ScriptedBackend, ScriptedReply
from router.backends.gemini import GeminiBackend
from router.backends.openai_compat import OpenAIBackend
from router.backends.vertex import VertexBackend
from router.chat import ChatRequest
from router.config import (
    AnthropicTargetConfig,
    AzureOpenAITargetConfig,
    BedrockTargetConfig,
    GeminiTargetConfig,
    OpenAITargetConfig,
    VertexTargetConfig,
)
from router.errors import (
    BackendBusy,
    BackendError,
    ContentFiltered,
    ContextLengthExceeded,
    HybridRouterError,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from tests.emulators import anthropic_server, azure_openai_server, bedrock_server, google_server, openai_server
from tests.emulators.scripting import EmulatorState
from tests.support.loopback import serving

__all__ = ["TARGETS", "ContractTarget", "ErrorCase", "Running", "Supports"]

Behaviour = Mapping[str, Any]
"""An upstream behaviour as data: the shared emulator fields, plus a target's own."""


@dataclass(frozen=True)
class Supports:
    """What a backend declares; a case needing something it lacks is skipped, saying what."""

    http: bool = True
    """It calls its upstream through the pooled HTTP client: timeouts, redirects, connect errors, readiness."""
    filter_errors: bool = True
    """A content-filter stop before any output raises ContentFiltered, and nothing goes out before it."""
    gauges_completions: bool = True
    """Its in-flight gauge counts completions too, not only streams."""
    translates: bool = True
    """It translates requests into another API, so it refuses what that API cannot express."""
    partial_answers: bool = True
    """A non-streamed answer can hold output before a filter stop (Gemini withholds all of it)."""


@dataclass(frozen=True)
class ErrorCase:
    """An upstream answer and the error of ours it must become, with its ``retry_after``."""

    name: str
    behaviour: Behaviour
    error: type[HybridRouterError]
    retry_after: float | None = None


@dataclass
class Running:
    """A started backend and handles on its upstream."""

    backend: Backend
    script: Callable[..., None]
    """Queue behaviours for the next calls, one a call."""
    open_streams: Callable[[], int]
    """Streams the upstream is still sending."""
    requests: Callable[[], list[dict[str, Any]]] = list
    """What the upstream received."""


Timeouts = Mapping[str, float]


class ContractTarget(abc.ABC):
    """One backend under the contract, with its upstream."""

    name: str
    supports: Supports = Supports()
    errors: tuple[ErrorCase, ...] = ()
    secret: str | None = None
    """A credential the backend sends, which no error may show."""
    inflight: str = "inflight"
    """The ``stats()`` gauge that counts calls in flight."""
    filter_why: str = ""
    """What a filter stop's error quotes from the upstream, so an operator can tell why."""

    @abc.abstractmethod
    def filter_stop(self, content: str) -> Behaviour:
        """An answer of ``content`` that the provider's content filter stops."""

    def leak(self) -> Behaviour:
        """An error answer that quotes :attr:`secret`."""
        return {"status": 400, "error": f"your credential {self.secret} is not valid for this model"}

    @abc.abstractmethod
    def running(self, *, timeouts: Timeouts | None = None, url: str | None = None) -> Any:
        """An async context manager yielding :class:`Running`; ``url`` points the backend elsewhere."""

    def __repr__(self) -> str:
        return self.name


class _Emulated(ContractTarget):
    """A cloud backend in front of its emulator, served on loopback."""

    @abc.abstractmethod
    def emulator(self) -> tuple[EmulatorState[Any], Any]:
        """The emulator's state and its ASGI app."""

    @abc.abstractmethod
    def build(self, url: str, timeouts: Mapping[str, Any]) -> Backend:
        """The backend, pointed at ``url``."""

    @asynccontextmanager
    async def running(self, *, timeouts: Timeouts | None = None, url: str | None = None) -> AsyncIterator[Running]:
        state, app = self.emulator()
        async with serving(app) as emulator_url:
            backend = self.build(url or emulator_url, dict(timeouts or {}))
            await backend.start()
            try:
                yield Running(backend, state.script.add, lambda: state.open_streams, lambda: state.requests)
            finally:
                await backend.aclose()


class OpenAITarget(_Emulated):
    name = "openai"
    supports = Supports(translates=False)
    filter_why = "finish_reason content_filter"
    secret = "sk-live-contract-0123456789abcdef"
    errors = (
        ErrorCase("429 Retry-After", {"status": 429, "error": "slow down", "headers": {"retry-after": "12"}}, UpstreamRateLimited, 12.0),
        ErrorCase("429 retry-after-ms", {"status": 429, "error": "slow down", "headers": {"retry-after-ms": "1500"}}, UpstreamRateLimited, 1.5),
        ErrorCase("429 bare", {"status": 429, "error": "slow down"}, UpstreamRateLimited, 1.0),
        ErrorCase("400", {"status": 400, "error": "bad temperature", "error_type": "invalid_request_error"}, UpstreamBadRequest),
        ErrorCase("400 context", {"status": 400, "error": "This model's maximum context length is 8192 tokens", "code": "context_length_exceeded"}, ContextLengthExceeded),
        ErrorCase("400 filter", {"status": 400, "error": "filtered", "code": "content_filter"}, ContentFiltered),
        ErrorCase("401", {"status": 401, "error": "Incorrect API key provided"}, UpstreamAuthError),
        ErrorCase("403", {"status": 403, "error": "region not supported"}, UpstreamAuthError),
        ErrorCase("404", {"status": 404, "error": "model not found"}, UpstreamBadRequest),
        ErrorCase("500", {"status": 500, "error": "boom"}, BackendError),
        ErrorCase("503 Retry-After", {"status": 503, "error": "overloaded", "headers": {"retry-after": "2"}}, BackendError, 2.0),
        ErrorCase("504", {"status": 504, "error": "gateway timeout"}, UpstreamTimeout),
    )  # fmt: skip

    def filter_stop(self, content: str) -> Behaviour:
        return {"content": content, "finish_reason": "content_filter"}

    def emulator(self) -> tuple[EmulatorState[Any], Any]:
        state = openai_server.EmulatorState(api_key=self.secret)
        return state, openai_server.create_app(state)

    def build(self, url: str, timeouts: Mapping[str, Any]) -> Backend:
        config = OpenAITargetConfig(type="openai", base_url=url + "/v1", model="gpt-4o-mini", api_key_env="K",
                                    timeouts=timeouts)  # fmt: skip
        return OpenAIBackend(self.name, config, environ={"K": self.secret or ""})


class AzureTarget(_Emulated):
    name = "azure_openai"
    supports = Supports(translates=False)
    filter_why = "violence: medium"
    secret = azure_openai_server.TEST_API_KEY
    errors = (
        ErrorCase("429 Retry-After", {"status": 429, "error": "Requests have exceeded token rate limit.", "headers": {"retry-after": "6"}}, UpstreamRateLimited, 6.0),
        ErrorCase("429 retry-after-ms", {"status": 429, "error": "slow down", "headers": {"retry-after-ms": "1500"}}, UpstreamRateLimited, 1.5),
        ErrorCase("400", {"status": 400, "error": "Invalid value for 'temperature'"}, UpstreamBadRequest),
        ErrorCase("401", {"status": 401, "error": "Access denied due to invalid subscription key"}, UpstreamAuthError),
        ErrorCase("500", {"status": 500, "error": "The server had an error while processing your request."}, BackendError),
        ErrorCase("503 Retry-After", {"status": 503, "error": "busy", "headers": {"retry-after": "2"}}, BackendError, 2.0),
        ErrorCase("prompt filter", {"content_filter": "prompt"}, ContentFiltered),
    )  # fmt: skip

    def filter_stop(self, content: str) -> Behaviour:
        return {"content": content, "content_filter": "completion", "filter_after": 99}

    def emulator(self) -> tuple[EmulatorState[Any], Any]:
        state = azure_openai_server.AzureEmulatorState()
        return state, azure_openai_server.create_app(state)

    def build(self, url: str, timeouts: Mapping[str, Any]) -> Backend:
        config = AzureOpenAITargetConfig(type="azure_openai", endpoint=url, deployment=azure_openai_server.TEST_DEPLOYMENT,
                                         api_key_env="AK", timeouts=timeouts)  # fmt: skip
        return AzureOpenAIBackend(self.name, config, environ={"AK": self.secret or ""})


class AnthropicTarget(_Emulated):
    name = "anthropic"
    filter_why = "stop_reason refusal"
    secret = "sk-ant-api03-contract-0123456789abcdef"
    errors = (
        ErrorCase("429 Retry-After", {"status": 429, "error_type": "rate_limit_error", "error": "slow down", "headers": {"retry-after": "7"}}, UpstreamRateLimited, 7.0),
        ErrorCase("500", {"status": 500, "error_type": "api_error", "error": "Internal server error"}, BackendError),
        ErrorCase("529 overloaded", {"status": 529, "error_type": "overloaded_error", "error": "Overloaded"}, BackendBusy, 1.0),
        ErrorCase("529 Retry-After", {"status": 529, "error_type": "overloaded_error", "error": "Overloaded", "headers": {"retry-after": "4"}}, BackendBusy, 4.0),
        ErrorCase("400", {"status": 400, "error_type": "invalid_request_error", "error": "messages: bad"}, UpstreamBadRequest),
        ErrorCase("400 context", {"status": 400, "error_type": "invalid_request_error", "error": "prompt is too long: 210000 tokens > 200000 maximum"}, ContextLengthExceeded),
        ErrorCase("403", {"status": 403, "error_type": "permission_error", "error": "no access"}, UpstreamAuthError),
    )  # fmt: skip

    def filter_stop(self, content: str) -> Behaviour:
        return {"content": content, "stop_reason": "refusal"}

    def leak(self) -> Behaviour:
        return {"status": 400, "error_type": "invalid_request_error", "error": f"bad header x-api-key: {self.secret}"}

    def emulator(self) -> tuple[EmulatorState[Any], Any]:
        state = anthropic_server.EmulatorState(api_key=self.secret)
        return state, anthropic_server.create_app(state)

    def build(self, url: str, timeouts: Mapping[str, Any]) -> Backend:
        config = AnthropicTargetConfig(type="anthropic", model="claude-sonnet-4-6", base_url=url, api_key_env="AK",
                                       timeouts=timeouts)  # fmt: skip
        return AnthropicBackend(self.name, config, environ={"AK": self.secret or ""})


_GOOGLE_ERRORS = (
    ErrorCase("429 Retry-After", {"status": 429, "error": "Resource exhausted", "headers": {"retry-after": "7"}}, UpstreamRateLimited, 7.0),
    ErrorCase("429 RetryInfo", {"status": 429, "error": "Resource exhausted", "retry_delay": "12s"}, UpstreamRateLimited, 12.0),
    ErrorCase("500", {"status": 500, "error": "An internal error has occurred."}, BackendError),
    ErrorCase("503 Retry-After", {"status": 503, "error": "The model is overloaded.", "headers": {"retry-after": "3"}}, BackendError, 3.0),
    ErrorCase("504", {"status": 504, "error": "Deadline exceeded"}, UpstreamTimeout),
    ErrorCase("400", {"status": 400, "error": "Invalid value at 'generation_config.temperature'"}, UpstreamBadRequest),
    ErrorCase("401", {"status": 401, "error": "Request had invalid authentication credentials."}, UpstreamAuthError),
    ErrorCase("blocked prompt", {"block_reason": "SAFETY"}, ContentFiltered),
)  # fmt: skip


class GeminiTarget(_Emulated):
    name = "gemini"
    supports = Supports(partial_answers=False)
    filter_why = "finishReason SAFETY"
    secret = "AIzaSy-contract-gemini-key-0123456789"
    errors = _GOOGLE_ERRORS

    def filter_stop(self, content: str) -> Behaviour:
        return {"content": content, "finish_reason": "SAFETY"}

    def emulator(self) -> tuple[EmulatorState[Any], Any]:
        state = google_server.EmulatorState(api_key=self.secret)
        return state, google_server.create_app(state)

    def build(self, url: str, timeouts: Mapping[str, Any]) -> Backend:
        config = GeminiTargetConfig(type="gemini", model="gemini-2.5-flash", base_url=url, api_key_env="GK",
                                    timeouts=timeouts)  # fmt: skip
        return GeminiBackend(self.name, config, environ={"GK": self.secret or ""})


class StaticTokens:
    """A Vertex ``AccessTokens`` fake: one fixed bearer token."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def load(self) -> None:
        return None

    async def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


class VertexTarget(GeminiTarget):
    name = "vertex"
    secret = "ya29.contract-vertex-token-0123456789"

    def emulator(self) -> tuple[EmulatorState[Any], Any]:
        state = google_server.EmulatorState()
        state.tokens.add(self.secret or "")
        return state, google_server.create_app(state)

    def build(self, url: str, timeouts: Mapping[str, Any]) -> Backend:
        config = VertexTargetConfig(type="vertex", project="proj-1", region="us-central1", model="gemini-2.5-flash",
                                    base_url=url, timeouts=timeouts)  # fmt: skip
        return VertexBackend(self.name, config, tokens=StaticTokens(self.secret or ""))


class BedrockTarget(_Emulated):
    name = "bedrock"
    filter_why = "stopReason guardrail_intervened"
    secret = bedrock_server.TEST_SECRET_KEY
    errors = (
        ErrorCase("Throttling Retry-After", {"error_type": "ThrottlingException", "error": "Too many requests", "headers": {"retry-after": "3"}}, UpstreamRateLimited, 3.0),
        ErrorCase("Throttling", {"error_type": "ThrottlingException", "error": "Too many requests"}, UpstreamRateLimited, 1.0),
        ErrorCase("ModelNotReady", {"error_type": "ModelNotReadyException", "error": "warming up"}, UpstreamRateLimited, 1.0),
        ErrorCase("Validation", {"error_type": "ValidationException", "error": "Malformed input request"}, UpstreamBadRequest),
        ErrorCase("Validation context", {"error_type": "ValidationException", "error": "Input is too long for requested model."}, ContextLengthExceeded),
        ErrorCase("ResourceNotFound", {"error_type": "ResourceNotFoundException", "error": "Model not found"}, UpstreamBadRequest),
        ErrorCase("AccessDenied", {"error_type": "AccessDeniedException", "error": "You don't have access to the model"}, UpstreamAuthError),
        ErrorCase("ExpiredToken", {"error_type": "ExpiredTokenException", "error": "The security token included in the request is expired"}, UpstreamAuthError),
        ErrorCase("ModelTimeout", {"error_type": "ModelTimeoutException", "error": "Model took too long"}, UpstreamTimeout),
        ErrorCase("InternalServer", {"error_type": "InternalServerException", "error": "boom"}, BackendError),
        ErrorCase("ServiceUnavailable Retry-After", {"error_type": "ServiceUnavailableException", "error": "busy", "headers": {"retry-after": "2"}}, BackendError, 2.0),
        ErrorCase("ModelError", {"error_type": "ModelErrorException", "error": "model crashed"}, BackendError),
        ErrorCase("500 untyped", {"status": 500, "error_type": "", "error": "no type header"}, BackendError),
    )  # fmt: skip

    def filter_stop(self, content: str) -> Behaviour:
        return {"content": content, "stop_reason": "guardrail_intervened"}

    def leak(self) -> Behaviour:
        return {"error_type": "ValidationException", "error": f"signature material {self.secret} rejected"}

    def emulator(self) -> tuple[EmulatorState[Any], Any]:
        state = bedrock_server.BedrockEmulatorState()
        return state, bedrock_server.create_app(state)

    def build(self, url: str, timeouts: Mapping[str, Any]) -> Backend:
        from botocore.credentials import Credentials

        class Keys:
            def get_credentials(self) -> Any:
                return Credentials(bedrock_server.TEST_ACCESS_KEY, bedrock_server.TEST_SECRET_KEY)

        config = BedrockTargetConfig(type="bedrock", region=bedrock_server.TEST_REGION, endpoint_url=url,
                                     model_id="meta.llama3-70b-instruct-v1:0", timeouts=timeouts)  # fmt: skip
        return BedrockBackend(self.name, config, session=Keys())


@dataclass
class _FakeUpstream:
    """The scripted backend's "upstream": its queue of replies."""

    replies: list[ScriptedReply] = field(default_factory=list)

    def add(self, *behaviours: Behaviour) -> None:
        self.replies.extend(_reply(behaviour) for behaviour in behaviours)

    def next(self, request: ChatRequest) -> ScriptedReply:
        return self.replies.pop(0) if self.replies else ScriptedReply()


def _reply(behaviour: Behaviour) -> ScriptedReply:
    """The scripted reply that plays an emulator behaviour; ``raises`` scripts an error of ours."""
    cut = behaviour.get("cut_after")
    return ScriptedReply(
        text=behaviour.get("content", "Hello from the scripted backend."),
        pieces=behaviour.get("chunks"),
        finish_reason=behaviour.get("finish_reason", "stop"),
        delay_s=behaviour.get("delay_s", 0.0),
        piece_delay_s=behaviour.get("chunk_delay_s", 0.0),
        error=behaviour.get("raises") or (UpstreamProtocolError("target fake: cut") if cut is not None else None),
        fail_after=cut,
    )


class FakeTarget(ContractTarget):
    """The scripted backend: it plays its script, so it maps no upstream errors and applies no output rules."""

    name = "fake"
    supports = Supports(http=False, filter_errors=False, gauges_completions=False, translates=False)
    inflight = "active_generations"
    errors = (
        ErrorCase("rate limited", {"raises": UpstreamRateLimited("target fake: slow down", retry_after=7.0)}, UpstreamRateLimited, 7.0),
        ErrorCase("busy", {"raises": BackendBusy("target fake: queue full", retry_after=1.0)}, BackendBusy, 1.0),
        ErrorCase("timeout", {"raises": UpstreamTimeout("target fake: too slow")}, UpstreamTimeout),
    )  # fmt: skip

    def filter_stop(self, content: str) -> Behaviour:
        return {"content": content, "finish_reason": "content_filter"}

    @asynccontextmanager
    async def running(self, *, timeouts: Timeouts | None = None, url: str | None = None) -> AsyncIterator[Running]:
        upstream = _FakeUpstream()
        backend = ScriptedBackend(self.name, upstream.next)
        await backend.start()
        try:
            yield Running(backend, upstream.add, lambda: backend.active_streams)
        finally:
            await backend.aclose()


TARGETS: tuple[ContractTarget, ...] = (
    OpenAITarget(),
    AzureTarget(),
    AnthropicTarget(),
    GeminiTarget(),
    VertexTarget(),
    BedrockTarget(),
    FakeTarget(),
)
