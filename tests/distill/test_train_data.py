"""What the trainer learns from: assistant tokens only, through the chat template, never the holdout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_models.distill.prefix import alias_for, system_hash
from edge_models.distill.rows import ReadReport, is_holdout
from edge_models.distill.train import IGNORE, TrainOptions, _batches, load_training_rows, parse_duration, tokenize

SYSTEM = "You classify banking messages into one of these intents: " + ", ".join(f"intent_{i}" for i in range(40))


@pytest.fixture(scope="module")
def tokenizer(edge_model_dir: Path) -> object:
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(edge_model_dir)


def row(text: str, answer: str, system: str | None = SYSTEM) -> dict[str, object]:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "metadata": {"task": "intents"}}


def test_only_the_answer_and_its_end_of_turn_are_learned(tokenizer: object) -> None:
    messages = row("Where is my card?", "card_arrival")["messages"]

    ids, labels = tokenize(tokenizer, messages, 512)  # type: ignore[misc, arg-type]

    learned = [token for token in labels if token != IGNORE]
    text = tokenizer.decode(learned)  # type: ignore[attr-defined]
    assert text == "card_arrival<|im_end|>"
    assert ids == tokenizer.encode(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)  # type: ignore[attr-defined]
    # Labels sit on the same positions as the tokens they teach.
    assert all(label in (IGNORE, token) for label, token in zip(labels, ids, strict=True))


def test_every_assistant_turn_is_learned_and_user_text_never(tokenizer: object) -> None:
    messages = [
        {"role": "user", "content": "Say A"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "Say B"},
        {"role": "assistant", "content": "B"},
    ]

    _, labels = tokenize(tokenizer, messages, 512)  # type: ignore[misc, arg-type]

    learned = tokenizer.decode([t for t in labels if t != IGNORE])  # type: ignore[attr-defined]
    assert learned == "A<|im_end|>B<|im_end|>"


def test_rows_too_long_for_the_window_are_dropped(tokenizer: object) -> None:
    assert tokenize(tokenizer, row("word " * 400, "x")["messages"], 128) is None  # type: ignore[arg-type]


def test_training_never_sees_the_holdout_and_aliases_the_fixed_prompt(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    rows = [row(f"message number {i}", f"intent_{i % 40}") for i in range(300)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    train, held_out, aliases = load_training_rows(
        TrainOptions(data=[data], base_hf=tmp_path, work=tmp_path), ReadReport()
    )

    assert held_out == sum(is_holdout(r["messages"]) for r in rows) > 0  # type: ignore[arg-type]
    assert len(train) == 300 - held_out
    assert aliases == {system_hash(SYSTEM): alias_for(system_hash(SYSTEM))}
    assert all(r["messages"][0]["content"] == alias_for(system_hash(SYSTEM)) for r in train)
    originals = {r["messages"][1]["content"] for r in rows if is_holdout(r["messages"])}  # type: ignore[index]
    assert not originals & {r["messages"][1]["content"] for r in train}


def test_batches_cover_the_planned_steps_and_every_row_once_per_pass() -> None:
    examples = [([1] * (i % 7 + 1), [1] * (i % 7 + 1)) for i in range(64)]

    batches = list(_batches(examples, 8, seed=0, steps=8))

    assert len(batches) == 8
    assert sorted(i for batch in batches for i in batch) == list(range(64))
    assert list(_batches(examples, 8, seed=0, steps=8)) == batches  # resumable: the order is the seed's


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("1.5h", 5400.0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_a_bad_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
