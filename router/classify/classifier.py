"""One pass over a request: everything the policies need, within a deadline.

The cheap part (token count, message flags, code and math) always runs
inline. The model part (personal data over the whole text, language, the
embedding of the last user message, its semantic route and the difficulty
head) runs in a worker thread under ``deadline_ms``; ONNX Runtime and the
tokenizer release the GIL, so the event loop keeps serving meanwhile.

Past the deadline the request is not held up: personal data is assumed
(fail closed), difficulty falls back to :func:`rule_based_difficulty`, no
semantic route is reported, and ``Features.notes`` says so, which the
router copies into the decision trail. When the worker is already backed up,
the fallback is taken at once rather than queueing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from router.chat import ChatRequest
from router.classify.content import has_code, has_math
from router.classify.difficulty import DifficultyHead, rule_based_difficulty
from router.classify.language import LanguageDetector
from router.classify.personal_data import PatternDetector, PersonalDataDetector, Span
from router.classify.semantic import Embedder, RouteMatch, SemanticRoutes
from router.features import Difficulty, Features, PersonalData
from router.tokens import EstimateCounter, TokenCounter

__all__ = ["RequestClassifier", "clip_for_embedding", "embedding_text"]

log = logging.getLogger("hybrid_router.classifier")

# The embedding reads the start and the end of a long message: the ask is
# usually there, and tokenising 8 KB for one vector would cost milliseconds.
_HEAD_CHARS, _TAIL_CHARS = 1536, 512


def clip_for_embedding(text: str) -> str:
    """The first and last characters of a long text; training clips the same way."""
    if len(text) <= _HEAD_CHARS + _TAIL_CHARS:
        return text
    return text[:_HEAD_CHARS] + "\n" + text[-_TAIL_CHARS:]


def embedding_text(request: ChatRequest) -> str:
    """The last user message, clipped."""
    text = next((m.text() for m in reversed(request.messages) if m.role == "user"), request.prompt_text)
    return clip_for_embedding(text)


@dataclass
class _ModelPart:
    spans: tuple[Span, ...] = ()
    detector_error: str | None = None
    language: str | None = None
    semantic: RouteMatch | None = None
    difficulty: float | None = None
    notes: list[str] = field(default_factory=list)


class RequestClassifier:
    """Computes :class:`~router.features.Features`, with injected parts.

    Every collaborator is optional: without an embedder there are no
    semantic routes and difficulty comes from the rules.
    """

    def __init__(
        self,
        *,
        token_counter: TokenCounter | None = None,
        detector: PersonalDataDetector | None = None,
        embedder: Embedder | None = None,
        routes: SemanticRoutes | None = None,
        head: DifficultyHead | None = None,
        language: LanguageDetector | None = None,
        deadline_ms: float = 50.0,
        max_backlog: int = 4,
        inline_chars: int = 1024,
    ) -> None:
        self.token_counter: TokenCounter = token_counter or EstimateCounter()
        self.detector: PersonalDataDetector = detector or PatternDetector()
        self.embedder = embedder
        self.routes = routes
        self.head = head
        self.language = language
        self.deadline_ms = deadline_ms
        self.max_backlog = max_backlog
        self.inline_chars = inline_chars
        self._executor: ThreadPoolExecutor | None = None
        self._backlog = 0
        if head is not None and embedder is not None:
            head.check_encoder(embedder.name, embedder.dims)

    def start(self) -> None:
        if self.language is not None:
            self.language.load()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    @property
    def _cheap(self) -> bool:
        return self.embedder is None or self.embedder.cheap

    async def classify(self, request: ChatRequest) -> Features:
        started = time.perf_counter()
        text = request.prompt_text
        # A short text with the static encoder classifies in ~0.1 ms: cheaper
        # than the ~0.25 ms hop to a worker thread and back. Long texts and the
        # ONNX encoder go to the thread, where the deadline can be enforced.
        if self._cheap and len(text) <= self.inline_chars:
            return self._assemble(request, self._model_part(request), started)
        if self._backlog >= self.max_backlog:
            return self._assemble(request, self._fallback("the classifier is backed up"), started)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="classifier")
        loop = asyncio.get_running_loop()
        self._backlog += 1
        future = loop.run_in_executor(self._executor, self._model_part, request)
        future.add_done_callback(self._done)
        try:
            part = await asyncio.wait_for(asyncio.shield(future), self.deadline_ms / 1000)
        except TimeoutError:
            part = self._fallback(f"the classifier passed its {self.deadline_ms:g} ms deadline")
        return self._assemble(request, part, started)

    def classify_now(self, request: ChatRequest) -> Features:
        """The same, synchronously and without a deadline (CLI, benchmarks)."""
        started = time.perf_counter()
        return self._assemble(request, self._model_part(request), started)

    def _done(self, _: object) -> None:
        self._backlog -= 1

    def _fallback(self, why: str) -> _ModelPart:
        return _ModelPart(
            detector_error="deadline",
            notes=[f"{why}: personal data assumed, rule-based difficulty, no semantic route"],
        )

    def _model_part(self, request: ChatRequest) -> _ModelPart:
        part = _ModelPart()
        try:
            part.spans = tuple(self.detector.detect(request.prompt_text))
        except Exception as exc:
            log.warning("personal-data detector failed; treating the request as personal", exc_info=exc)
            part.detector_error = type(exc).__name__
        if self.language is not None:
            part.language = self.language.detect(request.prompt_text)[0]
        if self.embedder is not None and (self.routes or self.head is not None):
            vector = self.embedder.embed([embedding_text(request)])[0]
            if self.routes:
                part.semantic = self.routes.match(vector)
            if self.head is not None:
                part.difficulty = self.head.score(vector)
        return part

    def _assemble(self, request: ChatRequest, part: _ModelPart, started: float) -> Features:
        text = request.prompt_text
        tokens = self.token_counter.count(request)
        code, math_ = has_code(text[:20_000]), has_math(text[:20_000])
        if part.difficulty is not None and self.embedder is not None:
            difficulty = Difficulty(part.difficulty, f"head:{self.embedder.name}")
        else:
            rules = rule_based_difficulty(prompt_tokens=tokens, has_code=code, has_math=math_, text=text)
            difficulty = Difficulty(rules, "rules")
        personal = PersonalData(
            found=bool(part.spans) or part.detector_error is not None,
            spans=part.spans,
            detector=self.detector.name,
            error=part.detector_error,
        )
        return Features(
            prompt_tokens=tokens,
            token_counter=self.token_counter.name,
            prompt_chars=len(text),
            message_count=len(request.messages),
            max_tokens=request.effective_max_tokens,
            wants_tools=bool(request.tools),
            wants_json=request.wants_json,
            has_images=request.has_images,
            stream=request.stream,
            personal_data=personal,
            has_code=code,
            has_math=math_,
            language=part.language,
            semantic=part.semantic,
            difficulty=difficulty,
            notes=tuple(part.notes),
            classifier_ms=(time.perf_counter() - started) * 1000,
        )

    def with_token_counter(self, counter: TokenCounter) -> RequestClassifier:
        """The same classifier counting with ``counter`` (the edge model's tokenizer, once loaded)."""
        self.token_counter = counter
        return self
