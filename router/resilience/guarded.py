"""One target's calls, retried and circuit-broken: the long-lived wrapper around each configured backend.

The gateway wraps each target whose config asks for retries or a circuit
breaker once, when it builds its backends, so the breaker's and the budget's
memory spans requests (and config reloads that keep the target).

* **Retries** (:class:`~router.resilience.retry.RetryPolicy`): a retryable
  failure before the first chunk is tried again after a jittered back-off,
  within the target's retry budget. A stream is committed to once its first
  chunk has arrived; a failure after that is the caller's to report.
* **Circuit** (:class:`~router.resilience.circuit.CircuitBreaker`): each
  call's outcome is recorded; open, calls are refused with
  :class:`~router.errors.CircuitOpen` without reaching the target, and
  :meth:`GuardedBackend.readiness` says not ready, with the reason and the
  recent error rate in its details (``/readyz``).
* **Evidence**: ``on_attempt(target, outcome)`` hears of every call made
  (``ok``, or the error's code, or ``cancelled``), for the metrics.

>>> import asyncio
>>> from router.backends.fake import ScriptedBackend, ScriptedReply
>>> from router.chat import ChatRequest
>>> from router.config import CircuitConfig, RetryConfig
>>> from router.errors import UpstreamConnectError
>>> replies = iter([ScriptedReply(error=UpstreamConnectError("down")), ScriptedReply(text="up again")])
>>> cloud = ScriptedBackend("cloud", lambda request: next(replies))
>>> guarded = GuardedBackend.from_config(cloud, RetryConfig(base_delay_s=0), CircuitConfig())
>>> req = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
>>> asyncio.run(guarded.complete(req)).body["choices"][0]["message"]["content"]
'up again'
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from typing import Protocol

from router.backends.base import Backend, Readiness
from router.backends.wrapping import WrappingBackend
from router.chat import ChatChunk, ChatRequest, ChatResult
from router.config import CircuitConfig, RetryConfig
from router.errors import (
    BackendBusy,
    BackendError,
    CircuitOpen,
    ContentFiltered,
    HybridRouterError,
    UpstreamBadRequest,
    UpstreamProtocolError,
)
from router.resilience.budget import RetryBudget
from router.resilience.circuit import CircuitBreaker, CircuitState, Ticket
from router.resilience.retry import RetryPolicy

__all__ = ["AttemptObserver", "GuardedBackend", "counts_against_target", "guard"]

AttemptObserver = Callable[[str, str], None]
"""Told ``(target, outcome)`` after each upstream call: ``ok``, an error code, or ``cancelled``."""

Sleep = Callable[[float], Awaitable[None]]


def counts_against_target(error: HybridRouterError) -> bool:
    """Whether ``error`` is evidence the target is unhealthy (a circuit failure).

    A refused request (bad request, content filter) says nothing of the
    target, and a full local queue is load, not ill health.
    """
    return isinstance(error, BackendError) and not isinstance(
        error, UpstreamBadRequest | ContentFiltered | BackendBusy | CircuitOpen
    )


class GuardedBackend(WrappingBackend):
    """A :class:`~router.backends.base.Backend` that retries and circuit-breaks calls to ``inner``.

    ``retry`` None means one attempt per request; ``circuit`` None, no breaker.
    ``sleep`` is what waits out a back-off (tests pass a fake).
    """

    def __init__(
        self,
        inner: Backend,
        *,
        retry: RetryPolicy | None = None,
        circuit: CircuitBreaker | None = None,
        on_attempt: AttemptObserver | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(inner)
        self.retry = retry
        self.circuit = circuit
        self._on_attempt = on_attempt
        self._sleep = sleep

    @classmethod
    def from_config(
        cls,
        inner: Backend,
        retries: RetryConfig,
        circuit: CircuitConfig | None,
        *,
        on_attempt: AttemptObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        random: Callable[[], float] = random.random,
    ) -> GuardedBackend:
        """The guard a target's ``retries`` and ``circuit`` config describe."""
        budget = RetryBudget(
            ratio=retries.budget_ratio, window_s=retries.budget_window_s, floor=retries.budget_floor, clock=clock
        )
        return cls(
            inner,
            retry=RetryPolicy(retries, budget=budget, random=random),
            circuit=CircuitBreaker(circuit, clock=clock) if circuit is not None else None,
            on_attempt=on_attempt,
            sleep=sleep,
        )

    # --- readiness -----------------------------------------------------------------------------

    @property
    def circuit_state(self) -> CircuitState:
        return "closed" if self.circuit is None else self.circuit.state

    def readiness(self) -> Readiness:
        """The target's own readiness, unless the circuit is open; the recent error rate in the details."""
        state = self.inner.readiness()
        circuit = self.circuit
        if circuit is None:
            return state
        rate, calls = circuit.error_rate()
        detail = {**state.detail, "circuit": circuit.state, "error_rate": round(rate, 3), "recent_calls": calls}
        if state.ready and not circuit.admits():
            detail["next_probe_s"] = round(circuit.retry_after, 1)
            return Readiness(ready=False, reason=circuit.describe(), detail=detail)
        return replace(state, detail=detail)

    # --- calls ---------------------------------------------------------------------------------

    async def complete(self, request: ChatRequest) -> ChatResult:
        attempt = 1
        while True:
            ticket = self._admit(attempt)
            try:
                result = await self.inner.complete(request)
            except HybridRouterError as exc:
                self._settle(ticket, exc)
                await self._back_off(exc, attempt)
                attempt += 1
                continue
            except BaseException:
                self._release(ticket)
                raise
            self._settle(ticket, None)
            return result

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        attempt = 1
        while True:
            ticket = self._admit(attempt)
            chunks = self.inner.stream(request)
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                error = UpstreamProtocolError(f"target {self.name}: the stream ended without output")
                self._settle(ticket, error)
                raise error from None
            except HybridRouterError as exc:
                await chunks.aclose()
                self._settle(ticket, exc)
                await self._back_off(exc, attempt)
                attempt += 1
                continue
            except BaseException:
                await chunks.aclose()
                self._release(ticket)
                raise
            break
        # Committed: whatever happens now reaches the caller, who may already have sent output on.
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        except HybridRouterError as exc:
            self._settle(ticket, exc)
            raise
        except BaseException:
            self._release(ticket)
            raise
        else:
            self._settle(ticket, None)
        finally:
            await chunks.aclose()

    # --- the parts -----------------------------------------------------------------------------

    def _admit(self, attempt: int) -> Ticket | None:
        """A ticket from the circuit (None when there is none), or raise CircuitOpen.

        A request's first admitted call earns its share of the retry budget; one the circuit refused made no call.
        """
        ticket = None
        if self.circuit is not None:
            ticket = self.circuit.acquire()
            if ticket is None:
                retry_after = max(1.0, self.circuit.retry_after)
                raise CircuitOpen(f"target {self.name}: {self.circuit.describe()}", retry_after=retry_after)
        if attempt == 1 and self.retry is not None:
            self.retry.record_call()
        return ticket

    async def _back_off(self, error: HybridRouterError, attempt: int) -> None:
        """Wait before the next attempt, or re-raise ``error`` when there is none to make."""
        delay = None if self.retry is None else self.retry.delay_for(error, attempt=attempt)
        # An open circuit would refuse the retry: give the caller the failure itself, at once.
        if delay is None or (self.circuit is not None and not self.circuit.admits()):
            raise error
        await self._sleep(delay)

    def _settle(self, ticket: Ticket | None, error: HybridRouterError | None) -> None:
        if ticket is not None and self.circuit is not None:
            if error is None or counts_against_target(error):
                self.circuit.record(ticket, ok=error is None)
            else:
                self.circuit.release(ticket)
        self._observe("ok" if error is None else error.code or "error")

    def _release(self, ticket: Ticket | None) -> None:
        if ticket is not None and self.circuit is not None:
            self.circuit.release(ticket)
        self._observe("cancelled")

    def _observe(self, outcome: str) -> None:
        if self._on_attempt is not None:
            self._on_attempt(self.name, outcome)


class _Resilient(Protocol):
    """What a target config says about resilience (every target config has both)."""

    @property
    def retries(self) -> RetryConfig: ...

    @property
    def circuit(self) -> CircuitConfig | None: ...


def guard(backend: Backend, config: _Resilient | None, *, on_attempt: AttemptObserver | None = None) -> Backend:
    """``backend`` in a :class:`GuardedBackend` when its target's ``config`` asks for retries or a circuit;
    else ``backend`` itself (a local target by default, or one injected without a config)."""
    if config is None or (config.retries.max_attempts == 1 and config.circuit is None):
        return backend
    return GuardedBackend.from_config(backend, config.retries, config.circuit, on_attempt=on_attempt)
