"""The gateway's HTTP API in process (real aiohttp server on loopback, state set up directly)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from gw_helpers import SGLANG, FakeService, fake_client, model_doc

from sie_operator.gateway.auth import AuthPolicy
from sie_operator.gateway.health import Frame, WorkerTable
from sie_operator.gateway.http import GatewayContext, create_app
from sie_operator.gateway.metrics import GatewayMetrics
from sie_operator.protocol.mirror import ConfigMirror


async def _client(
    auth: AuthPolicy | None = None, bootstrap: bool = True, svc: FakeService | None = None
) -> tuple[TestClient[Any, Any], Any]:
    svc = svc or FakeService()
    svc.write(model_doc("BAAI/bge-m3", "default", "dense"))
    svc.write(model_doc("sg/model", adapter=SGLANG))
    metrics = GatewayMetrics()
    mirror = ConfigMirror(fake_client(svc), observer=metrics)
    if bootstrap:
        await mirror.bootstrap_once()
    table = WorkerTable()
    expected = svc.registry.bundle_hash("default")
    for url, name, h in (
        ("http://w2", "w-b", expected),
        ("http://w1", "w-a", expected),
        ("http://w3", "w-c", "old"),
    ):
        table.add(url)
        table.frame(url, Frame(name=name, ready=True, bundle="default", bundle_config_hash=h))
    ctx = GatewayContext(mirror, table, metrics, auth or AuthPolicy(), "gw-test")
    client = TestClient(TestServer(create_app(ctx)))
    await client.start_server()
    return client, ctx


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    c, _ = await _client()
    yield c
    await c.close()


async def test_list_models_and_model_view(client: TestClient[Any, Any]) -> None:
    r = await client.get("/v1/configs/models")
    assert r.status == 200
    assert await r.json() == {
        "models": [
            {"model_id": "BAAI/bge-m3", "profiles": ["default", "dense"], "source": "gateway-registry"},
            {"model_id": "sg/model", "profiles": ["default"], "source": "gateway-registry"},
        ]
    }
    r = await client.get("/v1/configs/models/baai/BGE-M3")  # case-insensitive
    assert r.status == 200 and r.content_type == "application/x-yaml"
    assert await r.text() == "bundles:\n- default\nsie_id: BAAI/bge-m3\nsource: gateway-registry\n"
    r = await client.get("/v1/configs/models/nope")
    assert r.status == 404 and await r.json() == {"message": "Model 'nope' not found"}
    r = await client.get("/v1/configs/models/nope/status")
    assert r.status == 404 and await r.json() == {"message": "Model 'nope/status' not found"}


async def test_status_snapshot_sorted_and_pending(client: TestClient[Any, Any]) -> None:
    r = await client.get("/v1/configs/models/BAAI/bge-m3/status")
    assert r.status == 200
    body = await r.json()
    assert body["model_id"] == "BAAI/bge-m3" and body["config_epoch"] == 2
    assert body["all_bundles_acked"] is False and body["no_bundles"] is False
    (b,) = body["bundles"]
    assert b["bundle_id"] == "default" and len(b["expected_bundle_config_hash"]) == 64
    assert b["acked_workers"] == ["w-a", "w-b"] and b["pending_workers"] == ["w-c"]
    assert b["total_eligible_workers"] == 3 and b["acked"] is False
    assert (await client.get("/v1/configs/models/BAAI%2Fbge-m3/status")).status == 200  # percent-decoded
    assert (await client.get("/v1/configs/models/BAAI/bge-m3/")).status == 404
    r = await client.get("/v1/configs/models/sg/model/status")
    sg = (await r.json())["bundles"][0]
    assert sg["bundle_id"] == "sglang" and sg["total_eligible_workers"] == 0 and sg["acked"] is False


async def test_bulk_status(client: TestClient[Any, Any]) -> None:
    r = await client.get("/v1/configs/status")
    body = await r.json()
    assert body["gateway_id"] == "gw-test" and body["config_epoch"] == 2
    assert [m["model_id"] for m in body["models"]] == ["BAAI/bge-m3", "sg/model"]
    single = await (await client.get("/v1/configs/models/BAAI/bge-m3/status")).json()
    assert body["models"][0] == single
    r = await client.get("/v1/configs/status?model=sg/model&model=unknown&model=SG/MODEL")
    assert [m["model_id"] for m in (await r.json())["models"]] == ["sg/model"]


async def test_model_granular_fields_survive_writes_of_other_models() -> None:
    """SIE's fields stay bundle-granular; the model_* fields say who has *this* model."""
    svc = FakeService()
    c, ctx = await _client(svc=svc)
    try:
        previous = svc.registry.bundle_hash("default")  # what w-a and w-b report
        for subject, data in svc.write(model_doc("new/model")):  # a third write, w-* not caught up
            ctx.mirror.on_message(subject, data)
        r = await c.get("/v1/configs/models/BAAI/bge-m3/status")
        body = await r.json()
        (b,) = body["bundles"]
        assert b["acked_workers"] == [] and b["pending_workers"] == ["w-a", "w-b", "w-c"]
        assert b["expected_bundle_config_hash"] == svc.registry.bundle_hash("default") != previous
        assert b["model_acked_workers"] == ["w-a", "w-b"] and b["model_pending_workers"] == ["w-c"]
        assert b["model_acked"] is False and body["model_acked"] is False  # w-c: hash never seen
        ctx.table.frame(
            "http://w3", Frame(name="w-c", ready=True, bundle="default", bundle_config_hash=previous)
        )
        body = await (await c.get("/v1/configs/models/BAAI/bge-m3/status")).json()
        assert body["model_acked"] is True and body["all_bundles_acked"] is False
        assert body["bundles"][0]["model_acked_workers"] == ["w-a", "w-b", "w-c"]
        new = await (await c.get("/v1/configs/models/new/model/status")).json()
        assert new["model_acked"] is False and new["bundles"][0]["model_pending_workers"] == [
            "w-a",
            "w-b",
            "w-c",
        ]
        bulk = await (await c.get("/v1/configs/status")).json()
        by_id = {m["model_id"]: m for m in bulk["models"]}
        assert by_id["BAAI/bge-m3"] == body and by_id["new/model"] == new
        sg = by_id["sg/model"]["bundles"][0]  # no workers: never vacuously acked
        assert sg["model_acked"] is False and by_id["sg/model"]["model_acked"] is False
    finally:
        await c.close()


async def test_bundles(client: TestClient[Any, Any]) -> None:
    body = await (await client.get("/v1/configs/bundles")).json()
    assert [b["bundle_id"] for b in body["bundles"]] == ["transformers5", "default", "sglang"]
    assert {b["bundle_id"]: b["connected_workers"] for b in body["bundles"]}["default"] == 3
    r = await client.get("/v1/configs/bundles/sglang")
    assert yaml.safe_load(await r.text()) == {
        "adapters": ["sie_server.adapters.sglang"],
        "name": "sglang",
        "priority": 20,
        "source": "gateway-registry",
    }
    r = await client.get("/v1/configs/bundles/Default")
    assert r.status == 404 and await r.json() == {"message": "Bundle 'Default' not found"}


async def test_resolve(client: TestClient[Any, Any]) -> None:
    r = await client.post("/v1/configs/resolve", json={"model": "baai/bge-m3"})
    assert await r.json() == {
        "model": "baai/bge-m3",
        "resolved_bundle": "default",
        "compatible_bundles": ["default"],
        "profiles": ["default", "dense"],
    }
    r = await client.post("/v1/configs/resolve", json={"model": "default:/BAAI/bge-m3", "bundle": "sglang"})
    assert (await r.json())["resolved_bundle"] == "default"
    r = await client.post("/v1/configs/resolve", json={"model": "BAAI/bge-m3", "bundle": "sglang"})
    assert r.status == 409
    assert (await r.json())["message"] == (
        "Bundle 'sglang' does not support model 'BAAI/bge-m3'. Compatible bundles: [\"default\"]"
    )
    r = await client.post("/v1/configs/resolve", json={"model": "x"})
    assert r.status == 404 and await r.json() == {"message": "Model not found: x", "model": "x"}
    assert (await client.post("/v1/configs/resolve", data=b"{}")).status == 415
    r = await client.post("/v1/configs/resolve", data=b"{", headers={"Content-Type": "application/json"})
    assert r.status == 400
    assert (await client.post("/v1/configs/resolve", json={"model": 3})).status == 422
    assert (await client.post("/v1/configs/resolve", json=[1])).status == 422


async def test_writes_are_405_and_unknown_paths_404(client: TestClient[Any, Any]) -> None:
    for method in ("POST", "PUT", "DELETE"):
        r = await client.request(method, "/v1/configs/models")
        assert r.status == 405 and "GET" in r.headers["Allow"]
        r = await client.request(method, "/v1/configs/models/BAAI/bge-m3")
        assert r.status == 405
    r = await client.get("/nope")
    assert r.status == 404 and (await r.json())["message"]


async def test_operational_endpoints(client: TestClient[Any, Any]) -> None:
    assert await (await client.get("/healthz")).json() == {"status": "ok"}
    body = await (await client.get("/readyz")).json()
    assert body["status"] == "ready" and body["healthy_workers"] == 3 and body["config_epoch"] == 2
    text = await (await client.get("/metrics")).text()
    for name in (
        "sie_gateway_config_epoch 2.0",
        "sie_gateway_config_bootstrap_failures_total",
        "sie_gateway_config_bootstrap_degraded",
        'sie_gateway_workers{status="healthy"} 3.0',
        "sie_gateway_nats_connected 0.0",
        "sie_gateway_config_bootstrapped 1.0",
    ):
        assert name in text
    health = await (await client.get("/health")).json()
    assert health["config_epoch"] == 2 and [w["name"] for w in health["workers"]] == ["w-a", "w-b", "w-c"]


async def test_readyz_is_503_before_bootstrap() -> None:
    c, ctx = await _client(bootstrap=False)
    try:
        r = await c.get("/readyz")
        assert r.status == 503 and (await r.json())["status"] == "not_ready"
        await ctx.mirror.bootstrap_once()
        assert (await c.get("/readyz")).status == 200
    finally:
        await c.close()


async def test_auth_enforced() -> None:
    policy = AuthPolicy.from_settings("token", ("read",), "admin", exempt_operational=False)
    c, _ = await _client(auth=policy)
    try:
        assert (await c.get("/healthz")).status == 200
        assert (await c.get("/readyz")).status == 200
        r = await c.get("/v1/configs/models")
        assert r.status == 401 and await r.json() == {"message": "Missing Authorization header"}
        assert (await c.get("/v1/configs/models", headers={"Authorization": "Bearer read"})).status == 200
        assert (await c.get("/v1/configs/status", headers={"Authorization": "Bearer admin"})).status == 200
        assert (await c.get("/v1/configs/models", headers={"Authorization": "Bearer x"})).status == 401
        assert (await c.post("/v1/configs/models")).status == 401
        assert (await c.post("/v1/configs/models", headers={"Authorization": "Bearer read"})).status == 403
        assert (await c.post("/v1/configs/models", headers={"Authorization": "Bearer admin"})).status == 405
        assert (await c.get("/metrics")).status == 401
        assert (await c.get("/nope")).status == 401  # auth before routing, as in SIE
    finally:
        await c.close()
