"""The fixed hash split: train, selection and validation rows never overlap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from router.training.data import load_rows


def test_splits_are_disjoint_stable_and_sized(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}", "w": i % 2, "s": 1}) for i in range(2000)) + "\n")

    rows = load_rows([path], "w", "s")
    again = load_rows([path], "w", "s")

    assert not np.any(rows.selection & rows.validation)
    assert np.array_equal(rows.validation, again.validation)
    assert np.array_equal(rows.selection, again.selection)
    # 20% validation; selection is 20% of the remaining 80%.
    assert abs(rows.validation.mean() - 0.2) < 0.03
    assert abs(rows.selection.mean() - 0.16) < 0.03
    train = ~rows.validation & ~rows.selection
    assert abs(train.mean() - 0.64) < 0.04


class RecordingEmbedder:
    """Records the batch sizes it is given."""

    name, dims = "recording", 2

    def __init__(self, cheap: bool) -> None:
        self.cheap = cheap
        self.batches: list[int] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.batches.append(len(texts))
        return np.ones((len(texts), self.dims), dtype=np.float32)


def test_training_embeds_like_serving_one_text_at_a_time_for_the_onnx_encoder(tmp_path: Path) -> None:
    from router.training.cli import _embed

    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}", "w": 0, "s": 1}) for i in range(100)) + "\n")
    rows = load_rows([path], "w", "s")
    onnx_like, static_like = RecordingEmbedder(cheap=False), RecordingEmbedder(cheap=True)

    assert _embed(onnx_like, rows).shape == (100, 2)
    _embed(static_like, rows)

    assert set(onnx_like.batches) == {1}
    assert max(static_like.batches) > 1
