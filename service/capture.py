"""Capture of cloud answers into the distillation dataset (opt-in: ``distill.capture.enabled``).

After a cloud target has answered, :meth:`Capturer.consider` decides whether
the request and its answer become a training row, and stores it off the event
loop. A row qualifies when:

=============  ==============================================================  outcome when not
rule           how                                                             (the metric label)
=============  ==============================================================  ================
cloud          the target that answered is not local                           ``local``
complete       the answer ended with ``finish_reason: stop``, with text        ``not_stop``, ``empty``
plain          no tools, tool calls or functions in the request or answer      ``tools``
text           every message's content is text (no image, audio, file part)    ``images``
private        no personal data in the request (the classifier's features,     ``personal_data``
               failing closed) nor in the answer (the classifier's detector)
selected       its task tag, semantic route or tenant is one configured        ``not_selected``
               (nothing configured: every request is)
sampled        its prompt hash falls under ``sample_rate``: the same prompt is ``sampled_out``
               always in or always out, so a retry is not sampled twice
room           the store holds fewer than ``max_rows``                         ``full``
=============  ==============================================================  ================

Then :class:`~edge_models.distill.store.DatasetStore` answers ``stored`` or
``duplicate``. Each outcome is counted in
``hybrid_router_distill_capture_total{outcome}``; a failure is counted as
``error``, logged once, and never reaches the client, whose answer has been
sent or is being sent regardless.

>>> CaptureSettings(tasks=["triage"]).selects(task="triage", route=None, tenant=None)
True
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_models.distill.rows import prompt_hash
from edge_models.distill.store import DatasetStore, default_data_dir
from router.chat import ChatChunk, ChatRequest
from router.features import Features, Span
from router.tasks import task_of, valid_task

if TYPE_CHECKING:
    from router.classify.personal_data import PersonalDataDetector

__all__ = [
    "OUTCOMES",
    "Answer",
    "AnswerCollector",
    "BackgroundWriter",
    "CapturePool",
    "CaptureSettings",
    "Capturer",
    "InlineWriter",
    "LazyDetector",
    "Writer",
    "sample_point",
]

log = logging.getLogger("hybrid_router.capture")

OUTCOMES = (
    "stored", "duplicate", "full", "sampled_out", "not_selected", "personal_data",
    "tools", "images", "not_stop", "empty", "local", "error",
)  # fmt: skip
"""Every value of the ``outcome`` label."""

_TEXT_PARTS = frozenset({"text", "input_text"})
_TRAINED_ROLES = frozenset({"system", "developer", "user", "assistant"})


class CaptureSettings(BaseModel):
    """``distill.capture``: which cloud answers are kept as training rows, and how many.

    Off by default: captured rows hold prompts. With no ``tasks``, ``routes``
    or ``tenants`` every qualifying request is captured; with any, a request
    must match at least one of them.

    >>> CaptureSettings(enabled=True, routes=["billing"], sample_rate=0.25).max_rows
    100000
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the daily JSONL files go (default: ~/.cache/hybrid-router/distill/data).",
    )
    sample_rate: Annotated[float, Field(ge=0, le=1)] = Field(
        default=1.0, description="The share of qualifying prompts kept, chosen by prompt hash."
    )
    max_rows: Annotated[int, Field(ge=1)] = Field(
        default=100_000, description="Rows the store may hold; past it, nothing more is captured."
    )
    retention_days: Annotated[int, Field(ge=1)] | None = Field(
        default=30, description="Days a daily file is kept; null keeps them until purged."
    )
    tasks: list[str] = Field(default_factory=list, description="Task tags (x-task header or metadata.task).")
    routes: list[str] = Field(default_factory=list, description="Semantic routes (classifier.routes names).")
    tenants: list[str] = Field(
        default_factory=list,
        description="Client key labels. Client keys carry no labels yet, so for now this matches no request.",
    )

    @field_validator("tasks")
    @classmethod
    def _tasks_are_tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not valid_task(tag):
                raise ValueError(f"{tag!r} is not a task tag: 1-64 characters of letters, digits and ._:-")
        return value

    def selects(self, *, task: str | None, route: str | None, tenant: str | None) -> bool:
        if not (self.tasks or self.routes or self.tenants):
            return True
        return (task in self.tasks) or (route in self.routes) or (tenant in self.tenants)


@dataclass(frozen=True)
class Answer:
    """The parts of a target's answer that capture looks at."""

    text: str | None
    finish_reason: str | None
    model: str | None = None
    tool_calls: bool = False

    @classmethod
    def from_completion(cls, body: Mapping[str, Any]) -> Answer:
        """Read the first choice of a ``chat.completion`` body."""
        choices = body.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        message = choice.get("message") or {}
        content = message.get("content")
        return cls(
            text=content if isinstance(content, str) else None,
            finish_reason=choice.get("finish_reason"),
            model=body.get("model") if isinstance(body.get("model"), str) else None,
            tool_calls=bool(message.get("tool_calls") or message.get("function_call")),
        )


@dataclass
class AnswerCollector:
    """Assembles a streamed answer from the chunks as they are relayed to the client."""

    pieces: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    model: str | None = None
    tool_calls: bool = False

    def feed(self, chunk: ChatChunk) -> None:
        if self.model is None and isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str):
                self.pieces.append(content)
            if delta.get("tool_calls") or delta.get("function_call"):
                self.tool_calls = True
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]

    def answer(self) -> Answer:
        return Answer("".join(self.pieces), self.finish_reason, self.model, self.tool_calls)


class Writer(Protocol):
    """Runs capture work away from the event loop."""

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job``; False when it was refused (backlog full). ``job`` must not raise."""
        ...

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every job queued so far has run; False on timeout."""
        ...

    def close(self) -> None:
        """Run what is queued, then stop."""
        ...


class BackgroundWriter:
    """One worker thread, jobs in order, at most ``max_backlog`` waiting (the rest are refused).

    The thread starts with the first job; :meth:`close` runs what is queued and
    stops it, and a later job starts a new one (an app started again).
    """

    # A row is a few KB: 4,096 waiting is ~10 MB at most, enough for a burst of several seconds at
    # hundreds of answers a second while the event loop holds the GIL.
    def __init__(self, max_backlog: int = 4096) -> None:
        self.max_backlog = max_backlog
        self._lock = threading.Lock()
        self._pending = 0
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, job: Callable[[], None]) -> bool:
        with self._lock:
            if self._pending >= self.max_backlog:
                return False
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capture")
            self._pending += 1
            self._executor.submit(self._run, job)
            return True

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        finally:
            with self._lock:
                self._pending -= 1

    def flush(self, timeout: float | None = None) -> bool:
        with self._lock:
            executor = self._executor
        if executor is None:
            return True
        try:
            executor.submit(lambda: None).result(timeout)
        except TimeoutError:
            return False
        except RuntimeError:  # shut down meanwhile: everything has run
            return True
        return True

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


class InlineWriter:
    """The fake beside :class:`Writer`: runs each job at once, in the caller's thread."""

    def submit(self, job: Callable[[], None]) -> bool:
        job()
        return True

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class LazyDetector:
    """The classifier's personal-data detector, looked up at each use (the classifier loads it at start-up)."""

    get: Callable[[], PersonalDataDetector]
    name: str = "classifier"

    def load(self) -> None:
        self.get().load()

    def detect(self, text: str) -> Sequence[Span]:
        return self.get().detect(text)


def sample_point(prompt_digest: str) -> float:
    """Where a prompt falls in [0, 1) for sampling: hash bits apart from those the holdout uses."""
    return int(prompt_digest[8:16], 16) / 0x1_0000_0000


class Capturer:
    """Decides, per cloud answer, whether it becomes a training row, and stores it in the background.

    ``detector`` is the classifier's personal-data detector (anything with
    ``detect(text)``); ``local_targets`` names the targets that run here;
    ``count`` receives each outcome; ``sample`` maps a prompt hash to [0, 1).

    >>> import tempfile
    >>> from router.classify.personal_data import FixedDetector
    >>> capturer = Capturer(
    ...     CaptureSettings(enabled=True),
    ...     store=DatasetStore(Path(tempfile.mkdtemp())),
    ...     detector=FixedDetector(),
    ...     local_targets={"edge"},
    ...     writer=InlineWriter(),
    ... )
    >>> request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    >>> capturer.consider(request, Answer("hello", "stop"), target="edge", features=None)
    'local'
    """

    def __init__(
        self,
        settings: CaptureSettings,
        *,
        store: DatasetStore,
        detector: PersonalDataDetector | LazyDetector,
        local_targets: Collection[str] = (),
        count: Callable[[str], None] | None = None,
        writer: Writer | None = None,
        sample: Callable[[str], float] = sample_point,
    ) -> None:
        self.settings = settings
        self.store = store
        self.detector = detector
        self.local_targets = frozenset(local_targets)
        self._count = count
        self.writer: Writer = writer if writer is not None else BackgroundWriter()
        self._sample = sample
        self._logged = False

    def consider(
        self,
        request: ChatRequest,
        answer: Answer,
        *,
        target: str,
        features: Features | None,
        tenant: str | None = None,
    ) -> str:
        """The outcome decided at once, or ``queued`` when the rest is left to the background. Never raises."""
        try:
            outcome, messages = self._check(request, answer, target, features, tenant)
            if outcome is not None:
                return self._counted(outcome)
            assert messages is not None
            metadata = {
                "task": task_of(request),
                "route": _route(features),
                "tenant": tenant,
                "target": target,
                "model": answer.model or target,
            }
            if not self.writer.submit(lambda: self._finish(messages, metadata)):
                self._failed("the capture backlog is full; answers are being dropped", None)
                return "error"
            return "queued"
        except Exception as exc:  # noqa: BLE001 - capture must never fail a client's answer; counted, logged
            self._failed("capturing an answer failed", exc)
            return "error"

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for the background work queued so far (tests, shutdown)."""
        return self.writer.flush(timeout)

    def _check(
        self, request: ChatRequest, answer: Answer, target: str, features: Features | None, tenant: str | None
    ) -> tuple[str | None, list[dict[str, str]] | None]:
        """What rules out this request on the event loop (cheap checks); else the row's messages."""
        if target in self.local_targets:
            return "local", None
        if answer.finish_reason != "stop":
            return "not_stop", None
        if _uses_tools(request) or answer.tool_calls:
            return "tools", None
        messages = _plain_messages(request)
        if messages is None:
            return "images", None
        if answer.text is None or not answer.text.strip():
            return "empty", None
        personal = None if features is None else features.personal_data
        if personal is None or personal.found or personal.error is not None or personal.uninspectable:
            return "personal_data", None
        if not self.settings.selects(task=task_of(request), route=_route(features), tenant=tenant):
            return "not_selected", None
        return None, [*messages, {"role": "assistant", "content": answer.text}]

    def _finish(self, messages: list[dict[str, str]], metadata: dict[str, Any]) -> None:
        """In the background: sample, check the answer for personal data, store."""
        try:
            if self._sample(prompt_hash(messages)) >= self.settings.sample_rate:
                self._counted("sampled_out")
            elif self.store.count() >= self.store.max_rows:
                self._counted("full")
            elif self.detector.detect(messages[-1]["content"]):
                self._counted("personal_data")
            else:
                self._counted(self.store.append({"messages": messages, "metadata": metadata}))
        except Exception as exc:  # noqa: BLE001 - a disk or detector failure loses one row; counted, logged
            self._failed(f"storing a captured answer in {self.store.root} failed", exc)

    def _counted(self, outcome: str) -> str:
        if self._count is not None:
            self._count(outcome)
        return outcome

    def _failed(self, what: str, exc: BaseException | None) -> None:
        self._counted("error")
        if not self._logged:
            self._logged = True
            log.warning("%s (counted in hybrid_router_distill_capture_total{outcome=\"error\"}; "
                        "logged once)", what, exc_info=exc)  # fmt: skip
        else:
            log.debug("%s", what, exc_info=exc)


def _route(features: Features | None) -> str | None:
    return features.semantic.route if features is not None and features.semantic is not None else None


def _uses_tools(request: ChatRequest) -> bool:
    extra = request.model_extra or {}
    if request.tools or request.tool_choice or extra.get("functions") or extra.get("function_call"):
        return True
    return any(m.role not in _TRAINED_ROLES or m.tool_calls or m.tool_call_id for m in request.messages)


def _plain_messages(request: ChatRequest) -> list[dict[str, str]] | None:
    """Role and text of each message; None when one holds a part that is not text."""
    out = []
    for message in request.messages:
        content = message.content
        if isinstance(content, list):
            if any(part.get("type") not in _TEXT_PARTS for part in content):
                return None
            content = message.text()
        out.append({"role": message.role, "content": content or ""})
    return out


class CapturePool:
    """What capture shares across config reloads: one store per folder and one writer thread.

    The gateway holds one and asks it for a :class:`Capturer` per config
    (None while capture is off); a store's cap and retention follow the
    latest config.
    """

    def __init__(self, *, writer: Writer | None = None) -> None:
        self._writer = writer
        self._stores: dict[Path, DatasetStore] = {}
        self._lock = threading.Lock()

    def capturer(
        self,
        settings: CaptureSettings,
        *,
        detector: PersonalDataDetector | LazyDetector,
        local_targets: Collection[str],
        count: Callable[[str], None] | None = None,
    ) -> Capturer | None:
        if not settings.enabled:
            return None
        with self._lock:
            root = settings.dir.expanduser()
            store = self._stores.get(root)
            if store is None:
                store = self._stores[root] = DatasetStore(
                    root, max_rows=settings.max_rows, retention_days=settings.retention_days
                )
            store.max_rows, store.retention_days = settings.max_rows, settings.retention_days
            if self._writer is None:
                self._writer = BackgroundWriter()
            writer = self._writer
        return Capturer(
            settings, store=store, detector=detector, local_targets=local_targets, count=count, writer=writer
        )

    def close(self) -> None:
        """Finish the queued writes, then stop the writer (blocking: call it in a thread)."""
        with self._lock:
            writer = self._writer
        if writer is not None:
            writer.close()
