"""The gateway's collaborators, built from settings and wired together.

Building a :class:`Gateway` validates everything (targets, policy options,
policy names) without loading a model or opening a socket; :meth:`start`
does the heavy part. The app factory builds one per app and starts it in
the lifespan.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from router.backends.base import Backend
from router.backends.registry import create_backend
from router.classify.build import ClassifierPlan, build_classifier, plan_classifier
from router.policies.base import TargetCatalog
from router.policies.registry import build_policies, policy_requirements
from router.router import Router, TargetProfile
from router.tokens import TokenCounter
from service.auth import KeyChecker
from service.metrics import BackendStatsCollector, GatewayMetrics
from service.settings import Settings

__all__ = ["Gateway"]

log = logging.getLogger("hybrid_router.gateway")


@dataclass
class Gateway:
    settings: Settings
    router: Router
    metrics: GatewayMetrics
    auth: KeyChecker
    classifier_plan: ClassifierPlan | None = None

    @property
    def backends(self) -> Mapping[str, Backend]:
        return self.router.backends

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        backends: Mapping[str, Backend] | None = None,
        registry: CollectorRegistry | None = None,
        backend_options: Mapping[str, Mapping[str, Any]] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Gateway:
        """Build without I/O. ``backends`` replaces the configured ones (tests, demos)."""
        if backends is None:
            options = backend_options or {}
            backends = {
                name: create_backend(name, cfg, **options.get(name, {})) for name, cfg in settings.targets.items()
            }
        profiles = {
            name: TargetProfile(
                price_input=cfg.price_per_mtok.input,
                price_output=cfg.price_per_mtok.output,
                quality=cfg.quality,
                latency_ms=cfg.latency_ms,
                aliases=tuple(cfg.aliases),
            )
            for name, cfg in settings.targets.items()
            if name in backends
        }
        router = Router(backends=backends, policies=[], profiles=profiles, config_version=settings.config_version)
        routes = tuple(route.name for route in settings.classifier.routes)
        router.policies = build_policies(settings.policies, TargetCatalog(router.target_views(), routes))
        plan = plan_classifier(settings.classifier, policy_requirements(router.policies))
        registry = registry if registry is not None else CollectorRegistry()
        registry.register(BackendStatsCollector(router.backends))
        return cls(
            settings=settings,
            router=router,
            metrics=GatewayMetrics(registry),
            auth=KeyChecker.from_settings(settings.auth, environ),
            classifier_plan=plan,
        )

    async def start(self) -> None:
        await asyncio.gather(*(backend.start() for backend in self.backends.values()))
        counter = self._exact_token_counter()
        if self.classifier_plan is not None:
            self.router.classifier = await asyncio.to_thread(
                build_classifier, self.classifier_plan, token_counter=counter
            )
        elif counter is not None:
            self.router.classifier.token_counter = counter
        for name, backend in self.backends.items():
            state = backend.readiness()
            log.info("target %s: %s", name, state.reason, extra={"target": name, "ready": state.ready})

    async def aclose(self) -> None:
        self.router.classifier.close()
        results = await asyncio.gather(*(b.aclose() for b in self.backends.values()), return_exceptions=True)
        for name, result in zip(self.backends, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("target %s did not close cleanly", name, exc_info=result)

    def _exact_token_counter(self) -> TokenCounter | None:
        # A local model's own tokenizer counts exactly what the context_window policy guards.
        for backend in self.backends.values():
            counter = getattr(backend, "token_counter", None)
            if backend.capabilities.local and counter is not None:
                return counter  # type: ignore[no-any-return]
        return None
