"""Client authentication with bearer keys, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Iterable, Mapping

from router.errors import AuthenticationFailed
from router.state import KeyLimits, KeyRecord
from service.settings import AuthSettings, ServerSettings

__all__ = [
    "AUTO_HOST",
    "DEFAULT_TENANT",
    "KeyChecker",
    "config_records",
    "hash_key",
    "is_loopback",
    "open_access_warning",
    "startup_problems",
]


AUTO_HOST = "auto"
"""``server.host: auto``: every interface with client keys, loopback without (:func:`service.server.listen_host`)."""


def hash_key(key: str) -> str:
    """The ``sha256:<hex>`` form a key is stored in.

    >>> hash_key("secret")[:15]
    'sha256:2bb80d53'
    """
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class KeyChecker:
    """Checks ``Authorization: Bearer <key>`` against configured key hashes.

    With no key configured every request passes: the sidecar default, where
    the gateway listens on loopback next to its one app (:func:`startup_problems`
    keeps it from starting anywhere else that way).
    """

    def __init__(self, hashes: Iterable[str] = ()) -> None:
        self._digests = [bytes.fromhex(item.partition(":")[2]) for item in hashes]

    @classmethod
    def from_settings(cls, auth: AuthSettings, environ: Mapping[str, str] | None = None) -> KeyChecker:
        return cls(record.key_hash for record in config_records(auth, os.environ if environ is None else environ))

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> None:
        if not self._digests:
            return
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer <key>'.")
        if not self._matches(key.strip()):
            raise AuthenticationFailed("Incorrect API key provided.")

    def authenticated(self, authorization: str | None) -> bool:
        """True only for a valid key; with no keys configured nobody is, so nothing private is shown."""
        scheme, _, key = (authorization or "").partition(" ")
        return bool(self._digests) and scheme.lower() == "bearer" and bool(key.strip()) and self._matches(key.strip())

    def _matches(self, key: str) -> bool:
        presented = hashlib.sha256(key.encode()).digest()
        # Compare against every digest, without stopping early, so timing reveals nothing.
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched


DEFAULT_TENANT = "default"
"""The tenant of keys given without one, and of every caller when no key is configured."""


def config_records(auth: AuthSettings, environ: Mapping[str, str]) -> list[KeyRecord]:
    """The keys config gives: ``auth.keys`` with their tenants, then ``auth.api_key_hashes`` and the plain keys
    in ``$<auth.api_keys_env>`` in the tenant ``default``."""
    records = [
        KeyRecord(
            key.hash,
            key.tenant,
            label=key.label,
            limits=KeyLimits(
                key.limits.requests_per_minute,
                key.limits.tokens_per_minute,
                key.limits.usd_per_day,
                key.limits.usd_per_month,
            ),
            allowed_targets=tuple(key.allowed_targets) if key.allowed_targets is not None else None,
        )
        for key in auth.keys
    ]
    plain = [key.strip() for key in environ.get(auth.api_keys_env, "").split(",") if key.strip()]
    seen = {record.key_hash for record in records}
    for digest in [*auth.api_key_hashes, *(hash_key(key) for key in plain)]:
        if digest not in seen:
            seen.add(digest)
            records.append(KeyRecord(digest, DEFAULT_TENANT))
    return records


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine.

    >>> [is_loopback(h) for h in ("127.0.0.2", "::1", "localhost", "0.0.0.0", "::", "example.com")]
    [True, True, True, False, False, False]
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        # Any other name may resolve to a public interface: treat it as one.
        return False


def startup_problems(
    server: ServerSettings, auth: AuthSettings, checker: KeyChecker, *, stored_keys: bool = False
) -> list[str]:
    """What makes serving with these settings unsafe, each with what to do; empty when nothing does.

    ``stored_keys``: the state store holds client keys (``hybrid-router keys create``), which require a key
    as config keys do.

    ``hybrid-router serve`` refuses to start on any of them and
    ``hybrid-router config check`` reports them.
    """
    problems = []
    keys_hint = (
        f"set client keys (plain keys, comma-separated, in ${auth.api_keys_env}, "
        "or `hybrid-router auth hash KEY` into auth.api_key_hashes)"
    )
    # ``auto`` binds every interface only when keys (or allow_unauthenticated) are there: never open.
    open_address = server.host != AUTO_HOST and not is_loopback(server.host)
    if not (checker.enabled or stored_keys) and not auth.allow_unauthenticated and open_address:
        problems.append(
            f"refusing to serve on {server.host}:{server.port} without client keys: anyone who can reach that "
            f"address could use the gateway and spend its cloud keys. Do one of: {keys_hint}; or listen on "
            f"127.0.0.1 (server.host, --host); or, only if something in front of the gateway authenticates "
            f"callers, set auth.allow_unauthenticated: true (HYBRID_ROUTER_AUTH__ALLOW_UNAUTHENTICATED=true)."
        )
    if server.metrics_auth and not checker.enabled:
        problems.append(f"server.metrics_auth is true but no client keys are configured: {keys_hint}.")
    return problems


def open_access_warning(host: str, port: int, auth: AuthSettings) -> str:
    """The one warning logged when the gateway serves without client keys."""
    who = "any local process" if is_loopback(host) else "anyone who can reach it"
    return (
        f"no client keys configured: {who} can use the gateway on {host}:{port}; set ${auth.api_keys_env} or "
        f"auth.api_key_hashes to require 'Authorization: Bearer <key>'"
    )
