"""What triggers a config reload while serving: SIGHUP, and a change to the config file.

Both call :meth:`service.gateway.Gateway.reload`, which validates the new
config and swaps it in whole, or keeps the old one, logs why and counts it.
``hybrid-router serve`` reloads on SIGHUP; every app whose gateway was built
from a config file (:class:`~service.settings.ConfigSource`) watches it every
``server.reload_poll_s`` seconds.

    kill -HUP $(pidof hybrid-router)      # or edit the file and wait a poll
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading

from service.gateway import Gateway
from service.settings import ConfigSource

__all__ = ["Reloader"]

log = logging.getLogger("hybrid_router.reload")

# While polling is off (reload_poll_s: 0), how often to look whether a reload turned it back on.
_IDLE_S = 1.0
# A changed file is loaded once it has stayed the same this long: an editor may be halfway through writing it.
_SETTLE_S = 0.1


class Reloader:
    """Reloads ``gateway`` when its config file changes and, with ``on_signal``, on that signal.

    Start it on the event loop once the gateway has started, and close it before
    the gateway. The file is read (and hashed) every ``server.reload_poll_s``
    seconds, the live value, so a reload may turn polling off or on; a content
    that was tried, even rejected, is not tried again until it changes.
    """

    def __init__(self, gateway: Gateway, *, on_signal: signal.Signals | None = None) -> None:
        self.gateway = gateway
        self.on_signal = on_signal
        self._watcher: asyncio.Task[None] | None = None
        self._reloads: set[asyncio.Task[object]] = set()
        self._installed = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.on_signal is not None:
            if threading.current_thread() is threading.main_thread():
                loop.add_signal_handler(self.on_signal, self._reload, self.on_signal.name)
                self._installed = True
            else:
                log.warning("not reloading on %s: signals reach only the main thread's loop", self.on_signal.name)
        source = self.gateway.source
        if source is not None and source.watched:
            self._watcher = asyncio.create_task(self._watch(source))

    async def aclose(self) -> None:
        if self._installed and self.on_signal is not None:
            asyncio.get_running_loop().remove_signal_handler(self.on_signal)
            self._installed = False
        tasks = [*self._reloads, *([self._watcher] if self._watcher is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _reload(self, trigger: str) -> None:
        task = asyncio.create_task(self.gateway.reload(trigger=trigger))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _watch(self, source: ConfigSource) -> None:
        while True:
            poll = self.gateway.settings.server.reload_poll_s
            await asyncio.sleep(poll if poll > 0 else _IDLE_S)
            if poll <= 0:
                continue
            try:
                seen = await asyncio.to_thread(source.fingerprint)
                # None: the file is missing for now (being replaced); the next poll sees the new one.
                if seen is None or seen == self.gateway.loaded_fingerprint:
                    continue
                await asyncio.sleep(_SETTLE_S)
                if await asyncio.to_thread(source.fingerprint) == seen:
                    await self.gateway.reload(trigger="file change")
            except Exception:
                # The watcher must outlive any one failure, or later edits would go unseen.
                log.exception("watching %s failed; still watching", source.path)
