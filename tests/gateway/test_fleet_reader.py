"""The operator's fleet reader over a mixed fleet, on real processes (issue 12).

One of our gateways (bulk readiness endpoint) and a stand-in for SIE's own Rust gateway,
which serves only the per-model ``GET /v1/configs/models/{id}/status`` (everything else 404,
and none of our model-granular fields). Both count as replicas, and the status computed
from them is the same as from our gateway alone.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from gw_cluster import Cluster, acked, model_yaml

from sie_operator.controller.fleet import FleetReader, GatewayDiscovery, ReplicaKind
from sie_operator.controller.status import StoreOutcome, compute_status

WORKERS = ["w1", "w2"]
GRANULAR = ("model_acked", "model_acked_workers", "model_pending_workers")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("fleet-cluster"))
    c.nats.start()
    try:
        c.start_config().wait_http(f"{c.config_url}/healthz", 20)
        for w in WORKERS:
            c.start_worker(w)
        c.start_gateway("main", WORKERS)
        c.wait_ready()
        yield c
    finally:
        c.stop_all()


def sie_shaped(snapshot: dict[str, Any]) -> dict[str, Any]:
    """What SIE's gateway answers: no gateway_id, no model-granular fields."""
    out = {k: v for k, v in snapshot.items() if k not in GRANULAR}
    out["bundles"] = [
        {k: v for k, v in b.items() if k not in GRANULAR} for b in snapshot.get("bundles") or []
    ]
    return out


class StandIn:
    """Serves only the per-model status, from our gateway's answers, shaped like SIE's."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.asked: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/v1/configs/models/{tail:.+}", self.per_model)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock)
        await site.start()
        return f"http://127.0.0.1:{self.port}"

    async def per_model(self, request: web.Request) -> web.Response:
        tail = request.match_info["tail"]
        if not tail.endswith("/status"):
            return web.json_response({"message": "not served by the stand-in"}, status=404)
        model_id = tail[: -len("/status")]
        self.asked.append(model_id)
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{self.upstream}/v1/configs/models/{model_id}/status") as resp,
        ):
            if resp.status != 200:
                return web.json_response({"message": f"Model '{model_id}' not found"}, status=404)
            return web.json_response(sie_shaped(await resp.json()))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def standin(cluster: Cluster) -> AsyncIterator[tuple[StandIn, str]]:
    s = StandIn(cluster.gw())
    url = await s.start()
    yield s, url
    await s.stop()


async def test_a_fleet_of_our_gateway_and_a_per_model_only_replica(
    cluster: Cluster, standin: tuple[StandIn, str]
) -> None:
    stand, stand_url = standin
    for m in ("fleet/a", "fleet/b", "fleet/c"):
        cluster.post(model_yaml(m))
        cluster.wait_status(m, acked, "acked")
    epoch = cluster.config_epoch()
    reader = FleetReader(GatewayDiscovery([cluster.gw(), stand_url]))
    try:
        reader.known = ("fleet/a", "fleet/b", "fleet/c", "fleet/unknown")
        snap = await reader.fetch()  # the first read of each replica is complete
        assert [v.reachable for v in snap.views] == [True, True]
        kinds = {r.url: r.kind for r in reader._replicas.values()}
        assert kinds == {cluster.gw(): ReplicaKind.STREAM, stand_url: ReplicaKind.PER_MODEL}
        assert sorted(set(stand.asked)) == ["fleet/a", "fleet/b", "fleet/c", "fleet/unknown"]
        for m in ("fleet/a", "fleet/b"):
            obs = snap.observations(m)
            assert all(o.snapshot is not None for o in obs)
            st = compute_status(
                generation=1,
                outcome=StoreOutcome("accepted", epoch=epoch, profiles=("default",)),
                gateways=obs,
                previous=None,
                now="t",
            )
            ready = {c["type"]: c for c in st["conditions"]}["Ready"]
            assert ready["status"] == "True", ready
            assert st["gateways"] == {"seen": 2, "agreeing": 2}
            assert st["ackedWorkers"] == sum(b["eligibleWorkers"] for b in st["bundles"]) >= 1
        unknown = snap.observations("fleet/unknown")
        assert [o.snapshot for o in unknown] == [None, None]  # 404 on both: not known

        # a read for what is still converging asks the per-model replica for that alone,
        # and keeps the last answer for the rest
        stand.asked.clear()
        snap = await reader.fetch(["fleet/b"])
        assert stand.asked == ["fleet/b"]
        assert all(o.snapshot is not None for o in snap.observations("fleet/a"))
    finally:
        await reader.close()


async def test_our_gateway_pushes_changes_and_costs_no_requests_when_idle(cluster: Cluster) -> None:
    news = asyncio.Event()
    reader = FleetReader(GatewayDiscovery([cluster.gw()]))
    reader.on_change = news.set
    try:
        await reader.fetch()
        assert reader._replicas[cluster.gw()].kind is ReplicaKind.STREAM
        asked = reader.requests
        for _ in range(20):  # reads of a streamed replica ask the gateway nothing
            await reader.fetch(["push/x"])
        assert reader.requests == asked
        news.clear()
        cluster.post(model_yaml("push/x"))
        async with asyncio.timeout(15):
            while True:
                await news.wait()
                news.clear()
                snap = await reader.fetch(["push/x"])
                obs = snap.observations("push/x")[0]
                if obs.snapshot is not None and acked(dict(obs.snapshot)):
                    break
        assert reader.requests == asked  # pushed over the open stream, no new request
    finally:
        await reader.close()
