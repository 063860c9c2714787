"""Shared state for spend and traffic control: budgets, rate windows, client keys, small values.

One contract (:mod:`router.state.base`), three stores that pass the same
suite: :class:`MemoryState` (the fake, one process), :class:`SQLiteState`
(one file in WAL mode, every process of one machine) and :class:`RedisState`
(many replicas). :func:`open_store` builds one from a URL.
"""

from router.state.base import (
    Admissions,
    Admitted,
    BudgetExceeded,
    BudgetScope,
    BudgetStore,
    BudgetUsage,
    KeyLimits,
    KeyRecord,
    KeyStore,
    KeyValueStore,
    RateDecision,
    RateLimiter,
    RateScope,
    Reservation,
    StateStore,
    Window,
)
from router.state.memory import MemoryState
from router.state.redis import RedisState
from router.state.sqlite import SQLiteState
from router.state.stores import open_store

__all__ = [
    "Admissions",
    "Admitted",
    "BudgetExceeded",
    "BudgetScope",
    "BudgetStore",
    "BudgetUsage",
    "KeyLimits",
    "KeyRecord",
    "KeyStore",
    "KeyValueStore",
    "MemoryState",
    "RateDecision",
    "RateLimiter",
    "RateScope",
    "RedisState",
    "Reservation",
    "SQLiteState",
    "StateStore",
    "Window",
    "open_store",
]
