"""Prometheus metrics, all prefixed ``hybrid_router_``.

Every metric lives in the registry passed in, so each app (and each test)
gets its own. Backend gauges (queue depth, active generations) are read at
scrape time by :class:`BackendStatsCollector` from each backend's
``stats()``, so backends never import prometheus-client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router.backends.base import Backend
from router.backends.cascade import CascadeOutcome
from router.backends.versions import VersionedBackend
from router.chat import Usage
from router.resilience import STATE_VALUES, GuardedBackend

__all__ = ["BackendStatsCollector", "DistillHealthCollector", "GatewayMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
_RATE_BUCKETS = (1, 5, 10, 20, 40, 60, 80, 100, 150, 200, 300, 500)


class GatewayMetrics:
    """The gateway's own metrics.

    >>> m = GatewayMetrics(CollectorRegistry())
    >>> m.record_usage("edge", Usage(10, 5), price_input=0.0, price_output=0.0)
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        p = "hybrid_router_"
        self.requests = Counter(
            p + "requests", "Chat requests by target, decision reason source, HTTP status and tenant.",
            ["target", "decided_by", "status", "tenant"], registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            p + "request_duration_seconds", "End-to-end chat request latency by target.",
            ["target", "stream"], buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.ttft = Histogram(
            p + "time_to_first_token_seconds", "Time from request to first streamed token, by target.",
            ["target"], buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.decode_rate = Histogram(
            p + "decode_tokens_per_second", "Generated tokens per second after the first token, by target.",
            ["target"], buckets=_RATE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.decision = Histogram(
            p + "routing_decision_seconds", "Time to classify a request and run the policies.",
            buckets=_DECISION_BUCKETS, registry=registry,
        )  # fmt: skip
        self.tokens = Counter(
            p + "tokens", "Tokens by target, direction (in = prompt, out = completion) and tenant.",
            ["target", "direction", "tenant"], registry=registry,
        )  # fmt: skip
        self.cost = Counter(
            p + "cost_usd", "Estimated spend in USD by target and tenant, from the configured price table.",
            ["target", "tenant"], registry=registry,
        )  # fmt: skip
        self.cost_saved = Counter(
            p + "cost_saved_usd", "What the edge's answers would have cost on the cloud (spend.saved_against's "
            "prices), by tenant.", ["tenant"], registry=registry,
        )  # fmt: skip
        self.budget_remaining = Gauge(
            p + "budget_remaining_usd", "USD left in a budget's current window (after settled spend and holds), "
            "as of its last settlement.", ["subject", "window"], registry=registry,
        )  # fmt: skip
        self.budget_exhausted = Counter(
            p + "budget_exhausted", "Requests that found a budget without room, by tenant and window.",
            ["tenant", "window"], registry=registry,
        )  # fmt: skip
        self.rate_limited = Counter(
            p + "rate_limited", "Requests over a rate limit, by tenant and kind (requests or tokens).",
            ["tenant", "kind"], registry=registry,
        )  # fmt: skip
        self.state_store_up = Gauge(
            p + "state_store_up", "0 while the state store (budgets, rate windows, keys) cannot be reached.",
            registry=registry,
        )  # fmt: skip
        self.state_store_up.set(1)
        self.state_store_errors = Counter(p + "state_store_errors", "State store calls that failed.", registry=registry)
        self.upstream_errors = Counter(
            p + "upstream_errors", "Failed target calls by target and error kind.",
            ["target", "kind"], registry=registry,
        )  # fmt: skip
        self.in_flight = Gauge(p + "in_flight_requests", "Chat requests being served now.", registry=registry)
        self.upstream_attempts = Counter(
            p + "upstream_attempts", "Calls to targets (retries included) by outcome: ok, an error code, cancelled.",
            ["target", "outcome"], registry=registry,
        )  # fmt: skip
        self.fallbacks = Counter(
            p + "fallbacks", "Requests answered (or last tried) by a fallback target, by the first target's error.",
            ["from", "to", "reason"], registry=registry,
        )  # fmt: skip
        self.cascade_escalations = Counter(
            p + "cascade_escalations", "Cascaded answers escalated because the first target was unsure.",
            ["from", "to"], registry=registry,
        )  # fmt: skip
        self.cascade_kept = Counter(
            p + "cascade_kept", "Cascaded answers kept: confident, or escalation not allowed.",
            ["target"], registry=registry,
        )  # fmt: skip
        self.cascade_wasted = Histogram(
            p + "cascade_escalated_edge_seconds", "Seconds the first target spent on answers then escalated.",
            ["target"], buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        # hybrid_router_config_info{version="..."} 1: the config serving now (README, "Hot reload").
        self.config = Info(p + "config", "The live config's version.", registry=registry)
        self.config_reloads = Counter(
            p + "config_reloads", "Config reloads by result: ok, or rejected (the previous config stays).",
            ["result"], registry=registry,
        )  # fmt: skip
        self.config_reload_ok = Gauge(
            p + "config_last_reload_successful", "0 when the last reload was rejected, else 1.", registry=registry
        )
        for result in ("ok", "rejected"):
            self.config_reloads.labels(result)
        self.config_reload_ok.set(1)
        # Outcomes of distill.capture (service/capture.py: stored, duplicate, full, sampled_out, ...).
        self.distill_capture = Counter(
            p + "distill_capture", "Cloud answers considered for the distillation dataset, by outcome.",
            ["outcome"], registry=registry,
        )  # fmt: skip

        # The distilled policy's shadow checks: the student's kept answers asked again of the cloud.
        self.distill_shadow = Counter(
            p + "distill_shadow", "Shadow checks of distilled answers against the cloud, by outcome.",
            ["route", "outcome"], registry=registry,
        )  # fmt: skip

        self.distill_cycles = Counter(
            p + "distill_cycles", "distill.auto cycles by outcome: promoted, kept (judged not better), failed.",
            ["outcome"], registry=registry,
        )  # fmt: skip

    def record_cycle(self, outcome: str) -> None:
        self.distill_cycles.labels(outcome).inc()

    def record_reload(self, version: str, *, ok: bool) -> None:
        self.config_reloads.labels("ok" if ok else "rejected").inc()
        self.config_reload_ok.set(1 if ok else 0)
        self.config.info({"version": version})

    def record_capture(self, outcome: str) -> None:
        """One cloud answer considered for capture and what became of it (a ``Capturer`` observer)."""
        self.distill_capture.labels(outcome).inc()

    def record_attempt(self, target: str, outcome: str) -> None:
        """One upstream call and how it ended (a :class:`~router.resilience.GuardedBackend` observer)."""
        self.upstream_attempts.labels(target, outcome).inc()

    def record_usage(
        self, target: str, usage: Usage, *, price_input: float, price_output: float, tenant: str = "default"
    ) -> None:
        self.tokens.labels(target, "in", tenant).inc(usage.prompt_tokens)
        self.tokens.labels(target, "out", tenant).inc(usage.completion_tokens)
        cost = usage.cost_usd(price_input, price_output)
        if cost:
            self.cost.labels(target, tenant).inc(cost)

    def record_cascade(
        self, outcome: CascadeOutcome, *, price_input: float, price_output: float, tenant: str = "default"
    ) -> None:
        """Count what a cascade did; an escalation's seconds and tokens on the first target are waste."""
        if not outcome.escalated:
            self.cascade_kept.labels(outcome.first).inc()
            return
        self.cascade_escalations.labels(outcome.first, outcome.then).inc()
        self.cascade_wasted.labels(outcome.first).observe(outcome.first_seconds)
        self.record_usage(outcome.first, outcome.first_usage, price_input=price_input, price_output=price_output,
                          tenant=tenant)  # fmt: skip


class BackendStatsCollector(Collector):
    """Exposes each backend's ``stats()`` and readiness as gauges at scrape time.

    ``backends`` is asked at each scrape, so that after a reload the live targets are shown.
    """

    def __init__(self, backends: Callable[[], Mapping[str, Backend]]) -> None:
        self._backends = backends

    def collect(self) -> Iterable[Metric]:
        ready = GaugeMetricFamily(
            "hybrid_router_target_ready", "1 when the target can take requests.", labels=["target"]
        )
        circuit = GaugeMetricFamily(
            "hybrid_router_circuit_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", labels=["target"]
        )
        # Read at scrape time, so a swapped-out version's label set is gone with it.
        version = GaugeMetricFamily(
            "hybrid_router_edge_model_info", "The model version a target serves now (base, v3, ...): 1.",
            labels=["target", "version"],
        )  # fmt: skip
        swaps = CounterMetricFamily(
            "hybrid_router_edge_model_swaps", "Live model swaps by outcome; failed: the previous version kept serving.",
            labels=["target", "outcome"],
        )  # fmt: skip
        stats: dict[str, GaugeMetricFamily] = {}
        for name, backend in self._backends().items():
            ready.add_metric([name], 1.0 if backend.readiness().can_serve else 0.0)
            if isinstance(backend, GuardedBackend) and backend.circuit is not None:
                circuit.add_metric([name], float(STATE_VALUES[backend.circuit.state]))
            if isinstance(backend, VersionedBackend) and (serving := backend.model_version()) is not None:
                version.add_metric([name, serving.version], 1.0)
                for outcome, count in backend.swap_counts().items():
                    swaps.add_metric([name, outcome], float(count))
            for key, value in backend.stats().items():
                family = stats.get(key)
                if family is None:
                    family = stats[key] = GaugeMetricFamily(
                        f"hybrid_router_backend_{key}", f"Backend gauge '{key}', per target.", labels=["target"]
                    )
                family.add_metric([name], float(value))
        yield ready
        yield circuit
        yield version
        yield swaps
        yield from stats.values()


class DistillHealthCollector(Collector):
    """The ``distilled`` policy's live agreement with the cloud, per route and student version, at scrape time."""

    def __init__(self, policies: Callable[[], Iterable[object]]) -> None:
        self._policies = policies

    def collect(self) -> Iterable[Metric]:
        agreement = GaugeMetricFamily(
            "hybrid_router_distill_agreement",
            "Share of shadow-checked student answers the cloud agreed with, over the policy's window.",
            labels=["route", "version"],
        )
        samples = GaugeMetricFamily(
            "hybrid_router_distill_agreement_samples", "Shadow checks in the agreement window.",
            labels=["route", "version"],
        )  # fmt: skip
        drifted = GaugeMetricFamily(
            "hybrid_router_distill_drifted", "1 when the route went back to the cloud on drift.",
            labels=["route", "version"],
        )  # fmt: skip
        for policy in self._policies():
            health = getattr(policy, "health", None)
            if not callable(health):
                continue
            for (route, version), state in health().items():
                if state["agreement"] is not None:
                    agreement.add_metric([route, version], float(state["agreement"]))
                samples.add_metric([route, version], float(state["samples"]))
                drifted.add_metric([route, version], 1.0 if state["drifted"] else 0.0)
        yield agreement
        yield samples
        yield drifted
