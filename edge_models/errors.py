"""Errors of the local-model layer; the edge backend maps them onto the router's tree.

EdgeModelError
├── ModelNotFound        no model folder where config points
├── ModelInvalid         a folder that ONNX Runtime GenAI cannot load
├── PromptTooLong        the prompt leaves no room to generate
├── GenerationError      ONNX Runtime failed while generating
└── MissingDependency    an optional package is not installed
"""

from __future__ import annotations

__all__ = ["EdgeModelError", "GenerationError", "MissingDependency", "ModelInvalid", "ModelNotFound", "PromptTooLong"]


class EdgeModelError(Exception):
    """Base of this package's errors."""


class ModelNotFound(EdgeModelError):
    """The configured model has not been built, or the path holds no model."""


class ModelInvalid(EdgeModelError):
    """The folder exists but is not a loadable ONNX GenAI model."""


class PromptTooLong(EdgeModelError):
    """The prompt is as long as the model's window, or longer."""

    def __init__(self, message: str, *, prompt_tokens: int, context_length: int) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


class GenerationError(EdgeModelError):
    """ONNX Runtime GenAI raised while generating."""


class MissingDependency(EdgeModelError):
    """An optional dependency is missing; the message says what to install."""
