"""Continuous batching for the edge model: requests join and leave one running batch between decode steps.

onnxruntime-genai's ``Generator`` serves one request at a time, and its
``Engine`` batches continuously only with a paged-attention model, which the
CPU execution provider cannot run (measured: its CPU mode forms a batch of
up to four and starts nobody until the whole batch ends). So the batch is
run here, on onnxruntime directly, over the same ONNX file:

* one owner thread per engine runs the loop: it prefills each new request
  alone (its time to first token does not wait for the batch), then runs one
  decode step for every live row at once;
* each row's key/value cache is a slot of one preallocated buffer per layer,
  ``[rows, kv_heads, width, head]``, bound as both the past input and the
  present output: the model's GroupQueryAttention writes each new token's
  keys and values in place, at the position its row's attention mask says;
  the buffer doubles in width when a row outgrows it;
* a row leaves between steps (end of sequence, a stop sequence, its token
  budget, or cancellation) and the last row moves into its slot;
* sampling is per row, in numpy, from the step's logits: temperature, top-p,
  top-k, repetition penalty and a seeded generator of its own, so a request's
  answer does not depend on what else is in the batch; logprobs come from the
  same logits;
* **prefix reuse**: the key/value cache of recent prompts (and of their
  answers) is kept, up to ``prefix_cache_tokens``; a new prompt that starts
  with the same tokens (a shared system prompt, the earlier turns of a
  conversation) copies that part and prefills only the rest.

The model's weights are loaded once, in one session; the cache costs
``2 * layers * kv_heads * head_size * 4`` bytes per token (46 KB for
SmolLM2-135M) per row and per cached token.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_models.errors import GenerationError, MissingDependency, ModelInvalid
from edge_models.runtime import FinishReason, SamplingOptions, StopMatcher

__all__ = ["BatchedEngine", "BatchedRequest", "Outcome"]

log = logging.getLogger("hybrid_router.edge.batching")

_MIN_WIDTH = 256
# Candidates a top-p draw looks at before it sorts the whole vocabulary: the nucleus nearly always lies in them.
_NUCLEUS_CANDIDATES = 256


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise MissingDependency("onnxruntime is not installed: pip install onnxruntime") from exc
    return onnxruntime


@dataclass
class Outcome:
    """How a request ended, filled in by the engine before ``on_done``."""

    finish_reason: FinishReason | None = None  # None when cancelled or failed
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    first_token_s: float | None = None
    elapsed_s: float = 0.0
    token_logprobs: list[float] | None = None
    cancelled: bool = False
    error: str | None = None


@dataclass(eq=False)
class BatchedRequest:
    """One request for the engine: prompt ids, sampling, and where its text goes (called on the engine thread)."""

    prompt_ids: Sequence[int] | Any  # or the tokenizer's numpy array, taken as it is
    options: SamplingOptions
    on_piece: Callable[[str], None]
    on_done: Callable[[Outcome], None]
    logprobs: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome = field(default_factory=Outcome)
    submitted: float = field(default_factory=time.perf_counter)


@dataclass(eq=False)
class _Row:
    request: BatchedRequest
    length: int  # tokens in this row's cache
    ids: list[int]  # every token in the cache, then the one to feed next
    rng: Any
    stream: Any
    matcher: StopMatcher
    counts: dict[int, int]
    budget: int


class _Layout:
    """The decoder's input and output names and cache shape, from ``genai_config.json``."""

    def __init__(self, folder: Path) -> None:
        config = json.loads((folder / "genai_config.json").read_text())
        decoder = config["model"]["decoder"]
        self.filename = str(decoder["filename"])
        self.layers = int(decoder["num_hidden_layers"])
        self.kv_heads = int(decoder["num_key_value_heads"])
        self.head_size = int(decoder["head_size"])
        inputs, outputs = decoder["inputs"], decoder["outputs"]
        self.input_ids = str(inputs["input_ids"])
        self.attention_mask = str(inputs["attention_mask"])
        self.logits = str(outputs["logits"])
        self.past = [inputs[kind] % i for i in range(self.layers) for kind in ("past_key_names", "past_value_names")]
        self.present = [
            outputs[kind] % i for i in range(self.layers) for kind in ("present_key_names", "present_value_names")
        ]


class _PrefixCache:
    """Recent token sequences and their key/value caches, least recently used first out, bounded in tokens."""

    def __init__(self, max_tokens: int, min_match: int) -> None:
        self.max_tokens = max_tokens
        self.min_match = min_match
        self._entries: OrderedDict[int, tuple[Any, list[Any]]] = OrderedDict()
        self._tokens = 0
        self._next = 0
        self.hits = 0
        self.reused_tokens = 0

    def longest(self, ids: Any) -> tuple[int, list[Any]] | None:
        """The longest cached prefix of ``ids`` (at most all but its last token), with its cache."""
        import numpy as np

        best: tuple[int, int, list[Any]] | None = None
        # At least the last two prompt tokens are run: their logits pick the first answer token, and a
        # one-token run over a reused cache takes GroupQueryAttention's decoding path, which reads it
        # differently (measured: logits off by up to 1.2; two tokens or more match a whole prefill exactly).
        limit = len(ids) - 2
        for key, (tokens, kv) in self._entries.items():
            n = min(limit, len(tokens))
            if n < self.min_match or (best is not None and n <= best[1]):
                continue
            same = np.flatnonzero(tokens[:n] != ids[:n])
            match = int(same[0]) if len(same) else n
            if match >= self.min_match and (best is None or match > best[1]):
                best = (key, match, kv)
        if best is None:
            return None
        self._entries.move_to_end(best[0])
        self.hits += 1
        self.reused_tokens += best[1]
        return best[1], best[2]

    def add(self, ids: Any, kv: list[Any]) -> None:
        if self.max_tokens <= 0 or len(ids) < self.min_match or len(ids) > self.max_tokens:
            return
        for key, (tokens, _) in list(self._entries.items()):
            # An entry that is a prefix of the new one adds nothing the new one does not hold.
            if len(tokens) <= len(ids) and (tokens == ids[: len(tokens)]).all():
                self._drop(key)
        self._entries[self._next] = (ids, kv)
        self._next += 1
        self._tokens += len(ids)
        while self._tokens > self.max_tokens:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: int) -> None:
        tokens, _ = self._entries.pop(key)
        self._tokens -= len(tokens)

    @property
    def tokens(self) -> int:
        return self._tokens


class BatchedEngine:
    """The edge model's decoder, run with continuous batching on one owner thread.

    ``tokenizer`` makes a detokenising stream per request (``create_stream()``,
    onnxruntime-genai's); ``eos`` ends a row. ``max_batch`` rows decode at
    once; callers keep at most that many submitted (the backend's slots).
    """

    def __init__(
        self,
        folder: Path,
        tokenizer: Any,
        *,
        eos: frozenset[int],
        context_length: int,
        vocab_size: int,
        max_batch: int = 8,
        threads: int = 2,
        prefix_cache_tokens: int = 2048,
        min_prefix_tokens: int = 32,
    ) -> None:
        import numpy as np

        ort = _onnxruntime()
        self.folder = folder
        self.tokenizer = tokenizer
        self.eos = eos
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.max_batch = max_batch
        self.layout = _Layout(folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(folder / self.layout.filename), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own types: any means "cannot load"
            raise ModelInvalid(f"cannot load the model in {folder}: {exc}") from exc
        self._np = np
        self._prefixes = _PrefixCache(prefix_cache_tokens, min_prefix_tokens)
        self._lock = threading.Lock()
        self._pending: list[BatchedRequest] = []
        self._rows: list[_Row] = []
        self._buffers: list[Any] = []
        self._width = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._binding: Any = None
        self._binding_key: tuple[int, int] = (0, 0)
        self._allocations = 0
        self._bound_values: list[Any] = []
        self._logits: Any = None
        self.steps = 0
        self.batch_size = 0

    # -- the caller's side -----------------------------------------------------------------------

    def submit(self, request: BatchedRequest) -> None:
        """Queue ``request``; it joins the batch before the next decode step."""
        with self._lock:
            if self._closed:
                raise GenerationError("the engine is closed")
            self._pending.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="edge-batch", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Stop taking requests; the loop ends once the rows it has are done."""
        with self._lock:
            self._closed = True
            for request in self._pending:
                request.cancel.set()

    @property
    def prefix_stats(self) -> dict[str, int]:
        return {
            "hits": self._prefixes.hits,
            "reused_tokens": self._prefixes.reused_tokens,
            "cached_tokens": self._prefixes.tokens,
        }

    # -- the owner thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._pending and not self._rows:
                        # Idle: the thread ends, and the next submit starts another (no thread outlives work).
                        self._thread = None
                        return
                    joining, self._pending = self._pending, []
                for request in joining:
                    self._join(request)
                if self._rows:
                    self._step()
        except BaseException as exc:  # the loop must not die silently: every caller hears why
            log.exception("the edge batch loop failed")
            with self._lock:
                failed, self._pending = [row.request for row in self._rows] + self._pending, []
                self._rows = []
                self._thread = None
            for request in failed:
                request.outcome.error = f"{type(exc).__name__}: {exc}"
                request.on_done(request.outcome)

    def _join(self, request: BatchedRequest) -> None:
        """Prefill ``request`` alone (reusing a cached prefix), pick its first token, give it a slot."""
        np = self._np
        outcome = request.outcome
        outcome.prompt_tokens = len(request.prompt_ids)
        if request.cancel.is_set():
            outcome.cancelled = True
            request.on_done(outcome)
            return
        ids = np.asarray(request.prompt_ids, dtype=np.int64)
        try:
            logits, kv, cached = self._prefill(ids)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are plain exceptions; the caller hears
            outcome.error = f"prefill failed: {exc}"
            request.on_done(outcome)
            return
        outcome.cached_prompt_tokens = cached
        if request.logprobs:
            outcome.token_logprobs = []
        options = request.options
        budget = max(0, min(options.max_new_tokens, self.context_length - len(ids)))
        row = _Row(
            request, len(ids), [int(t) for t in ids], np.random.default_rng(options.seed),
            self.tokenizer.create_stream(), StopMatcher(options.stop), {}, budget,
        )  # fmt: skip
        if budget == 0:
            self._finish(row, "length", flush=False)
            return
        token = self._pick(row, logits)
        outcome.first_token_s = time.perf_counter() - request.submitted
        if self._emit(row, token):
            return
        self._place(row, kv)

    def _prefill(self, ids: Any) -> tuple[Any, list[Any], int]:
        np = self._np
        layout = self.layout
        hit = self._prefixes.longest(ids)
        start = 0
        past: list[Any]
        if hit is not None:
            start, cached = hit
            past = [np.ascontiguousarray(part[:, :, :start]) for part in cached]
        else:
            empty = np.zeros((1, layout.kv_heads, 0, layout.head_size), np.float32)
            past = [empty] * len(layout.past)
        rest = ids[None, start:]
        feed = {layout.input_ids: rest, layout.attention_mask: np.ones((1, len(ids)), np.int64)}
        feed.update(zip(layout.past, past, strict=True))
        logits, *present = self._session.run([layout.logits, *layout.present], feed)
        self._prefixes.add(ids, present)
        return logits[0, -1], present, start

    def _place(self, row: _Row, kv: list[Any]) -> None:
        """Give ``row`` the next slot of the batch buffers, growing them if needed."""
        self._ensure(len(self._rows) + 1, row.length + 1)
        slot = len(self._rows)
        for buffer, part in zip(self._buffers, kv, strict=True):
            buffer[slot, :, : row.length] = part[0, :, : row.length]
        self._rows.append(row)

    def _ensure(self, rows: int, width: int) -> None:
        np = self._np
        layout = self.layout
        capacity = self._buffers[0].shape[0] if self._buffers else 0
        if rows <= capacity and width <= self._width:
            return
        # Rows double (up to max_batch): a request joining a batch that has room copies nothing.
        new_rows = max(rows, min(self.max_batch, 2 * capacity))
        new_width = max(self._width, _MIN_WIDTH)
        while new_width < width:
            new_width *= 2
        new_width = min(new_width, max(self.context_length, width))
        shape = (new_rows, layout.kv_heads, new_width, layout.head_size)
        buffers = [np.zeros(shape, np.float32) for _ in layout.past]
        used = len(self._rows)
        for old, new in zip(self._buffers, buffers, strict=False):
            new[:used, :, : self._width] = old[:used]
        self._buffers, self._width = buffers, new_width
        self._allocations += 1

    def _step(self) -> None:
        """One decode step for every live row; rows that end leave the batch."""
        np = self._np
        ort = _onnxruntime()
        layout = self.layout
        for row in [row for row in self._rows if row.request.cancel.is_set()]:
            row.request.outcome.cancelled = True
            self._leave(row)
        rows = self._rows
        if not rows:
            return
        count = len(rows)
        width = max(row.length for row in rows) + 1
        self._ensure(count, width)
        self.batch_size = count
        ids = np.array([[row.ids[-1]] for row in rows], np.int64)
        mask = np.zeros((count, width), np.int64)
        for i, row in enumerate(rows):
            mask[i, : row.length + 1] = 1
        binding = self._bound(ort, count)
        binding.bind_cpu_input(layout.input_ids, ids)
        binding.bind_cpu_input(layout.attention_mask, mask)
        self._session.run_with_iobinding(binding)
        logits = self._logits
        self.steps += 1
        for i, row in enumerate(list(rows)):
            row.length += 1
            token = self._pick(row, logits[i, -1])
            self._emit(row, token)

    def _bound(self, ort: Any, count: int) -> Any:
        """The step's binding: the cache buffers' first ``count`` slots as past and present, and the logits.

        Bound once per batch size and buffer (60 tensors), not per step: only the token ids and the
        attention mask change from one step to the next.
        """
        key = (count, self._allocations)
        if self._binding is None or self._binding_key != key:
            layout = self.layout
            binding = self._session.io_binding()
            values = []
            for past, present, buffer in zip(layout.past, layout.present, self._buffers, strict=True):
                # In place: the model writes each row's new keys and values at that row's length.
                value = ort.OrtValue.ortvalue_from_numpy(buffer[:count])
                binding.bind_ortvalue_input(past, value)
                binding.bind_ortvalue_output(present, value)
                values.append(value)
            # Into a buffer of ours: reading it back needs no OrtValue per output (61 of them) each step.
            logits = self._np.empty((count, 1, self.vocab_size), self._np.float32)
            binding.bind_output(layout.logits, "cpu", 0, self._np.float32, list(logits.shape), logits.ctypes.data)
            self._binding, self._binding_key, self._bound_values = binding, key, values
            self._logits = logits
        return self._binding

    def _emit(self, row: _Row, token: int) -> bool:
        """Pass ``token``'s text on; True when the row has ended (and left)."""
        request, outcome = row.request, row.request.outcome
        outcome.completion_tokens += 1
        row.counts[token] = row.counts.get(token, 0) + 1
        if token in self.eos:
            self._finish(row, "stop", flush=True)
            return True
        row.ids.append(token)
        text, stopped = row.matcher.feed(row.stream.decode(token))
        if text:
            request.on_piece(text)
        if stopped:
            self._finish(row, "stop", flush=False)  # the text from the stop sequence on is not the answer's
            return True
        if outcome.completion_tokens >= row.budget:
            self._finish(row, "length", flush=True)
            return True
        return False

    def _finish(self, row: _Row, reason: FinishReason, *, flush: bool) -> None:
        # Text held back in case it began a stop sequence is the answer's after all.
        if flush and (rest := row.matcher.flush()):
            row.request.on_piece(rest)
        row.request.outcome.finish_reason = reason
        self._leave(row)

    def _leave(self, row: _Row) -> None:
        np = self._np
        if row in self._rows:
            slot, last = self._rows.index(row), len(self._rows) - 1
            # What the row computed is worth keeping: the next turn of its conversation starts with it.
            if row.length >= self._prefixes.min_match:
                kv = [buffer[slot : slot + 1, :, : row.length].copy() for buffer in self._buffers]
                self._prefixes.add(np.asarray(row.ids[: row.length], np.int64), kv)
            if slot != last:
                moved = self._rows[last]
                for buffer in self._buffers:
                    buffer[slot, :, : moved.length] = buffer[last, :, : moved.length]
                self._rows[slot] = moved
            self._rows.pop()
        outcome = row.request.outcome
        outcome.elapsed_s = time.perf_counter() - row.request.submitted
        row.request.on_done(outcome)

    def _pick(self, row: _Row, logits: Any) -> int:
        """The row's next token from the last position's ``logits``: its own sampling, its own generator."""
        np = self._np
        options = row.request.options
        raw = np.asarray(logits, dtype=np.float32)
        scores = raw
        if options.repetition_penalty != 1.0 and row.counts:
            scores = raw.copy()
            seen = np.fromiter(row.counts, dtype=np.int64)
            values = scores[seen]
            scores[seen] = np.where(
                values > 0, values / options.repetition_penalty, values * options.repetition_penalty
            )
        token = int(scores.argmax()) if options.temperature <= 0 else _sample(np, scores, options, row.rng)
        if row.request.outcome.token_logprobs is not None:
            # The model's own distribution, before penalty and temperature (as the Generator path reports).
            top = raw.max()
            row.request.outcome.token_logprobs.append(float(raw[token] - top - np.log(np.exp(raw - top).sum())))
        return token


def _sample(np: Any, scores: Any, options: SamplingOptions, rng: Any) -> int:
    """Temperature, then top-k, then top-p over ``scores``; one draw from ``rng``."""
    scaled = scores / options.temperature
    k = options.top_k if 0 < options.top_k < len(scaled) else len(scaled)
    candidates = _NUCLEUS_CANDIDATES if options.top_p < 1.0 else k
    candidates = min(candidates, k)
    while True:
        top = np.argpartition(scaled, -candidates)[-candidates:] if candidates < len(scaled) else np.arange(k)
        order = top[np.argsort(scaled[top])[::-1]]
        shift = scaled.max()
        weights = np.exp(scaled[order] - shift)
        total = np.exp(scaled - shift).sum() if candidates < k else weights.sum()
        cumulative = np.cumsum(weights) / total
        if options.top_p >= 1.0 or cumulative[-1] >= options.top_p or candidates >= k:
            break
        candidates = min(k, candidates * 4)  # the nucleus is wider than the candidates: look at more
    if options.top_p < 1.0:
        keep = int(np.searchsorted(cumulative, options.top_p) + 1)
        order, weights = order[:keep], weights[:keep]
    probabilities = weights / weights.sum()
    return int(order[rng.choice(len(order), p=probabilities)])
