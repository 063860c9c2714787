"""Fake engines and a scratch registry for the live-swap tests: a swap without loading a real model.

A :class:`FakeEngine` answers ``reply`` word by word and records the
messages it was asked to encode (so a test sees the prompt aliases); a
``hold`` event keeps its generation in flight until the test lets it go.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_models.distill.manifest import ConfidenceGate, StudentManifest
from edge_models.errors import ModelInvalid
from edge_models.generation_config import SamplingDefaults
from edge_models.runtime import SamplingOptions
from router.backends.edge import EdgeBackend
from router.chat import ChatRequest
from router.config import OnnxTargetConfig


class FakeGeneration:
    def __init__(self, engine: FakeEngine, prompt_ids: Any, options: SamplingOptions, cancel: threading.Event) -> None:
        self.engine = engine
        self.cancel = cancel
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.token_logprobs: list[float] | None = None
        self.max_new_tokens = options.max_new_tokens

    def __iter__(self) -> Iterator[str]:
        words = self.engine.reply.split(" ") if self.engine.reply else []
        for index, word in enumerate(words[: self.max_new_tokens]):
            if index == 1 and self.engine.hold is not None:
                self.engine.hold.wait(timeout=10)
            if self.cancel.is_set():
                return
            self.completion_tokens += 1
            yield word if index == 0 else " " + word
        self.finish_reason = "stop"


@dataclass(eq=False)
class FakeEngine:
    """Plays :class:`edge_models.runtime.EdgeModel`: one id per word of the rendered chat."""

    folder: Path
    reply: str
    hold: threading.Event | None = None
    context_length: int = 2048
    encoded: list[list[dict[str, str]]] = field(default_factory=list)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> Any:
        self.encoded.append([dict(m) for m in messages])
        words = " ".join(f"<{m['role']}> {m['content']}" for m in messages).split()
        return np.arange(len(words), dtype=np.int32)

    def generate(
        self,
        prompt_ids: Any,
        options: SamplingOptions,
        cancel: threading.Event | None = None,
        *,
        logprobs: bool = False,
    ) -> FakeGeneration:
        return FakeGeneration(self, prompt_ids, options, cancel or threading.Event())


@dataclass
class FakeLoader:
    """``loader(folder, threads)`` for an :class:`EdgeBackend`: a fresh engine per load, by folder name."""

    replies: dict[str, str]
    broken: set[str] = field(default_factory=set)
    hold: dict[str, threading.Event] = field(default_factory=dict)
    loaded: list[FakeEngine] = field(default_factory=list)

    def __call__(self, folder: Path, threads: int) -> Any:
        if folder.name in self.broken:
            raise ModelInvalid(f"cannot load the model in {folder}: corrupt model.onnx")
        engine = FakeEngine(folder, self.replies[folder.name], hold=self.hold.get(folder.name))
        self.loaded.append(engine)
        return engine


def fake_model_folder(folder: Path) -> Path:
    """A folder that passes the catalog's checks (the fake loader never reads it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("genai_config.json", "model.onnx", "tokenizer.json"):
        (folder / name).write_text("{}")
    return folder


def write_version(
    registry: Path,
    version: str,
    *,
    aliases: Mapping[str, str] | None = None,
    tasks: tuple[str, ...] = ("banking77",),
    metrics: Mapping[str, Any] | None = None,
    files_from: Path | None = None,
) -> Path:
    """``registry/<version>``: the files of ``files_from`` (symlinked) or fake ones, plus its distill.json."""
    folder = registry / version
    if files_from is None:
        fake_model_folder(folder)
    else:
        folder.mkdir(parents=True)
        for item in files_from.iterdir():
            (folder / item.name).symlink_to(item)
    StudentManifest(
        version=version,
        parent="smollm2-135m-instruct",
        data_sha256="0" * 64,
        train_rows=100,
        holdout_rows=10,
        created_at="2025-01-01T00:00:00Z",
        tasks=tasks,
        prompt_aliases=dict(aliases or {}),
        gate=ConfidenceGate(threshold=-0.25, signal="min", coverage=0.8),
        metrics=dict(metrics or {"holdout": {"exact_match": 0.91}, "promotable": True, "decision": "promotable"}),
    ).save(folder)
    return folder


def edge_backend(
    base: Path, loader: Callable[[Path, int], Any], *, registry: Path | None = None, **config: Any
) -> EdgeBackend:
    values: dict[str, Any] = {"type": "onnx", "model": str(base), "max_concurrency": 2, **config}
    if registry is not None:
        values.update(distilled=True, registry=str(registry))
    return EdgeBackend("edge", OnnxTargetConfig.model_validate(values), loader=loader)


def ask(content: str = "hi", system: str | None = None, **extra: Any) -> ChatRequest:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": content})
    return ChatRequest.model_validate({"messages": messages, **extra})


def answer(result: Any) -> str:
    return str(result.body["choices"][0]["message"]["content"])
