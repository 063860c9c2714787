"""Building the request classifier from ``classifier:`` config.

:func:`plan_classifier` checks, without loading anything, that every file the
configured policies need exists (a missing encoder fails start-up with the
command that builds it); :func:`build_classifier` loads them.
:class:`ConfiguredClassifier` puts the two together behind the
:class:`~router.classify.base.Classifier` contract, so the router can be
built complete at once and the loading waits for start-up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from edge_models.embeddings import OnnxEmbedder, StaticEmbedder, encoder_dir
from edge_models.errors import EdgeModelError
from router.chat import ChatRequest
from router.classify.classifier import RequestClassifier
from router.classify.difficulty import DEFAULT_HEAD, DifficultyHead
from router.classify.language import LanguageDetector
from router.classify.personal_data import PatternDetector
from router.classify.semantic import Embedder, SemanticRoutes
from router.config import ClassifierConfig
from router.errors import ConfigError
from router.features import Features
from router.tokens import TokenCounter

__all__ = ["KNOWN_NEEDS", "ClassifierPlan", "ConfiguredClassifier", "build_classifier", "plan_classifier"]

log = logging.getLogger("hybrid_router.classifier")

KNOWN_NEEDS = frozenset({"embedding", "difficulty", "language"})
"""The model-based features a policy may list in ``requires``."""


@dataclass(frozen=True)
class ClassifierPlan:
    config: ClassifierConfig
    encoder_dir: Path | None
    head: Path | None
    language: bool = False


def _default_head(encoder: str) -> Path:
    return DEFAULT_HEAD.with_name(f"difficulty_head.{encoder}.onnx")


def plan_classifier(config: ClassifierConfig, needs: frozenset[str]) -> ClassifierPlan:
    """Which model files the classifier will load, checked to exist."""
    wants_embedding = bool(config.routes) or "embedding" in needs
    folder: Path | None = None
    if wants_embedding:
        try:
            folder = Path(config.encoder_dir) if config.encoder_dir else encoder_dir()
        except EdgeModelError as exc:
            raise ConfigError(f"classifier.encoder: {exc}") from exc
        if not (folder / ("static.npy" if config.encoder == "static" else "model.onnx")).is_file():
            raise ConfigError(
                f"classifier.encoder_dir: {folder} holds no {config.encoder} encoder; run `hybrid-router edge build`"
            )
    head: Path | None = None
    if "difficulty" in needs and config.difficulty_head:
        if config.difficulty_head == "default":
            head = _default_head("static" if config.encoder == "static" else "minilm")
        else:
            head = Path(config.difficulty_head)
        if not head.is_file():
            raise ConfigError(f"classifier.difficulty_head: {head} does not exist")
    # Language identification is a tenth of the gateway's CPU per small request
    # (measured with py-spy), so it runs only when something reads it.
    language = config.detect_language if config.detect_language is not None else "language" in needs
    return ClassifierPlan(config, folder, head, language)


def build_classifier(plan: ClassifierPlan, *, token_counter: TokenCounter | None = None) -> RequestClassifier:
    """Load what ``plan`` names; seconds of work, so call it at start-up."""
    config = plan.config
    embedder: Embedder | None = None
    if plan.encoder_dir is not None:
        try:
            if config.encoder == "static":
                embedder = StaticEmbedder(plan.encoder_dir)
            else:
                embedder = OnnxEmbedder(plan.encoder_dir, max_tokens=config.encoder_max_tokens)
        except EdgeModelError as exc:
            raise ConfigError(f"classifier.encoder: {exc}") from exc
    routes = None
    if embedder is not None and config.routes:
        specs = [
            (r.name, r.examples, config.route_threshold if r.threshold is None else r.threshold) for r in config.routes
        ]
        routes = SemanticRoutes(embedder, specs)
    head = DifficultyHead(plan.head) if plan.head is not None and embedder is not None else None
    classifier = RequestClassifier(
        token_counter=token_counter,
        detector=PatternDetector(phone_regions=tuple(config.phone_regions)),
        embedder=embedder,
        routes=routes,
        head=head,
        language=LanguageDetector() if plan.language else None,
        deadline_ms=config.deadline_ms,
    )
    classifier.start()
    return classifier


class ConfiguredClassifier:
    """The classifier ``classifier:`` config describes; :meth:`start` loads it.

    Built without I/O (the plan has already checked every file exists), so
    the router that holds it is complete from construction.
    """

    def __init__(self, plan: ClassifierPlan, *, token_counter: TokenCounter | None = None) -> None:
        self.plan = plan
        self.token_counter = token_counter
        self._loaded: RequestClassifier | None = None

    @property
    def loaded(self) -> RequestClassifier:
        if self._loaded is None:
            # Only a caller that skipped start() gets here; load now rather than fail.
            log.warning("the classifier was used before start(); loading it now")
            self.start()
        assert self._loaded is not None
        return self._loaded

    def start(self) -> None:
        if self._loaded is None:
            self._loaded = build_classifier(self.plan, token_counter=self.token_counter)

    def close(self) -> None:
        if self._loaded is not None:
            self._loaded.close()

    async def classify(self, request: ChatRequest) -> Features:
        return await self.loaded.classify(request)
