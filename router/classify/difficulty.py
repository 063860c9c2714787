"""How hard a request is for the edge model: P(the edge answer is worse than the cloud's).

:class:`DifficultyHead` is a small trained ONNX model over the request's
embedding (``hybrid-router router train`` writes one; a default trained for
the default edge model ships in ``router/classify/assets``).
:func:`rule_based_difficulty` is the fallback when no head is configured or
the classifier runs out of time: a transparent score from length, code and
math, never claimed to be learned.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from router.errors import ConfigError

__all__ = ["DEFAULT_HEAD", "DifficultyHead", "rule_based_difficulty"]

DEFAULT_HEAD = Path(__file__).with_name("assets") / "difficulty_head.onnx"
_HARD_WORDS = re.compile(
    r"\b(?:prove|derive|explain why|step by step|analy[sz]e|compare|design|optimi[sz]e|implement|debug|"
    r"algorithm|theorem|complexity|trade-?offs?)\b",
    re.IGNORECASE,
)


def rule_based_difficulty(*, prompt_tokens: int, has_code: bool, has_math: bool, text: str) -> float:
    """A hand-set score in [0, 1]: longer, code, math and analytical verbs raise it.

    >>> rule_based_difficulty(prompt_tokens=10, has_code=False, has_math=False, text="hi")
    0.1
    """
    score = 0.1 + min(prompt_tokens, 2000) / 2000 * 0.3
    score += 0.2 if has_code else 0.0
    score += 0.2 if has_math else 0.0
    score += 0.2 if _HARD_WORDS.search(text[:4000]) else 0.0
    return round(min(score, 1.0), 4)


class DifficultyHead:
    """A trained head: embedding -> probability; tied to the encoder it was trained on."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ConfigError(f"classifier.difficulty_head: cannot load {path}: {exc}") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        self.path = path
        self.encoder = meta.get("encoder", "unknown")
        self.info: dict[str, Any] = json.loads(meta.get("training", "{}"))
        self.dims = int(self.session.get_inputs()[0].shape[1])

    def check_encoder(self, encoder: str, dims: int) -> None:
        if self.encoder != encoder or self.dims != dims:
            raise ConfigError(
                f"classifier.difficulty_head: {self.path} was trained on encoder {self.encoder} "
                f"({self.dims} dims) but the classifier uses {encoder} ({dims} dims); "
                "set classifier.encoder to match, or train a head for it with `hybrid-router router train`"
            )

    def score(self, vector: Any) -> float:
        out = self.session.run(None, {"embedding": np.asarray(vector, dtype=np.float32).reshape(1, -1)})[0]
        return float(np.asarray(out).reshape(-1)[0])
