"""Key records to and from the JSON both shared stores keep them as."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from router.state.base import KeyLimits, KeyRecord

__all__ = ["key_from_json", "key_to_json"]


def key_to_json(record: KeyRecord) -> str:
    """The record as JSON: its hash, never a key.

    >>> record = KeyRecord("sha256:" + "a" * 64, "acme", allowed_targets=("edge",))
    >>> key_from_json(key_to_json(record)) == record
    True
    """
    return orjson.dumps(dataclasses.asdict(record)).decode()


def key_from_json(text: str | bytes) -> KeyRecord:
    data: dict[str, Any] = orjson.loads(text)
    targets = data.pop("allowed_targets")
    return KeyRecord(
        **{**data, "limits": KeyLimits(**data["limits"])},
        allowed_targets=None if targets is None else tuple(targets),
    )
