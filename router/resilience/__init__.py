"""Resilience: retries under a budget, a circuit breaker per target, and fallback chains.

* :mod:`~router.resilience.budget`: :class:`RetryBudget`, retries as a bounded share of calls;
* :mod:`~router.resilience.circuit`: :class:`CircuitBreaker`, closed / open / half-open;
* :mod:`~router.resilience.retry`: :class:`RetryPolicy`, jittered back-off honouring ``Retry-After``;
* :mod:`~router.resilience.guarded`: :class:`GuardedBackend`, one target's retries and circuit, long-lived;
* :mod:`~router.resilience.failover`: :class:`FailoverBackend`, one request's fallback chain.

Nothing here imports an HTTP client or a server: the errors it reasons about
are :mod:`router.errors`, whose ``retryable`` flag says what may be tried again.
"""

from router.resilience.budget import RetryBudget
from router.resilience.circuit import STATE_VALUES, CircuitBreaker, CircuitState
from router.resilience.failover import FailoverBackend, FailoverRecord, Hop, may_fall_back
from router.resilience.guarded import AttemptObserver, GuardedBackend, counts_against_target, guard
from router.resilience.retry import RetryPolicy, backoff_delay

__all__ = [
    "STATE_VALUES",
    "AttemptObserver",
    "CircuitBreaker",
    "CircuitState",
    "FailoverBackend",
    "FailoverRecord",
    "GuardedBackend",
    "Hop",
    "RetryBudget",
    "RetryPolicy",
    "backoff_delay",
    "counts_against_target",
    "guard",
    "may_fall_back",
]
