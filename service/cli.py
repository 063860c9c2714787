"""The ``hybrid-router`` command.

    hybrid-router serve [--config FILE] [--host H] [--port P] [--workers N]
    hybrid-router config check FILE
    hybrid-router route [--config FILE] < request.json
    hybrid-router auth hash KEY
    hybrid-router keys create | list | revoke ...      (see service/keys_cli.py)
    hybrid-router edge build [--precision P] [--out DIR] [--force]
    hybrid-router router train | eval | calibrate ...   (see router/training/cli.py)
    hybrid-router distill data stats | purge ...       (see edge_models/distill/cli.py)

Each subcommand imports what it needs when it runs, so ``--help`` is instant
and ``edge build`` alone pulls in the build-only dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from router.errors import ConfigError, HybridRouterError

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]


def _serve(args: argparse.Namespace) -> int:
    from service.auth import AUTO_HOST
    from service.logs import configure_logging
    from service.server import listen_host, serve
    from service.settings import ConfigSource

    given = {key: value for key in ("host", "port") if (value := getattr(args, key)) is not None}
    # --host/--port beat the file and env vars, on every reload too.
    source = ConfigSource.resolve(args.config, **({"server": given} if given else {}))
    settings = source.load()
    configure_logging(settings.logging)
    if settings.server.host == AUTO_HOST:
        # Resolved once, and kept on every reload like --host: the address bound does not change while serving.
        given["host"] = listen_host(settings)
        source = ConfigSource.resolve(args.config, server=given)
        settings = source.load()
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    serve(settings, source=source, workers=args.workers)
    return 0


def _config_check(args: argparse.Namespace) -> int:
    from service.auth import open_access_warning, startup_problems
    from service.gateway import Gateway
    from service.settings import load_settings

    settings = load_settings(args.file)
    gateway = Gateway.from_settings(settings)
    problems = startup_problems(settings.server, settings.auth, gateway.auth)
    if problems:
        raise ConfigError(f"{args.file}: {' '.join(problems)}")
    targets = ", ".join(f"{name} ({cfg.type})" for name, cfg in settings.targets.items())
    policies = " -> ".join(policy.name for policy in gateway.router.policies)
    server = settings.server
    print(f"{args.file}: OK (config_version {settings.config_version})")
    print(f"  targets:  {targets}")
    print(f"  policies: {policies}")
    scheme, _, rest = settings.state.url.partition("://")
    # Never the password a Redis URL may carry.
    print(f"  state:    {scheme}://{rest.rpartition('@')[2]} (on outage: {settings.state.on_outage})")
    if settings.tenants:
        print(f"  tenants:  {', '.join(settings.tenants)}")
    if gateway.auth.enabled:
        print(f"  auth:     client keys required on {server.host}:{server.port}")
    else:
        print(f"  warning:  {open_access_warning(server.host, server.port, settings.auth)}")
    return 0


def _route(args: argparse.Namespace) -> int:
    from service.chat import check_limits, parse_chat_request
    from service.gateway import Gateway
    from service.settings import load_settings

    settings = load_settings(args.config)
    gateway = Gateway.from_settings(settings)
    chat = parse_chat_request(sys.stdin.buffer.read())
    check_limits(chat, settings.limits)

    async def decide() -> dict[str, object]:
        await gateway.start()
        try:
            return (await gateway.router.decide(chat)).to_dict()
        finally:
            await gateway.aclose()

    print(json.dumps(asyncio.run(decide()), indent=2))
    return 0


def _auth_hash(args: argparse.Namespace) -> int:
    from service.auth import hash_key

    print(hash_key(args.key))
    return 0


def _edge_build(args: argparse.Namespace) -> int:
    from edge_models.build import build_cli

    return build_cli(precision=args.precision, out=args.out, force=args.force)


def _capture_dir(config: str | None) -> Path:
    """``distill.capture.dir`` of ``config`` (default: as ``serve`` finds it), env overrides included."""
    from service.settings import load_settings

    return load_settings(config).distill.capture.dir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybrid-router", description="Hybrid edge-cloud LLM gateway.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML config (default: $HYBRID_ROUTER_CONFIG or the embedded default)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, default=1,
                       help="gateway processes on one socket (budgets and limits need a shared state.url)")  # fmt: skip
    serve.set_defaults(handler=_serve)

    config = commands.add_parser("config", help="configuration tools").add_subparsers(dest="sub", required=True)
    check = config.add_parser("check", help="validate a config file without starting anything")
    check.add_argument("file")
    check.set_defaults(handler=_config_check)

    route = commands.add_parser("route", help="print the decision trail for a request JSON read from stdin")
    route.add_argument("--config")
    route.set_defaults(handler=_route)

    auth = commands.add_parser("auth", help="client key tools").add_subparsers(dest="sub", required=True)
    hash_cmd = auth.add_parser("hash", help="print the sha256 form of a client key for auth.api_key_hashes")
    hash_cmd.add_argument("key")
    hash_cmd.set_defaults(handler=_auth_hash)

    from service.keys_cli import add_keys_commands

    add_keys_commands(commands)

    edge = commands.add_parser("edge", help="local model tools").add_subparsers(dest="sub", required=True)
    build = edge.add_parser("build", help="build the default edge model into ONNX")
    build.add_argument("--precision", choices=["int4", "int8", "fp32"], default=None)
    build.add_argument("--out", help="output folder (default: the model cache)")
    build.add_argument("--force", action="store_true", help="rebuild even if the model exists")
    build.set_defaults(handler=_edge_build)

    from router.training.cli import add_router_commands

    add_router_commands(commands)

    from edge_models.distill.cli import add_distill_commands

    add_distill_commands(commands, resolve_data_dir=_capture_dir)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"config error: {exc.message}", file=sys.stderr)
        return 2
    except HybridRouterError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
