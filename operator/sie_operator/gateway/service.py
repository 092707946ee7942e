"""Wires one gateway replica together: HTTP first, then mirror, NATS, worker connections, discovery.

The HTTP port is bound before anything talks to the network, so probes answer at once;
``/readyz`` stays 503 until the mirror's first bootstrap and the first dial of every worker
known by then (or two worker connect timeouts, at least ``DIAL_GRACE``, whichever comes
first). Nothing in startup waits for the config service, NATS, workers or the Kubernetes API.

Shutdown (``drain`` then ``stop``): ``/readyz`` fails at once, requests and watch streams
keep being served for ``drain_delay`` seconds (so Services and the operator stop using
this replica while it still answers), then watch streams end cleanly and the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import aiohttp
from aiohttp import web

from ..kube.auth import KubeAuth
from ..kube.client import KubeClient
from ..protocol.configclient import ConfigServiceClient
from ..protocol.deltas import ALL_SUBJECT
from ..protocol.mirror import ConfigMirror, ExportOutcome, MirrorObserver
from ..protocol.natsfeed import NatsFeed
from .discovery import EndpointSliceWatcher
from .health import WorkerTable
from .http import GatewayContext, create_app
from .metrics import GatewayMetrics
from .settings import GatewaySettings
from .watch import ReadinessFeed
from .workers import WorkerConnections

log = logging.getLogger(__name__)

DIAL_GRACE = 10.0  # at least; readiness stops waiting for slow first dials after 2 connect timeouts


class _Observers(MirrorObserver):
    """Mirror events to the metrics, and the readiness hooks to the watch feed."""

    def __init__(self, metrics: GatewayMetrics, feed: ReadinessFeed | None = None) -> None:
        self.metrics = metrics
        self.feed = feed

    def delta(self, kind: str, result: str) -> None:
        self.metrics.delta(kind, result)

    def catchup(self, reason: str) -> None:
        self.metrics.catchup(reason)

    def bootstrap_failed(self, degraded: bool) -> None:
        self.metrics.bootstrap_failed(degraded)

    def bootstrapped(self, outcome: ExportOutcome) -> None:
        self.metrics.bootstrapped(outcome)

    def epoch(self, value: int) -> None:
        self.metrics.epoch(value)

    def model_changed(self, model_id: str, bundles: Sequence[str]) -> None:
        if self.feed is not None:
            self.feed.model_changed(model_id, bundles)

    def registry_replaced(self) -> None:
        if self.feed is not None:
            self.feed.registry_replaced()


class Gateway:
    def __init__(self, settings: GatewaySettings, kube_auth: KubeAuth | None = None) -> None:
        self.settings = settings
        self.kube_auth = kube_auth
        self.kube: KubeClient | None = None
        self.metrics = GatewayMetrics()
        self.table = WorkerTable(heartbeat_timeout=settings.heartbeat_timeout)
        self.connections = WorkerConnections(
            self.table,
            reconnect_interval=settings.reconnect_interval,
            sweep_interval=settings.sweep_interval,
            connect_timeout=settings.connect_timeout,
        )
        self.feed: NatsFeed | None = None
        self.mirror: ConfigMirror | None = None
        self.watch: ReadinessFeed | None = None
        self.ctx: GatewayContext | None = None
        self._started = 0.0
        self._dialled = False
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._runner is not None
        for site in self._runner.sites:
            server = getattr(site, "_server", None)
            if server is not None and server.sockets:
                return int(server.sockets[0].getsockname()[1])
        return self.settings.port

    async def start(self) -> None:
        s = self.settings
        self._session = aiohttp.ClientSession()
        # the export token is enough to bootstrap; the admin token only if no export token is given
        client = ConfigServiceClient(self._session, s.config_url, admin_token=s.export_token or s.admin_token)
        observers = _Observers(self.metrics)
        self.mirror = ConfigMirror(
            client,
            trusted=s.trusted_producers,
            poll_interval=s.poll_interval,
            backoff_max=s.backoff_max,
            observer=observers,
        )
        self.watch = observers.feed = ReadinessFeed(
            self.mirror,
            self.table,
            s.gateway_id,
            history=s.watch_history,
            coalesce=s.watch_coalesce,
            settle=s.watch_settle,
            heartbeat=s.watch_heartbeat,
            on_changes=self.metrics.readiness_changes.inc,
        )
        self._started = time.monotonic()
        if s.nats_url:
            self.feed = NatsFeed(s.nats_url, name=f"sie-gateway-{s.gateway_id}", auth=s.nats_auth)
            self.feed.subscribe(ALL_SUBJECT, self.mirror.on_message)
            self.feed.add_listener(self._on_nats)
        else:
            log.warning("no NATS URL: the registry follows the config service only through the epoch poller")
        feed = self.feed
        ctx = GatewayContext(
            mirror=self.mirror,
            table=self.table,
            metrics=self.metrics,
            auth=s.auth,
            gateway_id=s.gateway_id,
            nats_connected=(lambda: feed.connected) if feed is not None else (lambda: False),
            feed=self.watch,
            workers_dialled=self._workers_dialled,
        )
        self.ctx = ctx
        self._runner = web.AppRunner(create_app(ctx), access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, s.host, s.port, shutdown_timeout=2.0).start()
        log.info("gateway %s listening on %s:%d", s.gateway_id, s.host, self.port)

        self._tasks.append(asyncio.create_task(self.mirror.run(), name="config-mirror"))
        if self.feed is not None:
            self.feed.start()
        self.connections.start()
        self.connections.set_source("static", set(s.workers))
        if self.kube_auth is not None:
            self.kube = KubeClient(self.kube_auth)
            ns = s.k8s_namespace or self.kube_auth.default_namespace or "default"
            watcher = EndpointSliceWatcher(
                self.kube,
                ns,
                s.k8s_service,
                s.k8s_port,
                lambda urls: self.connections.set_source("k8s", urls),
            )
            self._tasks.append(asyncio.create_task(watcher.run(), name="endpointslice-watch"))
        elif not s.workers:
            log.warning("no workers configured (--worker / SIE_GATEWAY_WORKERS / --kubernetes)")

    def _workers_dialled(self) -> bool:
        """Latched: once every known worker was dialled (or the grace ran out), stay so."""
        if not self._dialled:
            sources = {"static"} | ({"k8s"} if self.kube is not None else set())
            self._dialled = self.connections.dialled(sources) or time.monotonic() - self._started > max(
                DIAL_GRACE, 2 * self.settings.connect_timeout
            )
        return self._dialled

    async def drain(self) -> None:
        """Fail ``/readyz`` now, keep serving for ``drain_delay`` seconds (SIGTERM path)."""
        if self.ctx is not None:
            self.ctx.draining = True
        delay = self.settings.drain_delay
        if delay > 0:
            log.info("draining: /readyz fails, serving for %.1fs more", delay)
            await asyncio.sleep(delay)

    def _on_nats(self, up: bool) -> None:
        self.metrics.nats_connected.set(1 if up else 0)
        if up and self.mirror is not None:
            # Anything published while we were away is gone: compare epochs now.
            self.mirror.request_check("nats_connected")

    async def stop(self) -> None:
        if self.ctx is not None:
            self.ctx.draining = True
        if self.watch is not None:
            self.watch.close()  # watch streams end cleanly before the server goes
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.feed is not None:
            await self.feed.close()
        await self.connections.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        if self.kube is not None:
            await self.kube.close()
        if self.kube_auth is not None:
            self.kube_auth.close()
