"""A model's own recommended sampling: what the edge target uses when a request sets none.

OpenAI's API defaults ``temperature`` and ``top_p`` to 1.0, which makes a
135M model wander ("What is the capital of France?" gets a ramble); the
model's authors recommend their own settings, and an ONNX GenAI model folder
carries them in ``genai_config.json``'s ``"search"`` section (the builder
copies them there from the Hugging Face ``generation_config.json``). This
module reads that section with Hugging Face's meaning: ``do_sample: false``
is greedy, whatever the temperature says.

A build of a known model from before its recommendation was written into the
folder (its ``build.json`` has no ``"generation"``) gets the catalog's values,
so an old model cache does not silently turn greedy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_models.catalog import KNOWN_MODELS, KnownModel

__all__ = ["SamplingDefaults", "sampling_defaults"]

_BUILD_MANIFEST = "build.json"
# Hugging Face's GenerationConfig defaults, for keys a generation config leaves out.
_HF_TOP_K = 50


@dataclass(frozen=True)
class SamplingDefaults:
    """Sampling for a request that sets none. ``temperature == 0`` is greedy; ``top_k == 0`` is off."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    # Where the values came from, for the load log and the docs: "genai_config.json", "catalog", "none".
    source: str = "none"

    def describe(self) -> str:
        if self.temperature <= 0:
            how = "greedy"
        else:
            how = f"temperature {self.temperature:g}, top_p {self.top_p:g}" + (
                f", top_k {self.top_k}" if self.top_k else ""
            )
        if self.repetition_penalty != 1.0:
            how += f", repetition_penalty {self.repetition_penalty:g}"
        return f"{how} (from {self.source})"


def sampling_defaults(folder: Path, genai_config: Mapping[str, Any]) -> SamplingDefaults:
    """The recommended sampling of the model in ``folder``, whose parsed ``genai_config.json`` is given."""
    search = genai_config.get("search")
    if isinstance(search, Mapping) and search.get("do_sample"):
        return _from_generation_config(search, "genai_config.json")
    known = _known_build(folder)
    if known is not None and known.generation:
        return _from_generation_config(known.generation, f"the {known.name} catalog entry")
    if isinstance(search, Mapping):
        return _from_generation_config(search, "genai_config.json")
    return SamplingDefaults()


def _from_generation_config(config: Mapping[str, Any], source: str) -> SamplingDefaults:
    repetition_penalty = _number(config.get("repetition_penalty"), 1.0)
    if not config.get("do_sample"):
        return SamplingDefaults(repetition_penalty=repetition_penalty, source=source)
    return SamplingDefaults(
        temperature=_number(config.get("temperature"), 1.0),
        top_p=_number(config.get("top_p"), 1.0),
        top_k=int(_number(config.get("top_k"), _HF_TOP_K)),
        repetition_penalty=repetition_penalty,
        source=source,
    )


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else default


def _known_build(folder: Path) -> KnownModel | None:
    """The catalog entry of a build of ours that predates writing the recommendation into the folder."""
    try:
        manifest = json.loads((folder / _BUILD_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or "generation" in manifest:
        return None
    return KNOWN_MODELS.get(str(manifest.get("name")))
