"""How close each ONNX precision stays to the fp32 model: the measurement behind the default.

For every build (fp32 is the reference) it feeds the fixed texts of
``tests/data/edge_agreement_texts.jsonl`` one token at a time through ONNX
Runtime GenAI, exactly as generation does, and compares:

* greedy next-token agreement with fp32 (share of positions with the same argmax);
* perplexity, as a ratio to fp32's;
* answers to the 20 questions of ``tests/data/edge_qa.jsonl`` (greedy, 32 tokens):
  how many contain the expected answer, and how many equal fp32's answer.

Builds missing from the model cache are built first (fp32 is ~540 MB).

    python bench/edge_quality.py [--precisions fp32,int8,int4]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT / "tests" / "data"


def teacher_forced(model: Any, texts: list[str]) -> tuple[list[Any], list[Any]]:
    """Per text: argmax per position, and log-probability of the true next token."""
    import onnxruntime_genai as og

    argmaxes, logprobs = [], []
    for text in texts:
        ids = [0, *model.encode(text).tolist()]  # predict every token, the first one included
        params = og.GeneratorParams(model.model)
        params.set_search_options(max_length=len(ids) + 1, do_sample=False)
        generator = og.Generator(model.model, params)
        best, truth = [], []
        for position, token in enumerate(ids[:-1]):
            generator.append_tokens([token])
            logits = np.asarray(generator.get_logits(), dtype=np.float64).reshape(-1)
            logits -= logits.max()
            best.append(int(np.argmax(logits)))
            truth.append(float(logits[ids[position + 1]] - np.log(np.exp(logits).sum())))
        argmaxes.append(np.array(best))
        logprobs.append(np.array(truth))
    return argmaxes, logprobs


def answers(model: Any, questions: list[str]) -> list[str]:
    from edge_models.runtime import SamplingOptions

    return ["".join(model.generate(model.encode_chat([{"role": "user", "content": q}]), SamplingOptions(32)))
            for q in questions]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="fp32,int8,int4")
    args = parser.parse_args()

    from edge_models.build import build_model
    from edge_models.catalog import DEFAULT_MODEL, DEFAULT_PRECISION
    from edge_models.labeling import read_jsonl
    from edge_models.runtime import EdgeModel

    texts = [row["text"] for row in read_jsonl(DATA / "edge_agreement_texts.jsonl")]
    qa = read_jsonl(DATA / "edge_qa.jsonl")
    precisions = ["fp32"] + [p for p in args.precisions.split(",") if p != "fp32"]
    results: dict[str, dict[str, Any]] = {}
    for precision in precisions:
        folder = build_model(DEFAULT_MODEL, precision, progress=lambda line: None).folder  # type: ignore[arg-type]
        model = EdgeModel.load(folder, threads=2)
        argmax, logprob = teacher_forced(model, texts)
        replies = answers(model, [item["question"] for item in qa])
        results[precision] = {"argmax": argmax, "nll": -np.concatenate(logprob).mean(), "replies": replies}

    reference = results["fp32"]
    positions = sum(len(a) for a in reference["argmax"])
    print(f"Edge model quality against fp32: {len(texts)} texts, {positions} positions, {len(qa)} questions")
    print(f"{'precision':<10}{'agreement %':>13}{'ppl':>9}{'ppl ratio':>11}{'QA right':>10}{'QA = fp32':>11}")
    for precision, data in results.items():
        same = sum(int((a == r).sum()) for a, r in zip(data["argmax"], reference["argmax"], strict=True))
        right = sum(any(re.search(rf"\b{re.escape(ans)}\b", reply.lower()) for ans in item["answers"])
                    for item, reply in zip(qa, data["replies"], strict=True))  # fmt: skip
        equal = sum(a == b for a, b in zip(data["replies"], reference["replies"], strict=True))
        marker = " (default)" if precision == DEFAULT_PRECISION else ""
        print(f"{precision + marker:<10}{same / positions * 100:>13.2f}{np.exp(data['nll']):>9.3f}"
              f"{np.exp(data['nll'] - reference['nll']):>11.4f}{right:>7}/{len(qa)}{equal:>8}/{len(qa)}")  # fmt: skip


if __name__ == "__main__":
    main()
