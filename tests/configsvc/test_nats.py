"""NATS publishing against a real nats-server: subjects, payload, order, outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from cfgsvc_helpers import BERT, SGLANG, Api, MakeApi, model_yaml

from sie_operator.configsvc.publisher import build_payload
from sie_operator.devcluster.natsserver import NatsServer, nats_server_binary
from sie_operator.devcluster.ports import free_port, wait_port
from sie_operator.devcluster.procs import ServerProcess

KEYS = [
    "router_id",
    "bundle_id",
    "epoch",
    "bundle_config_hash",
    "model_id",
    "profiles_added",
    "model_config",
    "affected_bundles",
]
TWO_BUNDLES = model_yaml("two/m", {"default": {"adapter_path": BERT}, "sg": {"adapter_path": SGLANG}})


async def _json(resp: Any) -> Any:
    return orjson.loads(await resp.read())


async def until(cond: Callable[[], Awaitable[bool]], limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


class Listener:
    """A plain nats-py subscriber on every config subject, in arrival order."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    async def start(self, url: str) -> Listener:
        self.nc = await nats.connect(url)
        await self.nc.subscribe("sie.config.models.>", cb=self._on)
        await self.nc.flush()
        return self

    async def _on(self, msg: Any) -> None:
        self.messages.append((msg.subject, msg.data))

    async def wait_for(self, n: int, limit: float = 5.0) -> list[tuple[str, bytes]]:
        async def enough() -> bool:
            return len(self.messages) >= n

        await until(enough, limit)
        await asyncio.sleep(0.1)  # and nothing more
        return self.messages

    async def close(self) -> None:
        await self.nc.close()


@pytest.fixture
async def listener(nats_server: NatsServer) -> AsyncIterator[Listener]:
    lst = await Listener().start(nats_server.url)
    yield lst
    await lst.close()


async def _connected_api(make_api: MakeApi, url: str, **kw: Any) -> Api:
    api = await make_api(nats_url=url, producer_id="sie-config-test", **kw)

    async def ready() -> bool:
        return (await api.client.get("/readyz")).status == 200

    await until(ready)
    return api


async def test_one_message_per_bundle_then_all(
    make_api: MakeApi, nats_server: NatsServer, listener: Listener
) -> None:
    api = await _connected_api(make_api, nats_server.url)
    r = await api.post(TWO_BUNDLES)
    assert r.status == 201
    out = await _json(r)
    assert out["router_id"] == "sie-config-test" and out["warnings"] == []
    assert out["routable_bundles_by_profile"] == {"default": ["default"], "sg": ["sglang"]}
    msgs = await listener.wait_for(4)
    assert [s for s, _ in msgs] == [
        "sie.config.models.default",
        "sie.config.models._all",
        "sie.config.models.sglang",
        "sie.config.models._all",
    ]
    assert msgs[0][1] == msgs[1][1] and msgs[2][1] == msgs[3][1]  # byte-identical _all copies
    registry = api.service.registry
    assert registry is not None
    stored = (api.store_dir / "models" / "two__m.yaml").read_text()
    for (_, data), bundle in zip(msgs[::2], ["default", "sglang"], strict=True):
        payload = orjson.loads(data)
        assert list(payload) == KEYS
        assert payload == {
            "router_id": "sie-config-test",
            "bundle_id": bundle,
            "epoch": 1,
            "bundle_config_hash": registry.bundle_hash(bundle),
            "model_id": "two/m",
            "profiles_added": ["default", "sg"],
            "model_config": stored,
            "affected_bundles": ["default", "sglang"],
        }
        assert len(payload["bundle_config_hash"]) == 64
    # a pure replay publishes nothing; an append publishes the whole merged model
    assert (await api.post(TWO_BUNDLES)).status == 200
    r = await api.post(model_yaml("test/model", {"fast": {"adapter_path": BERT, "max_batch_tokens": 64}}))
    assert r.status == 201
    msgs = await listener.wait_for(6)
    assert len(msgs) == 6
    append = orjson.loads(msgs[4][1])
    assert append["epoch"] == 2 and append["profiles_added"] == ["fast"]
    assert "default:" in append["model_config"] and "fast:" in append["model_config"]  # baseline kept
    metrics = (await (await api.client.get("/metrics")).read()).decode()
    assert "sie_config_nats_connected 1.0" in metrics
    assert 'sie_config_nats_publishes_total{result="success"} 2.0' in metrics


async def test_nats_outage_refuses_changes_not_replays(
    make_api: MakeApi, nats_server: NatsServer, tmp_path: Path
) -> None:
    api = await _connected_api(make_api, nats_server.url)
    assert (await api.post(model_yaml("o/m"), key="k")).status == 201
    nats_server.stop()

    async def down() -> bool:
        return (await api.client.get("/readyz")).status == 503

    await until(down)
    body = await _json(await api.client.get("/readyz"))
    assert body["detail"] == "NATS not connected" and body["checks"]["nats"] == "disconnected"
    r = await api.post(model_yaml("o/new"))
    assert r.status == 503
    assert await r.read() == (
        b'{"detail":{"error":"nats_unavailable",'
        b'"message":"NATS not connected -- cannot distribute config changes."}}'
    )
    assert (await api.client.get("/v1/configs/models/o/new")).status == 404
    assert (await _json(await api.client.get("/v1/configs/epoch")))["epoch"] == 1
    assert (await api.post(model_yaml("o/m"))).status == 200  # nothing to distribute: fine
    assert (await api.post(model_yaml("o/m"), key="k")).status == 201  # cached replay
    assert (await api.client.get("/v1/configs/export")).status == 200  # reads keep working
    nats_server.start()
    lst = await Listener().start(nats_server.url)
    try:

        async def up() -> bool:
            return (await api.client.get("/readyz")).status == 200

        await until(up)
        r = await api.post(model_yaml("o/new"))
        assert r.status == 201 and (await _json(r))["warnings"] == []
        msgs = await lst.wait_for(2)
        assert orjson.loads(msgs[0][1])["model_id"] == "o/new" and orjson.loads(msgs[0][1])["epoch"] == 2
    finally:
        await lst.close()


async def test_unreachable_nats_never_blocks_startup(make_api: MakeApi, tmp_path: Path) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    started = time.monotonic()
    api = await make_api(nats_url=url)
    assert time.monotonic() - started < 5
    assert (await api.client.get("/healthz")).status == 200
    r = await api.client.get("/readyz")
    assert r.status == 503 and (await _json(r))["checks"]["nats"] == "disconnected"
    assert (await api.client.get("/v1/configs/models")).status == 200
    r = await api.post(model_yaml("late/m"))
    assert r.status == 503 and (await _json(r))["detail"]["error"] == "nats_unavailable"
    with NatsServer(port=port, log_dir=tmp_path / "late-nats") as server:
        lst = await Listener().start(server.url)
        try:

            async def up() -> bool:
                return (await api.client.get("/readyz")).status == 200

            await until(up)
            r = await api.post(model_yaml("late/m"))
            assert r.status == 201
            assert (await lst.wait_for(2))[0][0] == "sie.config.models.default"
        finally:
            await lst.close()


def _small_payload_server(tmp_path: Path, max_payload: int) -> tuple[ServerProcess, str]:
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(f"max_payload: {max_payload}\n")
    proc = ServerProcess(
        [nats_server_binary(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port)],
        name=f"nats-small-{port}",
        log_dir=tmp_path,
    ).start()
    assert wait_port("127.0.0.1", port, 10)
    return proc, f"nats://127.0.0.1:{port}"


def _payload_size(bundle: str, model_config: str) -> int:
    return len(
        build_payload(
            router_id="sie-config-test",
            bundle_id=bundle,
            epoch=1,
            bundle_config_hash="0" * 64,
            model_id="two/m",
            profiles_added=["default", "sg"],
            model_config=model_config,
            affected_bundles=["default", "sglang"],
        )
    )


async def test_partial_and_total_publish_failures_are_warnings(make_api: MakeApi, tmp_path: Path) -> None:
    """A payload over the server's max_payload is refused by the client: a real per-bundle failure.
    The `default` copy is one byte longer than the `sglang` one (bundle name length)."""
    from sie_operator.catalog import yamlio
    from sie_operator.configsvc import yamlemit

    model_config = yamlemit.dump(yamlio.load(TWO_BUNDLES))
    limit = _payload_size("sglang", model_config)
    assert _payload_size("default", model_config) == limit + 1
    proc, url = _small_payload_server(tmp_path, limit)
    try:
        lst = await Listener().start(url)
        api = await _connected_api(make_api, url)
        r = await api.post(TWO_BUNDLES)
        assert r.status == 201
        (warning,) = (await _json(r))["warnings"]
        assert warning.startswith(
            "nats_publish_partial: Config persisted but NATS notification failed for bundle(s) ['default']."
        )
        msgs = await lst.wait_for(2)
        assert [s for s, _ in msgs] == ["sie.config.models.sglang", "sie.config.models._all"]
        big = model_yaml("big/m", {"default": {"adapter_path": BERT}}, description="x" * limit)
        r = await api.post(big)
        assert r.status == 201
        assert (await _json(r))["warnings"] == [
            "nats_publish_failed: Config persisted but NATS notification failed. Workers may not be updated."
        ]
        assert (api.store_dir / "models" / "big__m.yaml").exists()  # the write is durable anyway
        metrics = (await (await api.client.get("/metrics")).read()).decode()
        assert 'sie_config_nats_publishes_total{result="partial"} 1.0' in metrics
        assert 'sie_config_nats_publishes_total{result="failure"} 1.0' in metrics
        await lst.close()
    finally:
        proc.stop()
