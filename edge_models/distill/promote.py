"""``hybrid-router distill promote | rollback``: which distilled version the edge model serves.

    hybrid-router distill promote v3 [--registry DIR | --model NAME [--models-dir DIR]] [--force]
    hybrid-router distill rollback   [--registry DIR | --model NAME [--models-dir DIR]]

Both rewrite the registry's pointer (``registry.json``) atomically. A gateway
whose edge target has ``distilled: true`` sees the change within its
``registry_poll_s`` (at once on a config reload) and swaps live: the new
version is loaded beside the old one and smoke-tested, and the old one serves
until then (router/backends/edge.py). ``promote`` refuses a version that is not
a distilled model or whose evaluation said not to promote it, unless ``--force``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_models.catalog import DEFAULT_MODEL
from edge_models.distill.manifest import StudentManifest
from edge_models.distill.registry import Registry, default_registry_dir
from edge_models.errors import EdgeModelError

__all__ = ["add_promote_commands", "promote_cli", "promotion_refusal", "registry_for", "rollback_cli"]

BASE = "base"
"""What serves when no version is promoted: the configured model itself."""


def registry_for(
    registry_dir: Path | str | None, model: str = DEFAULT_MODEL, models_dir: Path | None = None
) -> Registry:
    """``registry_dir`` if given, else the default registry of the built model ``model``."""
    if registry_dir is not None:
        return Registry(Path(registry_dir).expanduser())
    return Registry(default_registry_dir(model, models_dir))


def promotion_refusal(manifest: StudentManifest | None) -> str | None:
    """Why a version must not serve without ``--force``; None when nothing says so.

    >>> promotion_refusal(None)
    'is not a distilled model (no distill.json)'
    """
    if manifest is None:
        return "is not a distilled model (no distill.json)"
    if manifest.metrics.get("promotable") is False:
        return f"failed its evaluation: {_decision(manifest.metrics.get('decision'))}"
    return None


def _decision(decision: Any) -> str:
    if isinstance(decision, Mapping):
        decision = decision.get("reason")
    return str(decision) if decision else "no reason recorded"


def promote_cli(
    version: str,
    registry_dir: Path | str | None = None,
    model: str = DEFAULT_MODEL,
    *,
    models_dir: Path | None = None,
    force: bool = False,
) -> int:
    """Point the registry at ``version``; print what changed. 0 when it serves (or already served), else 1."""
    registry = registry_for(registry_dir, model, models_dir)
    try:
        manifest = StudentManifest.find(registry.folder(version))
        refusal = promotion_refusal(manifest)
        if refusal is not None and not force:
            print(f"error: {version} {refusal}; --force promotes it anyway", file=sys.stderr)
            return 1
        before = registry.current()
        if before == version:
            print(f"{version} already serves ({registry.root})")
            return 0
        note: dict[str, Any] = {"forced": refusal} if refusal is not None else {}
        registry.promote(version, **note)
    except EdgeModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if manifest is not None and "promotable" not in manifest.metrics:
        print(f"note: {version} has not been evaluated (hybrid-router distill eval)", file=sys.stderr)
    print(f"promoted {version} (was {before or BASE}) in {registry.root}")
    print("edge targets with `distilled: true` swap to it within their registry_poll_s")
    return 0


def rollback_cli(
    registry_dir: Path | str | None = None, model: str = DEFAULT_MODEL, *, models_dir: Path | None = None
) -> int:
    """Serve the version promoted before the current one (or the base model); print what changed."""
    registry = registry_for(registry_dir, model, models_dir)
    try:
        before = registry.current()
        after = registry.rollback()
    except EdgeModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"rolled back {before} -> {after or BASE} in {registry.root}")
    return 0


def add_promote_commands(group: Any) -> None:
    """Register ``promote`` and ``rollback`` on the ``distill`` group's subparsers."""
    promote = group.add_parser("promote", help="serve a distilled version (edge targets swap live)")
    promote.add_argument("version", help="the version to serve, e.g. v3")
    _add_registry_arguments(promote)
    promote.add_argument("--force", action="store_true", help="even if its evaluation said not to")
    promote.set_defaults(handler=_promote)

    rollback = group.add_parser("rollback", help="serve the previously promoted version (or the base model)")
    _add_registry_arguments(rollback)
    rollback.set_defaults(handler=_rollback)


def _add_registry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", help="the registry folder (default: <models_dir>/distilled/<model>)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"the base model's name (default {DEFAULT_MODEL})")
    parser.add_argument("--models-dir", help="where built models live (default: as `edge build`)")


def _models_dir(args: argparse.Namespace) -> Path | None:
    return Path(args.models_dir).expanduser() if args.models_dir else None


def _promote(args: argparse.Namespace) -> int:
    return promote_cli(args.version, args.registry, args.model, models_dir=_models_dir(args), force=args.force)


def _rollback(args: argparse.Namespace) -> int:
    return rollback_cli(args.registry, args.model, models_dir=_models_dir(args))
