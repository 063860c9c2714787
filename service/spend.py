"""Spend and traffic control: rate limits and budgets per client key and tenant, held in the state store.

The request path (``service/chat.py``) calls, in order:

1. :meth:`SpendControl.begin` before routing: the key's allowed targets;
2. :meth:`SpendControl.admit` once the router has chosen, in one atomic call
   to the store (:class:`router.state.Admissions`, both or neither): the rate
   limits (requests and prompt tokens per minute, key and tenant) and the
   budgets, where a request that may reach a priced target holds its most
   expensive possible cost, prompt tokens plus ``max_tokens`` (or the
   target's default) at the target's price, on every budget of its key and
   tenant. Over a rate limit, the tenant's ``on_rate_limited`` says:
   ``reject`` (429 with ``Retry-After``) or ``edge`` (routed again with only
   local targets allowed). Without room in a budget, ``on_budget_exhausted``
   says: ``reject`` (429 ``insufficient_quota`` naming the budget,
   ``Retry-After`` at its reset) or ``edge`` (routed again without the priced
   targets). A spilled request is neither counted nor held;
3. :meth:`SpendControl.settle` when the request ends, however it ends, in one
   more call: the real cost is charged and the hold dropped (nothing served
   costs 0, which releases it), the completion's tokens are counted and what
   is left of each budget is read for the gauge. It runs as a task of its
   own, so a client that disconnects (which cancels the request) cannot skip it.

Because a hold is an upper bound and reservation is atomic across processes,
concurrent requests at a budget's edge never overshoot it.

When the store is down, ``state.on_outage`` says what happens: ``edge``
serves on local targets only, uncounted (no request is lost, nothing is
spent), or ``reject`` answers 503. The outage is logged once, shown by
``hybrid_router_state_store_up`` and ends by itself at the next call that
works.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from router.chat import ChatRequest, Usage
from router.errors import BudgetExhausted, RateLimited, StateUnavailable
from router.router import ADMISSION, Decision, TargetProfile
from router.state import Admissions, BudgetExceeded, BudgetScope, RateDecision, RateScope, Reservation
from service.clients import Client
from service.metrics import GatewayMetrics
from service.settings import SpendSettings, StateSettings, TenantSettings

__all__ = ["Admission", "SpendControl", "StoreHealth", "cost_usd"]

log = logging.getLogger("hybrid_router.spend")


def cost_usd(usage: Usage, profile: TargetProfile) -> float:
    return usage.cost_usd(profile.price_input, profile.price_output)


@dataclass
class Admission:
    """What spend control decided for one request, carried to its settlement."""

    client: Client
    prompt_tokens: int
    rate_scopes: list[RateScope] = field(default_factory=list)
    # Set when a limit (or a store outage) sent the request to local targets only: why.
    edge_only: str | None = None
    hold: Reservation | None = None
    counted: bool = False
    settled: bool = False


class SpendControl:
    """Admission, holds and settlement for one config, over the gateway's ``admissions`` (shared by every config).

    ``local`` names the targets that cost nothing and that a limit may spill
    to; ``max_tokens`` gives a target's own default output budget where it has one.
    """

    def __init__(
        self,
        admissions: Admissions,
        *,
        tenants: Mapping[str, TenantSettings],
        state: StateSettings,
        spend: SpendSettings,
        profiles: Mapping[str, TargetProfile],
        local: frozenset[str],
        max_tokens: Mapping[str, int],
        metrics: GatewayMetrics,
        health: StoreHealth,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # The store's own, or leases over them (router/state/leases.py): the gateway's, shared by every config.
        self._admissions = admissions
        self._tenants = dict(tenants)
        self._state = state
        self._spend = spend
        self._profiles = dict(profiles)
        self._local = local
        self._max_tokens = dict(max_tokens)
        self._metrics = metrics
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._reference = _reference_target(profiles, spend.saved_against)
        self._outage = health

    # -- admission, before routing ---------------------------------------------------------------

    def tenant(self, client: Client) -> TenantSettings:
        return self._tenants.get(client.tenant) or _NO_LIMITS

    def begin(self, client: Client, request: ChatRequest) -> Admission:
        """Before routing: rule out the targets the client's key may not use (in ``request.memo``)."""
        admission = Admission(client, 0)
        rule_out: dict[str, str] = {}
        if client.allowed_targets is not None:
            reason = "this client key may not use it"
            rule_out.update({name: reason for name in self._profiles if name not in client.allowed_targets})
        if not client.verified:
            # The key could not be checked (the store is down): nothing it does can be charged, so nothing paid.
            admission.edge_only = self._on_outage("the client key could not be checked")
            rule_out.update(self._priced(admission.edge_only))
        if rule_out:
            request.memo[ADMISSION] = {**request.memo.get(ADMISSION, {}), **rule_out}
        return admission

    async def admit(
        self,
        admission: Admission,
        request: ChatRequest,
        decision: Decision,
        redecide: Callable[[Mapping[str, str]], Decision],
    ) -> Decision:
        """Once routed: count the rate limits, then hold the most the request may cost on its budgets.

        Returns the decision to serve: ``decision``, or one made again without
        the priced targets when a limit says ``edge``. Raises 429 (a limit that
        says ``reject``, or ``edge`` with no local target able to serve) or 503
        (the store is down and ``state.on_outage`` is ``reject``).
        """
        if admission.edge_only is not None:
            return decision
        admission.prompt_tokens = decision.features.prompt_tokens if decision.features else 0
        admission.rate_scopes = self._rate_scopes(admission.client)
        scopes = self._budget_scopes(admission.client)
        estimate = self._estimate(request, decision, admission.prompt_tokens)
        if not admission.rate_scopes and not (scopes and estimate > 0):
            return decision
        try:
            # The rate count and the hold in one call: one round trip to the store, both or neither.
            admitted = await self._admissions.admit(
                admission.rate_scopes,
                scopes if estimate > 0 else [],
                tokens=admission.prompt_tokens,
                amount_usd=estimate,
                request_id=uuid.uuid4().hex,
                ttl_s=self._state.hold_ttl_s,
            )
        except StateUnavailable as exc:
            self._outage.down(exc)
            admission.rate_scopes = []
            why = self._on_outage("the state store is unavailable")
            # A store outage spills by state.on_outage (just checked), not by a tenant's rule.
            return self._spill(admission, (why, StateUnavailable(why, retry_after=5.0)), None, redecide)
        self._outage.up()
        if admitted.ok:
            admission.counted = bool(admission.rate_scopes)
            if isinstance(admitted.hold, Reservation):
                admission.hold = admitted.hold
            return decision
        admission.rate_scopes = []
        if not admitted.rate.allowed:
            return self._spill(admission, self._rate_refusal(admission, admitted.rate), "on_rate_limited", redecide)
        held = admitted.hold
        assert isinstance(held, BudgetExceeded)
        self._metrics.budget_exhausted.labels(admission.client.tenant, held.scope.window).inc()
        what = (
            f"{_describe(held.scope.subject)}'s {'daily' if held.scope.window == 'day' else 'monthly'} budget of "
            f"{_usd(held.scope.limit_usd)} has {_usd(held.remaining_usd)} left"
        )
        resets = datetime.fromtimestamp(held.resets_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        error = BudgetExhausted(
            f"Budget exceeded: {what}, and this request may cost up to {_usd(estimate)} "
            f"(prompt tokens plus max_tokens at {decision.target}'s prices). It resets at {resets}.",
            retry_after=max(1.0, held.resets_at - self._clock()),
        )
        return self._spill(admission, (f"{what}; this request may cost {_usd(estimate)}", error),
                           "on_budget_exhausted", redecide)  # fmt: skip

    def _spill(
        self,
        admission: Admission,
        refusal: tuple[str, RateLimited | StateUnavailable],
        action: str | None,
        redecide: Callable[[Mapping[str, str]], Decision],
    ) -> Decision:
        """Serve on local targets only when the tenant's action (or the outage rule) says ``edge``, else raise."""
        why, error = refusal
        if action is not None and getattr(self.tenant(admission.client), action) != "edge":
            raise error
        again = redecide(self._priced(why))
        if again.error is not None:
            # No local target can take it: the limit's own answer is the useful one.
            raise error
        admission.edge_only = why
        return again

    def _priced(self, why: str) -> dict[str, str]:
        return {name: why for name in self._profiles if name not in self._local}

    def _rate_refusal(self, admission: Admission, decision: RateDecision) -> tuple[str, RateLimited]:
        """Why the rate limit refused the request, and the 429 to answer with."""
        scope = decision.scope
        assert scope is not None
        limit = scope.requests_per_minute if decision.kind == "requests" else scope.tokens_per_minute
        what = f"{_describe(scope.subject)}'s limit of {limit} {decision.kind} per minute"
        self._metrics.rate_limited.labels(admission.client.tenant, decision.kind or "requests").inc()
        if decision.retry_after_s is None:
            message = f"Rate limit: this request's {admission.prompt_tokens} prompt tokens alone exceed {what}."
            return f"over {what}", RateLimited(message)
        retry = max(1.0, decision.retry_after_s)
        return f"over {what}", RateLimited(f"Rate limit reached: {what}. Retry after {retry:.0f} s.", retry_after=retry)

    def _on_outage(self, why: str) -> str:
        """``why`` when requests go on, on local targets only; raises 503 when ``state.on_outage`` is ``reject``."""
        if self._state.on_outage == "reject":
            raise StateUnavailable(f"Spend and rate limits cannot be checked: {why}. Try again shortly.",
                                   retry_after=5.0)  # fmt: skip
        return why

    def _estimate(self, request: ChatRequest, decision: Decision, prompt_tokens: int) -> float:
        """The most the request may cost: the priciest target it may reach, full prompt and full output."""
        reachable = [decision.target] if decision.target else []
        if decision.cascade is not None and not decision.cascade.blocked:
            reachable.append(decision.cascade.then)
        reachable += [step.target for step in decision.fallback]
        asked = request.max_completion_tokens or request.max_tokens
        most = 0.0
        for name in reachable:
            profile = self._profiles.get(name)
            if profile is None or name in self._local:
                continue
            output = asked or self._max_tokens.get(name) or self._spend.default_max_tokens
            most = max(most, cost_usd(Usage(prompt_tokens, output), profile))
        return most

    # -- settlement ------------------------------------------------------------------------------

    def settle(self, admission: Admission, charges: Mapping[str, Usage]) -> None:
        """Charge what the request cost (``charges``: usage per target it used) in a task of its own."""
        if admission.settled:
            return
        admission.settled = True
        tenant = admission.client.tenant
        cost = sum(cost_usd(usage, self._profiles[name]) for name, usage in charges.items() if name in self._profiles)
        saved = self._saved(charges)
        if saved > 0:
            self._metrics.cost_saved.labels(tenant).inc(saved)
        completion = sum(usage.completion_tokens for usage in charges.values())
        work = admission.hold is not None or (admission.counted and completion > 0)
        if not work:
            return
        task = asyncio.get_running_loop().create_task(self._settle(admission, cost, completion))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, admission: Admission, cost: float, completion: int) -> None:
        counted = admission.counted and completion > 0
        budgets = self._budget_scopes(admission.client) if admission.hold is not None else []
        try:
            # A hold settled at 0 is released: nothing was served, or nothing priced.
            left = await self._admissions.complete(
                admission.hold,
                cost,
                admission.rate_scopes if counted else [],
                tokens=completion if counted else 0,
                budgets=budgets,
            )
        except StateUnavailable as exc:
            # The hold frees itself after state.hold_ttl_s; what it should have charged is lost, and said so.
            self._outage.down(exc)
            log.warning("could not settle a request's spend (%.6f USD): %s", cost, exc)
        except Exception:  # a settlement must never take the gateway down with it
            log.exception("settling a request's spend failed")
        else:
            self._outage.up()
            for scope, usage in zip(budgets, left, strict=False):  # a leased request may not know them yet
                self._metrics.budget_remaining.labels(scope.subject, scope.window).set(usage.remaining_usd)

    @property
    def pending(self) -> int:
        """Settlements still running."""
        return len(self._tasks)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Let settlements in flight finish (shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)

    def _saved(self, charges: Mapping[str, Usage]) -> float:
        """Edge tokens valued at the reference cloud target's prices: what all-cloud would have cost."""
        if self._reference is None:
            return 0.0
        reference = self._profiles[self._reference]
        return sum(cost_usd(usage, reference) for name, usage in charges.items() if name in self._local)

    # -- scopes ----------------------------------------------------------------------------------

    def _rate_scopes(self, client: Client) -> list[RateScope]:
        scopes = []
        key = client.limits
        if client.key_hash is not None and (key.requests_per_minute or key.tokens_per_minute):
            scopes.append(RateScope(_key_subject(client.key_hash), key.requests_per_minute, key.tokens_per_minute))
        tenant = self.tenant(client).limits
        if tenant.requests_per_minute or tenant.tokens_per_minute:
            scopes.append(RateScope(f"tenant:{client.tenant}", tenant.requests_per_minute, tenant.tokens_per_minute))
        return scopes

    def _budget_scopes(self, client: Client) -> list[BudgetScope]:
        scopes = []
        if client.key_hash is not None:
            subject = _key_subject(client.key_hash)
            scopes += _budgets(subject, client.limits.usd_per_day, client.limits.usd_per_month)
        tenant = self.tenant(client).limits
        scopes += _budgets(f"tenant:{client.tenant}", tenant.usd_per_day, tenant.usd_per_month)
        return scopes


_NO_LIMITS = TenantSettings()


def _budgets(subject: str, day: float | None, month: float | None) -> list[BudgetScope]:
    out = []
    if day is not None:
        out.append(BudgetScope(subject, "day", day))
    if month is not None:
        out.append(BudgetScope(subject, "month", month))
    return out


def _usd(amount: float) -> str:
    """Dollars as a person reads them: cents for whole dollars, more digits for the small sums of one request.

    >>> _usd(12.5), _usd(0.005), _usd(0.0000123)
    ('$12.50', '$0.0050', '$0.000012')
    """
    if amount >= 1:
        return f"${amount:,.2f}"
    if amount >= 0.001 or amount == 0:
        return f"${amount:.4f}"
    return f"${amount:.6f}"


def _key_subject(key_hash: str) -> str:
    # 64 bits of the hash name the key in the store and in messages: enough to tell keys apart, not to find one.
    return "key:" + key_hash.removeprefix("sha256:")[:16]


def _describe(subject: str) -> str:
    kind, _, name = subject.partition(":")
    return f"tenant '{name}'" if kind == "tenant" else f"key {name[:8]}…"


def _reference_target(profiles: Mapping[str, TargetProfile], chosen: str | None) -> str | None:
    if chosen is not None:
        return chosen
    priced = [(p.price_input + p.price_output, name) for name, p in profiles.items() if p.price_output > 0]
    return max(priced)[1] if priced else None


class StoreHealth:
    """Logs a store outage once, and its end once; keeps ``hybrid_router_state_store_up`` true to both.

    One per gateway (the store is), shared by every config's :class:`SpendControl`.
    """

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._down_since: float | None = None

    def down(self, exc: Exception) -> None:
        self._metrics.state_store_errors.inc()
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._metrics.state_store_up.set(0)
            log.error("state store unavailable: %s", exc)

    def up(self) -> None:
        if self._down_since is not None:
            log.warning("state store back after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None
            self._metrics.state_store_up.set(1)
