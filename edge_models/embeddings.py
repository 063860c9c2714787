"""Running the sentence encoders built by :mod:`edge_models.encoders`.

Serving needs only onnxruntime, tokenizers and numpy:

* :class:`StaticEmbedder` looks each token up in the distilled table and
  averages: microseconds, whatever the prompt length;
* :class:`OnnxEmbedder` runs the full MiniLM on the first ``max_tokens``
  tokens: better embeddings, milliseconds per call.

Both return L2-normalised float32 rows, one per input text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_models.catalog import default_models_dir
from edge_models.errors import ModelInvalid, ModelNotFound

__all__ = ["OnnxEmbedder", "StaticEmbedder", "encoder_dir"]

ENCODER_NAME = "all-minilm-l6-v2"
Matrix = npt.NDArray[np.float32]


def encoder_dir(models_dir: Path | None = None) -> Path:
    """Where ``hybrid-router edge build`` puts the encoders; :class:`ModelNotFound` with a hint if absent."""
    folder = (models_dir or default_models_dir()) / ENCODER_NAME
    if not (folder / "build.json").is_file():
        raise ModelNotFound(f"the sentence encoder is not built at {folder}: run `hybrid-router edge build`")
    return folder


def _tokenizer(folder: Path) -> Any:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as exc:
        raise ModelInvalid(f"cannot load {folder / 'tokenizer.json'}: {exc}") from exc


def _normalise(rows: npt.NDArray[Any]) -> Matrix:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    out: Matrix = (rows / np.maximum(norms, 1e-9)).astype(np.float32)
    return out


class StaticEmbedder:
    """Mean of distilled static token vectors."""

    cheap = True  # a table lookup: tens of microseconds for a short text

    def __init__(self, folder: Path, *, max_tokens: int = 4096) -> None:
        self.folder = folder
        try:
            self.table: Matrix = np.load(folder / "static.npy")
        except OSError as exc:
            raise ModelInvalid(f"cannot load {folder / 'static.npy'}: {exc}") from exc
        self.tokenizer = _tokenizer(folder)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_tokens = max_tokens
        self.dims = int(self.table.shape[1])
        self.name = f"static-{self.dims}"

    def embed(self, texts: Sequence[str]) -> Matrix:
        rows = []
        for encoding in self.tokenizer.encode_batch(list(texts), add_special_tokens=False):
            ids = encoding.ids[: self.max_tokens] or [0]
            rows.append(self.table[ids].mean(axis=0))
        return _normalise(np.stack(rows))


class OnnxEmbedder:
    """all-MiniLM-L6-v2 through ONNX Runtime, on the first ``max_tokens`` tokens."""

    cheap = False  # a transformer pass: milliseconds, so it runs off the event loop

    def __init__(self, folder: Path, *, max_tokens: int = 128, threads: int = 1) -> None:
        import onnxruntime as ort

        self.folder = folder
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelInvalid(f"cannot load {folder / 'model.onnx'}: {exc}") from exc
        self.tokenizer = _tokenizer(folder)
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.enable_padding()
        self.max_tokens = max_tokens
        manifest = json.loads((folder / "build.json").read_text())
        self.dims = int(manifest["onnx"]["dims"])
        self.name = f"minilm-{manifest['onnx']['precision']}"

    def embed(self, texts: Sequence[str]) -> Matrix:
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        out: Matrix = np.asarray(self.session.run(None, feed)[0], dtype=np.float32)
        return out
