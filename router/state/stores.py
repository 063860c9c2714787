"""Which store a URL names: ``memory://``, ``sqlite:///<path>``, ``redis://host:port/db``.

SQLite paths are spelt as SQLAlchemy spells them: ``sqlite:///state.db`` is
relative to the working folder, ``sqlite:////var/lib/hybrid-router/state.db``
absolute.

>>> type(open_store("memory://")).__name__
'MemoryState'
>>> open_store("sqlite:////var/lib/hybrid-router/state.db").path
PosixPath('/var/lib/hybrid-router/state.db')
>>> open_store("postgres://db")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: unknown state store URL 'postgres://db'; valid: memory://, sqlite:///<path>, redis://<host>:<port>/<db>, ...
"""

from __future__ import annotations

import time
from collections.abc import Callable

from router.state.base import StateStore
from router.state.memory import MemoryState
from router.state.redis import RedisState
from router.state.sqlite import SQLiteState

__all__ = ["open_store"]

_VALID = "memory://, sqlite:///<path>, redis://<host>:<port>/<db>, rediss://…, unix://<socket>"


def open_store(url: str, *, clock: Callable[[], float] = time.time, namespace: str = "hybrid-router") -> StateStore:
    """Build the store ``url`` names, without I/O. ``namespace`` prefixes Redis keys; SQLite has its own file."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "memory":
        return MemoryState(clock=clock)
    if sep and scheme == "sqlite" and rest.startswith("/") and rest != "/":
        return SQLiteState(rest[1:], clock=clock)
    if sep and scheme in ("redis", "rediss", "unix"):
        return RedisState(url, namespace=namespace, clock=clock)
    raise ValueError(f"unknown state store URL {url!r}; valid: {_VALID}")
