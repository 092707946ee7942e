"""One term of control: the fleet reader, the reconcile driver and the kopf watch together.

Without leader election the process holds one session for its whole life. With it, a
session starts when the Lease is won and stops when it is lost, while the Config API,
the store follower and the Lease renewals carry on (they live outside the session). A
new term starts from nothing: the driver lists the watched namespaces before its first
write, exactly as at process start, so no state from an earlier term can be stale.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..kube.auth import KubeAuth
from ..kube.client import KubeClient
from .driver import ConfigServiceLike, Driver
from .fleet import FleetReader, GatewayDiscovery
from .kopfthread import KopfThread
from .metrics import ReconcileMetrics

log = logging.getLogger("sie_operator.operator")


class Session:
    def __init__(
        self,
        *,
        service: ConfigServiceLike,
        kube: KubeClient,
        auth: KubeAuth,
        opts: dict[str, Any],
        metrics: ReconcileMetrics,
        gateway_port: int,
        resync_seconds: float,
        publishes: bool,
        may_write: Callable[[], bool] | None = None,
    ) -> None:
        discovery = GatewayDiscovery(
            opts["gateway_urls"],
            kube=kube,
            service=opts["gateway_service"],
            namespace=opts["gateway_namespace"],
            port=gateway_port,
        )
        self.fleet = FleetReader(discovery, token=opts["gateway_token"], grace=opts["gateway_grace"])
        self.driver = Driver(
            service,
            self.fleet,
            kube,
            namespaces=None if opts["all_namespaces"] else opts["namespaces"],
            metrics=metrics,
            slow_interval=resync_seconds,
            relist_interval=opts["relist_seconds"],
            publishes=publishes,
            may_write=may_write,
        )
        self._auth = auth
        self._opts = opts
        self._metrics = metrics
        self._stop = asyncio.Event()
        self._driver_task: asyncio.Task[None] | None = None
        self._kopf: KopfThread | None = None

    @property
    def finished(self) -> asyncio.Event:
        """Set when the kopf watch ended by itself (an error): the term cannot go on."""
        assert self._kopf is not None
        return self._kopf.finished

    @property
    def error(self) -> BaseException | None:
        return self._kopf.error if self._kopf is not None else None

    @property
    def alive(self) -> bool:
        return self._kopf is not None and self._kopf.running

    async def start(self) -> None:
        self._metrics.terms.inc()
        self._metrics.leading.set(1)
        self._driver_task = asyncio.create_task(self.driver.run(self._stop), name="reconcile-driver")
        self._kopf = KopfThread(
            loop=asyncio.get_running_loop(),
            observe=self.driver.observe,
            auth=self._auth,
            namespaces=self._opts["namespaces"],
            clusterwide=self._opts["all_namespaces"],
        )
        self._kopf.start()

    async def stop(self) -> None:
        """Stop writing first (the driver), then the watch; bounded."""
        self._metrics.leading.set(0)
        self._stop.set()
        if self._driver_task is not None:
            try:
                await asyncio.wait_for(self._driver_task, timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                self._driver_task.cancel()
        if self._kopf is not None:
            await self._kopf.stop()
        await self.fleet.close()
