"""The edge target: the local ONNX model behind the backend contract.

Generation runs in worker threads, at most ``max_concurrency`` at once; up
to ``max_queue`` more requests wait for a slot. With the queue full the
backend reports itself *busy*, so the router spills requests to another
allowed target, or answers 503 with ``Retry-After``. Closing a stream (the
client left) cancels its generation before the next decode step and frees
the slot as soon as the worker thread returns.

With ``distilled: true`` the target serves the version of its model that the
distillation registry points at (``hybrid-router distill promote|rollback``,
edge_models/distill/registry.py) and swaps live when the pointer changes: the
new model is loaded beside the old one in a worker thread and smoke-tested,
then one assignment makes it the :class:`LoadedModel` that new requests take.
A request takes the serving one once, at its start, so generations already
running finish on the old model, which is freed when the last of them ends. A
model that fails to load or to answer the smoke test is never served; the old
one keeps serving, and readiness and the metrics say so.

A distilled model learned a route's fixed system prompt as a short alias
(edge_models/distill/prefix.py): every request it serves, and every token count
made for it, sees the alias in place of the prompt.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edge_models.batching import BatchedEngine, BatchedRequest, Outcome
from edge_models.catalog import KNOWN_MODELS, resolve_model
from edge_models.distill.manifest import StudentManifest
from edge_models.distill.prefix import student_messages
from edge_models.distill.registry import Registry
from edge_models.errors import EdgeModelError, GenerationError, ModelInvalid, PromptTooLong
from edge_models.runtime import ChatMessage, EdgeModel, FinishReason, Generation, SamplingOptions, default_threads
from router.backends.base import Capabilities, Readiness
from router.backends.cascade import SERVE_GREEDY, WANT_TOKEN_LOGPROBS
from router.backends.versions import ModelVersion, StudentCard, SwapResult
from router.chat import (
    ChatChunk,
    ChatRequest,
    ChatResult,
    ChunkMaker,
    Usage,
    make_completion,
)
from router.config import OnnxTargetConfig
from router.errors import BackendBusy, BackendError, ConfigError, ContextLengthExceeded

__all__ = ["BASE", "EdgeBackend", "EdgeTokenCounter", "LoadedModel", "smoke_test", "to_chat_messages"]

log = logging.getLogger("hybrid_router.edge")

BASE = "base"
"""The version name of the configured model itself, when no distilled version serves."""

PROMPT_IDS = "edge_prompt_ids"
"""Key in :attr:`ChatRequest.memo`: ``(model folder, prompt ids)``, shared by the token count and the generation."""

_END = object()
_SMOKE_PROMPT: list[ChatMessage] = [{"role": "user", "content": "Say hello."}]
_SMOKE_TOKENS = 4
_V = TypeVar("_V", int, float)
_A = TypeVar("_A")


def to_chat_messages(request: ChatRequest) -> list[ChatMessage]:
    """OpenAI messages as the plain role/content pairs a chat template expects."""
    out = []
    for message in request.messages:
        role = message.role
        text = message.text()
        if role == "developer":
            role = "system"
        elif role in ("tool", "function"):
            role, text = "user", f"Tool result: {text}"
        out.append({"role": role, "content": text})
    return out


class EdgeTokenCounter:
    """Counts a request's tokens exactly as the edge model will see them (template and prompt aliases included).

    The ids are kept in the request's memo under ``key`` (the model's folder), so the
    generation reuses them, and a swap between counting and generating re-encodes
    for the model that generates.
    """

    def __init__(self, model: EdgeModel, label: str, aliases: Mapping[str, str] | None = None, key: str = "") -> None:
        self.model = model
        self.name = f"tokenizer:{label}"
        self.aliases = dict(aliases or {})
        self.key = key or str(model.folder)

    def count(self, request: ChatRequest) -> int:
        return len(self.prompt_ids(request))

    def prompt_ids(self, request: ChatRequest) -> Any:
        cached = request.memo.get(PROMPT_IDS)
        if cached is not None and cached[0] == self.key:
            return cached[1]
        messages = to_chat_messages(request)
        if self.aliases:
            messages = [{k: str(v) for k, v in m.items()} for m in student_messages(messages, self.aliases)]
        ids = self.model.encode_chat(messages)
        request.memo[PROMPT_IDS] = (self.key, ids)
        return ids


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One loaded version of the edge model, whole: what a request takes at its start and keeps to its end."""

    engine: EdgeModel
    folder: Path
    # BASE, or the distilled version's name ("v3").
    version: str
    manifest: StudentManifest | None
    counter: EdgeTokenCounter
    # Fixed system prompt hash -> the alias this model was trained on (empty for the base model).
    aliases: Mapping[str, str]
    served: ModelVersion
    # The continuous batcher that serves its requests (None: one generation per worker thread).
    batch: BatchedEngine | None = None


def smoke_test(engine: EdgeModel, batch: BatchedEngine | None = None) -> None:
    """Greedy-generate a few tokens from a short prompt (through ``batch`` when it serves); :class:`ModelInvalid`
    unless text comes and it finishes. Runs in a worker thread."""
    ids = engine.encode_chat(_SMOKE_PROMPT)
    if batch is not None:
        pieces: list[str] = []
        done = threading.Event()
        request = BatchedRequest(ids, SamplingOptions(_SMOKE_TOKENS), pieces.append, lambda _outcome: done.set())
        batch.submit(request)
        if not done.wait(60):
            request.cancel.set()
            raise ModelInvalid("smoke test failed: no answer within 60 s")
        text, finish, error = "".join(pieces), request.outcome.finish_reason, request.outcome.error
        if error:
            raise ModelInvalid(f"smoke test failed: {error}")
    else:
        try:
            generation = engine.generate(ids, SamplingOptions(_SMOKE_TOKENS))
            text, finish = "".join(generation), generation.finish_reason
        except EdgeModelError as exc:
            raise ModelInvalid(f"smoke test failed: {exc}") from exc
    if not text.strip() or finish is None:
        raise ModelInvalid(f"smoke test failed: {_SMOKE_TOKENS} greedy tokens gave no text ({text!r})")


def _student_card(version: str, manifest: StudentManifest) -> StudentCard:
    gate = manifest.gate
    metrics = manifest.metrics
    # `distill eval` records the holdout report (exact_match) under "holdout".
    holdout = metrics.get("holdout")
    accuracy = metrics.get("holdout_accuracy", holdout.get("exact_match") if isinstance(holdout, Mapping) else None)
    return StudentCard(
        version=version,
        tasks=frozenset(manifest.tasks),
        prompt_hashes=frozenset(manifest.prompt_aliases),
        gate_threshold=gate.threshold if gate else None,
        gate_signal=gate.signal if gate else None,
        holdout_accuracy=float(accuracy) if isinstance(accuracy, int | float) else None,
        gate_coverage=gate.coverage if gate else None,
    )


class EdgeBackend:
    """Runs requests on the local ONNX GenAI model, or on its promoted distilled version (``distilled: true``).

    ``loader(folder, threads)`` loads a model (default :meth:`EdgeModel.load`); tests pass one.
    """

    def __init__(
        self,
        name: str,
        config: OnnxTargetConfig,
        *,
        loader: Callable[[Path, int], EdgeModel] | None = None,
        batcher: Callable[[EdgeModel, int, int], BatchedEngine] | None = None,
        cores: int | None = None,
    ) -> None:
        self.name = name
        self.config = config
        cores = cores or default_threads()
        models_dir = Path(config.models_dir).expanduser() if config.models_dir else None
        try:
            self.folder = resolve_model(config.model, config.precision, models_dir)
        except EdgeModelError as exc:
            raise ConfigError(f"targets.{name}.model: {exc}") from exc
        self.model = config.model if config.model in KNOWN_MODELS else self.folder.name
        registry = config.registry_dir()
        self.registry = Registry(registry) if registry is not None else None
        # An injected loader (tests, tools) brings its own engines: batching only with a batcher to match.
        if batcher is None and loader is None and config.batching:
            batcher = self._batched_engine
        self._batcher = batcher
        if batcher is not None:
            # One batch decodes every running generation at once, on every core. Eight rows: a step of eight
            # costs little more than a step of one here (decoding is bound by memory and per-step overhead),
            # and a row's cache grows with its own length (46 KB a token for SmolLM2-135M).
            self.max_concurrency = config.max_concurrency or 8
            self.threads = config.threads or cores
        else:
            self.max_concurrency = config.max_concurrency or max(1, cores // 2)
            self.threads = config.threads or max(1, cores // self.max_concurrency)
        # With a batch the weights run in its session: the model itself only tokenizes (no second copy).
        generator = batcher is None
        self._loader = loader or (lambda folder, threads: EdgeModel.load(folder, threads=threads, generator=generator))
        self._loaded: LoadedModel | None = None
        # Why the registry's version is not the one serving (it failed to load or its smoke test).
        self._problem: str | None = None
        self._swaps = {"ok": 0, "failed": 0}
        self._swap_lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(self.max_concurrency)
        self._executor: ThreadPoolExecutor | None = None
        self._active = 0
        self._waiting = 0
        self._seconds_per_request = 2.0

    @property
    def capabilities(self) -> Capabilities:
        window = self.config.context_window or (self._loaded.engine.context_length if self._loaded else None)
        return Capabilities(tools=False, json_schema=False, images=False, context_window=window, local=True)

    @property
    def token_counter(self) -> EdgeTokenCounter | None:
        """The serving model's counter: it changes with a swap."""
        return self._loaded.counter if self._loaded else None

    async def start(self) -> None:
        if self._loaded is not None:
            return
        pointer = await asyncio.to_thread(self._pointer)
        self._loaded = await self._first_model()
        self._executor = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix=f"{self.name}-gen")
        if self.registry is not None:
            self._watcher = asyncio.create_task(self._watch(pointer), name=f"{self.name}-registry")

    async def _first_model(self) -> LoadedModel:
        """The registry's version when distilled and it loads and answers; else the configured model."""
        if self.registry is not None:
            version = None
            try:
                version = await asyncio.to_thread(self.registry.current)
                if version is not None:
                    return await asyncio.to_thread(self._load, self.registry.folder(version), True)
            except Exception as exc:  # noqa: BLE001 - whatever a new version does, the base model serves; logged
                self._failed(version, exc)
        try:
            return await asyncio.to_thread(self._load, None, False)
        except EdgeModelError as exc:
            raise ConfigError(f"targets.{self.name}: {exc}") from exc

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._loaded = None

    def _load(self, folder: Path | None, check: bool) -> LoadedModel:
        """Load ``folder`` (None: the configured model) in full; in a worker thread."""
        path = folder or self.folder
        manifest = StudentManifest.find(path)
        if folder is not None:
            version = folder.name
        else:
            version = manifest.version if manifest is not None and manifest.version else BASE
        engine = self._loader(path, self.threads)
        batch = self._batcher(engine, self.max_concurrency, self.threads) if self._batcher is not None else None
        if check:
            try:
                smoke_test(engine, batch)
            except BaseException:
                if batch is not None:
                    batch.close()
                raise
        log.info(
            "target %s: sampling for requests that set none: %s", self.name, self._describe_sampling(engine),
            extra={"target": self.name},
        )  # fmt: skip
        aliases = dict(manifest.prompt_aliases) if manifest else {}
        label = self.model if version == BASE else f"{self.model}@{version}"
        served = ModelVersion(version)
        if manifest is not None:
            served = ModelVersion(version, manifest.parent or self.model, _student_card(version, manifest))
        counter = EdgeTokenCounter(engine, label, aliases, key=str(path))
        return LoadedModel(engine, path, version, manifest, counter, aliases, served, batch)

    def _describe_sampling(self, engine: EdgeModel) -> str:
        cfg = self.config
        overrides = {
            key: value
            for key in ("temperature", "top_p", "top_k", "repetition_penalty")
            if (value := getattr(cfg, key)) is not None
        }
        model = engine.sampling.describe()
        return f"{model}, overridden by the target's {overrides}" if overrides else model

    def _batched_engine(self, engine: EdgeModel, rows: int, threads: int) -> BatchedEngine:
        return BatchedEngine(
            engine.folder, engine.tokenizer, eos=engine.eos_token_ids, context_length=engine.context_length,
            vocab_size=engine.vocab_size, max_batch=rows, threads=threads,
            prefix_cache_tokens=self.config.prefix_cache_tokens,
        )  # fmt: skip

    def _current(self) -> LoadedModel:
        loaded = self._loaded
        if loaded is None:
            raise BackendError(f"target {self.name}: the model is not loaded")
        return loaded

    @property
    def engine(self) -> EdgeModel:
        """The serving model's engine."""
        return self._current().engine

    def model_version(self) -> ModelVersion | None:
        return self._loaded.served if self._loaded else None

    def swap_counts(self) -> Mapping[str, int]:
        return dict(self._swaps)

    async def swap(self, folder: Path | None) -> SwapResult:
        """Serve the model in ``folder`` (None: the configured model) from now on, if it loads and answers.

        It is loaded beside the serving one and smoke-tested in a worker thread,
        then takes over in one assignment; requests already running finish on
        the old model. On failure the old model keeps serving and the result says why.
        """
        async with self._swap_lock:
            return await self._swap(folder)

    async def refresh(self) -> SwapResult | None:
        """Serve the version the registry points at now; None when it already serves, or not distilled.

        The registry is watched every ``registry_poll_s``; call this to swap at once (a reload, a test).
        """
        if self.registry is None or self._loaded is None:
            return None
        async with self._swap_lock:
            serving = self._current()
            try:
                wanted = await asyncio.to_thread(self.registry.current)
                folder = None if wanted is None else self.registry.folder(wanted)
            except EdgeModelError as exc:
                self._failed(None, exc)
                return SwapResult(False, serving.version, serving.version, error=str(exc))
            if (folder or self.folder) == serving.folder:
                self._problem = None
                return None
            return await self._swap(folder)

    async def _swap(self, folder: Path | None) -> SwapResult:
        old = self._current()
        version = BASE if folder is None else folder.name
        started = time.perf_counter()
        try:
            loaded = await asyncio.to_thread(self._load, folder, True)
        except Exception as exc:  # noqa: BLE001 - whatever a new version does, the old one keeps serving; logged
            error = self._failed(version, exc)
            return SwapResult(False, old.version, old.version, time.perf_counter() - started, error)
        if self._loaded is not old:  # closed meanwhile
            return SwapResult(False, old.version, old.version, time.perf_counter() - started, "target closed")
        self._loaded = loaded  # the swap: requests from here on take the new model
        self._problem = None
        self._swaps["ok"] += 1
        seconds = time.perf_counter() - started
        log.info(
            "target %s: now serving %s (was %s); loaded and smoke-tested in %.1fs",
            self.name, loaded.version, old.version, seconds,
            extra={"target": self.name, "version": loaded.version, "previous": old.version},
        )  # fmt: skip
        return SwapResult(True, loaded.version, old.version, seconds)

    def _failed(self, version: str | None, exc: BaseException) -> str:
        """Count and log a version that could not be served; readiness shows it until a swap succeeds."""
        error = str(exc) if isinstance(exc, EdgeModelError) else f"{type(exc).__name__}: {exc}"
        serving = self._loaded.version if self._loaded else BASE
        what = f"version {version}" if version else "the registry"
        self._problem = f"{what} not served: {error}; serving {serving}"
        self._swaps["failed"] += 1
        log.error(
            "target %s: %s", self.name, self._problem,
            exc_info=None if isinstance(exc, EdgeModelError) else exc,
            extra={"target": self.name, "version": version, "serving": serving},
        )  # fmt: skip
        return error

    def _pointer(self) -> bytes | None:
        if self.registry is None:
            return None
        try:
            return self.registry.pointer.read_bytes()
        except OSError:
            return None

    async def _watch(self, seen: bytes | None) -> None:
        """Refresh whenever the registry's pointer file changes (a promote or a rollback)."""
        while True:
            await asyncio.sleep(self.config.registry_poll_s)
            pointer = await asyncio.to_thread(self._pointer)
            if pointer == seen:
                continue
            seen = pointer
            try:
                await self.refresh()
            except Exception:
                # The watcher must outlive anything one refresh does; the next change is tried again.
                log.exception("target %s: watching the model registry", self.name)

    def _full(self) -> bool:
        return self._active >= self.max_concurrency and self._waiting >= self.config.max_queue

    def _retry_after(self) -> float:
        waits = (self._waiting + 1) / self.max_concurrency
        return float(max(1, math.ceil(waits * self._seconds_per_request)))

    def readiness(self) -> Readiness:
        loaded = self._loaded
        if loaded is None:
            return Readiness(ready=False, reason="model not loaded")
        detail: dict[str, object] = {"model": str(loaded.folder), "version": loaded.version}
        detail.update(active=self._active, waiting=self._waiting)
        if self._problem is not None:
            detail["distilled"] = self._problem
        if self._full():
            return Readiness(
                ready=True,
                busy=True,
                reason="generation queue full",
                detail={**detail, "retry_after": self._retry_after()},
            )
        return Readiness(ready=True, reason="model loaded", detail=detail)

    def stats(self) -> Mapping[str, float]:
        stats = {
            "queue_depth": float(self._waiting),
            "active_generations": float(self._active),
            "max_concurrency": float(self.max_concurrency),
        }
        batch = self._loaded.batch if self._loaded is not None else None
        if batch is not None:
            stats["batch_size"] = float(batch.batch_size)
            stats["prefix_cached_tokens"] = float(batch.prefix_stats["cached_tokens"])
        return stats

    def _options(self, loaded: LoadedModel, request: ChatRequest) -> SamplingOptions:
        """The request's sampling; what it leaves out comes from the target's config, then the model's own."""
        cfg = self.config
        model = loaded.engine.sampling
        greedy = 0.0 if request.memo.get(SERVE_GREEDY) else None
        return SamplingOptions(
            max_new_tokens=request.effective_max_tokens or cfg.default_max_tokens,
            temperature=_first(request.temperature, greedy, cfg.temperature, model.temperature),
            top_p=_first(request.top_p, cfg.top_p, model.top_p),
            top_k=_first(request.top_k, cfg.top_k, model.top_k),
            seed=request.seed,
            repetition_penalty=_first(cfg.repetition_penalty, model.repetition_penalty),
            stop=request.stop_sequences,
        )

    def _generation(self, loaded: LoadedModel, request: ChatRequest, cancel: threading.Event) -> Generation | _Batched:
        logprobs = bool(request.memo.get(WANT_TOKEN_LOGPROBS))
        ids = loaded.counter.prompt_ids(request)
        try:
            if loaded.batch is not None:
                loaded.engine.check_fits(len(ids))
                return _Batched(self.name, loaded, ids, self._options(loaded, request), cancel, logprobs)
            return loaded.engine.generate(ids, self._options(loaded, request), cancel, logprobs=logprobs)
        except PromptTooLong as exc:
            raise ContextLengthExceeded(
                f"This prompt has {exc.prompt_tokens} tokens; target {self.name}'s window is {exc.context_length}.",
                param="messages",
            ) from exc

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        if self._full():
            raise BackendBusy(f"target {self.name}: generation queue is full", retry_after=self._retry_after())
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self._active += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self._active -= 1
            self._slots.release()
            self._seconds_per_request += 0.2 * (time.perf_counter() - started - self._seconds_per_request)

    async def _run(self, generation: Generation | _Batched, emit: Callable[[str], None]) -> None:
        """Drive ``generation`` (in the batch, or in a worker thread), passing each piece to ``emit`` on the loop."""
        if isinstance(generation, _Batched):
            await generation.run(emit)
            return
        loop = asyncio.get_running_loop()

        def work() -> None:
            for piece in generation:
                loop.call_soon_threadsafe(emit, piece)

        assert self._executor is not None
        future = loop.run_in_executor(self._executor, work)
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            generation.cancel.set()
            # The slot is freed only once the thread has stopped: at most one decode step.
            await asyncio.wait([future])
            raise
        except GenerationError as exc:
            raise BackendError(f"target {self.name}: {exc}") from exc

    async def complete(self, request: ChatRequest) -> ChatResult:
        started = time.perf_counter()
        # Taken once: a swap from here on leaves this request on the model it started with.
        generation = self._generation(self._current(), request, threading.Event())
        pieces: list[str] = []
        first_at: list[float] = []

        def emit(piece: str) -> None:
            if not first_at:
                first_at.append(time.perf_counter())
            pieces.append(piece)

        async with self._slot():
            await self._run(generation, emit)
        usage = Usage(generation.prompt_tokens, generation.completion_tokens)
        body = make_completion(
            model=self.model, content="".join(pieces), finish_reason=generation.finish_reason, usage=usage
        )
        logprobs = tuple(generation.token_logprobs) if generation.token_logprobs is not None else None
        # Queueing included: this is the wait the caller saw.
        return ChatResult(
            body, usage, first_token_s=first_at[0] - started if first_at else None, token_logprobs=logprobs
        )

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        generation = self._generation(self._current(), request, threading.Event())
        chunks = ChunkMaker.start(self.model)
        queue: asyncio.Queue[object] = asyncio.Queue()
        async with self._slot():
            task = asyncio.ensure_future(self._run(generation, queue.put_nowait))
            task.add_done_callback(lambda _: queue.put_nowait(_END))
            try:
                first = True
                while (item := await queue.get()) is not _END:
                    delta = {"role": "assistant", "content": item} if first else {"content": item}
                    first = False
                    yield chunks.delta(delta)
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
                if first:
                    yield chunks.delta({"role": "assistant", "content": ""})
                yield chunks.delta({}, generation.finish_reason or "stop")
                usage = Usage(generation.prompt_tokens, generation.completion_tokens)
                yield chunks.usage(usage)
            finally:
                if not task.done():
                    generation.cancel.set()
                    task.cancel()
                    await asyncio.wait([task])


class _Batched:
    """One request in the target's continuous batch, shaped like a :class:`Generation` for the code above."""

    def __init__(
        self,
        target: str,
        loaded: LoadedModel,
        ids: Any,
        options: SamplingOptions,
        cancel: threading.Event,
        logprobs: bool,
    ) -> None:
        self.target = target
        # The whole version, held to the end: a swap leaves this generation on the model it started with.
        self.loaded = loaded
        self.ids = ids
        self.options = options
        self.cancel = cancel
        self.logprobs = logprobs
        self.outcome = Outcome(prompt_tokens=len(ids))

    @property
    def prompt_tokens(self) -> int:
        return self.outcome.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.outcome.completion_tokens

    @property
    def finish_reason(self) -> FinishReason | None:
        return self.outcome.finish_reason

    @property
    def token_logprobs(self) -> list[float] | None:
        return self.outcome.token_logprobs

    async def run(self, emit: Callable[[str], None]) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Outcome] = loop.create_future()

        def settle(outcome: Outcome) -> None:
            if not done.done():
                done.set_result(outcome)

        inbox = _inbox(loop)

        def finished(outcome: Outcome) -> None:  # on the engine's thread, after the row's last piece
            inbox.put(settle, outcome)

        def piece(text: str) -> None:  # on the engine's thread
            inbox.put(emit, text)

        request = BatchedRequest(self.ids, self.options, piece, finished, logprobs=self.logprobs, cancel=self.cancel)
        assert self.loaded.batch is not None
        try:
            self.loaded.batch.submit(request)
        except GenerationError as exc:
            raise BackendError(f"target {self.target}: {exc}") from exc
        try:
            self.outcome = await asyncio.shield(done)
        except asyncio.CancelledError:
            self.cancel.set()
            # The row leaves at the next step: the slot is freed once it has.
            await asyncio.wait([done])
            raise
        if self.outcome.error is not None:
            raise BackendError(f"target {self.target}: generation failed: {self.outcome.error}")


def _first(*values: _V | None) -> _V:
    """The first value that is set (the last one always is)."""
    for value in values:
        if value is not None:
            return value
    raise ValueError("no value set")  # the last value is the model's, never None


class _Inbox:
    """Callbacks from the engine's thread to one event loop, in order, one wake-up for all that arrive together.

    A decode step gives every row its piece at once; ``call_soon_threadsafe`` per piece wakes the loop
    (a write to its self-pipe) once per row, and each wake-up takes a core from the step running next.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[Callable[[Any], None], Any]] = []

    def put(self, callback: Callable[[_A], None], value: _A) -> None:
        with self._lock:
            self._items.append((callback, value))
            if len(self._items) > 1:
                return  # a drain is already scheduled and will take this one too
        self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for callback, value in items:
            callback(value)


_INBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = weakref.WeakKeyDictionary()


def _inbox(loop: asyncio.AbstractEventLoop) -> _Inbox:
    inbox = _INBOXES.get(loop)
    if inbox is None:
        inbox = _INBOXES[loop] = _Inbox(loop)
    return inbox
