"""A retry budget: retries stay a bounded share of the calls a target gets.

Per-call retry limits alone multiply load when an upstream degrades: with
three attempts each, a failing upstream sees three times the traffic just
when it can least take it. A budget (Finagle's ``RetryBudget``, Envoy's
``retry_budget``) caps retries at ``floor`` plus ``ratio`` of the calls made
over a sliding window, so a mostly failing upstream gets at most about
``1 + ratio`` times its normal traffic, while a quiet target can still retry
its rare failure.

>>> now = [0.0]
>>> budget = RetryBudget(ratio=0.2, window_s=10, floor=1, clock=lambda: now[0])
>>> for _ in range(10):
...     budget.record_call()
>>> [budget.try_spend() for _ in range(4)]  # 1 + 0.2 * 10 = 3 retries
[True, True, True, False]
>>> now[0] = 11.0  # the window has moved past them all
>>> budget.try_spend()
True
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["RetryBudget"]


class RetryBudget:
    """At most ``floor + ratio * calls`` retries over the last ``window_s`` seconds.

    ``clock`` is monotonic seconds; tests pass a fake one.
    """

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        window_s: float = 10.0,
        floor: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= ratio <= 1 or window_s <= 0 or floor < 0:
            raise ValueError("ratio must be in [0, 1], window_s > 0 and floor >= 0")
        self.ratio = ratio
        self.window_s = window_s
        self.floor = floor
        self._clock = clock
        self._calls: deque[float] = deque()
        self._retries: deque[float] = deque()

    def record_call(self) -> None:
        """A request's first call: it earns ``ratio`` of a retry."""
        now = self._clock()
        self._prune(now)
        self._calls.append(now)

    def try_spend(self) -> bool:
        """Take one retry from the budget; False, and nothing taken, when it is spent."""
        now = self._clock()
        self._prune(now)
        if len(self._retries) >= self.allowed:
            return False
        self._retries.append(now)
        return True

    @property
    def allowed(self) -> int:
        """Retries the window allows now, spent ones included."""
        self._prune(self._clock())
        return self.floor + int(self.ratio * len(self._calls))

    @property
    def spent(self) -> int:
        """Retries taken within the window."""
        self._prune(self._clock())
        return len(self._retries)

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        for stamps in (self._calls, self._retries):
            while stamps and stamps[0] <= horizon:
                stamps.popleft()
