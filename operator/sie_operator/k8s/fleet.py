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
import logging
import time
from collections.abc import Callable, Sequence

import aiohttp

from ..kube.client import KubeClient
from ..kube.endpointslices import service_urls
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


class FleetReader:
    """Fetches the bulk readiness of every replica; coalesces concurrent callers."""

    def __init__(
        self,
        discovery: GatewayDiscovery,
        *,
        token: str | None = None,
        timeout: float = 3.0,
        grace: float = 15.0,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.discovery = discovery
        self.grace = grace
        self.clock = clock
        self._health: dict[str, ReplicaHealth] = {}
        self._urls: list[str] | None = None  # last successful discovery
        self._discovery_failing_since: float | None = None
        self.token = token
        self.timeout = timeout
        self._session = session
        self._own_session = session is None
        self._inflight: asyncio.Task[FleetSnapshot] | None = None
        self.last: FleetSnapshot | None = None

    async def close(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
        if self._session is not None and self._own_session:
            await self._session.close()

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._session = aiohttp.ClientSession(
                headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout)
            )
        return self._session

    async def fetch(self, models: Sequence[str] | None = None) -> FleetSnapshot:
        """One snapshot of the fleet; joins a fetch already under way."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._fetch(models), name="fleet-fetch")
        return await asyncio.shield(self._inflight)

    async def _fetch(self, models: Sequence[str] | None) -> FleetSnapshot:
        now = self.clock()
        try:
            urls = await self.discovery.resolve()
            self._urls, self._discovery_failing_since = urls, None
        except Exception as exc:
            if self._discovery_failing_since is None:
                self._discovery_failing_since = now
            if self._urls is None or now - self._discovery_failing_since >= self.grace:
                log.warning("gateway discovery failed: %s", exc)
                snap = FleetSnapshot(
                    (GatewayView("discovery", "discovery", False, f"discovery: {exc}"),), now
                )
                self.last = snap
                return snap
            log.info("gateway discovery failed, using the last replica list: %s", exc)
            urls = self._urls
        views = await asyncio.gather(*(self._one(u, models) for u in urls))
        self._health, damped = damp(self._health, views, self.clock(), self.grace)
        snap = FleetSnapshot(damped, now)
        self.last = snap
        return snap

    async def _one(self, url: str, models: Sequence[str] | None) -> GatewayView:
        params = [("model", m) for m in models] if models else None
        try:
            async with self._sess().get(f"{url}/v1/configs/status", params=params) as resp:
                if resp.status != 200:
                    return GatewayView(url, url, False, f"{url}: HTTP {resp.status}")
                data = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            return GatewayView(url, url, False, f"{url}: {type(exc).__name__} {exc}".strip())
        if not isinstance(data, dict):
            return GatewayView(url, url, False, f"{url}: unexpected response")
        entries = data.get("models") or []
        try:
            config_epoch = int(data.get("config_epoch") or 0)
            models_map = {
                str(m.get("model_id", "")).lower(): m
                for m in entries
                if isinstance(m, dict) and m.get("model_id")
            }
        except (TypeError, ValueError, AttributeError) as exc:  # one odd replica must not stop the rest
            return GatewayView(url, url, False, f"{url}: malformed readiness response ({exc})")
        return GatewayView(
            key=url,
            gateway_id=str(data.get("gateway_id") or url),
            reachable=True,
            config_epoch=config_epoch,
            models=models_map,
        )
