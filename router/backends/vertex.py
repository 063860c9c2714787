"""Google Vertex AI ``generateContent`` on a publisher model, behind the backend contract.

``POST {base}/v1/projects/{project}/locations/{region}/publishers/google/models/{model}:generateContent``
(and ``:streamGenerateContent?alt=sse``), where ``base`` is
``https://{region}-aiplatform.googleapis.com`` (``https://aiplatform.googleapis.com``
for the ``global`` region) unless ``base_url`` overrides it. The JSON is the
Gemini API's; the translation is shared, in :mod:`router.backends._google`.

Requests carry ``Authorization: Bearer <token>`` from an :class:`AccessTokens`
source. The default, :class:`GoogleAuthTokens`, uses google-auth (an optional
extra, imported lazily): the service-account file in ``credentials_file`` when
set, else application default credentials. Finding credentials may probe the
GCE metadata server and refreshing a token is a blocking HTTP call, so both run
in a worker thread; the token is cached until shortly before it expires.
Without credentials the target reports itself not ready, saying why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote

from router.backends._google import GoogleBackend
from router.config import VertexTargetConfig
from router.errors import ConfigError, UpstreamAuthError, UpstreamTimeout

__all__ = ["INSTALL_HINT", "AccessTokens", "GoogleAuthTokens", "VertexBackend"]

INSTALL_HINT = "pip install 'hybrid-router[vertex]'"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class AccessTokens(Protocol):
    """Where Vertex's OAuth bearer tokens come from."""

    async def load(self) -> None:
        """Find the credentials; raise :class:`ConfigError` saying what is missing."""

    async def headers(self) -> dict[str, str]:
        """``authorization`` (and any quota-project) headers with a token that is valid now."""
        ...


class GoogleAuthTokens:
    """Tokens from google-auth: a service-account file when given, else application default credentials.

    >>> tokens = GoogleAuthTokens("/nonexistent/sa.json")
    >>> tokens.loaded
    False
    """

    def __init__(
        self,
        credentials_file: str | None = None,
        *,
        scopes: Sequence[str] = (CLOUD_PLATFORM_SCOPE,),
        refresh_timeout_s: float = 30.0,
    ) -> None:
        self.credentials_file = credentials_file
        self.scopes = tuple(scopes)
        self.refresh_timeout_s = refresh_timeout_s
        self._credentials: Any = None
        self._transport: Any = None
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return self._credentials is not None

    async def load(self) -> None:
        if self._credentials is None:
            self._credentials, self._transport = await asyncio.to_thread(self._find)

    def _find(self) -> tuple[Any, Any]:
        try:
            import google.auth
            import google.auth.exceptions
            import google.auth.transport.requests
            from google.oauth2 import service_account
        except ImportError as exc:
            raise ConfigError(f"google-auth is not installed: {INSTALL_HINT}") from exc
        # google-auth's loaders are untyped; what they return is only handed back to google-auth.
        service_accounts: Any = service_account.Credentials
        try:
            if self.credentials_file:
                credentials = service_accounts.from_service_account_file(self.credentials_file, scopes=self.scopes)
            else:
                credentials, _project = google.auth.default(scopes=self.scopes)
        except (google.auth.exceptions.GoogleAuthError, OSError, ValueError) as exc:
            source = f"credentials file {self.credentials_file}" if self.credentials_file else "default credentials"
            raise ConfigError(f"no usable Google credentials ({source}): {_first_line(exc)}") from exc
        return credentials, google.auth.transport.requests.Request()

    async def headers(self) -> dict[str, str]:
        if self._credentials is None:
            raise UpstreamAuthError("Google credentials are not loaded")
        async with self._lock:
            if not self._credentials.valid:
                await self._refresh()
        headers: dict[str, str] = {}
        self._credentials.apply(headers)
        return headers

    async def _refresh(self) -> None:
        import google.auth.exceptions

        try:
            async with asyncio.timeout(self.refresh_timeout_s):
                await asyncio.to_thread(self._credentials.refresh, self._transport)
        except TimeoutError as exc:
            raise UpstreamTimeout("timed out fetching a Google access token") from exc
        except google.auth.exceptions.GoogleAuthError as exc:
            # The token endpoint's text names the account, never the key; still, keep it short.
            raise UpstreamAuthError(f"could not obtain a Google access token: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def vertex_base_url(config: VertexTargetConfig) -> str:
    """The regional endpoint; ``global`` has no region prefix."""
    if config.base_url is not None:
        return str(config.base_url)
    host = "aiplatform.googleapis.com" if config.region == "global" else f"{config.region}-aiplatform.googleapis.com"
    return f"https://{host}"


class VertexBackend(GoogleBackend):
    """Sends requests to Vertex AI with OAuth tokens from ``tokens`` (google-auth by default).

    >>> config = VertexTargetConfig(type="vertex", project="p", region="europe-west4", model="gemini-2.5-flash")
    >>> VertexBackend("vertex", config).model_path
    '/v1/projects/p/locations/europe-west4/publishers/google/models/gemini-2.5-flash'
    """

    config: VertexTargetConfig

    def __init__(
        self,
        name: str,
        config: VertexTargetConfig,
        *,
        tokens: AccessTokens | None = None,
    ) -> None:
        self._tokens = tokens if tokens is not None else GoogleAuthTokens(config.credentials_file)
        self._token = ""
        self._problem: str | None = "credentials not loaded"
        super().__init__(name, config, vertex_base_url(config))
        project, region, model = (quote(part, safe="@") for part in (config.project, config.region, config.model))
        self._model_path = f"/v1/projects/{project}/locations/{region}/publishers/google/models/{model}"

    @property
    def model_path(self) -> str:
        return self._model_path

    async def start(self) -> None:
        await super().start()
        try:
            await self._tokens.load()
        except ConfigError as exc:
            self._problem = exc.message
        else:
            self._problem = None

    def problem(self) -> str | None:
        return self._problem

    async def auth_headers(self) -> Mapping[str, str]:
        headers = await self._tokens.headers()
        self._token = headers.get("authorization", "").removeprefix("Bearer ")
        return headers

    def secrets(self) -> Iterable[str]:
        return (self._token,)
