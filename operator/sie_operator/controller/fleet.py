"""Reads readiness from every gateway replica (the bulk endpoint, one request per replica).

Replicas are either given as URLs or found through the EndpointSlices of the gateway
Service, so a scaled gateway Deployment is covered without configuration. A fetch is
shared by every caller that asks while it is in flight, so 1,000 resources waiting on
readiness cost one request per replica, not 1,000. Failures are damped
(``fleetview.damp``): a replica is reported unreachable only once it has failed for longer
than the grace period, and a failed EndpointSlice listing reuses the last replica list
for as long.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from sie_operator.aio import wait_event

from ..kube.client import KubeClient
from ..kube.endpointslices import service_urls
from ..protocol.packed import PackedModels
from ..protocol.readiness_stream import ReadinessStreamDecoder, StreamError, is_stream_content_type
from .fleetview import FleetSnapshot, GatewayView, ReplicaHealth, damp

log = logging.getLogger(__name__)


class GatewayDiscovery:
    """Static URLs, or the ready, not terminating endpoints of a Service's EndpointSlices."""

    def __init__(
        self,
        urls: Sequence[str] = (),
        *,
        kube: KubeClient | None = None,
        service: str | None = None,
        namespace: str | None = None,
        port: int = 8080,
        scheme: str = "http",
    ) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.kube = kube
        self.service = service
        self.namespace = namespace
        self.port = port
        self.scheme = scheme

    async def resolve(self) -> list[str]:
        if not self.service or self.kube is None:
            return list(self.urls)
        slices, _ = await self.kube.list_endpoint_slices(self.namespace or "default", self.service)
        urls = service_urls(slices, port=self.port, scheme=self.scheme, use_slice_port=True)
        return sorted(set(urls)) + [u for u in self.urls if u not in urls]


class ReplicaKind(enum.Enum):
    UNKNOWN = "unknown"
    STREAM = "stream"  # ours: GET /v1/configs/status?watch=true, pushed changes
    BULK = "bulk"  # ours without the stream: GET /v1/configs/status (model= filter)
    PER_MODEL = "per-model"  # SIE's Rust gateway: only GET /v1/configs/models/{id}/status


@dataclass
class _Replica:
    """What this process knows of one replica: its kind and its last answer per model.

    Owned by the reader's fetch (fetches do not overlap: they are coalesced)."""

    url: str
    kind: ReplicaKind = ReplicaKind.UNKNOWN
    gateway_id: str = ""
    config_epoch: int = 0
    models: PackedModels = field(default_factory=PackedModels)  # lower-case id -> snapshot
    complete: bool = False  # read in full at least once
    ok: bool = False  # the last contact succeeded (a stream: connected and in sync)
    error: str = ""
    decoder: ReadinessStreamDecoder | None = None
    task: asyncio.Task[None] | None = None
    in_sync: asyncio.Event = field(default_factory=asyncio.Event)
    changed: set[str] = field(default_factory=set)  # streamed model changes since the last snapshot


class _Unreachable(Exception):
    pass


class FleetReader:
    """Reads every replica; coalesces concurrent callers; remembers each replica's answers.

    ``fetch(wanted)`` asks only for the models in ``wanted`` (the ones not yet Ready) and
    keeps the last answer for the rest; ``fetch()`` refreshes everything (the driver does
    that every resync interval). Our gateway is read with one bulk request (with a ``model=``
    filter when the list is short); a replica that does not serve the bulk endpoint (SIE's
    own gateway answers 404) is read model by model, ``per_model_concurrency`` at a time,
    and counts like any other replica.
    """

    def __init__(
        self,
        discovery: GatewayDiscovery,
        *,
        token: str | None = None,
        timeout: float = 3.0,
        grace: float = 15.0,
        per_model_concurrency: int = 16,
        max_filter: int = 200,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.discovery = discovery
        self.grace = grace
        self.clock = clock
        self.per_model_concurrency = per_model_concurrency
        self.max_filter = max_filter
        self._health: dict[str, ReplicaHealth] = {}
        self._replicas: dict[str, _Replica] = {}
        self._urls: list[str] | None = None  # last successful discovery
        self._discovery_failing_since: float | None = None
        self.token = token
        self.timeout = timeout
        self._session = session
        self._own_session = session is None
        self._inflight: asyncio.Task[FleetSnapshot] | None = None
        self.known: tuple[str, ...] = ()  # every model the operator tracks (for full per-model reads)
        self.last: FleetSnapshot | None = None
        self.requests = 0  # HTTP requests made (a stream counts once per connection)
        self.stream_bytes = 0
        self.on_change: Callable[[], None] | None = None  # a stream brought news
        self._seq = 0

    async def close(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
        for r in self._replicas.values():
            self._drop(r)
        if self._session is not None and self._own_session:
            await self._session.close()

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._session = aiohttp.ClientSession(
                headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout)
            )
        return self._session

    async def fetch(self, wanted: Sequence[str] | None = None) -> FleetSnapshot:
        """One snapshot of the fleet; joins a fetch already under way."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._fetch(wanted), name="fleet-fetch")
        return await asyncio.shield(self._inflight)

    async def _fetch(self, wanted: Sequence[str] | None) -> FleetSnapshot:
        now = self.clock()
        try:
            urls = await self.discovery.resolve()
            self._urls, self._discovery_failing_since = urls, None
        except Exception as exc:
            if self._discovery_failing_since is None:
                self._discovery_failing_since = now
            if self._urls is None or now - self._discovery_failing_since >= self.grace:
                log.warning("gateway discovery failed: %s", exc)
                down = GatewayView("discovery", "discovery", False, f"discovery: {exc}")
                snap = FleetSnapshot((down,), now, self._next_seq())
                self.last = snap
                return snap
            log.info("gateway discovery failed, using the last replica list: %s", exc)
            urls = self._urls
        for gone in set(self._replicas) - set(urls):  # scaled down or no longer ready
            self._drop(self._replicas[gone])
        self._replicas = {u: self._replicas.get(u) or _Replica(u) for u in urls}
        views = await asyncio.gather(*(self._read(self._replicas[u], wanted) for u in urls))
        self._health, damped = damp(self._health, views, self.clock(), self.grace)
        snap = FleetSnapshot(damped, now, self._next_seq(), *self._changes(urls))
        self.last = snap
        return snap

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _changes(self, urls: Sequence[str]) -> tuple[frozenset[str] | None, int]:
        """The models whose answer changed since the last snapshot, when every replica is a
        stream in sync (it tells what changed); else None (the core compares everything)."""
        replicas = [self._replicas[u] for u in urls]
        if self.last is None or not all(r.kind is ReplicaKind.STREAM and r.ok for r in replicas):
            # kept, not cleared: a replica in its grace period is shown by its last good view,
            # which predates the changes it streamed since
            return None, -1
        changed = frozenset().union(*(r.changed for r in replicas))
        for r in replicas:
            r.changed.clear()
        return changed, self.last.seq

    async def _read(self, r: _Replica, wanted: Sequence[str] | None) -> GatewayView:
        if r.kind is ReplicaKind.UNKNOWN:
            try:
                await self._probe(r)
            except _Unreachable as exc:
                r.ok = False
                return GatewayView(r.url, r.gateway_id or r.url, False, str(exc))
        if r.kind is ReplicaKind.STREAM:
            # pushed: nothing to ask; the stream task keeps the decoder's state current
            if r.decoder is None or not r.ok:
                return GatewayView(
                    r.url, r.gateway_id or r.url, False, r.error or f"{r.url}: stream not in sync"
                )
            return self._view(r)
        if wanted is not None and not wanted and r.complete and r.ok:
            return self._view(r)  # nothing to ask a healthy replica
        try:
            if not r.complete or not r.ok:
                wanted = None  # never read in full, or just back: read it in full
            if r.kind is not ReplicaKind.PER_MODEL and not await self._read_bulk(r, wanted):
                r.kind = ReplicaKind.PER_MODEL
                log.info("gateway %s serves no bulk readiness: reading it model by model", r.url)
            if r.kind is ReplicaKind.PER_MODEL:
                await self._read_per_model(r, self.known if wanted is None else wanted)
            if wanted is None:
                r.complete = True
        except _Unreachable as exc:
            r.ok = False
            return GatewayView(r.url, r.gateway_id or r.url, False, str(exc))
        r.ok = True
        return self._view(r)

    @staticmethod
    def _view(r: _Replica) -> GatewayView:
        if r.decoder is not None:
            d = r.decoder
            return GatewayView(
                r.url, d.gateway_id or r.url, True, config_epoch=d.config_epoch or 0, models=d.models.copy()
            )
        return GatewayView(
            r.url, r.gateway_id or r.url, True, config_epoch=r.config_epoch, models=r.models.copy()
        )

    async def _probe(self, r: _Replica) -> None:
        """Which way this replica is read: its answer to ``?watch=true`` tells."""
        self.requests += 1
        url = f"{r.url}/v1/configs/status"
        try:
            async with self._sess().get(url, params=[("watch", "true")]) as resp:
                if resp.status in (404, 405):
                    r.kind = ReplicaKind.PER_MODEL
                    log.info("gateway %s serves no bulk readiness: reading it model by model", r.url)
                    return
                if resp.status != 200:
                    raise _Unreachable(f"{r.url}: HTTP {resp.status}")
                streams = is_stream_content_type(resp.headers.get("Content-Type"))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _Unreachable(f"{url}: {type(exc).__name__} {exc}".strip()) from None
        if not streams:
            r.kind = ReplicaKind.BULK  # an older gateway of ours: it ignored ``watch``
            return
        r.kind = ReplicaKind.STREAM
        r.decoder = ReadinessStreamDecoder()
        r.task = asyncio.create_task(self._follow(r), name=f"readiness-stream {r.url}")
        # a bounded wait for the first snapshot, so this first read is complete
        with contextlib.suppress(TimeoutError):
            await wait_event(r.in_sync, self.timeout)

    async def _follow(self, r: _Replica) -> None:
        """Hold one replica's readiness stream: resume after a drop, tell the driver of changes."""
        dec = r.decoder
        assert dec is not None
        delay = 0.5
        while True:
            try:
                timeout = aiohttp.ClientTimeout(
                    total=None, sock_connect=self.timeout, sock_read=dec.idle_timeout()
                )
                self.requests += 1
                async with self._sess().get(
                    f"{r.url}/v1/configs/status", params=dec.query(), timeout=timeout
                ) as resp:
                    if resp.status != 200 or not is_stream_content_type(resp.headers.get("Content-Type")):
                        raise _Unreachable(f"{r.url}: HTTP {resp.status} to the readiness stream")
                    async for chunk in resp.content.iter_any():
                        self.stream_bytes += len(chunk)
                        updates = dec.feed(chunk)
                        for u in updates:
                            r.changed |= u.changed
                        if dec.synced and not r.ok:
                            r.ok, r.error, delay = True, "", 0.5
                            r.in_sync.set()
                            self._changed()
                        elif any(u.changed for u in updates):
                            self._changed()
                raise _Unreachable(f"{r.url}: the readiness stream ended")
            except asyncio.CancelledError:
                raise
            except (TimeoutError, aiohttp.ClientError, StreamError, _Unreachable, ValueError) as exc:
                text = str(exc) if isinstance(exc, _Unreachable) else f"{r.url}: {type(exc).__name__} {exc}"
                log.info("readiness stream of %s lost (retry in %.1f s): %s", r.url, delay, text)
                dec.connection_lost()
                r.ok, r.error = False, text.strip()
                self._changed()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    @staticmethod
    def _drop(r: _Replica) -> None:
        if r.task is not None:
            r.task.cancel()
            r.task = None

    @property
    def degraded(self) -> bool:
        """Some replica failed its last read: read again soon, to report it (or its return)
        once the grace period is over."""
        return any(not r.ok for r in self._replicas.values()) or self._discovery_failing_since is not None

    async def _get(self, url: str, params: Any = None) -> tuple[int, Any]:
        self.requests += 1
        try:
            async with self._sess().get(url, params=params) as resp:
                if resp.status != 200:
                    return resp.status, None
                # orjson, as for the stream: what it parses it can pack again (a number past
                # 64 bits comes back as a float instead of failing the pack)
                return 200, orjson.loads(await resp.read())
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise _Unreachable(f"{url}: {type(exc).__name__} {exc}".strip()) from None

    async def _read_bulk(self, r: _Replica, wanted: Sequence[str] | None) -> bool:
        """False: the replica has no bulk endpoint."""
        filtered = wanted is not None and len(wanted) <= self.max_filter
        if wanted is not None and not wanted:
            return True  # nothing to ask
        params = [("model", m) for m in wanted] if filtered and wanted else None
        status, data = await self._get(f"{r.url}/v1/configs/status", params)
        if status in (404, 405) and r.kind is ReplicaKind.UNKNOWN:
            return False
        if status != 200 or not isinstance(data, dict):
            raise _Unreachable(
                f"{r.url}: HTTP {status}" if status != 200 else f"{r.url}: unexpected response"
            )
        try:
            epoch = int(data.get("config_epoch") or 0)
            got: dict[str, Mapping[str, Any]] = {
                str(m.get("model_id", "")).lower(): m
                for m in data.get("models") or []
                if isinstance(m, dict) and m.get("model_id")
            }
        except (TypeError, ValueError, AttributeError) as exc:  # one odd replica must not stop the rest
            raise _Unreachable(f"{r.url}: malformed readiness response ({exc})") from None
        r.kind = ReplicaKind.BULK
        r.gateway_id = str(data.get("gateway_id") or r.url)
        r.config_epoch = epoch
        if filtered and wanted is not None:
            for m in wanted:  # asked and not answered: the replica does not know it (any more)
                r.models.pop(m.lower())
            for key, answer in got.items():
                r.models.put(key, answer)
        else:
            r.models = PackedModels.of(got)
        return True

    async def _read_per_model(self, r: _Replica, wanted: Sequence[str]) -> None:
        sem = asyncio.Semaphore(self.per_model_concurrency)
        failures: list[str] = []

        async def one(model_id: str) -> None:
            async with sem:
                try:
                    status, data = await self._get(
                        f"{r.url}/v1/configs/models/{quote(model_id, safe='/')}/status"
                    )
                except _Unreachable as exc:
                    failures.append(str(exc))
                    return
            key = model_id.lower()
            if status == 404:
                r.models.pop(key)
            elif status == 200 and isinstance(data, dict):
                r.models.put(key, data)
                r.config_epoch = max(r.config_epoch, _epoch_of(data))
            else:
                failures.append(f"{r.url}: HTTP {status} for {model_id}")

        await asyncio.gather(*(one(m) for m in wanted))
        if failures and len(failures) == len(wanted):
            raise _Unreachable(failures[0])


def _epoch_of(snapshot: Mapping[str, Any]) -> int:
    value = snapshot.get("config_epoch")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
