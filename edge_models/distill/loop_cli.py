"""``hybrid-router distill train | eval | cycle``: the loop's heavy steps.

    hybrid-router distill train [--data FILE_OR_DIR ...] [--out DIR | --registry DIR] [--base NAME]
                                [--time-budget 30m] [--max-rows N] [--epochs F] [--threads N]
                                [--precision auto|fp32|bf16] [--resume] [--keep-prefix]
    hybrid-router distill eval --model DIR --data FILE_OR_DIR [--compare DIR|base|current] [--limit N]
                               [--record] [--per-row] [--out FILE]
    hybrid-router distill cycle [--data DIR] [--registry DIR] [--time-budget 30m] [--no-promote]

``--data`` defaults to the capture folder of the config (``distill.capture.dir``).
Training runs in a subprocess at low priority; nothing here imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edge_models.catalog import DEFAULT_MODEL, KNOWN_MODELS, resolve_model
from edge_models.distill.registry import Registry, default_registry_dir
from edge_models.distill.train import parse_duration
from edge_models.errors import EdgeModelError

__all__ = ["add_loop_commands"]


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_loop_commands(group: Any) -> None:
    from edge_models.distill.cli import add_data_arguments

    train = group.add_parser("train", help="train a student on captured rows (LoRA on CPU, then int8 ONNX)")
    train.add_argument("--data", action="append", help="JSONL file or folder (repeatable; default: the capture dir)")
    add_data_arguments(train)
    where = train.add_mutually_exclusive_group()
    where.add_argument("--out", help="the model folder to write (default: the registry's next version)")
    where.add_argument("--registry", help="the registry folder (default: <models_dir>/distilled/<base>)")
    train.add_argument("--base", default=DEFAULT_MODEL, choices=list(KNOWN_MODELS))
    train.add_argument("--time-budget", type=_duration, default=1800.0, help="e.g. 30m (default), 90s, 1h")
    train.add_argument("--max-rows", type=int, help="train on at most this many rows")
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--rank", type=int, help="LoRA rank (default 16)")
    train.add_argument("--threads", type=int, help="torch threads (default: all cores, at low priority)")
    train.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    train.add_argument(
        "--replay-share", type=float, help="share of rows replaying the base's greedy answers (default 0)"
    )
    train.add_argument("--anchor-weight", type=float, help="weight of the pull toward the base on general text (1.0)")
    train.add_argument("--resume", action="store_true", help="carry on from the last checkpoint")
    train.add_argument("--keep-prefix", action="store_true", help="train on fixed system prompts as they are")
    train.add_argument("--snapshot-rows", type=int, nargs="*", help="save the adapter after this many rows (a curve)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)

    evaluate = group.add_parser("eval", help="score a model on rows as the gateway serves it (JSON)")
    evaluate.add_argument("--model", required=True, help="model folder or built model name")
    evaluate.add_argument("--data", required=True, help="JSONL file (all rows) or capture folder (its holdout)")
    evaluate.add_argument("--compare", help="model to compare with: a folder, 'base' or 'current'")
    evaluate.add_argument("--registry", help="for --compare current (default: <models_dir>/distilled/<base>)")
    evaluate.add_argument("--limit", type=int, help="score at most this many rows")
    evaluate.add_argument("--record", action="store_true", help="judge against --compare and write it to distill.json")
    evaluate.add_argument("--compare-rows", type=int, default=400, help="with --record: rows of the paired test")
    evaluate.add_argument("--target-accuracy", type=float, default=0.97, help="the accuracy the gate keeps (0.97)")
    evaluate.add_argument("--gate-objective", choices=["route", "kept"], default="route",
                          help="route: clients' (cloud answers the rest), kept: kept answers")  # fmt: skip
    evaluate.add_argument("--no-guards", action="store_true")
    evaluate.add_argument("--per-row", action="store_true")
    evaluate.add_argument("--out", help="also write the JSON here")
    evaluate.set_defaults(handler=_eval)

    cycle = group.add_parser("cycle", help="train, judge against the serving model, promote if it wins")
    cycle.add_argument("--data", help="capture folder (default: the config's)")
    add_data_arguments(cycle)
    cycle.add_argument("--registry")
    cycle.add_argument("--base", default=DEFAULT_MODEL, choices=list(KNOWN_MODELS))
    cycle.add_argument("--time-budget", type=_duration, default=1800.0)
    cycle.add_argument("--no-promote", action="store_true")
    cycle.add_argument("--result", help="also write the result JSON here")
    cycle.set_defaults(handler=_cycle)


def _registry(args: argparse.Namespace) -> Registry:
    base = getattr(args, "base", DEFAULT_MODEL)
    return Registry(Path(args.registry).expanduser() if args.registry else default_registry_dir(base))


def _data(args: argparse.Namespace) -> list[Path]:
    from edge_models.distill.cli import data_dir

    given = args.data if isinstance(args.data, list) else [args.data] if args.data else []
    return [Path(p).expanduser() for p in given] or [data_dir(args)]


def _train(args: argparse.Namespace) -> int:
    from edge_models.distill.pipeline import train_student

    options: dict[str, Any] = {"time_budget_s": args.time_budget, "epochs": args.epochs, "precision": args.precision,
                               "keep_prefix": args.keep_prefix, "progress": not args.quiet}  # fmt: skip
    for key, value in (("max_rows", args.max_rows), ("learning_rate", args.learning_rate), ("lora_rank", args.rank),
                       ("threads", args.threads), ("replay_share", args.replay_share),
                       ("anchor_weight", args.anchor_weight), ("snapshot_rows", args.snapshot_rows)):  # fmt: skip
        if value is not None:
            options[key] = value
    out = Path(args.out).expanduser() if args.out else None
    if out is None and args.registry:
        registry = _registry(args)
        out = registry.root / registry.next_version()
    try:
        trained = train_student(_data(args), base=args.base, out=out, options=options, resume=args.resume)
    except EdgeModelError as exc:
        print(f"distill train failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"model": str(trained.folder), **trained.manifest.to_dict()}, indent=2))
    return 0


def _compare_folder(args: argparse.Namespace) -> Path | None:
    if args.compare is None:
        return None
    if args.compare == "base":
        return resolve_model(DEFAULT_MODEL)
    if args.compare == "current":
        from edge_models.distill.cycle import serving_folder

        return serving_folder(_registry(args))
    return resolve_model(args.compare)


def _eval(args: argparse.Namespace) -> int:
    if not args.record:
        from edge_models.distill.evaluate import eval_cli

        compare = _compare_folder(args)
        return eval_cli(args.model, args.data, compare=str(compare) if compare else None, limit=args.limit,
                        target_accuracy=args.target_accuracy, gate_objective=args.gate_objective,
                        run_guards=not args.no_guards, per_row=args.per_row, out=args.out)  # fmt: skip
    from edge_models.distill.cycle import judge

    try:
        current = _compare_folder(args) or resolve_model(DEFAULT_MODEL)
        verdict = judge(resolve_model(args.model), Path(args.data), current=current,
                        compare_rows=args.compare_rows, target_accuracy=args.target_accuracy,
                        gate_objective=args.gate_objective, progress=_to_stderr)  # fmt: skip
    except EdgeModelError as exc:
        print(f"distill eval failed: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(verdict.to_dict(), indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _cycle(args: argparse.Namespace) -> int:
    from edge_models.distill.cycle import run_cycle

    try:
        result = run_cycle(_data(args)[0], base=args.base, registry=_registry(args), time_budget_s=args.time_budget,
                           promote=not args.no_promote)  # fmt: skip
    except EdgeModelError as exc:
        print(f"distill cycle failed: {exc}", file=sys.stderr)
        return 1
    text = json.dumps({**asdict(result), "judgement": result.judgement.to_dict()}, indent=2, default=str)
    if args.result:
        Path(args.result).write_text(text + "\n")
    print(text)
    return 0
