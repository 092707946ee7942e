"""Reads readiness from every gateway replica (the bulk endpoint, one request per replica).

Replicas are either given as URLs or found through the EndpointSlices of the gateway
Service, so a scaled gateway Deployment is covered without configuration. A fetch is
shared by every caller that asks while it is in flight, so 1,000 resources waiting on
readiness cost one request per replica, not 1,000.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ..kube.client import KubeClient
from .status import GatewayObservation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayView:
    """What one replica said in one fetch."""

    key: str  # URL we asked
    gateway_id: str
    reachable: bool
    error: str = ""
    config_epoch: int = 0
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # lower-case id -> snapshot


@dataclass(frozen=True)
class FleetSnapshot:
    views: tuple[GatewayView, ...]
    taken_at: float

    def observations(self, model_id: str) -> list[GatewayObservation]:
        key = model_id.lower()
        return [
            GatewayObservation(
                gateway_id=v.gateway_id,
                reachable=v.reachable,
                error=v.error,
                config_epoch=v.config_epoch,
                snapshot=v.models.get(key),
            )
            for v in self.views
        ]


class GatewayDiscovery:
    """Static URLs, or the ready endpoints of a Service's EndpointSlices."""

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
        slices = await self.kube.list_endpoint_slices(self.namespace or "default", self.service)
        urls = []
        for s in slices:
            port = self.port
            for p in s.get("ports") or []:
                if p.get("port") and (p.get("name") in (None, "", "http")):
                    port = int(p["port"])
                    break
            for ep in s.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready") is False:
                    continue
                for addr in ep.get("addresses") or []:
                    host = f"[{addr}]" if ":" in addr else addr
                    urls.append(f"{self.scheme}://{host}:{port}")
        return sorted(set(urls)) + [u for u in self.urls if u not in urls]


class FleetReader:
    """Fetches the bulk readiness of every replica; coalesces concurrent callers."""

    def __init__(
        self,
        discovery: GatewayDiscovery,
        *,
        token: str | None = None,
        timeout: float = 3.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.discovery = discovery
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
        try:
            urls = await self.discovery.resolve()
        except Exception as exc:
            log.warning("gateway discovery failed: %s", exc)
            snap = FleetSnapshot(
                (GatewayView("discovery", "discovery", False, f"discovery: {exc}"),), time.monotonic()
            )
            self.last = snap
            return snap
        views = await asyncio.gather(*(self._one(u, models) for u in urls))
        snap = FleetSnapshot(tuple(views), time.monotonic())
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
