"""The edge target: the local ONNX model behind the backend contract.

Generation runs in worker threads, at most ``max_concurrency`` at once; up
to ``max_queue`` more requests wait for a slot. With the queue full the
backend reports itself *busy*, so the router spills requests to another
allowed target, or answers 503 with ``Retry-After``. Closing a stream (the
client left) cancels its generation before the next decode step and frees
the slot as soon as the worker thread returns.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from edge_models.catalog import KNOWN_MODELS, resolve_model
from edge_models.errors import EdgeModelError, GenerationError, PromptTooLong
from edge_models.runtime import ChatMessage, EdgeModel, Generation, SamplingOptions, default_threads
from router.backends.base import Capabilities, Readiness
from router.backends.cascade import WANT_TOKEN_LOGPROBS
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

__all__ = ["EdgeBackend", "EdgeTokenCounter", "to_chat_messages"]

_END = object()


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
    """Counts a request's tokens exactly as the edge model will see them (template included)."""

    def __init__(self, model: EdgeModel, label: str) -> None:
        self.model = model
        self.name = f"tokenizer:{label}"

    def count(self, request: ChatRequest) -> int:
        return len(prompt_ids(self.model, request))


def prompt_ids(model: EdgeModel, request: ChatRequest) -> Any:
    # Encoded once per request: the token counter and the generation share it.
    ids = request.memo.get("edge_prompt_ids")
    if ids is None:
        ids = request.memo["edge_prompt_ids"] = model.encode_chat(to_chat_messages(request))
    return ids


class EdgeBackend:
    """Runs requests on the local ONNX GenAI model."""

    def __init__(
        self,
        name: str,
        config: OnnxTargetConfig,
        *,
        loader: Callable[[Path, int], EdgeModel] | None = None,
        cores: int | None = None,
    ) -> None:
        self.name = name
        self.config = config
        cores = cores or default_threads()
        try:
            self.folder = resolve_model(
                config.model, config.precision, Path(config.models_dir) if config.models_dir else None
            )
        except EdgeModelError as exc:
            raise ConfigError(f"targets.{name}.model: {exc}") from exc
        self.model = config.model if config.model in KNOWN_MODELS else self.folder.name
        self.max_concurrency = config.max_concurrency or max(1, cores // 2)
        self.threads = config.threads or max(1, cores // self.max_concurrency)
        self._loader = loader or (lambda folder, threads: EdgeModel.load(folder, threads=threads))
        self._engine: EdgeModel | None = None
        self._slots = asyncio.Semaphore(self.max_concurrency)
        self._executor: ThreadPoolExecutor | None = None
        self._active = 0
        self._waiting = 0
        self._seconds_per_request = 2.0
        self.token_counter: EdgeTokenCounter | None = None

    @property
    def capabilities(self) -> Capabilities:
        window = self.config.context_window or (self._engine.context_length if self._engine else None)
        return Capabilities(tools=False, json_schema=False, images=False, context_window=window, local=True)

    async def start(self) -> None:
        if self._engine is not None:
            return
        try:
            self._engine = await asyncio.to_thread(self._loader, self.folder, self.threads)
        except EdgeModelError as exc:
            raise ConfigError(f"targets.{self.name}: {exc}") from exc
        self._executor = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix=f"{self.name}-gen")
        self.token_counter = EdgeTokenCounter(self._engine, self.model)

    async def aclose(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._engine = None

    @property
    def engine(self) -> EdgeModel:
        if self._engine is None:
            raise BackendError(f"target {self.name}: the model is not loaded")
        return self._engine

    def _full(self) -> bool:
        return self._active >= self.max_concurrency and self._waiting >= self.config.max_queue

    def _retry_after(self) -> float:
        waits = (self._waiting + 1) / self.max_concurrency
        return float(max(1, math.ceil(waits * self._seconds_per_request)))

    def readiness(self) -> Readiness:
        if self._engine is None:
            return Readiness(ready=False, reason="model not loaded")
        detail = {"model": str(self.folder), "active": self._active, "waiting": self._waiting}
        if self._full():
            return Readiness(
                ready=True,
                busy=True,
                reason="generation queue full",
                detail={**detail, "retry_after": self._retry_after()},
            )
        return Readiness(ready=True, reason="model loaded", detail=detail)

    def stats(self) -> Mapping[str, float]:
        return {"queue_depth": float(self._waiting), "active_generations": float(self._active)}

    def _options(self, request: ChatRequest) -> SamplingOptions:
        cfg = self.config
        return SamplingOptions(
            max_new_tokens=request.effective_max_tokens or cfg.default_max_tokens,
            temperature=cfg.temperature if request.temperature is None else request.temperature,
            top_p=cfg.top_p if request.top_p is None else request.top_p,
            top_k=request.top_k or 0,
            seed=request.seed,
            repetition_penalty=cfg.repetition_penalty,
            stop=request.stop_sequences,
        )

    def _generation(self, request: ChatRequest, cancel: threading.Event) -> Generation:
        engine = self.engine
        logprobs = bool(request.memo.get(WANT_TOKEN_LOGPROBS))
        try:
            return engine.generate(prompt_ids(engine, request), self._options(request), cancel, logprobs=logprobs)
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

    async def _run(self, generation: Generation, emit: Callable[[str], None]) -> None:
        """Drive ``generation`` in a worker thread, passing each piece to ``emit`` on the loop."""
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
        generation = self._generation(request, threading.Event())
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
        generation = self._generation(request, threading.Event())
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
