"""Live latency estimates per target: time to first token, time per output token, and a whole answer's time.

Fed by the gateway after each answer (:meth:`LatencyEstimates.observe`) and
read by policies through :class:`~router.policies.base.TargetView`. Each is an
exponentially weighted moving average, so the estimate follows a target that
slows down (a loaded edge, a provider having a bad hour) within a few dozen
answers and forgets an outlier as fast.

>>> est = LatencyEstimates(alpha=0.5)
>>> est.observe("cloud", ttft_ms=400.0, total_ms=1400.0, completion_tokens=51)
>>> est.observe("cloud", ttft_ms=200.0, total_ms=1200.0, completion_tokens=51)
>>> live = est.get("cloud")
>>> live.ttft_ms, live.tpot_ms, live.samples
(300.0, 20.0, 2)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LatencyEstimates", "LiveLatency"]


@dataclass(frozen=True, slots=True)
class LiveLatency:
    """One target's estimates: ms to the first token, ms per later token, ms a whole answer took."""

    ttft_ms: float
    tpot_ms: float | None
    answer_ms: float
    samples: int


class LatencyEstimates:
    def __init__(self, alpha: float = 0.2) -> None:
        self._alpha = alpha
        self._live: dict[str, LiveLatency] = {}

    def observe(self, target: str, *, ttft_ms: float, total_ms: float, completion_tokens: int) -> None:
        """One answer: its first token after ``ttft_ms``, its last after ``total_ms``."""
        tpot = (total_ms - ttft_ms) / (completion_tokens - 1) if completion_tokens > 1 and total_ms > ttft_ms else None
        old = self._live.get(target)
        if old is None:
            self._live[target] = LiveLatency(ttft_ms, tpot, total_ms, 1)
            return
        a = self._alpha

        def blend(previous: float, value: float) -> float:
            return previous + a * (value - previous)

        new_tpot = old.tpot_ms if tpot is None else tpot if old.tpot_ms is None else blend(old.tpot_ms, tpot)
        self._live[target] = LiveLatency(
            blend(old.ttft_ms, ttft_ms), new_tpot, blend(old.answer_ms, total_ms), old.samples + 1
        )

    def get(self, target: str) -> LiveLatency | None:
        return self._live.get(target)
