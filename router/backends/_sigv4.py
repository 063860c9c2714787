"""SigV4 request signing from botocore's credential chain, for the Bedrock adapter.

botocore does the part that must match AWS to the byte (``SigV4Auth``); this
module adds what an event loop needs around it. Finding credentials may read
files, call SSO or instance metadata, and refreshing them may call STS, so
both run in a worker thread; a request signs with a frozen copy, which is
also what error messages are scrubbed against (reading a refreshable
credential's attributes could trigger a refresh, on the loop).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, cast

from router.backends._eventstream import require_botocore
from router.errors import UpstreamAuthError

__all__ = ["CredentialSource", "SigV4Signer"]


class CredentialSource(Protocol):
    """Where AWS credentials come from; ``botocore.session.Session`` is one.

    ``get_credentials`` returns botocore ``Credentials`` (possibly refreshable)
    or None when the chain finds nothing. It may block, so it is only ever
    called off the event loop.
    """

    def get_credentials(self) -> Any: ...


class SigV4Signer:
    """Signs requests for one AWS service and region with the credentials ``session`` finds.

    ``problem`` says why it cannot sign (no credentials, an unreadable chain);
    None once :meth:`load` has found credentials.
    """

    def __init__(self, service: str, region: str, *, session: CredentialSource | None, profile: str | None) -> None:
        self._signer_class: Any = require_botocore("botocore.auth").SigV4Auth
        self._request_class: Any = require_botocore("botocore.awsrequest").AWSRequest
        if session is None:
            session = cast(CredentialSource, require_botocore("botocore.session").Session(profile=profile))
        self._session = session
        self._service = service
        self._region = region
        self._credentials: Any = None
        self._frozen: Any = None
        self.problem: str | None = "not started"

    async def load(self) -> None:
        """Find the credentials through the chain; a failure is kept in :attr:`problem`."""
        try:
            self._credentials = await asyncio.to_thread(self._session.get_credentials)
        except Exception as exc:  # noqa: BLE001 - botocore's chain raises many types (ProfileNotFound, parse errors, ...)
            self.problem = f"no AWS credentials: {type(exc).__name__} while reading the credential chain"
            return
        self.problem = (
            None
            if self._credentials is not None
            else "no AWS credentials: botocore's chain found none (env, shared files, profile, SSO, roles)"
        )

    def secrets(self) -> tuple[str, ...]:
        frozen = self._frozen
        return tuple(s for s in (getattr(frozen, "secret_key", ""), getattr(frozen, "token", "")) if s)

    async def headers(self, url: str, body: bytes, *, accept: str) -> dict[str, str]:
        """The signed headers for POSTing ``body`` to ``url``, which must be sent exactly as given."""
        credentials = await self._frozen_credentials()
        request = self._request_class(
            method="POST", url=url, data=body, headers={"content-type": "application/json", "accept": accept}
        )
        self._signer_class(credentials, self._service, self._region).add_auth(request)
        return dict(request.headers.items())

    async def _frozen_credentials(self) -> Any:
        """This request's credentials; a due refresh (STS, SSO) runs off the event loop."""
        credentials = self._credentials
        if credentials is None:
            raise UpstreamAuthError(self.problem or "no AWS credentials")
        refresh_needed = getattr(credentials, "refresh_needed", None)
        try:
            if callable(refresh_needed) and refresh_needed():
                self._frozen = await asyncio.to_thread(credentials.get_frozen_credentials)
            else:
                self._frozen = credentials.get_frozen_credentials()
        except Exception as exc:  # refresh errors come from botocore, STS or SSO
            raise UpstreamAuthError(f"could not refresh the AWS credentials ({type(exc).__name__})") from exc
        return self._frozen
