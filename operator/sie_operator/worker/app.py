"""Reference worker instance: config mirror of one bundle + ``/ws/status`` + probes.

It speaks the real worker's protocol (subscribes to ``sie.config.models.{bundle}``, pushes a
status frame every 200 ms) and fixes its weakness W7: it bootstraps from the config
service, follows ``_all`` to see every write's epoch, and catches up at once on a gap, so it
never silently misses a model. A frame is also pushed as soon as the reported hash
changes, so an ack does not wait for the next tick.

Several instances of one process (``--instances K``, how benchmarks simulate many workers
on few cores) share one mirror by default: they would receive the same deltas and build
the same registry, and K copies of it re-hashing the same megabytes of bundle on every
write made the simulation, not the system, the bottleneck (the bundle hash after a change
re-hashes every byte after the changed model). Each instance keeps its own name, socket,
ack delay and reported hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import weakref
from collections.abc import Callable

import orjson
from aiohttp import web

from sie_operator.aio import wait_event
from sie_operator.protocol.configclient import ConfigServiceClient
from sie_operator.protocol.deltas import ALL_SUBJECT, DEFAULT_TRUSTED_PRODUCERS, bundle_subject
from sie_operator.protocol.mirror import ConfigMirror
from sie_operator.protocol.natsfeed import NatsFeed

from .state import ReportedHash, status_frame

log = logging.getLogger(__name__)


def attach_mirror(mirror: ConfigMirror, bundle: str, feed: NatsFeed | None) -> None:
    """The NATS side of a worker's mirror: its bundle's subject, ``_all``, reconnect checks."""
    if feed is not None:
        feed.subscribe(bundle_subject(bundle), mirror.on_message)
        feed.subscribe(ALL_SUBJECT, mirror.on_message)
        feed.add_listener(lambda up: mirror.request_check("nats_connected") if up else None)


class SharedMirror:
    """One config mirror for every instance of a process (see the module docstring)."""

    def __init__(
        self,
        client: ConfigServiceClient,
        *,
        bundle: str,
        poll_interval: float = 30.0,
        trusted: tuple[str, ...] | None = DEFAULT_TRUSTED_PRODUCERS,
    ) -> None:
        self.bundle = bundle
        self.listeners: list[Callable[[], None]] = []
        self.mirror = ConfigMirror(
            client, bundle=bundle, trusted=trusted, poll_interval=poll_interval, on_change=self._changed
        )
        self._task: asyncio.Task[None] | None = None

    def _changed(self) -> None:
        for listener in self.listeners:
            listener()

    def attach(self, feed: NatsFeed | None) -> None:
        attach_mirror(self.mirror, self.bundle, feed)

    def start(self) -> None:
        self._task = asyncio.create_task(self.mirror.run(), name="worker-mirror (shared)")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class WorkerInstance:
    def __init__(
        self,
        *,
        name: str,
        bundle: str,
        client: ConfigServiceClient,
        ack_delay: float = 0.0,
        status_interval: float = 0.2,
        poll_interval: float = 30.0,
        trusted: tuple[str, ...] | None = DEFAULT_TRUSTED_PRODUCERS,
        shared: SharedMirror | None = None,
    ) -> None:
        self.name = name
        self.bundle = bundle
        self.status_interval = status_interval
        self.reported = ReportedHash(ack_delay)
        self.shared = shared
        if shared is None:
            self.mirror = ConfigMirror(
                client,
                bundle=bundle,
                trusted=trusted,
                poll_interval=poll_interval,
                on_change=self.on_config_change,
            )
        else:
            self.mirror = shared.mirror
            shared.listeners.append(self.on_config_change)
        self.started = time.time()
        self.pid = os.getpid()
        self._waiters: set[asyncio.Event] = set()
        self._sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_reported = ""
        self._initial = True

    # -- config state ---------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.mirror.bootstrapped

    def attach(self, feed: NatsFeed | None) -> None:
        if self.shared is None:
            attach_mirror(self.mirror, self.bundle, feed)

    def start(self) -> None:
        if self.shared is None:
            self._task = asyncio.create_task(self.mirror.run(), name=f"worker-mirror {self.name}")

    def on_config_change(self) -> None:
        if not self.mirror.bootstrapped:
            return
        loaded = self.mirror.registry.bundle_hash(self.bundle)
        # The startup load is part of becoming ready; only later changes are delayed.
        self.reported.load(loaded, immediate=self._initial)
        if self._initial:
            self._initial = False
            self._wake_all()  # ready flipped to true
        self._schedule()

    def _schedule(self) -> None:
        """Push a frame now if the reported hash moved; arm a timer for a delayed one."""
        current = self.reported.current()
        if current != self._last_reported:
            self._last_reported = current
            self._wake_all()
        delay = self.reported.next_change_in()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if delay is not None:
            self._timer = asyncio.get_running_loop().call_later(delay + 0.001, self._schedule)

    def _wake_all(self) -> None:
        for ev in self._waiters:
            ev.set()

    def frame(self) -> dict[str, object]:
        return status_frame(
            name=self.name,
            bundle=self.bundle,
            ready=self.ready,
            config_hash=self.reported.current() if self.ready else "",
            config_epoch=self.mirror.epoch,
            started=self.started,
            pid=self.pid,
        )

    # -- HTTP -----------------------------------------------------------------------------
    async def ws_status(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        wake = asyncio.Event()
        self._waiters.add(wake)

        async def push() -> None:
            while not ws.closed:
                await ws.send_str(orjson.dumps(self.frame()).decode())
                with contextlib.suppress(TimeoutError):
                    await wait_event(wake, self.status_interval)
                wake.clear()

        sender = asyncio.create_task(push())
        try:
            async for _ in ws:  # the gateway sends nothing; this notices the close
                pass
        finally:
            self._waiters.discard(wake)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await sender
        return ws

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok") if self.ready else web.Response(text="not ready", status=503)

    async def _close_sockets(self, app: web.Application) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"worker shutting down")

    def create_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws/status", self.ws_status)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.on_shutdown.append(self._close_sockets)
        return app

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
