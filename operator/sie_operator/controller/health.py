"""The operator's liveness endpoint (``/healthz`` on ``--health-port``).

Ours rather than kopf's: with leader election kopf runs only while this replica leads,
and a standby must stay alive (its Config API serves reads). It fails only for what a
restart repairs: a config store that needs one, or a Kubernetes watch that died.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web


class HealthServer:
    def __init__(self, problem: Callable[[], str | None]) -> None:
        self._problem = problem
        self._runner: web.AppRunner | None = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        problem = self._problem()
        if problem:
            return web.json_response({"status": "failing", "reason": problem}, status=500)
        return web.json_response({"status": "ok"})

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
