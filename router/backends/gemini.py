"""The Google Gemini API (``generativelanguage.googleapis.com``) behind the backend contract.

``POST {base_url}/{api_version}/models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse``, authenticated with an API key from
``api_key_env``. The key goes in the ``x-goog-api-key`` header: the API also
takes ``?key=``, but a header keeps the key out of URLs and access logs. The
translation is shared with Vertex AI, in :mod:`router.backends._google`.

Gemini answers a missing key with 403 and a wrong one with 400
``API_KEY_INVALID``; both surface as :class:`~router.errors.UpstreamAuthError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from urllib.parse import quote

from router.backends._google import GoogleBackend
from router.config import GeminiTargetConfig

__all__ = ["GeminiBackend"]


class GeminiBackend(GoogleBackend):
    """Sends requests to the Gemini API with the key from ``api_key_env``.

    >>> config = GeminiTargetConfig(type="gemini", model="gemini-2.5-flash")
    >>> backend = GeminiBackend("gemini", config, environ={})
    >>> backend.model_path, backend.readiness().reason
    ('/v1beta/models/gemini-2.5-flash', 'no API key: GEMINI_API_KEY is not set')
    """

    config: GeminiTargetConfig

    def __init__(
        self,
        name: str,
        config: GeminiTargetConfig,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self._key = env.get(config.api_key_env, "")
        super().__init__(name, config, str(config.base_url))
        model = config.model.removeprefix("models/")
        self._model_path = f"/{config.api_version}/models/{quote(model, safe='')}"

    @property
    def model_path(self) -> str:
        return self._model_path

    async def auth_headers(self) -> Mapping[str, str]:
        return {"x-goog-api-key": self._key}

    def secrets(self) -> Iterable[str]:
        return (self._key,)

    def problem(self) -> str | None:
        return None if self._key else f"no API key: {self.config.api_key_env} is not set"
