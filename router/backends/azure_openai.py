"""Azure OpenAI: OpenAI's chat-completions API behind a deployment URL.

The wire format is OpenAI's, so bodies are built and streams relayed with the
same helpers as :mod:`router.backends.openai_compat`. What differs:

* the URL: ``{endpoint}/openai/deployments/{deployment}/chat/completions``
  with a mandatory ``api-version`` query parameter (without it Azure answers
  404); the deployment picks the model, the body's ``model`` is ignored;
* auth: an ``api-key`` header from ``api_key_env``, or a Microsoft Entra ID
  bearer token from ``azure-identity``, fetched off the event loop and
  reused until shortly before it expires;
* content filtering: a blocked prompt is a 400 ``content_filter`` error with
  ``innererror.content_filter_result``, which becomes :class:`ContentFiltered`
  naming the categories. A blocked answer ends with ``finish_reason:
  "content_filter"`` and follows the common output rules: ContentFiltered
  (naming the categories) when nothing came before it, else the partial
  answer with that finish reason, as OpenAI's own API answers;
* annotations: streams open with a chunk holding only
  ``prompt_filter_results`` and may carry filter-only chunks without a
  ``delta``; neither is relayed, and the ``*_filter_results`` fields are
  stripped so clients see OpenAI's shapes.

JSON mode (``response_format``) is passed through: Azure supports it on the
models that OpenAI supports it on.

>>> from router.config import AzureOpenAITargetConfig
>>> cfg = AzureOpenAITargetConfig(type="azure_openai", endpoint="https://r.openai.azure.com", deployment="gpt4o")
>>> AzureOpenAIBackend("azure", cfg, environ={}).readiness().reason
'no API key: AZURE_OPENAI_API_KEY is not set'
"""

from __future__ import annotations

import asyncio
import importlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import quote

import orjson

from router.backends.base import capabilities_for
from router.backends.http import read_error
from router.backends.http_backend import Exchange, SseBackend
from router.backends.openai_compat import OpenAIStream, openai_payload, read_completion
from router.chat import ChatRequest, ChatResult
from router.config import AzureOpenAITargetConfig
from router.errors import ConfigError, ContentFiltered, HybridRouterError, UpstreamAuthError

__all__ = ["AccessToken", "AzureOpenAIBackend", "EntraTokens", "TokenCredential", "require_azure"]

PATH = "/chat/completions"


class AccessToken(Protocol):
    """What ``azure.core.credentials.AccessToken`` offers: the token and its expiry (epoch seconds)."""

    @property
    def token(self) -> str: ...

    @property
    def expires_on(self) -> int: ...


class TokenCredential(Protocol):
    """A synchronous Entra ID credential, e.g. ``azure.identity.DefaultAzureCredential``."""

    def get_token(self, *scopes: str) -> AccessToken: ...


class EntraTokens:
    """Bearer tokens for one scope: fetched in a worker thread, cached until near expiry.

    ``get_token`` blocks (it may call Entra ID or a managed-identity endpoint),
    so it never runs on the event loop, and only one fetch runs at a time.
    A failed fetch is remembered for ``retry_s`` so readiness can report it
    and the router sends traffic elsewhere meanwhile.
    """

    def __init__(
        self,
        credential: TokenCredential,
        scope: str,
        *,
        refresh_margin_s: float = 300.0,
        retry_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credential = credential
        self._scope = scope
        self._margin = refresh_margin_s
        self._retry_s = retry_s
        self._clock = clock
        self._token = ""
        self._expires_on = 0.0
        self._failure: tuple[float, str] | None = None
        self._lock = asyncio.Lock()

    @property
    def current(self) -> str:
        """The cached token, possibly stale; for scrubbing messages."""
        return self._token

    def _fresh(self) -> bool:
        return bool(self._token) and self._expires_on - self._clock() > self._margin

    async def token(self) -> str:
        if self._fresh():
            return self._token
        async with self._lock:
            if not self._fresh():
                await self._fetch()
        return self._token

    async def _fetch(self) -> None:
        try:
            access = await asyncio.to_thread(self._credential.get_token, self._scope)
        except Exception as exc:  # credential chains raise azure-core, msal and OS errors alike
            self._failure = (self._clock(), type(exc).__name__)
            raise UpstreamAuthError(f"could not get a Microsoft Entra ID token ({type(exc).__name__})") from exc
        self._token, self._expires_on, self._failure = access.token, float(access.expires_on), None

    def invalidate(self) -> None:
        """Forget the cached token (the upstream rejected it)."""
        self._token, self._expires_on = "", 0.0

    def failure(self) -> str | None:
        """Why the last fetch failed, while that is recent enough to matter."""
        if self._failure is None or self._clock() - self._failure[0] > self._retry_s:
            return None
        return self._failure[1]


def require_azure(module: str, *, target: str) -> Any:
    """Import an azure-identity module, failing start-up with an install hint when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"target {target}: auth entra_id needs azure-identity ({module} is not importable): "
            "pip install 'hybrid-router[azure]'"
        ) from exc


def _default_credential(target: str) -> TokenCredential:
    credential: TokenCredential = require_azure("azure.identity", target=target).DefaultAzureCredential()
    return credential


def _filtered_prompt(body: bytes) -> str | None:
    """The filtered categories of a ``content_filter`` error body; None for other errors."""
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if not isinstance(error, dict) or error.get("code") != "content_filter":
        return None
    inner = error.get("innererror")
    results = inner.get("content_filter_result") if isinstance(inner, dict) else None
    return _categories(results)


def _categories(results: object) -> str:
    """``"violence: medium, jailbreak"`` for the categories marked ``filtered``."""
    if not isinstance(results, dict):
        return "category not given"
    named = [
        f"{name}: {verdict['severity']}" if isinstance(verdict.get("severity"), str) else name
        for name, verdict in results.items()
        if isinstance(verdict, dict) and verdict.get("filtered")
    ]
    return ", ".join(named) or "category not given"


def strip_annotations(body: dict[str, Any]) -> str:
    """Remove Azure's filter annotations from an answer or chunk, so clients see OpenAI's shapes.

    Returns the categories that stopped the answer, for a filter stop's error.
    """
    body.pop("prompt_filter_results", None)
    why = "category not given"
    for choice in body.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        results = choice.pop("content_filter_results", None)
        choice.pop("content_filter_offsets", None)
        if choice.get("finish_reason") == "content_filter":
            why = _categories(results)
    return why


class AzureOpenAIBackend(SseBackend):
    """Sends requests to one Azure OpenAI deployment.

    ``credential`` replaces ``DefaultAzureCredential`` for ``auth: entra_id``
    (tests, or a credential built by the host application).
    """

    def __init__(
        self,
        name: str,
        config: AzureOpenAITargetConfig,
        *,
        environ: Mapping[str, str] | None = None,
        credential: TokenCredential | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        env = os.environ if environ is None else environ
        self.config = config
        self._key = env.get(config.api_key_env, "") if config.auth == "api_key" else ""
        self._credential: Any = None
        self._owns_credential = False
        self._tokens: EntraTokens | None = None
        if config.auth == "entra_id":
            self._credential = credential or _default_credential(name)
            self._owns_credential = credential is None
            self._tokens = EntraTokens(self._credential, config.entra_scope, clock=clock)
        self._params = {"api-version": config.api_version}
        endpoint = str(config.endpoint).rstrip("/")
        super().__init__(
            name,
            config,
            model=config.model or config.deployment,
            base_url=f"{endpoint}/openai/deployments/{quote(config.deployment, safe='')}",
            capabilities=capabilities_for(config.supports, context_window=config.context_window),
            headers={"api-key": self._key} if self._key else {},
        )

    def problem(self) -> str | None:
        if self.config.auth == "api_key" and not self._key:
            return f"no API key: {self.config.api_key_env} is not set"
        if self._tokens is not None and (failure := self._tokens.failure()):
            return f"no Microsoft Entra ID token: {failure}"
        return None

    def secrets(self) -> Iterable[str]:
        return (self._key, self._tokens.current if self._tokens else "")

    async def aclose(self) -> None:
        await super().aclose()
        close = getattr(self._credential, "close", None)
        if self._tokens is not None and self._owns_credential and callable(close):
            await asyncio.to_thread(close)

    def payload(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The body sent upstream; ``model`` names the deployment (Azure ignores it)."""
        return openai_payload(request, model=self.config.deployment, stream=stream)

    async def exchange(self, request: ChatRequest, *, stream: bool) -> Exchange:
        headers = {} if self._tokens is None else {"authorization": f"Bearer {await self._tokens.token()}"}
        return Exchange(PATH, orjson.dumps(self.payload(request, stream=stream)), headers, self._params)

    def read_answer(self, body: Any, request: ChatRequest) -> ChatResult:
        return read_completion(body, request, strip_annotations)

    def translator(self, request: ChatRequest) -> OpenAIStream:
        return OpenAIStream(self.model, request.prompt_text, self.read_error, strip_annotations)

    def read_error(self, status: int, headers: Mapping[str, str], body: bytes) -> HybridRouterError:
        categories = _filtered_prompt(body)
        if categories is None:
            return read_error(status, headers, body)
        return ContentFiltered(
            f"upstream returned {status}: Azure OpenAI's content filter blocked the prompt ({categories})"
        )

    def on_error(self, error: HybridRouterError) -> None:
        # A rejected token may have been revoked early: fetch a new one next time.
        if isinstance(error, UpstreamAuthError) and self._tokens is not None:
            self._tokens.invalidate()
