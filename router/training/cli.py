"""``hybrid-router router train | eval | calibrate``.

    hybrid-router router train --data FILE [--data FILE] --weak-col COL --strong-col COL --out DIR
    hybrid-router router eval --model DIR --data FILE --weak-col COL --strong-col COL [--plot out.png]
    hybrid-router router calibrate --data FILE --cloud-share 0.3 [--model DIR]

``--join FILE`` adds columns keyed by row id (the edge model's labels). The
rows are split by a fixed hash into train (64%), selection (16%, to pick
the head) and validation (20%, reported);
``eval`` reports on the validation rows unless ``--split all``; rows flagged
``routellm_contaminated`` are left out of evaluation, as RouteLLM does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router.training.data import Rows, load_rows
from router.training.metrics import evaluate_router, random_baseline, threshold_for_share

__all__ = ["add_router_commands"]

_HEAD_FILE = "difficulty_head.onnx"


def _embedder(kind: str, folder: str | None, max_tokens: int) -> Any:
    from edge_models.embeddings import OnnxEmbedder, StaticEmbedder, encoder_dir

    path = Path(folder) if folder else encoder_dir()
    return StaticEmbedder(path) if kind == "static" else OnnxEmbedder(path, max_tokens=max_tokens)


def _embed(embedder: Any, rows: Rows) -> Any:
    from router.classify.classifier import clip_for_embedding

    texts = [clip_for_embedding(text) for text in rows.prompts]
    # The int8 encoder quantises activations with one scale per batch, so a
    # text's vector depends on its batch-mates; serving embeds one request at
    # a time, and so must training, or the head learns from other vectors.
    batch = 64 if embedder.cheap else 1
    started = time.perf_counter()
    out = np.concatenate([embedder.embed(texts[i : i + batch]) for i in range(0, len(texts), batch)])
    print(
        f"embedded {len(texts)} prompts with {embedder.name} in {time.perf_counter() - started:.1f}s", file=sys.stderr
    )
    return out


def _rows(args: argparse.Namespace) -> Rows:
    return load_rows([Path(p) for p in args.data], args.weak_col, args.strong_col, join=[Path(p) for p in args.join])


def train(args: argparse.Namespace) -> int:
    from router.training.heads import fit_heads, write_onnx

    rows = _rows(args)
    embedder = _embedder(args.encoder, args.encoder_dir, args.encoder_max_tokens)
    features = _embed(embedder, rows)
    train_mask, pick_mask, val_mask = rows.split()
    val, pick = rows.subset(val_mask), rows.subset(pick_mask)
    heads = fit_heads(
        features[train_mask], rows.subset(train_mask).edge_worse, features[pick_mask], pick.weak, pick.strong
    )
    best = heads[0]
    val_scores = best.predict(features[val_mask])
    curve = evaluate_router(val_scores, val.weak, val.strong)
    report = {
        "encoder": embedder.name,
        "weak_col": args.weak_col,
        "strong_col": args.strong_col,
        "data": [Path(p).name for p in args.data],
        "rows": {"train": int(train_mask.sum()), "selection": int(pick_mask.sum()), "validation": int(val_mask.sum())},
        "head": best.kind,
        # APGR of each candidate on the selection rows (not the validation rows).
        "candidates": {h.kind: round(h.selection_apgr, 4) for h in heads},
        "validation": curve.summary(),
        "random": random_baseline(val.weak, val.strong),
        # Thresholds that send these shares of validation requests to the cloud.
        "thresholds": {
            f"{share:.1f}": round(threshold_for_share(val_scores, share), 4) for share in (0.1, 0.2, 0.3, 0.5)
        },
    }
    out = Path(args.out)
    write_onnx(best, out / _HEAD_FILE, encoder=embedder.name, training=report)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def _scores(args: argparse.Namespace, rows: Rows) -> tuple[Any, str]:
    from router.classify.difficulty import DifficultyHead

    head = DifficultyHead(Path(args.model) / _HEAD_FILE if Path(args.model).is_dir() else Path(args.model))
    kind = "static" if head.encoder.startswith("static") else "minilm"
    embedder = _embedder(kind, args.encoder_dir, args.encoder_max_tokens)
    head.check_encoder(embedder.name, embedder.dims)
    features = _embed(embedder, rows)
    scores = head.session.run(None, {"embedding": features.astype(np.float32)})[0].reshape(-1)
    return scores, embedder.name


def evaluate(args: argparse.Namespace) -> int:
    rows = _rows(args)
    mask = ~rows.contaminated & (rows.validation if args.split == "validation" else np.ones(len(rows), bool))
    rows = rows.subset(mask)
    scores, encoder = _scores(args, rows)
    curve = evaluate_router(scores, rows.weak, rows.strong, bins=args.bins)
    result: dict[str, Any] = {
        **curve.summary(),
        "random": random_baseline(rows.weak, rows.strong, bins=args.bins),
        "rows": len(rows),
        "split": args.split,
        "encoder": encoder,
        "curve": {
            "strong_share": [round(x, 4) for x in curve.strong_share],
            "quality": [round(x, 4) for x in curve.quality],
        },
    }
    if args.plot:
        _plot(curve, result, Path(args.plot), f"{args.weak_col} vs {args.strong_col}")
        result["plot"] = args.plot
    print(json.dumps(result, indent=2))
    return 0


def _plot(curve: Any, result: dict[str, Any], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from exc
    figure, axes = plt.subplots(figsize=(6, 4.5))
    axes.plot(
        np.array(curve.strong_share) * 100,
        np.array(curve.quality) * 100,
        marker=".",
        label=f"router (APGR {curve.apgr:.3f})",
    )
    axes.plot([0, 100], [curve.weak_quality * 100, curve.strong_quality * 100], linestyle=":", label="random")
    axes.axhline(curve.weak_quality * 100, color="grey", linestyle="--", label="weak")
    axes.axhline(curve.strong_quality * 100, color="red", linestyle="--", label="strong")
    axes.set_xlabel("Strong (cloud) calls, %")
    axes.set_ylabel("Quality, % correct")
    axes.set_title(title)
    axes.legend()
    figure.savefig(path, bbox_inches="tight")


def calibrate(args: argparse.Namespace) -> int:
    rows = load_rows(
        [Path(p) for p in args.data],
        args.weak_col,
        args.strong_col,
        join=[Path(p) for p in args.join],
        require_labels=False,
    )
    scores, encoder = _scores(args, rows)
    threshold = threshold_for_share(scores, args.cloud_share)
    share = float(np.mean(scores >= threshold))
    print(
        json.dumps(
            {"threshold": round(threshold, 4), "cloud_share": round(share, 4), "rows": len(rows), "encoder": encoder}
        )
    )
    return 0


def _common(parser: argparse.ArgumentParser, *, needs_cols: bool = True) -> None:
    parser.add_argument("--data", action="append", required=True, help="JSONL rows; repeat to combine files")
    parser.add_argument("--join", action="append", default=[], help="JSONL with extra columns keyed by row id")
    parser.add_argument("--weak-col", required=needs_cols, default="edge_correct")
    parser.add_argument("--strong-col", required=needs_cols, default="gpt4_correct")
    parser.add_argument("--encoder-dir", help="default: the built all-minilm-l6-v2 folder")
    parser.add_argument("--encoder-max-tokens", type=int, default=128)


def add_router_commands(commands: Any) -> None:
    group = commands.add_parser("router", help="train and evaluate the difficulty router").add_subparsers(
        dest="sub", required=True
    )
    train_cmd = group.add_parser("train", help="train the difficulty head (writes an ONNX head)")
    _common(train_cmd)
    train_cmd.add_argument("--encoder", choices=["static", "minilm"], default="static")
    train_cmd.add_argument("--out", required=True)
    train_cmd.set_defaults(handler=train)

    eval_cmd = group.add_parser("eval", help="APGR / CPT of a trained head, as JSON")
    _common(eval_cmd)
    eval_cmd.add_argument("--model", required=True, help="folder written by `router train`, or a head .onnx")
    eval_cmd.add_argument("--split", choices=["validation", "all"], default="validation")
    eval_cmd.add_argument("--bins", type=int, default=10, help="threshold quantiles, as RouteLLM (10)")
    eval_cmd.add_argument("--plot", help="write the quality / cloud-share curve to this PNG")
    eval_cmd.set_defaults(handler=evaluate)

    cal_cmd = group.add_parser("calibrate", help="the threshold that sends a given share to the cloud")
    _common(cal_cmd, needs_cols=False)
    cal_cmd.add_argument(
        "--model", default=str(Path(__file__).parents[1] / "classify" / "assets" / "difficulty_head.static.onnx")
    )
    cal_cmd.add_argument("--cloud-share", type=float, required=True)
    cal_cmd.set_defaults(handler=calibrate)


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - used through service.cli
    parser = argparse.ArgumentParser(prog="hybrid-router")
    add_router_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))
