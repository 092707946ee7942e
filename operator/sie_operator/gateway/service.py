"""Wires one gateway replica together: HTTP first, then mirror, NATS, worker connections, discovery.

The HTTP port is bound before anything talks to the network, so probes answer at once;
``/readyz`` stays 503 until the mirror's first bootstrap. Nothing in startup waits for the
config service, NATS, workers or the Kubernetes API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from aiohttp import web

from ..kube.auth import KubeAuth
from ..kube.client import KubeClient
from .configclient import ConfigServiceClient
from .deltas import ALL_SUBJECT
from .discovery import EndpointSliceWatcher
from .health import WorkerTable
from .http import GatewayContext, create_app
from .metrics import GatewayMetrics
from .mirror import ConfigMirror
from .natsfeed import NatsFeed
from .settings import GatewaySettings
from .workers import WorkerConnections

log = logging.getLogger(__name__)


class Gateway:
    def __init__(self, settings: GatewaySettings, kube_auth: KubeAuth | None = None) -> None:
        self.settings = settings
        self.kube_auth = kube_auth
        self.kube: KubeClient | None = None
        self.metrics = GatewayMetrics()
        self.table = WorkerTable(heartbeat_timeout=settings.heartbeat_timeout)
        self.connections = WorkerConnections(
            self.table, reconnect_interval=settings.reconnect_interval, sweep_interval=settings.sweep_interval
        )
        self.feed: NatsFeed | None = None
        self.mirror: ConfigMirror | None = None
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
        self.mirror = ConfigMirror(
            client,
            trusted=s.trusted_producers,
            poll_interval=s.poll_interval,
            backoff_max=s.backoff_max,
            observer=self.metrics,
        )
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
        )
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

    def _on_nats(self, up: bool) -> None:
        self.metrics.nats_connected.set(1 if up else 0)
        if up and self.mirror is not None:
            # Anything published while we were away is gone: compare epochs now.
            self.mirror.request_check("nats_connected")

    async def stop(self) -> None:
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
