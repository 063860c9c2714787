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
