"""``hybrid-router distill ...``: the distillation loop's commands.

    hybrid-router distill data stats [--dir D | --config FILE] [--json]
    hybrid-router distill data purge [--dir D | --config FILE] (--before YYYY-MM-DD | --task T | --all) [--yes]
    hybrid-router distill promote VERSION [--registry DIR | --model NAME] [--force]   (see .promote)
    hybrid-router distill rollback [--registry DIR | --model NAME]

:func:`add_distill_commands` creates the ``distill`` group and returns its
subparsers, so other steps (train, eval, promote, rollback) register beside
``data`` with ``group.add_parser(...)``; every handler finds the data folder
with :func:`data_dir`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from edge_models.distill.loop_cli import add_loop_commands
from edge_models.distill.promote import add_promote_commands
from edge_models.distill.store import DatasetStore, StoreStats, default_data_dir

__all__ = ["DataDirResolver", "add_data_arguments", "add_distill_commands", "data_dir"]

DataDirResolver = Callable[[str | None], Path]
"""The capture folder a config names (``distill.capture.dir``); given the ``--config`` value, None for the default."""


def _default_resolver(config: str | None) -> Path:
    return default_data_dir()


def data_dir(args: argparse.Namespace) -> Path:
    """``--dir`` if given, else the folder the config (``--config``, else the default one) captures into."""
    if getattr(args, "dir", None):
        return Path(args.dir).expanduser()
    resolve: DataDirResolver = getattr(args, "resolve_data_dir", _default_resolver)
    return resolve(getattr(args, "config", None))


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dir`` and ``--config``, for any command that reads the captured data."""
    parser.add_argument("--dir", help="the dataset folder (default: distill.capture.dir of the config)")
    parser.add_argument("--config", help="YAML config whose distill.capture.dir to use (default: as `serve`)")


def add_distill_commands(commands: Any, *, resolve_data_dir: DataDirResolver | None = None) -> Any:
    """Register ``distill`` on ``commands`` (an argparse subparsers object); return its own subparsers.

    ``resolve_data_dir`` turns ``--config`` into the capture folder (the
    service passes one that reads the settings); without it, the default folder.
    """
    distill = commands.add_parser("distill", help="distil cloud answers into the edge model")
    distill.set_defaults(resolve_data_dir=resolve_data_dir or _default_resolver)
    group = distill.add_subparsers(dest="sub", required=True)
    _add_data_commands(group)
    add_promote_commands(group)
    add_loop_commands(group)
    return group


def _add_data_commands(group: Any) -> None:
    data = group.add_parser("data", help="the captured dataset").add_subparsers(dest="action", required=True)

    stats = data.add_parser("stats", help="rows, holdout, days and tasks in the dataset")
    add_data_arguments(stats)
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(handler=_stats)

    purge = data.add_parser("purge", help="delete captured rows")
    add_data_arguments(purge)
    purge.add_argument("--before", type=_day, help="daily files before this UTC day (YYYY-MM-DD)")
    purge.add_argument("--task", help="rows with this task tag (with --before: only in those files)")
    purge.add_argument("--all", action="store_true", help="every file")
    purge.add_argument("--yes", action="store_true", help="do it without asking")
    purge.set_defaults(handler=_purge)


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a day (YYYY-MM-DD)") from None


def _stats(args: argparse.Namespace) -> int:
    folder = data_dir(args)
    stats = DatasetStore(folder, retention_days=None).stats()
    if args.json:
        print(json.dumps({"dir": str(folder), **stats.to_dict()}, indent=2))
    else:
        print(_describe(folder, stats))
    return 0


def _describe(folder: Path, stats: StoreStats) -> str:
    days = f", {stats.oldest_day} .. {stats.newest_day}" if stats.oldest_day else ""
    lines = [
        f"{folder}: {stats.rows} rows ({stats.train_rows} train, {stats.holdout_rows} holdout) "
        f"in {stats.files} files, {stats.bytes / 1024:.1f} KiB{days}"
    ]
    if stats.by_task:
        lines.append("  tasks:   " + ", ".join(f"{name} {n}" for name, n in stats.by_task.items()))
    if stats.by_target:
        lines.append("  targets: " + ", ".join(f"{name} {n}" for name, n in stats.by_target.items()))
    if stats.skipped or stats.duplicates:
        lines.append(f"  skipped: {stats.skipped} unreadable lines, {stats.duplicates} duplicates")
    return "\n".join(lines)


def _purge(args: argparse.Namespace) -> int:
    if not (args.all or args.before or args.task):
        print("error: say what to purge: --before YYYY-MM-DD, --task T or --all", file=sys.stderr)
        return 2
    folder = data_dir(args)
    what = _what(args)
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"error: this would delete {what} in {folder}; add --yes to do it", file=sys.stderr)
            return 2
        if input(f"Delete {what} in {folder}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    result = DatasetStore(folder, retention_days=None).purge(before=args.before, task=args.task, everything=args.all)
    print(
        f"{folder}: removed {result.rows_removed} rows "
        f"({result.files_removed} files deleted, {result.files_rewritten} rewritten)"
    )
    return 0


def _what(args: argparse.Namespace) -> str:
    if args.all:
        return "every row"
    parts = []
    if args.task:
        parts.append(f"the rows of task {args.task!r}")
    if args.before:
        parts.append(f"{'those in ' if args.task else 'the '}daily files before {args.before.isoformat()}")
    return ", ".join(parts) if args.task else parts[0]
