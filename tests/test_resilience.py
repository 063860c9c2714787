"""Retry budget, circuit breaker, back-off and GuardedBackend, each with a fake clock, sleep and random."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from router.backends.base import Readiness
from router.backends.fake import ScriptedBackend, ScriptedReply
from router.chat import ChatRequest
from router.config import CircuitConfig, RetryConfig
from router.errors import (
    BackendBusy,
    BackendError,
    CircuitOpen,
    ContentFiltered,
    HybridRouterError,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from router.resilience import CircuitBreaker, GuardedBackend, RetryBudget, RetryPolicy, backoff_delay, guard


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Sleeps:
    """A fake ``asyncio.sleep`` that records what it was asked to wait and moves the clock."""

    clock: Clock
    waited: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.waited.append(seconds)
        self.clock.now += seconds


def request(stream: bool = False) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], "stream": stream})


def scripted(*replies: ScriptedReply, name: str = "cloud") -> ScriptedBackend:
    """A backend answering with ``replies`` in turn, then with the last one for ever."""
    queue = list(replies)

    def next_reply(_: ChatRequest) -> ScriptedReply:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return ScriptedBackend(name, next_reply)


def fail(error: HybridRouterError) -> ScriptedReply:
    return ScriptedReply(error=error)


OK = ScriptedReply(text="fine thanks")


def guarded(
    inner: ScriptedBackend,
    *,
    retries: RetryConfig | None = None,
    circuit: CircuitConfig | None = None,
    clock: Clock | None = None,
    attempts: list[tuple[str, str]] | None = None,
) -> tuple[GuardedBackend, Sleeps]:
    clock = clock or Clock()
    sleeps = Sleeps(clock)
    observer: Callable[[str, str], None] | None = None
    if attempts is not None:
        observer = lambda target, outcome: attempts.append((target, outcome))  # noqa: E731
    backend = GuardedBackend.from_config(
        inner, retries or RetryConfig(), circuit, on_attempt=observer, clock=clock, sleep=sleeps, random=lambda: 0.5
    )
    return backend, sleeps


async def collect(backend: GuardedBackend, stream: bool) -> str:
    if not stream:
        result = await backend.complete(request())
        return str(result.body["choices"][0]["message"]["content"])
    text = []
    async for chunk in backend.stream(request(stream=True)):
        for choice in chunk.get("choices") or ():
            text.append(choice["delta"].get("content") or "")
    return "".join(text)


# --- the retry budget ---------------------------------------------------------------------------


def test_budget_allows_floor_plus_ratio_of_calls_in_the_window() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, window_s=10, floor=2, clock=clock)
    for _ in range(20):
        budget.record_call()

    spent = [budget.try_spend() for _ in range(10)]

    assert spent.count(True) == 2 + 4
    assert budget.spent == 6 and budget.allowed == 6


def test_budget_forgets_calls_and_retries_past_the_window() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.5, window_s=10, floor=0, clock=clock)
    for _ in range(4):
        budget.record_call()
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]

    clock.now = 10.0  # the calls, and the retries they paid for, leave the window together
    assert budget.allowed == 0 and not budget.try_spend()
    budget.record_call()
    budget.record_call()
    assert budget.try_spend() and budget.spent == 1


def test_budget_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="ratio"):
        RetryBudget(ratio=1.5)


# --- back-off -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "draw", "expected"), [(1, 1.0, 0.2), (2, 1.0, 0.4), (3, 0.5, 0.4), (9, 1.0, 2.0)])
def test_backoff_is_exponential_jittered_and_capped(attempt: int, draw: float, expected: float) -> None:
    config = RetryConfig(base_delay_s=0.2, max_delay_s=2.0)
    assert backoff_delay(attempt, config, retry_after=None, draw=draw) == pytest.approx(expected)


def test_backoff_waits_at_least_retry_after_and_gives_up_past_the_cap() -> None:
    config = RetryConfig(base_delay_s=0.2, max_delay_s=2.0)
    assert backoff_delay(1, config, retry_after=1.5, draw=0.0) == 1.5
    assert backoff_delay(1, config, retry_after=2.0, draw=0.0) == 2.0
    assert backoff_delay(1, config, retry_after=2.5, draw=0.0) is None


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (UpstreamConnectError("refused"), True),
        (UpstreamRateLimited("slow down", retry_after=0.5), True),
        (BackendError("upstream returned 503"), True),
        (UpstreamTimeout("no first byte"), True),
        (BackendBusy("queue full", retry_after=1), True),
        (UpstreamBadRequest("bad"), False),
        (ContentFiltered("filtered"), False),
        (UpstreamAuthError("bad key"), False),
        (UpstreamProtocolError("garbage"), False),
        (UpstreamProtocolError("the connection broke", retryable=True), True),
        (CircuitOpen("open"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, HybridRouterError) else str(v),
)
def test_only_retryable_errors_are_retried(error: HybridRouterError, retried: bool) -> None:
    policy = RetryPolicy(RetryConfig(), random=lambda: 0.0)
    assert (policy.delay_for(error, attempt=1) is not None) is retried


def test_a_retry_needs_an_attempt_left_and_budget() -> None:
    policy = RetryPolicy(RetryConfig(max_attempts=3, budget_floor=1, budget_ratio=0), random=lambda: 0.0)
    error = UpstreamConnectError("refused")

    assert policy.delay_for(error, attempt=3) is None  # the third attempt was the last
    assert policy.delay_for(error, attempt=1) == 0.0  # takes the one retry the budget has
    assert policy.delay_for(error, attempt=1) is None  # budget spent


# --- the circuit breaker ------------------------------------------------------------------------


def trip(breaker: CircuitBreaker, outcomes: str) -> None:
    """Record outcomes: 'o' ok, 'x' failure."""
    for mark in outcomes:
        ticket = breaker.acquire()
        assert ticket is not None
        breaker.record(ticket, ok=mark == "o")


def test_circuit_opens_on_consecutive_failures_and_names_them() -> None:
    clock = Clock()
    breaker = CircuitBreaker(CircuitConfig(failures=3, open_s=12), clock=clock)

    trip(breaker, "xxoxx")
    assert breaker.state == "closed"
    trip(breaker, "x")

    assert breaker.state == "open" and breaker.acquire() is None and not breaker.admits()
    clock.now = 0.4
    assert breaker.describe() == "circuit open: 3 consecutive failures, next probe in 12 s"
    assert breaker.retry_after == pytest.approx(11.6)


def test_circuit_opens_on_error_rate_over_the_window_once_it_has_enough_calls() -> None:
    clock = Clock()
    breaker = CircuitBreaker(CircuitConfig(failures=100, error_rate=0.5, window_s=10, min_requests=10), clock=clock)

    trip(breaker, "xoxox")  # 60% failed, but only 5 calls
    assert breaker.state == "closed" and breaker.error_rate() == (0.6, 5)
    clock.now = 11.0  # those leave the window
    trip(breaker, "oooxxoxox")  # 4 of 9
    assert breaker.state == "closed"
    trip(breaker, "x")  # 5 of 10

    assert breaker.state == "open"
    assert breaker.describe().startswith("circuit open: error rate 50% over the last 10 s (10 calls)")


def test_half_open_lets_probes_through_and_closes_when_they_succeed() -> None:
    clock = Clock()
    breaker = CircuitBreaker(CircuitConfig(failures=1, open_s=5, half_open_probes=2), clock=clock)
    trip(breaker, "x")
    clock.now = 5.0

    first, second = breaker.acquire(), breaker.acquire()
    assert breaker.state == "half_open" and first and second and first.probe and second.probe
    assert breaker.acquire() is None  # both probe slots are out
    breaker.record(first, ok=True)
    assert breaker.state == "half_open"
    breaker.record(second, ok=True)

    assert breaker.state == "closed" and breaker.error_rate() == (0.0, 0)  # a fresh start


def test_a_failed_probe_opens_the_circuit_again_for_a_full_cool_down() -> None:
    clock = Clock()
    breaker = CircuitBreaker(CircuitConfig(failures=1, open_s=5), clock=clock)
    trip(breaker, "x")
    clock.now = 6.0
    probe = breaker.acquire()
    assert probe is not None

    breaker.record(probe, ok=False)

    assert breaker.state == "open" and breaker.retry_after == 5.0
    assert "half-open probe failed" in breaker.describe()


def test_a_released_probe_frees_its_slot_and_stale_tickets_move_nothing() -> None:
    clock = Clock()
    breaker = CircuitBreaker(CircuitConfig(failures=2, open_s=5), clock=clock)
    early = breaker.acquire()  # admitted while closed, finishes after the circuit opened
    trip(breaker, "xx")
    assert early is not None
    breaker.record(early, ok=True)
    assert breaker.state == "open"

    clock.now = 5.0
    probe = breaker.acquire()
    assert probe is not None and breaker.acquire() is None
    breaker.release(probe)  # cancelled: says nothing about the target
    assert breaker.state == "half_open" and breaker.acquire() is not None


# --- GuardedBackend -----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_guard_retries_retryable_failures_with_backoff_and_retry_after(stream: bool) -> None:
    inner = scripted(fail(UpstreamConnectError("refused")), fail(UpstreamRateLimited("slow", retry_after=0.7)), OK)
    attempts: list[tuple[str, str]] = []
    backend, sleeps = guarded(inner, retries=RetryConfig(max_attempts=3, base_delay_s=0.2), attempts=attempts)

    assert await collect(backend, stream) == "fine thanks"
    # First retry: 0.5 of min(2, 0.2); second: Retry-After 0.7 beats 0.5 of 0.4.
    assert sleeps.waited == [pytest.approx(0.1), 0.7]
    assert attempts == [("cloud", "upstream_connect_error"), ("cloud", "upstream_rate_limited"), ("cloud", "ok")]
    assert len(inner.requests) == 3


@pytest.mark.parametrize("error", [UpstreamBadRequest("no"), ContentFiltered("no"), UpstreamAuthError("key")])
async def test_guard_never_retries_a_refused_request(error: HybridRouterError) -> None:
    inner = scripted(fail(error), OK)
    backend, sleeps = guarded(inner)

    with pytest.raises(type(error)):
        await backend.complete(request())
    assert len(inner.requests) == 1 and sleeps.waited == []


async def test_guard_gives_up_when_attempts_run_out_and_raises_the_last_failure() -> None:
    inner = scripted(fail(BackendError("upstream returned 503")))
    backend, sleeps = guarded(inner, retries=RetryConfig(max_attempts=2))

    with pytest.raises(BackendError, match="503"):
        await backend.complete(request())
    assert len(inner.requests) == 2 and len(sleeps.waited) == 1


async def test_guard_does_not_wait_out_a_long_retry_after() -> None:
    inner = scripted(fail(UpstreamRateLimited("quota", retry_after=30)), OK)
    backend, sleeps = guarded(inner, retries=RetryConfig(max_delay_s=2))

    with pytest.raises(UpstreamRateLimited) as caught:
        await backend.complete(request())
    assert caught.value.retry_after == 30 and sleeps.waited == []


async def test_guard_stops_retrying_when_the_budget_is_spent() -> None:
    inner = scripted(fail(UpstreamConnectError("refused")))
    backend, _ = guarded(inner, retries=RetryConfig(max_attempts=3, budget_floor=1, budget_ratio=0.0))

    for _ in range(3):
        with pytest.raises(UpstreamConnectError):
            await backend.complete(request())

    assert len(inner.requests) == 3 + 1  # three requests, one retry between them


async def test_a_stream_is_not_retried_once_its_first_chunk_arrived() -> None:
    inner = scripted(ScriptedReply(text="one two three", fail_after=1, error=UpstreamTimeout("went quiet")), OK)
    attempts: list[tuple[str, str]] = []
    backend, _ = guarded(inner, attempts=attempts)

    received = []
    with pytest.raises(UpstreamTimeout):
        async for chunk in backend.stream(request(stream=True)):
            received.append(chunk)

    assert len(received) == 2 and len(inner.requests) == 1  # the role chunk and "one", then the failure
    assert attempts == [("cloud", "upstream_timeout")]


async def test_open_circuit_refuses_calls_and_makes_the_target_not_ready() -> None:
    clock = Clock()
    inner = scripted(fail(BackendError("upstream returned 500")))
    circuit = CircuitConfig(failures=2, open_s=12)
    backend, _ = guarded(inner, retries=RetryConfig(max_attempts=1), circuit=circuit, clock=clock)

    for _ in range(2):
        with pytest.raises(BackendError):
            await backend.complete(request())
    with pytest.raises(CircuitOpen) as caught:
        await backend.complete(request())

    assert len(inner.requests) == 2
    assert caught.value.retry_after == 12.0 and caught.value.status_code == 503
    state = backend.readiness()
    assert not state.ready
    assert state.reason == "circuit open: 2 consecutive failures, next probe in 12 s"
    assert state.detail["circuit"] == "open" and state.detail["error_rate"] == 1.0
    assert state.detail["next_probe_s"] == 12.0


async def test_after_the_cool_down_one_probe_closes_the_circuit() -> None:
    clock = Clock()
    inner = scripted(fail(BackendError("500")), fail(BackendError("500")), OK)
    backend, _ = guarded(
        inner, retries=RetryConfig(max_attempts=1), circuit=CircuitConfig(failures=2, open_s=5), clock=clock
    )
    for _ in range(2):
        with pytest.raises(BackendError):
            await backend.complete(request())

    clock.now = 5.0
    assert backend.readiness().ready  # half-open: the next call probes
    assert await collect(backend, stream=False) == "fine thanks"
    assert backend.circuit_state == "closed" and backend.readiness().detail["circuit"] == "closed"


async def test_retries_stop_when_the_circuit_opens_mid_request() -> None:
    inner = scripted(fail(UpstreamConnectError("refused")))
    backend, sleeps = guarded(inner, retries=RetryConfig(max_attempts=5), circuit=CircuitConfig(failures=2))

    with pytest.raises(UpstreamConnectError):  # the failure itself, not CircuitOpen
        await backend.complete(request())

    assert len(inner.requests) == 2 and len(sleeps.waited) == 1


@pytest.mark.parametrize("error", [UpstreamBadRequest("no"), ContentFiltered("no"), BackendBusy("full", retry_after=1)])
async def test_refused_requests_and_a_full_queue_do_not_count_against_the_circuit(error: HybridRouterError) -> None:
    inner = scripted(fail(error))
    backend, _ = guarded(inner, retries=RetryConfig(max_attempts=1), circuit=CircuitConfig(failures=1))

    for _ in range(3):
        with pytest.raises(type(error)):
            await backend.complete(request())

    assert backend.circuit_state == "closed"


async def test_a_cancelled_call_releases_its_probe_and_counts_as_cancelled() -> None:
    clock = Clock()
    slow = ScriptedReply(delay_s=10)
    inner = scripted(fail(BackendError("500")), slow)
    attempts: list[tuple[str, str]] = []
    backend, _ = guarded(
        inner,
        retries=RetryConfig(max_attempts=1),
        circuit=CircuitConfig(failures=1, open_s=1),
        clock=clock,
        attempts=attempts,
    )
    with pytest.raises(BackendError):
        await backend.complete(request())
    clock.now = 1.0

    task = asyncio.ensure_future(backend.complete(request()))
    await asyncio.sleep(0)
    assert not backend.readiness().ready  # the probe is out
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert backend.readiness().ready and attempts[-1] == ("cloud", "cancelled")


async def test_closing_a_stream_early_frees_the_inner_stream() -> None:
    inner = scripted(ScriptedReply(text="a b c d"))
    backend, _ = guarded(inner, circuit=CircuitConfig())

    chunks = backend.stream(request(stream=True))
    await anext(chunks)
    await chunks.aclose()

    assert inner.active_streams == 0 and backend.circuit_state == "closed"


def test_guard_passes_everything_else_through_and_keeps_other_readiness() -> None:
    inner = ScriptedBackend("edge", OK, ready=Readiness(ready=True, busy=True, reason="queue full"))
    backend, _ = guarded(inner, circuit=CircuitConfig())

    assert backend.name == "edge" and backend.model == inner.model and backend.capabilities is inner.capabilities
    state = backend.readiness()
    assert state.busy and state.reason == "queue full" and state.detail["circuit"] == "closed"


def test_guard_wraps_only_targets_that_ask_for_it() -> None:
    from router.config import FakeTargetConfig, OpenAITargetConfig

    edge = ScriptedBackend("edge")
    local = FakeTargetConfig(type="fake")
    cloud = OpenAITargetConfig(type="openai", base_url="http://127.0.0.1:9/v1", model="m")

    assert guard(edge, None) is edge and guard(edge, local) is edge
    wrapped = guard(edge, cloud)
    assert isinstance(wrapped, GuardedBackend) and wrapped.circuit is not None and wrapped.retry is not None
    assert wrapped.retry.config.max_attempts == 3
    no_circuit = guard(edge, cloud.model_copy(update={"circuit": None}))
    assert isinstance(no_circuit, GuardedBackend) and no_circuit.circuit is None
