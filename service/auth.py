"""Client authentication with bearer keys, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping

from router.errors import AuthenticationFailed
from service.settings import AuthSettings

__all__ = ["KeyChecker", "hash_key"]


def hash_key(key: str) -> str:
    """The ``sha256:<hex>`` form a key is stored in.

    >>> hash_key("secret")[:15]
    'sha256:2bb80d53'
    """
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class KeyChecker:
    """Checks ``Authorization: Bearer <key>`` against configured key hashes.

    With no key configured every request passes: the sidecar default, where
    the gateway listens on loopback next to its one app.
    """

    def __init__(self, hashes: Iterable[str] = ()) -> None:
        self._digests = [bytes.fromhex(item.partition(":")[2]) for item in hashes]

    @classmethod
    def from_settings(cls, auth: AuthSettings, environ: Mapping[str, str] | None = None) -> KeyChecker:
        env = os.environ if environ is None else environ
        plain = [key.strip() for key in env.get(auth.api_keys_env, "").split(",") if key.strip()]
        return cls([*auth.api_key_hashes, *(hash_key(key) for key in plain)])

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> None:
        if not self._digests:
            return
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer <key>'.")
        presented = hashlib.sha256(key.strip().encode()).digest()
        # Compare against every digest, without stopping early, so timing reveals nothing.
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        if not matched:
            raise AuthenticationFailed("Incorrect API key provided.")
