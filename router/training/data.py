"""Loading router training rows: prompts plus per-model 0/1 correctness columns.

A row has a ``prompt``, or a ``question`` (with optional ``choices``, laid out
like RouteLLM's MMLU prompt), and correctness columns such as
``gpt4_correct``. ``--join FILE`` adds columns from another JSONL keyed by
``id`` (the edge model's labels, see :mod:`edge_models.labeling`), matched on
:func:`row_id`. The validation split is a fixed hash of the row id, so it is
the same for every run and every machine. A second hash picks the
*selection* rows out of the training rows: candidate heads are compared on
those, so the validation rows are not used to pick the head they report on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_models.labeling import read_jsonl, row_id

__all__ = ["Rows", "load_rows", "prompt_of", "row_id"]


def prompt_of(row: dict[str, Any]) -> str:
    if row.get("prompt"):
        return str(row["prompt"])
    question = str(row["question"])
    choices = row.get("choices") or []
    if not choices:
        return question
    letters = "ABCDEFGHIJ"
    return question + "\n" + "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(choices)) + "\nAnswer:"


@dataclass
class Rows:
    """Prompts and the two correctness vectors of a weak/strong pair."""

    prompts: list[str]
    weak: npt.NDArray[np.float64]
    strong: npt.NDArray[np.float64]
    ids: list[str]
    contaminated: npt.NDArray[np.bool_]
    validation: npt.NDArray[np.bool_]
    # A second, independent hash split of the training rows: heads are compared
    # on it, so the validation rows stay unseen until the final report.
    selection: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, mask: npt.NDArray[np.bool_]) -> Rows:
        keep = np.flatnonzero(mask)
        return Rows(
            [self.prompts[i] for i in keep],
            self.weak[keep],
            self.strong[keep],
            [self.ids[i] for i in keep],
            self.contaminated[keep],
            self.validation[keep],
            self.selection[keep],
        )

    def split(self) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Masks of the rows to fit on, to pick the head kind on, and to report on;
        contaminated rows are left out of the last two, as RouteLLM does."""
        clean = ~self.contaminated
        return ~self.validation & ~self.selection, self.selection & clean, self.validation & clean

    @property
    def edge_worse(self) -> npt.NDArray[np.float64]:
        """The training target: the strong model right where the weak one is wrong."""
        return ((self.strong > 0.5) & (self.weak < 0.5)).astype(np.float64)


def load_rows(
    paths: Sequence[Path],
    weak_col: str,
    strong_col: str,
    *,
    join: Sequence[Path] = (),
    validation_share: float = 0.2,
    require_labels: bool = True,
) -> Rows:
    """Rows having both columns; rows missing either (e.g. unlabelled by ``join``) are skipped
    unless ``require_labels`` is False (calibration needs only prompts)."""
    extra: dict[str, dict[str, Any]] = {}
    for path in join:
        for item in read_jsonl(path):
            extra.setdefault(str(item["id"]), {}).update(item)
    prompts, weak, strong, ids, contaminated, validation, selection = [], [], [], [], [], [], []
    for path in paths:
        for row in read_jsonl(path):
            key = row_id(row)
            merged = {**row, **extra.get(key, {})}
            if require_labels and (weak_col not in merged or strong_col not in merged):
                continue
            prompts.append(prompt_of(row))
            weak.append(float(merged.get(weak_col, 0)))
            strong.append(float(merged.get(strong_col, 0)))
            ids.append(key)
            contaminated.append(bool(row.get("routellm_contaminated", False)))
            validation.append(int(key[:8], 16) / 0xFFFFFFFF < validation_share)
            selection.append(int(key[8:16], 16) / 0xFFFFFFFF < validation_share)
    if not prompts:
        raise ValueError(f"no row has both {weak_col!r} and {strong_col!r}")
    return Rows(
        prompts,
        np.array(weak),
        np.array(strong),
        ids,
        np.array(contaminated),
        np.array(validation),
        np.array(selection) & ~np.array(validation, dtype=bool),
    )
