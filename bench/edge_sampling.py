"""Sampling defaults for the edge target: the model's generation config against OpenAI's 1.0, and greedy.

A request that sets no ``temperature`` / ``top_p`` gets the model's own
recommended settings (``edge_models/generation_config.py``; SmolLM2's model
card: temperature 0.2, top_p 0.9, with Hugging Face's top_k 50). This prints,
for each setting, how many answers to the 20 questions of
``tests/data/edge_qa.jsonl`` contain the expected answer over several seeds
(32 tokens each), and one sampled answer to the first question per seed.

    python bench/edge_sampling.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT / "tests" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    from edge_models.catalog import resolve_model
    from edge_models.labeling import read_jsonl
    from edge_models.runtime import EdgeModel, SamplingOptions

    model = EdgeModel.load(resolve_model("smollm2-135m-instruct"), threads=2)
    qa = read_jsonl(DATA / "edge_qa.jsonl")
    prompts = [model.encode_chat([{"role": "user", "content": item["question"]}]) for item in qa]
    recommended = model.sampling
    settings = {
        "greedy": SamplingOptions(args.max_tokens),
        f"model's generation config ({recommended.describe()})": SamplingOptions(
            args.max_tokens, temperature=recommended.temperature, top_p=recommended.top_p, top_k=recommended.top_k
        ),
        "OpenAI's defaults (temperature 1, top_p 1)": SamplingOptions(args.max_tokens, temperature=1.0, top_p=1.0),
    }
    print(f"{len(qa)} questions x {args.seeds} seeds, {args.max_tokens} tokens each")
    for name, options in settings.items():
        right = total = 0
        first: list[str] = []
        for seed in range(args.seeds):
            seeded = dataclasses.replace(options, seed=seed)
            for i, (item, ids) in enumerate(zip(qa, prompts, strict=True)):
                reply = "".join(model.generate(ids, seeded))
                total += 1
                right += any(re.search(rf"\b{re.escape(a)}\b", reply.lower()) for a in item["answers"])
                if i == 0:
                    first.append(reply.strip().replace("\n", " ")[:70])
        print(f"\n{name}: {right}/{total} right ({right / total:.0%})")
        for seed, reply in enumerate(first):
            print(f"  seed {seed}: {qa[0]['question']} -> {reply!r}")


if __name__ == "__main__":
    main()
