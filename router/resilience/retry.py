"""When to try a failed call again, and how long to wait first.

Back-off is exponential with full jitter (AWS's "Exponential Backoff and
Jitter"): retry *n* waits a uniform draw from ``[0, min(max_delay_s,
base_delay_s * 2**(n-1))]``, so callers that failed together do not retry
together. An upstream's ``Retry-After`` is a floor on the wait; one longer
than ``max_delay_s`` ends the retries, since waiting it out in the request
path costs more than falling back or telling the client.

>>> from router.config import RetryConfig
>>> config = RetryConfig(base_delay_s=0.5, max_delay_s=4)
>>> backoff_delay(3, config, retry_after=None, draw=1.0)  # the ceiling: 0.5 * 2**2
2.0
>>> backoff_delay(1, config, retry_after=3.0, draw=0.1)  # Retry-After is a floor
3.0
>>> backoff_delay(1, config, retry_after=30.0, draw=0.1) is None  # past max_delay_s: no retry
True
"""

from __future__ import annotations

import random
from collections.abc import Callable

from router.config import RetryConfig
from router.errors import CircuitOpen, HybridRouterError
from router.resilience.budget import RetryBudget

__all__ = ["RetryPolicy", "backoff_delay"]


def backoff_delay(attempt: int, config: RetryConfig, *, retry_after: float | None, draw: float) -> float | None:
    """Seconds to wait before retry number ``attempt`` (1 is the first retry); ``draw`` is uniform in [0, 1).

    None when ``retry_after`` is longer than ``config.max_delay_s``.
    """
    if retry_after is not None and retry_after > config.max_delay_s:
        return None
    ceiling = min(config.max_delay_s, config.base_delay_s * 2.0 ** (attempt - 1))
    return max(ceiling * draw, retry_after or 0.0)


class RetryPolicy:
    """Decides, for one target, whether a failed call is tried again and after how long.

    A retry needs all of: a retryable error, an attempt left, a ``Retry-After``
    within ``max_delay_s``, and a retry left in the target's budget.
    ``random`` draws the jitter; tests pass a fixed one.

    >>> from router.errors import UpstreamBadRequest, UpstreamConnectError
    >>> policy = RetryPolicy(RetryConfig(max_attempts=2, base_delay_s=1), random=lambda: 0.5)
    >>> policy.delay_for(UpstreamConnectError("down"), attempt=1)
    0.5
    >>> policy.delay_for(UpstreamConnectError("down"), attempt=2) is None  # no attempt left
    True
    >>> policy.delay_for(UpstreamBadRequest("no"), attempt=1) is None  # never retried
    True
    """

    def __init__(
        self,
        config: RetryConfig,
        *,
        budget: RetryBudget | None = None,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.budget = budget or RetryBudget(
            ratio=config.budget_ratio, window_s=config.budget_window_s, floor=config.budget_floor
        )
        self._random = random

    def record_call(self) -> None:
        """A request reached this target (its first attempt): it earns a share of a retry."""
        self.budget.record_call()

    def delay_for(self, error: HybridRouterError, *, attempt: int) -> float | None:
        """Seconds to wait before trying again after ``attempt`` (1-based) failed with ``error``; None: do not.

        A yes takes one retry from the budget.
        """
        # An open circuit refused the call: retrying the same target only asks it again.
        if not error.retryable or isinstance(error, CircuitOpen) or attempt >= self.config.max_attempts:
            return None
        delay = backoff_delay(attempt, self.config, retry_after=error.retry_after, draw=self._random())
        if delay is None or not self.budget.try_spend():
            return None
        return delay
