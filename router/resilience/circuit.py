"""A circuit breaker per target: stop calling a target that keeps failing, then probe it.

States (the ``hybrid_router_circuit_state`` gauge's values)::

    closed (0) --N consecutive failures, or error rate >= R over the window--> open (2)
    open (2)   --open_s passed-------------------------------------------------> half_open (1)
    half_open  --all half_open_probes calls succeed--> closed;  --one fails--> open

Open, the breaker refuses calls and its target reports not ready (with
:meth:`CircuitBreaker.describe` as the reason), so the router skips it and
the trail says why. Each state change starts a new *epoch*: a call admitted
in an earlier epoch (before the circuit opened, say) no longer moves it.

>>> from router.config import CircuitConfig
>>> now = [0.0]
>>> breaker = CircuitBreaker(CircuitConfig(failures=2, open_s=10), clock=lambda: now[0])
>>> for _ in range(2):
...     breaker.record(breaker.acquire(), ok=False)
>>> breaker.state, breaker.describe()
('open', 'circuit open: 2 consecutive failures, next probe in 10 s')
>>> now[0] = 10.0
>>> probe = breaker.acquire()
>>> breaker.state, probe.probe, breaker.acquire()
('half_open', True, None)
>>> breaker.record(probe, ok=True)
>>> breaker.state
'closed'
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from router.config import CircuitConfig

__all__ = ["STATE_VALUES", "CircuitBreaker", "CircuitState", "Ticket"]

CircuitState = Literal["closed", "half_open", "open"]
STATE_VALUES: dict[CircuitState, int] = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted call; hand it back with :meth:`CircuitBreaker.record` or :meth:`~CircuitBreaker.release`."""

    epoch: int
    probe: bool = False


class CircuitBreaker:
    """Counts a target's outcomes and decides whether it may be called. ``clock``: monotonic seconds."""

    def __init__(self, config: CircuitConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._state: CircuitState = "closed"
        self._epoch = 0
        self._consecutive = 0
        self._window: deque[tuple[float, bool]] = deque()
        self._failed_in_window = 0
        self._opened_at = 0.0
        self._why = ""
        self._probes_started = 0
        self._probes_ok = 0

    # --- reading -------------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        if self._state == "open" and self._clock() >= self._opened_at + self.config.open_s:
            self._enter("half_open")
        return self._state

    def admits(self) -> bool:
        """Whether :meth:`acquire` would admit a call now (the readiness input)."""
        state = self.state
        return state == "closed" or (state == "half_open" and self._probes_started < self.config.half_open_probes)

    @property
    def retry_after(self) -> float:
        """Seconds until the next probe may go; 0 when a call is admitted now."""
        if self.admits():
            return 0.0
        if self._state == "open":
            return max(0.0, self._opened_at + self.config.open_s - self._clock())
        return self.config.open_s  # half-open with its probes out: at worst they fail and it opens again

    def error_rate(self) -> tuple[float, int]:
        """The share of failed calls in the window, and how many calls that is (0.0 of 0 when none)."""
        self._prune(self._clock())
        calls = len(self._window)
        return (self._failed_in_window / calls if calls else 0.0), calls

    def describe(self) -> str:
        """The state in words, e.g. ``circuit open: 5 consecutive failures, next probe in 12 s``."""
        state = self.state
        if state == "closed":
            return "circuit closed"
        if state == "half_open":
            waiting = "probe in flight" if self._probes_started >= self.config.half_open_probes else "next call probes"
            return f"circuit half-open after {self._why}: {waiting}"
        return f"circuit open: {self._why}, next probe in {math.ceil(self.retry_after):d} s"

    # --- calls ---------------------------------------------------------------------------------

    def acquire(self) -> Ticket | None:
        """Admit one call, or None when the circuit refuses it. Half-open, an admitted call is a probe."""
        if not self.admits():
            return None
        if self._state == "half_open":
            self._probes_started += 1
            return Ticket(self._epoch, probe=True)
        return Ticket(self._epoch)

    def record(self, ticket: Ticket, *, ok: bool) -> None:
        """The outcome of an admitted call: ``ok``, or a failure that is the target's fault."""
        if ticket.epoch != self._epoch:
            return
        if self._state == "half_open":
            self._probe_done(ok)
            return
        now = self._clock()
        self._prune(now)
        self._window.append((now, ok))
        if ok:
            self._consecutive = 0
            return
        self._consecutive += 1
        self._failed_in_window += 1
        self._trip_if_failing()

    def release(self, ticket: Ticket) -> None:
        """An admitted call ended saying nothing of the target's health (cancelled, or the request's fault)."""
        if ticket.probe and ticket.epoch == self._epoch:
            self._probes_started -= 1

    # --- transitions ---------------------------------------------------------------------------

    def _trip_if_failing(self) -> None:
        cfg = self.config
        if self._consecutive >= cfg.failures:
            self._open(f"{self._consecutive} consecutive failures")
            return
        rate, calls = self._failed_in_window / len(self._window), len(self._window)
        if calls >= cfg.min_requests and rate >= cfg.error_rate:
            self._open(f"error rate {rate:.0%} over the last {cfg.window_s:g} s ({calls} calls)")

    def _probe_done(self, ok: bool) -> None:
        if not ok:
            self._open("a half-open probe failed")
            return
        self._probes_ok += 1
        if self._probes_ok >= self.config.half_open_probes:
            self._enter("closed")

    def _open(self, why: str) -> None:
        self._why = why
        self._opened_at = self._clock()
        self._enter("open")

    def _enter(self, state: CircuitState) -> None:
        self._state = state
        self._epoch += 1
        self._probes_started = self._probes_ok = 0
        self._consecutive = 0
        if state == "closed":
            # A fresh start: the history that opened the circuit must not trip it again once it closes.
            # (Open, the window is kept, so that readiness still shows the error rate that opened it.)
            self._window.clear()
            self._failed_in_window = 0

    def _prune(self, now: float) -> None:
        horizon = now - self.config.window_s
        while self._window and self._window[0][0] <= horizon:
            _, ok = self._window.popleft()
            if not ok:
                self._failed_in_window -= 1
