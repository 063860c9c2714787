"""One pass over a request: everything the policies need, within a deadline.

The cheap part (token count, message flags, code and math) always runs
inline. The model part (personal data over the request's whole outgoing
surface, language, the embedding of the last user message, its semantic
route and the difficulty head) runs in a worker thread under
``deadline_ms``; ONNX Runtime and the tokenizer release the GIL, so the event
loop keeps serving meanwhile. Short requests with the static encoder skip
the thread hop and run inline: their cost is bounded by their size.

Personal data is detected once over :attr:`Surface.text <router.surface.Surface>`
(every outgoing string, joined) and the spans are located on their fields,
so redaction later replaces exactly what was found here. Long surfaces are
scanned in windows, and the worker checks the deadline between windows: a
late scan stops instead of burning a core after its answer stopped
mattering, and no single detector call holds the GIL for long.

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
from dataclasses import dataclass, field, replace

from router.chat import ChatRequest
from router.classify.content import has_code, has_math
from router.classify.difficulty import DifficultyHead, rule_based_difficulty
from router.classify.language import LanguageDetector
from router.classify.personal_data import PatternDetector, PersonalDataDetector
from router.classify.semantic import Embedder, SemanticRoutes
from router.features import Difficulty, Features, PersonalData, RouteMatch, Span
from router.surface import outgoing_surface
from router.tokens import EstimateCounter, TokenCounter

__all__ = ["RequestClassifier", "clip_for_embedding", "detect_in_windows", "embedding_text"]

log = logging.getLogger("hybrid_router.classifier")

# The embedding reads the start and the end of a long message: the ask is
# usually there, and tokenising 8 KB for one vector would cost milliseconds.
_HEAD_CHARS, _TAIL_CHARS = 1536, 512


def clip_for_embedding(text: str) -> str:
    """The first and last characters of a long text; training clips the same way."""
    if len(text) <= _HEAD_CHARS + _TAIL_CHARS:
        return text
    return text[:_HEAD_CHARS] + "\n" + text[-_TAIL_CHARS:]


# Long surfaces are scanned WINDOW characters at a time, each window reading
# CONTEXT more on either side so cues ("SSN:") and long values (a PEM key)
# that straddle a border are still seen whole.
WINDOW, CONTEXT = 16_384, 4_096


class DeadlinePassed(Exception):
    """The scan stopped between windows because its deadline had passed."""


def detect_in_windows(
    detector: PersonalDataDetector, text: str, deadline: float | None = None, *, window: int = WINDOW
) -> list[Span]:
    """``detector.detect(text)``, window by window, stopping once ``deadline`` (perf_counter) passes."""
    if len(text) <= window + CONTEXT:
        return list(detector.detect(text))
    found: list[Span] = []
    for start in range(0, len(text), window):
        if deadline is not None and time.perf_counter() > deadline:
            raise DeadlinePassed
        lo = max(0, start - CONTEXT)
        for span in detector.detect(text[lo : start + window + CONTEXT]):
            # Each window owns the spans that start inside it; context finds the rest.
            if start <= lo + span.start < start + window:
                found.append(replace(span, start=lo + span.start, end=lo + span.end))
    return found


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
    semantic routes and difficulty comes from the rules. It implements
    :class:`~router.classify.base.Classifier`.
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
        # ~0.35 s of word lists and pattern tables: at start-up, not on the first request.
        self.detector.load()
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
        surface = outgoing_surface(request)
        # A short request with the static encoder classifies in ~0.1 ms: cheaper
        # than the ~0.25 ms hop to a worker thread and back. Long ones and the
        # ONNX encoder go to the thread, where the deadline can be enforced.
        if self._cheap and len(surface.text) <= self.inline_chars and len(request.prompt_text) <= self.inline_chars:
            return self._assemble(request, self._model_part(request), started)
        if self._backlog >= self.max_backlog:
            return self._assemble(request, self._fallback("the classifier is backed up"), started)
        if self._executor is None:
            # One worker: a second one doubled the event loop's wait for the GIL under a
            # flood of hostile 60 KB prompts (/healthz p99 167 ms against 89 ms), while
            # ONNX and RE2 release the GIL, so one thread already overlaps the loop.
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="classifier")
        loop = asyncio.get_running_loop()
        self._backlog += 1
        deadline = started + self.deadline_ms / 1000
        future = loop.run_in_executor(self._executor, self._model_part, request, deadline)
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

    def _model_part(self, request: ChatRequest, deadline: float | None = None) -> _ModelPart:
        part = _ModelPart()
        surface = outgoing_surface(request)
        try:
            part.spans = surface.locate(detect_in_windows(self.detector, surface.text, deadline))
        except DeadlinePassed:
            part.detector_error = "deadline"
            return part  # the caller has already answered with the fallback
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
            uninspectable=outgoing_surface(request).uninspectable,
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
