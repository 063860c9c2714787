"""Building backends from target config.

Adapters are imported only when a target of their type is configured, so a
deployment without, say, the ONNX edge model never imports onnxruntime-genai.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from router.backends.base import Backend, capabilities_for
from router.backends.fake import ScriptedBackend, ScriptedReply
from router.config import FakeTargetConfig

__all__ = ["BACKEND_TYPES", "create_backend"]

# type -> "module:Class"; each class takes (name, config, **injected).
BACKEND_TYPES: Mapping[str, str] = {
    "openai": "router.backends.openai_compat:OpenAIBackend",
    "azure_openai": "router.backends.azure_openai:AzureOpenAIBackend",
    "bedrock": "router.backends.bedrock:BedrockBackend",
    "gemini": "router.backends.gemini:GeminiBackend",
    "vertex": "router.backends.vertex:VertexBackend",
    "anthropic": "router.backends.anthropic:AnthropicBackend",
    "onnx": "router.backends.edge:EdgeBackend",
}


def _fake(name: str, config: FakeTargetConfig) -> ScriptedBackend:
    return ScriptedBackend(
        name=name,
        script=ScriptedReply(text=config.reply, delay_s=config.delay_s),
        model=config.model,
        capabilities=capabilities_for(
            config.supports,
            tools=False,
            json_schema=False,
            images=False,
            context_window=config.context_window,
            local=config.local,
        ),
    )


def create_backend(name: str, config: Any, **injected: Any) -> Backend:
    """The backend for target ``name``; ``injected`` reaches the adapter's constructor."""
    if isinstance(config, FakeTargetConfig):
        return _fake(name, config)
    module_name, _, class_name = BACKEND_TYPES[config.type].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = cls(name, config, **injected)
    return backend
