"""The gateway's collaborators, built from settings and wired together, and swapped on reload.

Building a :class:`Gateway` validates everything (targets, policy options,
policy names) without loading a model or opening a socket; :meth:`Gateway.start`
does the heavy part. The app factory builds one per app and starts it in
the lifespan.

Two lifetimes. The metrics and the pools of backends and classifiers live as
long as the gateway. What one config builds is a :class:`Runtime`: its
settings, its router (policies, classifier, backends) and its client keys.
:meth:`Gateway.reload` builds the next runtime beside the live one, reusing
every backend whose target config did not change and the classifier when its
plan did not change, starts only what is new, then swaps one reference. A
request holds the runtime it started on until it ends; what only the old
runtime used is closed once its last request has finished.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from router.backends.base import Backend
from router.backends.registry import create_backend
from router.backends.versions import VersionedBackend
from router.chat import ChatRequest
from router.classify.build import KNOWN_NEEDS, ClassifierPlan, ConfiguredClassifier, plan_classifier
from router.config import OnnxTargetConfig
from router.errors import ConfigError, HybridRouterError
from router.policies.base import TargetCatalog
from router.policies.registry import build_policies, policy_requirements
from router.policies.sticky import StickyPolicy
from router.resilience.guarded import guard
from router.router import Router, TargetProfile, describe_targets
from router.state import Admissions, StateStore, open_store
from router.state.leases import LeasedAdmissions
from router.tokens import EstimateCounter, TokenCounter
from service.auth import KeyChecker, config_records, startup_problems
from service.capture import CapturePool, Capturer, LazyDetector
from service.clients import ClientDirectory
from service.distill_auto import AutoDistiller
from service.metrics import BackendStatsCollector, DistillHealthCollector, GatewayMetrics
from service.settings import ConfigSource, Settings, StateSettings, keep_restart_only
from service.spend import SpendControl, StoreHealth

__all__ = ["Gateway", "LocalModelCounter", "ReloadResult", "Runtime"]

log = logging.getLogger("hybrid_router.gateway")

# Target fields only the router reads (its profile): a change to them must not reload a model.
_PROFILE_FIELDS = frozenset({"aliases", "price_per_mtok", "quality", "latency_ms", "fallback"})
# Requests end within limits.request_timeout_s; past it plus this, the old config's targets close anyway.
_DRAIN_GRACE_S = 5.0

Key = tuple[str, str]
T = TypeVar("T")


def _idle() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass(eq=False)
class Runtime:
    """What one config builds: settings, router (policies, classifier, backends) and client keys.

    A request holds the live one from start to end (:meth:`Gateway.hold`, then
    :meth:`release`) and reads nothing else, so a reload never hands it half of
    each config, and the targets it uses stay open until it is done. It also
    carries the gateway's metrics, which outlive every config.
    """

    settings: Settings
    router: Router
    classifier: ConfiguredClassifier
    auth: KeyChecker
    metrics: GatewayMetrics
    backend_keys: Mapping[str, Key]
    # Who is calling (config keys, then the state store's), and their limits, holds and settlements.
    clients: ClientDirectory
    spend: SpendControl
    users: int = 0
    idle: asyncio.Event = field(default_factory=_idle)
    # distill.capture for this config; None while it is off (the default).
    capturer: Capturer | None = None

    @property
    def backends(self) -> Mapping[str, Backend]:
        return self.router.backends

    @property
    def config_version(self) -> str:
        return self.router.config_version

    def release(self) -> None:
        """One request fewer on this config."""
        self.users -= 1
        if self.users == 0:
            self.idle.set()


@dataclass(frozen=True)
class ReloadResult:
    """What a reload did. Not ``ok``: rejected for ``error``, and the previous config still serves."""

    ok: bool
    version: str
    error: str | None = None
    changed: bool = True
    started: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    restart_only: tuple[str, ...] = ()
    classifier_loaded: bool = False


class Gateway:
    """Builds and owns the targets, classifier, router, metrics and key checker; :meth:`reload` swaps them.

    ``backends`` replaces the configured targets (tests, demos); on reload each
    one is kept while its target's config is unchanged, and a changed target is
    built from config. ``source`` is where :meth:`reload` re-reads the settings.

    >>> gateway = Gateway.from_settings(Settings(targets={"edge": {"type": "fake"}}))
    >>> gateway.router.config_version == gateway.settings.config_version
    True
    """

    def __init__(
        self,
        settings: Settings,
        *,
        backends: Mapping[str, Backend] | None = None,
        registry: CollectorRegistry | None = None,
        backend_options: Mapping[str, Mapping[str, Any]] | None = None,
        environ: Mapping[str, str] | None = None,
        source: ConfigSource | None = None,
    ) -> None:
        self.source = source
        # The hash of the config file as last read, so that the watcher reloads each new content once.
        self.loaded_fingerprint: str | None = None
        self._environ = environ
        self._backend_options = backend_options or {}
        self._backends: _Shared[Backend] = _Shared()
        self._classifiers: _Shared[ConfiguredClassifier] = _Shared()
        # Dataset stores and the capture writer thread outlive configs, like the metrics.
        self._capture = CapturePool()
        # distill.auto: read at start-up (a reload does not start or stop it).
        self._auto: AutoDistiller | None = None
        self._lock = asyncio.Lock()
        self._draining: set[asyncio.Task[None]] = set()
        registry = registry if registry is not None else CollectorRegistry()
        self.metrics = GatewayMetrics(registry)
        # Budgets, rate windows and run-time keys: opened once (state.url needs a restart), no I/O yet.
        self.store: StateStore = open_store(settings.state.url)
        self.admissions = _admissions(self.store, settings.state)
        self.store_health = StoreHealth(self.metrics)
        if backends is None:
            backends = {name: self._create_backend(name, cfg) for name, cfg in settings.targets.items()}
        else:
            # Injected targets get the retries and circuit their config (if any) asks for, as built ones do.
            backends = {name: self._guard(backend, settings.targets.get(name)) for name, backend in backends.items()}
        keys = {name: _backend_key(name, settings.targets.get(name)) for name in backends}
        self._counter = LocalModelCounter(backends)
        self._runtime = self._assemble(settings, backends, keys)
        self._hold_parts(self._runtime)
        registry.register(BackendStatsCollector(lambda: self.backends))
        registry.register(DistillHealthCollector(lambda: self.router.policies))
        self.metrics.config.info({"version": settings.config_version})

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> Gateway:
        """Build without I/O: ``Gateway(settings, **options)``."""
        return cls(settings, **options)

    # The live config. Code that awaits between two reads holds one runtime instead (see hold()).

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    @property
    def settings(self) -> Settings:
        return self._runtime.settings

    @property
    def router(self) -> Router:
        return self._runtime.router

    @property
    def auth(self) -> KeyChecker:
        return self._runtime.auth

    @property
    def backends(self) -> Mapping[str, Backend]:
        return self._runtime.backends

    def hold(self) -> Runtime:
        """The live runtime, for one request: its targets stay open until :meth:`Runtime.release`."""
        runtime = self._runtime
        runtime.users += 1
        runtime.idle.clear()
        return runtime

    async def start(self) -> None:
        async with self._lock:
            if self.source is not None and self.source.watched:
                self.loaded_fingerprint = await asyncio.to_thread(self.source.fingerprint)
            runtime = self._runtime
            await asyncio.gather(*(backend.start() for backend in runtime.backends.values()))
            await asyncio.to_thread(runtime.classifier.start)
            await runtime.clients.refresh()
            self._auto = _auto_distiller(runtime, self.metrics)
            if self._auto is not None:
                self._auto.start()
        for name, backend in runtime.backends.items():
            state = backend.readiness()
            log.info("target %s: %s", name, state.reason, extra={"target": name, "ready": state.ready})

    async def aclose(self) -> None:
        if self._auto is not None:
            await self._auto.aclose()
        # Shadow checks in flight (the distilled policy) get a moment to finish before the targets close.
        await self.router.drain_shadows()
        for task in self._draining:
            task.cancel()
        await asyncio.gather(*self._draining, return_exceptions=True)
        # Settlements in flight charge what their requests cost before the store closes.
        await self._runtime.spend.drain()
        if isinstance(self.admissions, LeasedAdmissions):
            await self.admissions.close()
        await self.store.close()
        await asyncio.to_thread(self._capture.close)
        for _, classifier in self._classifiers.drain():
            classifier.close()
        await _close_backends((name, backend) for (name, _), backend in self._backends.drain())

    async def reload(self, settings: Settings | None = None, *, trigger: str = "call") -> ReloadResult:
        """Validate a new config and swap it in whole; or keep the live one, log why and count it.

        ``settings`` defaults to :attr:`source` read again (env overrides
        included). Never raises for a bad config: the result says what happened.
        """
        async with self._lock:
            running = self._runtime
            try:
                loaded = settings if settings is not None else await self._load()
                result = await self._swap(running, loaded)
            except Exception as exc:
                message = exc.message if isinstance(exc, HybridRouterError) else f"{type(exc).__name__}: {exc}"
                log.error(
                    "config reload (%s) rejected; still serving %s: %s",
                    trigger, running.config_version, message,
                    # A bad config is the operator's to fix from the message; anything else is ours.
                    exc_info=None if isinstance(exc, ConfigError) else exc,
                    extra={"config_version": running.config_version, "trigger": trigger},
                )  # fmt: skip
                self.metrics.record_reload(running.config_version, ok=False)
                return ReloadResult(False, running.config_version, error=message, changed=False)
        self.metrics.record_reload(result.version, ok=True)
        _log_applied(running, result, trigger)
        # A distilled edge model re-reads its registry now, not at its next poll (router/backends/edge.py).
        await _refresh_models(self.backends)
        return result

    async def _load(self) -> Settings:
        source = self.source
        if source is None:
            raise ConfigError("this gateway was built from settings, not from a config file: nothing to re-read")
        self.loaded_fingerprint = await asyncio.to_thread(source.fingerprint)
        return await asyncio.to_thread(source.load)

    async def _swap(self, running: Runtime, loaded: Settings) -> ReloadResult:
        settings, restart_only = keep_restart_only(running.settings, loaded)
        if _same(settings, running.settings):
            kept = tuple(running.backends)
            return ReloadResult(
                True, running.config_version, changed=False, kept=kept, restart_only=tuple(restart_only)
            )
        runtime, fresh = await self._prepare(running, settings)
        self._hold_parts(runtime)
        self._counter.bind(runtime.backends)
        self._runtime = runtime  # the swap: every request from here on holds the new runtime
        self._retire(running)
        return ReloadResult(
            True,
            runtime.config_version,
            started=tuple(fresh),
            kept=tuple(name for name in runtime.backends if name not in fresh),
            restart_only=tuple(restart_only),
            classifier_loaded=runtime.classifier is not running.classifier,
        )

    async def _prepare(self, running: Runtime, settings: Settings) -> tuple[Runtime, dict[str, Backend]]:
        """The next runtime, checked and started, and the backends made for it; on failure none is left open."""
        keys = {name: _backend_key(name, cfg) for name, cfg in settings.targets.items()}
        fresh: dict[str, Backend] = {}
        runtime: Runtime | None = None
        try:
            for name, cfg in settings.targets.items():
                if self._backends.get(keys[name]) is None:
                    fresh[name] = self._create_backend(name, cfg)
            backends = {name: fresh[name] if name in fresh else self._backends.need(key) for name, key in keys.items()}
            runtime = self._assemble(settings, backends, keys)
            # Keys in the state store count as keys (as the running config last saw them).
            problems = startup_problems(settings.server, settings.auth, runtime.auth,
                                        stored_keys=running.clients.enabled)  # fmt: skip
            if problems:
                raise ConfigError(" ".join(problems))
            _keep_sessions(running, runtime)
            await _start_backends(fresh)
            if self._classifiers.get(_plan_key(runtime.classifier.plan)) is None:
                await asyncio.to_thread(runtime.classifier.start)
            return runtime, fresh
        except BaseException:
            if runtime is not None and self._classifiers.get(_plan_key(runtime.classifier.plan)) is None:
                runtime.classifier.close()
            await _close_backends(fresh.items())
            raise

    def _create_backend(self, name: str, cfg: Any) -> Backend:
        return self._guard(create_backend(name, cfg, **self._backend_options.get(name, {})), cfg)

    def _guard(self, backend: Backend, cfg: Any) -> Backend:
        # Built once per target and pooled like it, so the circuit and retry budget outlive requests and reloads.
        return guard(backend, cfg, on_attempt=self.metrics.record_attempt)

    def _assemble(self, settings: Settings, backends: Mapping[str, Backend], keys: Mapping[str, Key]) -> Runtime:
        """The runtime for ``settings`` over ``backends``; no I/O. A classifier with the same plan is reused."""
        profiles = {
            name: TargetProfile(
                price_input=cfg.price_per_mtok.input,
                price_output=cfg.price_per_mtok.output,
                quality=cfg.quality,
                latency_ms=cfg.latency_ms,
                aliases=tuple(cfg.aliases),
                fallback=tuple(cfg.fallback),
            )
            for name, cfg in settings.targets.items()
            if name in backends
        }
        routes = tuple(route.name for route in settings.classifier.routes)
        catalog = TargetCatalog(describe_targets(backends, profiles), routes)
        policies = build_policies(settings.policies, catalog, known_needs=KNOWN_NEEDS)
        plan = plan_classifier(settings.classifier, policy_requirements(policies))
        classifier = self._classifiers.get(_plan_key(plan))
        if classifier is None:
            classifier = ConfiguredClassifier(plan, token_counter=self._counter)
        if not settings.state.url.startswith("memory://"):
            # Sticky conversations live in the shared store too, so every worker and replica keeps them.
            for policy in policies:
                if isinstance(policy, StickyPolicy):
                    policy.share(self.store.kv)
        router = Router(
            backends=backends,
            policies=policies,
            profiles=profiles,
            classifier=classifier,
            config_version=settings.config_version,
        )
        records = config_records(settings.auth, os.environ if self._environ is None else self._environ)
        auth = KeyChecker(record.key_hash for record in records)
        clients = ClientDirectory(records, self.store.keys, cache_s=settings.state.key_cache_s)
        spend = SpendControl(
            self.admissions, tenants=settings.tenants, state=settings.state, spend=settings.spend, profiles=profiles,
            local=frozenset(name for name, backend in backends.items() if backend.capabilities.local),
            max_tokens={name: int(own) for name, cfg in settings.targets.items()
                        if name in backends and (own := getattr(cfg, "default_max_tokens", None))},
            metrics=self.metrics, health=self.store_health,
        )  # fmt: skip
        capturer = self._capture.capturer(
            settings.distill.capture,
            detector=LazyDetector(lambda: classifier.loaded.detector),
            local_targets={name for name, backend in backends.items() if backend.capabilities.local},
            count=self.metrics.record_capture,
        )
        return Runtime(settings, router, classifier, auth, self.metrics, keys, clients, spend, capturer=capturer)

    def _hold_parts(self, runtime: Runtime) -> None:
        for name, key in runtime.backend_keys.items():
            self._backends.hold(key, runtime.backends[name])
        self._classifiers.hold(_plan_key(runtime.classifier.plan), runtime.classifier)

    def _retire(self, runtime: Runtime) -> None:
        task = asyncio.create_task(self._release_when_idle(runtime))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _release_when_idle(self, runtime: Runtime) -> None:
        """Once the old config's last request has ended, close what no other config uses."""
        try:
            async with asyncio.timeout(runtime.settings.limits.request_timeout_s + _DRAIN_GRACE_S):
                await runtime.idle.wait()
        except TimeoutError:
            log.warning(
                "closing config %s's unused targets with %d requests still on them, past their deadline",
                runtime.config_version, runtime.users,
            )  # fmt: skip
        await runtime.router.drain_shadows()
        unused = []
        for name, key in runtime.backend_keys.items():
            backend = self._backends.release(key)
            if backend is not None:
                unused.append((name, backend))
        classifier = self._classifiers.release(_plan_key(runtime.classifier.plan))
        if classifier is not None:
            classifier.close()
        await _close_backends(unused)
        if unused:
            log.info("closed targets only the previous config used: %s", ", ".join(name for name, _ in unused))


def _auto_distiller(runtime: Runtime, metrics: GatewayMetrics) -> AutoDistiller | None:
    """distill.auto's scheduler over the capture folder and the distilled edge target's registry."""
    auto = runtime.settings.distill.auto
    if not auto.enabled:
        return None
    # From the config, not the backend: a target with retries or a circuit is wrapped.
    registries = {
        name: folder
        for name, cfg in runtime.settings.targets.items()
        if isinstance(cfg, OnnxTargetConfig) and (folder := cfg.registry_dir()) is not None
    }
    name = auto.target or next(iter(registries), None)
    if name is None or name not in registries:
        raise ConfigError("distill.auto: needs an onnx target with `distilled: true` (or distill.auto.target)")
    return AutoDistiller(auto, data_dir=runtime.settings.distill.capture.dir, registry_dir=registries[name],
                         count=metrics.record_cycle)  # fmt: skip


class _Shared(Generic[T]):
    """Objects the live runtime shares with those still draining, each counted by how many runtimes use it."""

    def __init__(self) -> None:
        self._items: dict[Key, tuple[T, int]] = {}

    def get(self, key: Key) -> T | None:
        item = self._items.get(key)
        return None if item is None else item[0]

    def need(self, key: Key) -> T:
        return self._items[key][0]

    def hold(self, key: Key, value: T) -> None:
        _, users = self._items.get(key, (value, 0))
        self._items[key] = (value, users + 1)

    def release(self, key: Key) -> T | None:
        """One runtime fewer; the object itself when none is left (the caller closes it)."""
        value, users = self._items[key]
        if users > 1:
            self._items[key] = (value, users - 1)
            return None
        del self._items[key]
        return value

    def drain(self) -> list[tuple[Key, T]]:
        items = [(key, value) for key, (value, _) in self._items.items()]
        self._items.clear()
        return items


def _backend_key(name: str, cfg: BaseModel | None) -> Key:
    # An injected backend without a config entry is reused while its name is; a configured one while its config is.
    return (name, "injected" if cfg is None else cfg.model_dump_json(exclude=set(_PROFILE_FIELDS)))


def _plan_key(plan: ClassifierPlan) -> Key:
    return ("classifier", f"{plan.config.model_dump_json()} {plan.encoder_dir} {plan.head} {plan.language}")


def _same(a: Settings, b: Settings) -> bool:
    return a.config_version == b.config_version and a.model_dump(exclude={"version"}) == b.model_dump(
        exclude={"version"}
    )


def _keep_sessions(running: Runtime, runtime: Runtime) -> None:
    """A ``sticky`` policy whose options did not change keeps its sessions (an in-process map): a reload
    must not send every escalated conversation back to the edge."""
    before = {
        json.dumps(spec, sort_keys=True, default=str): policy
        for spec, policy in zip(running.settings.policies, running.router.policies, strict=True)
        if isinstance(policy, StickyPolicy)
    }
    for spec, policy in zip(runtime.settings.policies, runtime.router.policies, strict=True):
        previous = before.get(json.dumps(spec, sort_keys=True, default=str))
        if isinstance(policy, StickyPolicy) and previous is not None:
            policy.store = previous.store


async def _start_backends(backends: Mapping[str, Backend]) -> None:
    # Wait for every start, so that none is still starting when a failure closes them all.
    results = await asyncio.gather(*(backend.start() for backend in backends.values()), return_exceptions=True)
    for name, result in zip(backends, results, strict=True):
        if isinstance(result, Exception):
            raise ConfigError(f"targets.{name}: did not start: {type(result).__name__}: {result}") from result
        if isinstance(result, BaseException):
            raise result


async def _refresh_models(backends: Mapping[str, Backend]) -> None:
    versioned = [(name, backend) for name, backend in backends.items() if isinstance(backend, VersionedBackend)]
    results = await asyncio.gather(*(backend.refresh() for _, backend in versioned), return_exceptions=True)
    for (name, _), result in zip(versioned, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("target %s: could not re-read its model registry", name, exc_info=result)


async def _close_backends(backends: Iterable[tuple[str, Backend]]) -> None:
    pairs = list(backends)
    results = await asyncio.gather(*(backend.aclose() for _, backend in pairs), return_exceptions=True)
    for (name, _), result in zip(pairs, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("target %s did not close cleanly", name, exc_info=result)


def _log_applied(running: Runtime, result: ReloadResult, trigger: str) -> None:
    extra = {"config_version": result.version, "trigger": trigger}
    if not result.changed:
        log.info("config reload (%s): nothing to change, still %s", trigger, result.version, extra=extra)
    else:
        if result.version == running.config_version:
            log.warning("config reload (%s): the content changed but `version:` is still %s", trigger, result.version)
        log.info(
            "config reload (%s): %s -> %s; targets kept: %s; started: %s; classifier %s",
            trigger, running.config_version, result.version, ", ".join(result.kept) or "none",
            ", ".join(result.started) or "none", "loaded" if result.classifier_loaded else "kept",
            extra=extra,
        )  # fmt: skip
    if result.restart_only:
        log.warning(
            "config reload (%s): %s changed but only take effect on a restart; the values from start-up stay",
            trigger, ", ".join(result.restart_only), extra=extra,
        )  # fmt: skip


class LocalModelCounter:
    """Counts with the first local target's own tokenizer once it has loaded; estimates until then.

    A local model's tokenizer counts exactly what the ``context_window``
    policy guards; cloud targets have none here. After a reload it counts
    with the new config's local targets (:meth:`bind`).
    """

    def __init__(self, backends: Mapping[str, Backend]) -> None:
        self._estimate = EstimateCounter()
        self.bind(backends)

    def bind(self, backends: Mapping[str, Backend]) -> None:
        self._local = [backend for backend in backends.values() if backend.capabilities.local]

    def _counter(self) -> TokenCounter:
        for backend in self._local:
            if backend.token_counter is not None:
                return backend.token_counter
        return self._estimate

    @property
    def name(self) -> str:
        return self._counter().name

    def count(self, request: ChatRequest) -> int:
        return self._counter().count(request)


def _admissions(store: StateStore, state: StateSettings) -> Admissions:
    """The store's admissions, behind leases on Redis (a round trip per request otherwise); see leases.py."""
    if state.lease_fraction > 0 and state.url.partition("://")[0] in ("redis", "rediss", "unix"):
        return LeasedAdmissions(
            store.admissions, store.rates, fraction=state.lease_fraction, lease_s=state.lease_s,
            hold_ttl_s=state.hold_ttl_s,
        )  # fmt: skip
    return store.admissions
