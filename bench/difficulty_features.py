"""Which features predict difficulty better: an embedding, or the edge model's own prefill?

For a fixed random sample of the router training rows it builds three
feature sets and fits the same heads (``router.training.heads``) on each:

* ``static``: the distilled static MiniLM table (what the gateway ships);
* ``minilm``: the full all-MiniLM-L6-v2 (ONNX int8, first 128 tokens);
* ``prefill``: SmolLM2's own last-layer hidden state over the prompt (mean and
  last position, 1,152 numbers), i.e. what the edge model "knows" after
  reading the question.

It prints validation APGR / CPT(50%) per feature set and pair, and what each
costs per request on this machine. The prefill features come from the fp32
Hugging Face model converted from the same GGUF (so this script needs the
``[build]`` extra); serving would read them from the ONNX model.

    python bench/difficulty_features.py [--rows 1500] [--pair mixtral|edge|both] \
        [--join router/training/labels/edge_labels.jsonl]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from router.classify.classifier import clip_for_embedding  # noqa: E402
from router.training.data import Rows, load_rows  # noqa: E402
from router.training.heads import fit_heads  # noqa: E402
from router.training.metrics import evaluate_router  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def embed(embedder: Any, texts: list[str]) -> tuple[Any, float]:
    started = time.perf_counter()
    batch = 32 if embedder.cheap else 1  # one at a time, as served (see router/training/cli.py)
    out = np.concatenate([embedder.embed(texts[i : i + batch]) for i in range(0, len(texts), batch)])
    return out, (time.perf_counter() - started) / len(texts) * 1000


def prefill_features(texts: list[str]) -> tuple[Any, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edge_models.build import locate_gguf
    from edge_models.catalog import DEFAULT_MODEL, KNOWN_MODELS

    gguf = locate_gguf(KNOWN_MODELS[DEFAULT_MODEL])
    with tempfile.TemporaryDirectory() as work:
        from edge_models.gguf_to_hf import convert

        convert(gguf, Path(work))
        tokenizer = AutoTokenizer.from_pretrained(work)
        # fp32 explicitly: the converted folder says bfloat16, which is many times slower on this CPU.
        model = AutoModelForCausalLM.from_pretrained(work, dtype=torch.float32).eval()
    torch.set_num_threads(2)
    rows = []
    started = time.perf_counter()
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=512)
            hidden = model(**ids, output_hidden_states=True).hidden_states[-1][0]
            rows.append(torch.cat([hidden.mean(0), hidden[-1]]).numpy())
    return np.stack(rows), (time.perf_counter() - started) / len(texts) * 1000


def score(features: Any, rows: Rows) -> dict[str, float]:
    train, pick, val = rows.split()  # as `router train`: fit, pick the head kind, report on unseen rows
    v, p = rows.subset(val), rows.subset(pick)
    heads = fit_heads(features[train], rows.subset(train).edge_worse, features[pick], p.weak, p.strong)
    curve = evaluate_router(heads[0].predict(features[val]), v.weak, v.strong)
    return {"apgr": round(curve.apgr, 4), "cpt50": round(curve.cpt50, 4), "head": heads[0].kind}  # type: ignore[dict-item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--join", action="append", default=[])
    # The prefill features come from the fp32 transformers model, ~0.3 s a prompt here.
    parser.add_argument("--pair", choices=["mixtral", "edge", "both"], default="both")
    args = parser.parse_args()

    from edge_models.embeddings import OnnxEmbedder, StaticEmbedder, encoder_dir

    pairs = []
    if args.pair in ("mixtral", "both"):
        pairs.append(("mixtral_correct", "gpt4_correct"))
    if args.pair in ("edge", "both"):
        if not args.join:
            parser.error("--pair edge needs --join router/training/labels/edge_labels.jsonl")
        pairs.append(("edge_correct", "gpt4_correct"))
    folder = encoder_dir()
    results: dict[str, dict[str, Any]] = {}
    for weak, strong in pairs:
        rows = load_rows([DATA / "mmlu_routellm.train.jsonl", DATA / "gsm8k_routellm.train.jsonl"], weak, strong,
                         join=[Path(p) for p in args.join])  # fmt: skip
        picks = sorted(random.Random(0).sample(range(len(rows)), min(args.rows, len(rows))))
        mask = np.zeros(len(rows), bool)
        mask[picks] = True
        rows = rows.subset(mask)
        texts = [clip_for_embedding(p) for p in rows.prompts]
        features = {
            "static": embed(StaticEmbedder(folder), texts),
            "minilm": embed(OnnxEmbedder(folder, max_tokens=128), texts),
            "prefill": prefill_features(texts),
        }
        for name, (matrix, ms) in features.items():
            results.setdefault(name, {"ms_per_request": round(ms, 2)})[f"{weak} vs {strong}"] = score(matrix, rows)
    print(json.dumps({"rows": args.rows, "results": results}, indent=2))


if __name__ == "__main__":
    main()
