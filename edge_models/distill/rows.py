"""Training rows: OpenAI's chat fine-tuning format, their hashes and the fixed holdout.

A row is ``{"messages": [...], "metadata": {...}}`` exactly as OpenAI's fine-tuning
files have it (``metadata`` is ours and optional), so a dataset exported from
elsewhere trains and evaluates here unchanged.

Two hashes per row:

- :func:`row_hash` over all its messages: duplicates are the same row;
- :func:`prompt_hash` over the messages before the final assistant answer: the
  holdout is chosen by it, so the same question with another answer can never
  sit on both sides of the split.

The holdout is a fixed slice of hash space (:func:`is_holdout`): the same rows
are held out on every machine, in every run, forever, and are never trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "HOLDOUT_FRACTION",
    "ReadReport",
    "Row",
    "answer_of",
    "check_row",
    "is_holdout",
    "prompt_hash",
    "prompt_messages",
    "read_rows",
    "row_hash",
    "split_holdout",
]

Row = dict[str, Any]

HOLDOUT_FRACTION = 0.1
"""The share of prompt-hash space that is never trained on."""

_ROLES = frozenset({"system", "developer", "user", "assistant"})


def _canonical(messages: Sequence[Mapping[str, Any]]) -> bytes:
    # Only role and content: ids, names and timestamps must not make a duplicate look new.
    plain = [[str(m.get("role", "")), m.get("content")] for m in messages]
    return json.dumps(plain, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def row_hash(messages: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of the messages' roles and contents (hex).

    >>> row_hash([{"role": "user", "content": "hi"}]) == row_hash([{"content": "hi", "role": "user", "x": 1}])
    True
    """
    return hashlib.sha256(_canonical(messages)).hexdigest()


def prompt_messages(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The messages before the final assistant answer (all of them if there is none)."""
    if messages and messages[-1].get("role") == "assistant":
        return list(messages[:-1])
    return list(messages)


def answer_of(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The final assistant answer's text, or None."""
    if messages and messages[-1].get("role") == "assistant":
        content = messages[-1].get("content")
        return content if isinstance(content, str) else None
    return None


def prompt_hash(messages: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of the prompt part of a row (:func:`prompt_messages`)."""
    return row_hash(prompt_messages(messages))


def is_holdout(messages: Sequence[Mapping[str, Any]], fraction: float = HOLDOUT_FRACTION) -> bool:
    """Whether this row's prompt falls in the permanent holdout slice.

    >>> rows = [[{"role": "user", "content": f"q{i}"}] for i in range(2000)]
    >>> 0.08 < sum(is_holdout(r) for r in rows) / 2000 < 0.12
    True
    """
    return int(prompt_hash(messages)[:8], 16) < fraction * 0x1_0000_0000


@dataclass
class ReadReport:
    """What :func:`read_rows` read: rows kept, and lines skipped with the first few reasons."""

    files: int = 0
    rows: int = 0
    skipped: int = 0
    duplicates: int = 0
    reasons: list[str] = field(default_factory=list)

    def skip(self, where: str, why: str) -> None:
        self.skipped += 1
        if len(self.reasons) < 5:
            self.reasons.append(f"{where}: {why}")


def _check(row: Any) -> str | None:
    """Why ``row`` is not a trainable chat row, or None."""
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
        return "not an object with a 'messages' list"
    messages = row["messages"]
    if len(messages) < 2:
        return "fewer than two messages"
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            return "a message has no known role (system, developer, user, assistant)"
        if not isinstance(message.get("content"), str):
            return "a message's content is not a string (tools and parts are not trained on)"
    if messages[-1]["role"] != "assistant":
        return "the last message is not the assistant's answer"
    if "metadata" in row and not isinstance(row["metadata"], dict):
        return "metadata is not an object"
    return None


def check_row(row: Any) -> str | None:
    """Why ``row`` is not a trainable chat row (string contents, a final assistant answer), or None."""
    return _check(row)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(path.rglob("*.jsonl"))
    return [path]


def read_rows(paths: Path | Iterable[Path], report: ReadReport | None = None, *, dedupe: bool = True) -> Iterator[Row]:
    """The valid rows of JSONL files (a folder means every ``*.jsonl`` under it), duplicates dropped.

    Bad lines are skipped and counted in ``report``, never fatal: a captured
    dataset of thousands of rows is not thrown away for one truncated line.
    """
    report = report if report is not None else ReadReport()
    seen: set[str] = set()
    for root in [paths] if isinstance(paths, Path) else paths:
        for file in _files(root):
            report.files += 1
            with file.open(encoding="utf-8", errors="replace") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    where = f"{file.name}:{number}"
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        report.skip(where, f"not JSON ({exc.msg})")
                        continue
                    if (why := _check(row)) is not None:
                        report.skip(where, why)
                        continue
                    if dedupe:
                        digest = row_hash(row["messages"])
                        if digest in seen:
                            report.duplicates += 1
                            continue
                        seen.add(digest)
                    report.rows += 1
                    yield row


def split_holdout(rows: Iterable[Row], fraction: float = HOLDOUT_FRACTION) -> tuple[list[Row], list[Row]]:
    """(train, holdout) by the fixed prompt-hash slice."""
    train: list[Row] = []
    holdout: list[Row] = []
    for row in rows:
        (holdout if is_holdout(row["messages"], fraction) else train).append(row)
    return train, holdout
