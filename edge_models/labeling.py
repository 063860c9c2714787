"""Label the router training data with the edge model's own correctness.

The shared data records whether GPT-4 and Mixtral answered each question
correctly; the difficulty router for *our* edge model needs the same bit for
SmolLM2. This runs the built edge model on every row:

* MMLU: score the answer letter by the log-probabilities of `` A``/`` B``/
  `` C``/`` D`` right after RouteLLM's 0-shot prompt (which ends in
  ``Answer:``); the highest one is the model's answer.
* GSM8K: answer greedily through the chat template (at most 256 new tokens,
  zero-shot) and compare the last number in the answer with the gold one.

    python -m edge_models.labeling --model DIR --mmlu FILE --gsm8k FILE --out FILE

Rows are keyed by :func:`row_id`, the same key the training code joins on.
Already-labelled ids in ``--out`` are kept, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge_models.runtime import EdgeModel, SamplingOptions

__all__ = ["extract_number", "row_id"]

LETTERS = ("A", "B", "C", "D")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def row_id(row: dict[str, Any]) -> str:
    """A stable key for a data row: a hash of its prompt, or of its question."""
    text = row.get("prompt") or row["question"]
    return hashlib.sha1(str(text).encode()).hexdigest()[:16]


def extract_number(text: str) -> float | None:
    """The final numeric answer in a free-form solution.

    >>> extract_number("So she has 3 + 4 = 7 apples.\\nThe answer is 1,250.")
    1250.0
    """
    marked = re.search(r"(?:####|answer is|Answer:)\s*\$?(-?\d[\d,]*(?:\.\d+)?)", text)
    found = [marked.group(1)] if marked else _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", "").rstrip("."))
    except ValueError:
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    # Not splitlines(): it also splits on U+2028 and friends, which JSON strings may contain.
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()]


def label_mmlu(model: EdgeModel, rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    import onnxruntime_genai as og

    letter_ids = [int(model.encode(f" {letter}")[-1]) for letter in LETTERS]
    for row in rows:
        ids = model.encode(row["prompt"])
        params = og.GeneratorParams(model.model)
        params.set_search_options(max_length=len(ids) + 1, do_sample=False)
        generator = og.Generator(model.model, params)
        generator.append_tokens(ids)
        logits = np.asarray(generator.get_logits()).reshape(-1)[letter_ids]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        answer = LETTERS[int(np.argmax(logits))]
        yield {
            "id": row_id(row),
            "source": "mmlu",
            "subject": row["subject"],
            "edge_answer": answer,
            "edge_correct": answer == row["answer"],
            "edge_letter_probs": [round(float(p), 4) for p in probs],
        }


def label_gsm8k(model: EdgeModel, rows: list[dict[str, Any]], max_new_tokens: int = 256) -> Iterator[dict[str, Any]]:
    for row in rows:
        ids = model.encode_chat([{"role": "user", "content": row["question"]}])
        text = "".join(model.generate(ids, SamplingOptions(max_new_tokens=max_new_tokens)))
        number = extract_number(text)
        yield {
            "id": row_id(row),
            "source": "gsm8k",
            "edge_answer": number,
            "edge_correct": number is not None and abs(number - float(row["answer_number"])) < 1e-6,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="built ONNX GenAI model folder")
    parser.add_argument("--mmlu", type=Path)
    parser.add_argument("--gsm8k", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="label only the first N rows of each file")
    args = parser.parse_args(argv)

    model = EdgeModel.load(args.model, threads=args.threads)
    done = {row["id"] for row in read_jsonl(args.out)} if args.out.exists() else set()
    manifest = json.loads((args.model / "build.json").read_text()) if (args.model / "build.json").exists() else {}
    tag = {"edge_model": manifest.get("name", args.model.name), "edge_precision": manifest.get("precision")}
    with args.out.open("a") as out:
        for name, path, labeller in (("mmlu", args.mmlu, label_mmlu), ("gsm8k", args.gsm8k, label_gsm8k)):
            if path is None:
                continue
            rows = [r for r in read_jsonl(path)[: args.limit] if row_id(r) not in done]
            started, correct = time.perf_counter(), 0
            for index, label in enumerate(labeller(model, rows), start=1):
                out.write(json.dumps({**label, **tag}) + "\n")
                correct += bool(label["edge_correct"])
                if index % 200 == 0 or index == len(rows):
                    out.flush()
                    rate = index / (time.perf_counter() - started)
                    print(f"{name}: {index}/{len(rows)} rows, {correct / index:.1%} correct, {rate:.1f} rows/s",
                          file=sys.stderr, flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
