"""A model too large for one JetStream record is refused with a 413 and changes nothing.

Why: the replicated store keeps each model as one NATS message carrying its whole merged
YAML. A model can pass the 1 MiB body limit, or grow by appended profiles, and still exceed
the NATS server's ``max_payload``; before this the append failed and the client got
``503 store_unavailable`` (retry later), which no retry could fix. A directory store takes
any size, and a delta too large to publish keeps SIE's answer (stored, with the
``nats_publish_failed`` warning). Real nats-server, started with a small ``max_payload`` so
the bodies stay small.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfgsvc_helpers import BERT, MakeApi, model_yaml
from jetstream_helpers import js_api, stream_name, until

from sie_operator.catalog.registry import ModelTooLarge
from sie_operator.controller.writes import classify_exception
from sie_operator.devcluster.natsserver import NatsServer

MAX_PAYLOAD = 64 * 1024


@pytest.fixture
def small_nats(tmp_path: Path) -> Iterator[NatsServer]:
    conf = tmp_path / "nats.conf"
    conf.write_text(f"max_payload: {MAX_PAYLOAD}\njetstream {{ store_dir: {tmp_path / 'js'} }}\n")
    server = NatsServer(log_dir=tmp_path / "nats", extra_args=["-c", str(conf)]).start()
    try:
        yield server
    finally:
        server.stop()


def profiles(n: int, prefix: str = "p") -> dict[str, Any]:
    """``n`` profiles of about 1.1 KB of YAML each (a model has at most 64)."""
    return {
        f"{prefix}{i:04d}": {"adapter_path": BERT, "max_batch_tokens": 8192 + i, "note": "x" * 1000}
        for i in range(n)
    }


async def _detail(resp: Any) -> dict[str, Any]:
    body: dict[str, Any] = await resp.json()
    return dict(body["detail"])


async def assert_refused_and_nothing_changed(api: Any, body: str, model_id: str) -> None:
    epoch = api.service.epoch
    before = (await api.client.get(f"/v1/configs/models/{model_id}")).status
    r = await api.post(body)
    assert r.status == 413, await r.text()
    detail = await _detail(r)
    assert detail["error"] == "model_too_large"
    assert f"at most {MAX_PAYLOAD}" in detail["message"] and "Nothing was changed" in detail["message"]
    assert api.service.epoch == epoch
    assert (await api.client.get(f"/v1/configs/models/{model_id}")).status == before


async def test_too_large_for_a_jetstream_record(make_api: MakeApi, small_nats: NatsServer) -> None:
    api = await js_api(make_api, small_nats.url, stream_name())
    big = model_yaml("js/big", profiles(60))
    assert 64 * 1024 < len(big) < 1024 * 1024  # within the HTTP body limit
    await assert_refused_and_nothing_changed(api, big, "js/big")
    assert (await api.post(model_yaml("js/fits", profiles(10)))).status == 201

    # a stored model that grows past the limit by appended profiles: the last append is refused
    assert (await api.post(model_yaml("js/grows", profiles(20, "a")))).status == 201
    assert (await api.post(model_yaml("js/grows", profiles(20, "b")))).status == 201
    stored = await (await api.client.get("/v1/configs/models/js/grows")).text()
    await assert_refused_and_nothing_changed(api, model_yaml("js/grows", profiles(20, "c")), "js/grows")
    assert await (await api.client.get("/v1/configs/models/js/grows")).text() == stored


async def test_a_directory_store_takes_it_and_warns_that_nats_could_not(
    make_api: MakeApi, small_nats: NatsServer
) -> None:
    api = await make_api(nats_url=small_nats.url)

    async def connected() -> bool:
        return (await api.client.get("/readyz")).status == 200

    await until(connected)
    r = await api.post(model_yaml("dir/big", profiles(60)))
    assert r.status == 201, await r.text()
    assert any(w.startswith("nats_publish_failed") for w in (await r.json())["warnings"])
    assert (await api.client.get("/v1/configs/models/dir/big")).status == 200


async def test_no_limit_without_nats(make_api: MakeApi) -> None:
    api = await make_api()
    assert (await api.post(model_yaml("local/big", profiles(60)))).status == 201


def test_the_operator_shows_it_as_a_stalled_refusal() -> None:
    outcome = classify_exception(ModelTooLarge("org/m", 70_000, MAX_PAYLOAD))
    assert outcome is not None and outcome.kind == "invalid" and "max_payload" in outcome.message
