"""``hybrid-router keys create|list|revoke``: client keys in the state store (``state.url`` of the config).

    hybrid-router keys create --tenant acme [--label NAME] [--rpm N] [--tpm N] [--usd-per-day X]
                              [--usd-per-month X] [--allow TARGET ...] [--config FILE] [--json]
    hybrid-router keys list [--tenant acme] [--config FILE] [--json]
    hybrid-router keys revoke KEY_OR_HASH_OR_PREFIX [--config FILE]

The store keeps only the key's SHA-256 hash; ``create`` prints the key once,
and nothing can show it again. Every gateway worker or replica on the same
store accepts a new key at once, and refuses a revoked one within
``state.key_cache_s``. ``memory://`` (the default store) lives inside one
gateway process, so these commands need ``sqlite:///…`` or ``redis://…``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from typing import Any

from router.errors import ConfigError, StateUnavailable
from router.state import KeyLimits, KeyRecord, StateStore, open_store

__all__ = ["add_keys_commands"]

KEY_PREFIX = "hr-"


def add_keys_commands(commands: Any) -> None:
    keys = commands.add_parser("keys", help="client keys in the state store").add_subparsers(dest="sub", required=True)
    create = keys.add_parser("create", help="make a key for a tenant and print it once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--label", default="", help="what the key is for (shown by list)")
    create.add_argument("--rpm", type=int, help="requests per minute for this key")
    create.add_argument("--tpm", type=int, help="tokens per minute for this key")
    create.add_argument("--usd-per-day", type=float)
    create.add_argument("--usd-per-month", type=float)
    create.add_argument("--allow", nargs="+", metavar="TARGET", help="the only targets this key may use")
    listing = keys.add_parser("list", help="the keys (hashes, tenants, limits), never the keys themselves")
    listing.add_argument("--tenant")
    revoke = keys.add_parser("revoke", help="refuse a key from now on (it stays listed, revoked)")
    revoke.add_argument("key", help="the key, its sha256:… hash, or a unique prefix of the hash's hex")
    for command in (create, listing, revoke):
        command.add_argument("--config", help="config file (default: $HYBRID_ROUTER_CONFIG or the embedded one)")
        command.add_argument("--json", action="store_true", help="print JSON")
    create.set_defaults(handler=_create)
    listing.set_defaults(handler=_list)
    revoke.set_defaults(handler=_revoke)


def _store(args: argparse.Namespace) -> StateStore:
    from service.settings import load_settings

    settings = load_settings(args.config)
    if settings.state.url.startswith("memory://"):
        raise ConfigError(
            "state.url is memory:// (one gateway process's own memory), so a key made here would reach no "
            "gateway: set state.url to sqlite:///<path> or redis://<host>:<port>/<db> in the config first"
        )
    unknown = sorted(set(getattr(args, "allow", None) or ()) - set(settings.targets))
    if unknown:
        raise ConfigError(
            f"--allow: unknown target(s) {', '.join(unknown)}; the config has {', '.join(settings.targets)}"
        )
    return open_store(settings.state.url)


def _run(args: argparse.Namespace, work: Any) -> int:
    async def go() -> int:
        store = _store(args)
        try:
            result: int = await work(store)
            return result
        except StateUnavailable as exc:
            print(f"keys {args.sub}: {exc}", file=sys.stderr)
            return 1
        finally:
            await store.close()

    return asyncio.run(go())


def _create(args: argparse.Namespace) -> int:
    from service.auth import hash_key

    limits = KeyLimits(args.rpm, args.tpm, args.usd_per_day, args.usd_per_month)
    key = KEY_PREFIX + secrets.token_urlsafe(32)

    async def work(store: StateStore) -> int:
        record = await store.keys.create(hash_key(key), tenant=args.tenant, label=args.label, limits=limits,
                                         allowed_targets=tuple(args.allow) if args.allow else None)  # fmt: skip
        if args.json:
            print(json.dumps({"key": key, **_describe(record)}, indent=2))
        else:
            print(key)
            print(f"tenant {record.tenant}, hash {record.key_hash}; the key is shown only now", file=sys.stderr)
        return 0

    return _run(args, work)


def _list(args: argparse.Namespace) -> int:
    async def work(store: StateStore) -> int:
        records = await store.keys.list(args.tenant)
        if args.json:
            print(json.dumps([_describe(record) for record in records], indent=2))
            return 0
        for record in records:
            row = _describe(record)
            limits = ", ".join(f"{k}={v}" for k, v in row["limits"].items()) or "no own limits"
            targets = ",".join(row["allowed_targets"]) if row["allowed_targets"] is not None else "all targets"
            status = "revoked" if record.revoked else "active"
            print(f"{record.key_hash[:23]}…  {record.tenant:<16} {status:<8} {row['created']}  {limits}; {targets}"
                  f"{'  ' + record.label if record.label else ''}")  # fmt: skip
        return 0

    return _run(args, work)


def _revoke(args: argparse.Namespace) -> int:
    from service.auth import hash_key

    async def work(store: StateStore) -> int:
        given = args.key.strip()
        if given.startswith("sha256:"):
            candidates = [given]
        else:
            records = await store.keys.list()
            prefix = [r.key_hash for r in records if r.key_hash.removeprefix("sha256:").startswith(given)]
            candidates = prefix if prefix and len(given) >= 8 else [hash_key(given)]
        if len(candidates) > 1:
            print(f"keys revoke: {given!r} matches {len(candidates)} keys; give more of the hash", file=sys.stderr)
            return 1
        if not await store.keys.revoke(candidates[0]):
            print("keys revoke: no such active key", file=sys.stderr)
            return 1
        print(f"revoked {candidates[0][:23]}…")
        return 0

    return _run(args, work)


def _describe(record: KeyRecord) -> dict[str, Any]:
    limits = {
        name: value
        for name, value in (
            ("requests_per_minute", record.limits.requests_per_minute),
            ("tokens_per_minute", record.limits.tokens_per_minute),
            ("usd_per_day", record.limits.usd_per_day),
            ("usd_per_month", record.limits.usd_per_month),
        )
        if value is not None
    }
    return {
        "hash": record.key_hash,
        "tenant": record.tenant,
        "label": record.label,
        "limits": limits,
        "allowed_targets": list(record.allowed_targets) if record.allowed_targets is not None else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created_at)),
        "revoked": record.revoked,
    }
