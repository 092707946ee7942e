"""WebSocket connections to workers (the gateway dials ``ws://<worker>/ws/status``).

One task per worker URL: connect, decode every status frame into the WorkerTable, and on
close or error mark the worker Unhealthy and reconnect after the reconnect interval, until
discovery removes the URL. A sweep task demotes workers that went silent. Discovery
sources (static list, Kubernetes) each own a set of URLs; the union is what is dialled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import orjson

from sie_operator.natsconn import redact_url

from .health import Frame, WorkerTable

log = logging.getLogger(__name__)

_STR_FIELDS = ("name", "bundle", "bundle_config_hash", "machine_profile", "pool_name")


class FrameError(ValueError):
    pass


def parse_frame(data: str | bytes) -> Frame:
    """Decode a status frame; a present field of the wrong type rejects the whole frame.

    Same rule as SIE's gateway (serde): unknown fields are ignored, ``null`` for a typed
    field is an error, so a worker sending garbage does not count as a heartbeat.
    """
    try:
        obj: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise FrameError("frame is not a JSON object")
    values: dict[str, Any] = {}
    for key in _STR_FIELDS:
        if key in obj:
            if not isinstance(obj[key], str):
                raise FrameError(f"field {key!r} must be a string")
            values[key] = obj[key]
    if "ready" in obj:
        if not isinstance(obj["ready"], bool):
            raise FrameError("field 'ready' must be a boolean")
        values["ready"] = obj["ready"]
    if "gpu_count" in obj:
        gc = obj["gpu_count"]
        if isinstance(gc, bool) or not isinstance(gc, int) or gc < 0:
            raise FrameError("field 'gpu_count' must be a non-negative integer")
        values["gpu_count"] = gc
    if "loaded_models" in obj:
        lm = obj["loaded_models"]
        if not isinstance(lm, list) or not all(isinstance(m, str) for m in lm):
            raise FrameError("field 'loaded_models' must be a list of strings")
        values["loaded_models"] = tuple(lm)
    return Frame(**values)


def status_url(worker_url: str) -> str:
    """``http://h:p`` -> ``ws://h:p/ws/status`` (``https`` -> ``wss``)."""
    base = worker_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return base + "/ws/status"


class WorkerConnections:
    """Keeps one status connection per discovered worker URL."""

    def __init__(
        self,
        table: WorkerTable,
        *,
        reconnect_interval: float = 5.0,
        sweep_interval: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.table = table
        self.session: aiohttp.ClientSession | None = None
        self.reconnect_interval = reconnect_interval
        self.sweep_interval = sweep_interval
        self.connect_timeout = connect_timeout
        self._sources: dict[str, frozenset[str]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._undialled: set[str] = set()  # URLs whose first dial has not finished yet
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        # Own session: no pool limit (each socket stays open), short handshake timeout.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.connect_timeout, sock_read=self.connect_timeout
            ),
        )
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="worker-sweep")

    def set_source(self, source: str, urls: set[str] | frozenset[str]) -> None:
        """Replace the URLs one discovery source contributes; dial new ones, drop gone ones."""
        self._sources[source] = frozenset(urls)
        wanted = frozenset().union(*self._sources.values())
        for url in sorted(wanted - self._tasks.keys()):
            self.table.add(url)
            self._undialled.add(url)
            self._tasks[url] = asyncio.create_task(self._run(url), name=f"worker-ws {url}")
            log.info("worker added: %s", redact_url(url))
        for url in sorted(self._tasks.keys() - wanted):
            self._tasks.pop(url).cancel()
            self._undialled.discard(url)
            self.table.remove(url)
            log.info("worker removed: %s", redact_url(url))

    @property
    def urls(self) -> list[str]:
        return sorted(self._tasks)

    def dialled(self, sources: frozenset[str] | set[str]) -> bool:
        """Every one of ``sources`` has reported, and every URL known now was dialled once
        (it sent its first frame, or the attempt failed): the gateway's readiness gate, so
        a fresh replica does not answer "no workers" for workers it simply has not met."""
        return sources <= self._sources.keys() and not self._undialled

    async def _run(self, url: str) -> None:
        ws_url = status_url(url)
        assert self.session is not None, "start() first"
        while True:
            try:
                async with self.session.ws_connect(
                    ws_url, timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0), autoping=True
                ) as ws:
                    log.debug("connected to %s", redact_url(ws_url))
                    async for msg in ws:
                        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                            try:
                                frame = parse_frame(msg.data)
                            except FrameError as exc:
                                log.debug("bad status frame from %s: %s", redact_url(url), exc)
                                continue
                            self.table.frame(url, frame)
                            self._undialled.discard(url)
                        elif msg.type is aiohttp.WSMsgType.ERROR:
                            break
                reason = "closed"
            except asyncio.CancelledError:
                raise
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            rec = self.table.get(url)
            if rec is not None and rec.connected:
                log.warning("worker %s disconnected (%s)", rec.display_name, reason)
            else:
                log.debug("worker %s not reachable (%s)", redact_url(url), redact_url(reason))
            self.table.disconnected(url)
            self._undialled.discard(url)
            await asyncio.sleep(self.reconnect_interval)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            for url in self.table.sweep():
                rec = self.table.get(url)
                log.warning(
                    "worker %s silent for over %.1fs: unhealthy",
                    rec.display_name if rec else url,
                    self.table.heartbeat_timeout,
                )

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        if self._sweeper is not None:
            tasks.append(self._sweeper)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.session is not None:
            await self.session.close()
