"""Running an ONNX GenAI model: chat templating, tokenising, generating text.

Everything here is synchronous and thread-safe per :class:`Generation`:
callers run generations in worker threads (ONNX Runtime releases the GIL
while it computes) and stop one by setting its ``cancel`` event, which is
checked before every decode step.

>>> # doctest: +SKIP
>>> model = EdgeModel.load(resolve_model("smollm2-135m-instruct"))
>>> gen = model.generate(model.encode_chat([{"role": "user", "content": "Hi"}]), SamplingOptions(16))
>>> "".join(gen), gen.finish_reason
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edge_models.catalog import check_model_folder
from edge_models.errors import GenerationError, MissingDependency, ModelInvalid, PromptTooLong
from edge_models.generation_config import sampling_defaults

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "ChatMessage",
    "EdgeModel",
    "FinishReason",
    "Generation",
    "SamplingOptions",
    "StopMatcher",
    "cpu_limit",
    "default_threads",
    "token_logprob",
]

ChatMessage = dict[str, str]
FinishReason = Literal["stop", "length"]

log = logging.getLogger("hybrid_router.edge")


CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def default_threads(cpu_max: Path = CPU_MAX) -> int:
    """The cores this process may use: its CPU affinity, capped by a container's CPU limit (cgroup v2).

    A CPU limit does not hide the node's cores from the affinity mask, so a
    container limited to 2 CPUs on a 64-core node would otherwise run 64
    threads and be throttled.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cpu_limit(cpu_max)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return max(1, cores)


def cpu_limit(cpu_max: Path = CPU_MAX) -> float | None:
    """CPUs the cgroup may use (``quota / period`` from ``cpu.max``); None when unlimited or unknown.

    >>> import tempfile; path = Path(tempfile.mkdtemp()) / "cpu.max"
    >>> _ = path.write_text("150000 100000\n"); cpu_limit(path)
    1.5
    >>> _ = path.write_text("max 100000\n"); cpu_limit(path) is None
    True
    """
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def _genai() -> Any:
    try:
        import onnxruntime_genai as og
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise MissingDependency("onnxruntime-genai is not installed: pip install onnxruntime-genai") from exc
    return og


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """How to pick tokens. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    repetition_penalty: float = 1.0
    stop: Sequence[str] = ()


class StopMatcher:
    """Cuts generated text at the first stop sequence, across piece boundaries.

    Text that might be the start of a stop sequence is held back until the
    next piece shows whether it is.

    >>> m = StopMatcher(["END"])
    >>> m.feed("abc E"), m.feed("N"), m.feed("D tail")
    (('abc ', False), ('', False), ('', True))
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        buffer = self.pending + text
        hits = [index for stop in self.stops if (index := buffer.find(stop)) >= 0]
        if hits:
            self.pending = ""
            return buffer[: min(hits)], True
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buffer)), hold, -1):
                if buffer.endswith(stop[:size]):
                    hold = size
                    break
        self.pending = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        rest, self.pending = self.pending, ""
        return rest


class Generation:
    """One generation: iterate it for text pieces, then read the counts.

    Pieces are whole characters (the tokenizer stream never splits a UTF-8
    sequence) with stop sequences already removed. With ``logprobs=True``,
    :attr:`token_logprobs` collects the model's log-probability of each
    generated token (end-of-sequence included): a confidence signal for the
    answer, at the cost of one logits copy and log-softmax per step.
    """

    def __init__(
        self,
        model: EdgeModel,
        prompt_ids: npt.NDArray[np.int32],
        options: SamplingOptions,
        cancel: threading.Event | None = None,
        *,
        logprobs: bool = False,
    ) -> None:
        self.model = model
        self.prompt_ids = prompt_ids
        self.options = options
        self.cancel = cancel or threading.Event()
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None
        self.cancelled = False
        self.first_token_s: float | None = None
        self.elapsed_s = 0.0
        self.token_logprobs: list[float] | None = [] if logprobs else None

    def __iter__(self) -> Iterator[str]:
        og = _genai()
        model = self.model
        started = time.perf_counter()
        budget = min(self.options.max_new_tokens, model.context_length - self.prompt_tokens)
        try:
            generator = og.Generator(model.model, model.search_params(self.options, self.prompt_tokens + budget))
            generator.append_tokens(self.prompt_ids)
        except Exception as exc:
            raise GenerationError(f"could not start generation: {exc}") from exc
        stream = model.tokenizer.create_stream()
        matcher = StopMatcher(self.options.stop)
        eos = model.eos_token_ids
        last = -1
        try:
            while not generator.is_done():
                if self.cancel.is_set():
                    self.cancelled = True
                    return
                # The logits the next token is picked from, read before the pick (which only
                # reads them): the model's own distribution, before repetition penalty or temperature.
                logits = generator.get_logits() if self.token_logprobs is not None else None
                generator.generate_next_token()
                last = int(generator.get_next_tokens()[0])
                self.completion_tokens += 1
                if self.token_logprobs is not None:
                    self.token_logprobs.append(token_logprob(logits, last))
                if self.first_token_s is None:
                    self.first_token_s = time.perf_counter() - started
                if last in eos:
                    break
                text, stopped = matcher.feed(stream.decode(last))
                if text:
                    yield text
                if stopped:
                    self.finish_reason = "stop"
                    return
            if rest := matcher.flush():
                yield rest
            self.finish_reason = "stop" if last in eos else "length"
        except GeneratorExit:
            self.cancelled = True
            raise
        except Exception as exc:
            raise GenerationError(f"generation failed: {exc}") from exc
        finally:
            self.elapsed_s = time.perf_counter() - started
            del generator


def token_logprob(logits: Any, token: int) -> float:
    """``log_softmax(logits)[token]`` over the last position's logits, computed stably.

    >>> import numpy as np
    >>> round(token_logprob(np.log(np.array([[[0.5, 0.25, 0.25]]], dtype=np.float32)), 1), 4)
    -1.3863
    """
    import numpy as np

    row = np.asarray(logits, dtype=np.float32).reshape(-1)
    top = row.max()
    return float(row[token] - top - np.log(np.exp(row - top).sum()))


class EdgeModel:
    """A loaded ONNX GenAI model and its tokenizer."""

    def __init__(self, folder: Path, model: Any, tokenizer: Any, config: dict[str, Any], threads: int) -> None:
        self.folder = folder
        self.model = model
        self.tokenizer = tokenizer
        self.threads = threads
        decoder = config["model"]
        self.context_length = int(decoder.get("context_length") or config["search"]["max_length"])
        eos = decoder.get("eos_token_id", [])
        self.eos_token_ids = frozenset(eos if isinstance(eos, list) else [eos])
        self.model_type = str(decoder.get("type", "unknown"))
        self.vocab_size = int(decoder.get("vocab_size", 0))
        # What a request that sets no sampling gets (the model's recommendation, not OpenAI's 1.0).
        self.sampling = sampling_defaults(folder, config)

    @classmethod
    def load(cls, folder: Path, *, threads: int | None = None, generator: bool = True) -> EdgeModel:
        """Load the model in ``folder`` with ``threads`` intra-op threads (default: all cores).

        ``generator=False`` loads only the tokenizer and chat template
        (:class:`~edge_models.chat_tokenizer.ChatTokenizer`), for callers that
        run the weights themselves (the continuous batcher): onnxruntime-genai's
        model would hold a second copy of them. A folder whose tokenizer or
        template that cannot read gets onnxruntime-genai's model all the same.
        """
        check_model_folder(folder)
        threads = threads or default_threads()
        try:
            config = json.loads((folder / "genai_config.json").read_text())
        except (OSError, ValueError) as exc:
            raise ModelInvalid(f"cannot load the model in {folder}: {exc}") from exc
        if not generator:
            from edge_models.chat_tokenizer import ChatTokenizer

            try:
                return cls(folder, None, ChatTokenizer.load(folder), config, threads)
            except ModelInvalid as exc:
                log.info("tokenizing %s with onnxruntime-genai's model: %s", folder, exc)
            except KeyError as exc:
                raise ModelInvalid(f"cannot load the model in {folder}: {exc}") from exc
        og = _genai()
        try:
            og_config = og.Config(str(folder))
            og_config.overlay(
                json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}})
            )
            model = og.Model(og_config)
            tokenizer = og.Tokenizer(model)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelInvalid(f"cannot load the model in {folder}: {exc}") from exc
        return cls(folder, model, tokenizer, config, threads)

    def search_params(self, options: SamplingOptions, max_length: int) -> Any:
        og = _genai()
        params = og.GeneratorParams(self.model)
        search: dict[str, Any] = {"max_length": max_length, "repetition_penalty": options.repetition_penalty}
        if options.temperature > 0:
            search.update(do_sample=True, temperature=options.temperature, top_p=options.top_p)
            search["top_k"] = options.top_k or self.vocab_size or 50
            if options.seed is not None:
                search["random_seed"] = options.seed
        else:
            search["do_sample"] = False
        params.set_search_options(**search)
        return params

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        return str(self.tokenizer.apply_chat_template(json.dumps(list(messages)), add_generation_prompt=True))

    def encode(self, text: str) -> npt.NDArray[np.int32]:
        ids: npt.NDArray[np.int32] = self.tokenizer.encode(text)
        return ids

    def encode_chat(self, messages: Sequence[ChatMessage]) -> npt.NDArray[np.int32]:
        return self.encode(self.render_chat(messages))

    def check_fits(self, prompt_tokens: int) -> None:
        if prompt_tokens >= self.context_length:
            raise PromptTooLong(
                f"the prompt has {prompt_tokens} tokens; the model's window is {self.context_length}",
                prompt_tokens=prompt_tokens,
                context_length=self.context_length,
            )

    def generate(
        self,
        prompt_ids: npt.NDArray[np.int32],
        options: SamplingOptions,
        cancel: threading.Event | None = None,
        *,
        logprobs: bool = False,
    ) -> Generation:
        self.check_fits(len(prompt_ids))
        if self.model is None:
            raise GenerationError("this model was loaded to tokenize only (generator=False); its batch generates")
        return Generation(self, prompt_ids, options, cancel, logprobs=logprobs)

    def next_token_logprobs(self, prompt_ids: npt.NDArray[np.int32], tokens: Sequence[int]) -> list[float]:
        """The log-probability of each of ``tokens`` being the next one after ``prompt_ids`` (one prefill)."""
        self.check_fits(len(prompt_ids))
        if self.model is None:
            raise GenerationError("this model was loaded to tokenize only (generator=False)")
        generator = _genai().Generator(self.model, self.search_params(SamplingOptions(1), len(prompt_ids) + 1))
        generator.append_tokens(prompt_ids)
        logits = generator.get_logits()
        return [token_logprob(logits, token) for token in tokens]
