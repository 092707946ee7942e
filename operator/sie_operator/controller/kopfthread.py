"""kopf in its own thread and event loop, so it can be started and stopped many times.

Why a thread: when kopf stops, it cancels every task created in its event loop after it
started (it cannot tell its own tasks from others). With leader election the watch starts
on every gained term and stops on every lost one, while the Config API, the store
follower and the Lease renewals must go on untouched; so kopf gets a loop of its own (the
embedding kopf documents) and talks to the rest only through ``forward`` (thread-safe hand
over of each watch event to the driver's loop) and the login callback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from ..kube.auth import KubeAuth
from .handlers import build_registry, configure

log = logging.getLogger("sie_operator.operator")


def _not_the_thread_warning(record: logging.LogRecord) -> bool:
    """kopf warns on every start that it cannot take the signals in a thread; by design the
    owning loop takes SIGTERM/SIGINT and stops kopf through its stop flag."""
    return "OS signals are ignored" not in record.getMessage()


logging.getLogger("kopf._core.reactor.running").addFilter(_not_the_thread_warning)


class KopfThread:
    """One kopf run: ``start()``, then ``await stop()``; ``failed`` says whether it died."""

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        observe: Callable[[str | None, Mapping[str, Any]], None],
        auth: KubeAuth,
        namespaces: list[str],
        clusterwide: bool,
    ) -> None:
        self._loop = loop  # the driver's loop: events and logins are handed over to it
        self._observe = observe
        self._auth = auth
        self._namespaces = namespaces
        self._clusterwide = clusterwide
        self._stop_flag = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.finished = asyncio.Event()

    def _forward(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        self._loop.call_soon_threadsafe(self._observe, event_type, body)

    async def _login(self) -> kopf.ConnectionInfo:
        fut = asyncio.run_coroutine_threadsafe(self._refreshed(), self._loop)
        return await asyncio.wrap_future(fut)

    async def _refreshed(self) -> kopf.ConnectionInfo:
        await self._auth.refresh(force=True)
        return self._auth.connection_info()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="kopf", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        settings = kopf.OperatorSettings()
        configure(settings)
        settings.scanning.disabled = True
        registry = build_registry(self._forward, self._login)
        try:
            asyncio.run(
                kopf.operator(
                    registry=registry,
                    settings=settings,
                    standalone=True,
                    clusterwide=self._clusterwide,
                    namespaces=self._namespaces,
                    stop_flag=self._stop_flag,
                )
            )
        except BaseException as exc:
            self.error = exc
            log.error("the kopf watch stopped: %s", exc)
        finally:
            self._loop.call_soon_threadsafe(self.finished.set)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def stop(self, wait: float = 10.0) -> None:
        """Ask kopf to stop and wait for its thread (bounded: a stuck kopf is left behind,
        it is a daemon thread and holds no write path)."""
        self._stop_flag.set()
        thread = self._thread
        if thread is None:
            return
        await asyncio.to_thread(thread.join, wait)
        if thread.is_alive():
            log.warning("kopf did not stop within %.0f s", wait)
