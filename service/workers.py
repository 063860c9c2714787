"""``hybrid-router serve --workers N``: N gateway processes on one listening socket, sharing state on SQLite or Redis.

The parent binds the socket once and starts each worker with the spawn
method (a fresh interpreter: no forked threads, no copied model handles);
each builds its own app from the same settings and accepts connections from
the shared socket, so the kernel spreads them. Budgets, rate windows and
run-time keys live in ``state.url``, which must be shared (``sqlite:///…`` or
``redis://…``) when any limit is configured: a per-process ``memory://`` store
would give each worker its own budget.

The parent forwards SIGTERM (each worker drains its requests and exits) and
SIGHUP (each reloads its config); Ctrl-C reaches the workers from the
terminal itself (a second, forwarded signal would make uvicorn skip the
drain). It starts a worker again if one dies, at most once per 10 s each, so
a crash loop does not spin.

Each worker keeps its own Prometheus registry, so ``/metrics`` answers for
the worker a scrape reaches, and ``server.metrics_port`` is refused in this
mode. Where per-process metrics matter, run one worker per container.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from multiprocessing.process import BaseProcess
from typing import Any

from router.errors import ConfigError
from service.settings import ConfigSource, Settings

__all__ = ["serve_workers", "shared_state_problems"]

log = logging.getLogger("hybrid_router.workers")

_RESTART_EVERY_S = 10.0


def shared_state_problems(settings: Settings, workers: int) -> list[str]:
    """Why ``workers`` processes could not serve these settings correctly; empty when they can."""
    problems = []
    limited = bool(settings.tenants) or any(key.limits.model_dump(exclude_none=True) for key in settings.auth.keys)
    if workers > 1 and settings.state.url.startswith("memory://") and limited:
        problems.append(
            f"--workers {workers} with budgets or rate limits needs a shared state store: each worker would "
            "keep its own under memory://. Set state.url to sqlite:///<path> (this machine) or redis://… ."
        )
    if workers > 1 and settings.server.metrics_port is not None:
        problems.append(f"server.metrics_port cannot be shared by {workers} workers; leave it unset with --workers")
    return problems


def _bind(settings: Settings) -> socket.socket:
    host, port = settings.server.host, settings.server.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(given: ConfigSource | dict[str, Any], sock: socket.socket, index: int) -> None:
    """One worker process: the same app as ``serve``, on the shared socket.

    Settings travel as their source (re-read here, as a reload would) or as plain data: a loaded
    ``Settings`` is an instance of a class made per file, which pickle cannot name.
    """
    from service.logs import configure_logging
    from service.server import serve

    source = given if isinstance(given, ConfigSource) else None
    settings = source.load() if source is not None else Settings(**given)  # type: ignore[arg-type]
    configure_logging(settings.logging)
    logging.getLogger("hybrid_router.workers").info("worker %d started (pid %d)", index, os.getpid())
    serve(settings, source=source, sockets=[sock])


def serve_workers(settings: Settings, *, source: ConfigSource | None, workers: int) -> None:
    """Run ``workers`` gateway processes until SIGTERM or SIGINT; restart any that dies."""
    problems = shared_state_problems(settings, workers)
    if problems:
        raise ConfigError(" ".join(problems))
    sock = _bind(settings)
    context = multiprocessing.get_context("spawn")
    stopping = False
    processes: dict[int, BaseProcess] = {}
    started_at: dict[int, float] = {}

    given: ConfigSource | dict[str, Any] = source if source is not None else settings.model_dump()

    def start(index: int) -> None:
        process = context.Process(target=_worker, args=(given, sock, index), name=f"hybrid-router-{index}")
        process.start()
        processes[index], started_at[index] = process, time.monotonic()

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        if signum == signal.SIGINT:
            return  # the terminal sent it to every worker already
        for process in processes.values():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    log.info("serving on %s:%d with %d workers", settings.server.host, settings.server.port, workers)
    try:
        for index in range(workers):
            start(index)
        while not stopping:
            time.sleep(0.2)
            for index, process in list(processes.items()):
                if process.is_alive() or stopping:
                    continue
                wait = _RESTART_EVERY_S - (time.monotonic() - started_at[index])
                if wait > 0:
                    continue
                log.error("worker %d exited with %s; starting it again", index, process.exitcode)
                start(index)
        for process in processes.values():
            # Each worker drains its requests within uvicorn's graceful-shutdown window (30 s).
            process.join(timeout=40)
            if process.is_alive():
                process.kill()
                process.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
