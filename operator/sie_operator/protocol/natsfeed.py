"""A NATS connection that never blocks startup and reports (re)connects.

The first connect is retried in the background with backoff (SIE's config service blocks
forever instead); after that nats-py reconnects by itself and restores subscriptions. Every
successful (re)connect is announced because messages published while disconnected are
gone for good: listeners use it to compare epochs with the config service right away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from sie_operator.natsconn import (
    ErrorLog,
    NatsAuth,
    NatsConfigError,
    bounded_close,
    connect_options,
    redact_url,
)

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]


class NatsFeed:
    def __init__(
        self, url: str, *, name: str, backoff_max: float = 10.0, auth: NatsAuth | None = None
    ) -> None:
        self.url = url
        self.shown_url = redact_url(url)  # the only form that is ever logged
        self.auth = auth or NatsAuth()
        self._error_log = ErrorLog(log, self.shown_url)
        self.name = name
        self.backoff_max = backoff_max
        self.connected = False
        self._closing = False
        self._subs: list[tuple[str, Handler]] = []
        self._listeners: list[Callable[[bool], None]] = []
        self._nc: Client | None = None
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, subject: str, handler: Handler) -> None:
        """Register before start(); handlers run on the loop and must not block."""
        self._subs.append((subject, handler))

    def add_listener(self, callback: Callable[[bool], None]) -> None:
        """Called with True on every (re)connect and False on every disconnect."""
        self._listeners.append(callback)

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect_loop(), name=f"nats-connect-{self.name}")

    def _notify(self, up: bool) -> None:
        self.connected = up
        for cb in self._listeners:
            cb(up)

    async def _connect_loop(self) -> None:
        delay = 0.5
        try:
            options = connect_options(self.url, self.auth)
        except NatsConfigError as exc:  # settings validate this at startup; a file may have gone since
            log.error("NATS connection to %s abandoned: %s", self.shown_url, exc)
            return
        while True:
            try:
                nc = await nats.connect(
                    **options,
                    name=self.name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    connect_timeout=2,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    error_cb=self._on_error,
                )
                break
            except Exception as exc:
                log.warning(
                    "NATS %s not reachable (retry in %.1fs): %s",
                    self.shown_url,
                    delay,
                    redact_url(str(exc)) or type(exc).__name__,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
        self._nc = nc
        for subject, handler in self._subs:
            await nc.subscribe(subject, cb=_callback(handler))
        await nc.flush()
        log.info(
            "NATS connected to %s, subscribed to %s", self.shown_url, ", ".join(s for s, _ in self._subs)
        )
        self._notify(True)

    async def _on_disconnected(self) -> None:
        if self.connected and not self._closing:
            log.warning("NATS disconnected from %s", self.shown_url)
        self._notify(False)

    async def _on_reconnected(self) -> None:
        log.info("NATS reconnected to %s", self.shown_url)
        self._notify(True)

    async def _on_error(self, exc: Exception) -> None:
        self._error_log(exc)

    async def close(self) -> None:
        self._closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            # bounded: nats-py can swallow a cancellation inside its connect retries
            await asyncio.wait({self._task}, timeout=2.0)
        if self._nc is not None:
            await bounded_close(self._nc.close(), 2.0)
            self._nc = None
        self.connected = False


def _callback(handler: Handler) -> Callable[[Msg], Awaitable[None]]:
    async def cb(msg: Msg) -> None:
        try:
            handler(msg.subject, msg.data)
        except Exception:  # a bad message must not kill the subscription
            log.exception("error handling NATS message on %s", msg.subject)

    return cb
