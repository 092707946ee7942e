"""The write path end to end: epochs under concurrency, consistent exports, idempotency,
and what startup does with baseline files and the store."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from cfgsvc_helpers import BERT, MakeApi, file_store, model_yaml

from sie_operator.configsvc.idempotency import CachedResponse, IdempotencyCache, IdempotencyInFlight
from sie_operator.configsvc.service import ConfigError, ConfigService
from sie_operator.configsvc.settings import Settings
from sie_operator.store import StoreError


async def _json(resp: Any) -> Any:
    return orjson.loads(await resp.read())


def _slow_commit(store: Any, delay: float, fail: bool = False) -> Any:
    """Wrap the store's commit with a delay (and optionally a failure): a real disk cannot be
    made slow or failing on demand."""
    real = store.commit

    def commit(*args: Any, **kwargs: Any) -> None:
        time.sleep(delay)
        if fail:
            raise StoreError("injected failure")
        real(*args, **kwargs)

    return commit


# -- epochs ---------------------------------------------------------------------------------


async def test_concurrent_creates_get_exact_distinct_epochs(make_api: MakeApi) -> None:
    api = await make_api()
    responses = await asyncio.gather(*(api.post(model_yaml(f"con/m{i:02d}")) for i in range(30)))
    assert [r.status for r in responses] == [201] * 30
    assert (await _json(await api.client.get("/v1/configs/epoch")))["epoch"] == 30
    assert (api.store_dir / "epoch").read_text() == "30"
    registry = api.service.registry
    assert registry is not None
    epochs = sorted(e.epoch for e in registry if e.model_id.startswith("con/"))
    assert epochs == list(range(1, 31))  # each write its own epoch, batched or not


async def test_concurrent_writes_to_one_model_are_serialised(make_api: MakeApi) -> None:
    api = await make_api()
    bodies = [
        model_yaml("one/m", {f"p{i}": {"adapter_path": BERT, "max_batch_tokens": i + 1}}) for i in range(12)
    ]
    responses = await asyncio.gather(*(api.post(b) for b in bodies))
    assert [r.status for r in responses] == [201] * 12
    text = await (await api.client.get("/v1/configs/models/one/m")).text()
    assert all(f"p{i}:" in text for i in range(12))
    assert (await _json(await api.client.get("/v1/configs/epoch")))["epoch"] == 12
    # the same new id in two spellings at once: exactly one wins
    responses = await asyncio.gather(api.post(model_yaml("case/x")), api.post(model_yaml("CASE/X")))
    assert sorted(r.status for r in responses) == [201, 409]


async def test_exports_are_consistent_cuts_during_writes(make_api: MakeApi) -> None:
    api = await make_api()
    for i in range(3):
        assert (await api.post(model_yaml(f"pre/m{i}"))).status == 201
    preseed = 3

    async def export() -> dict[str, Any]:
        return await _json(await api.client.get("/v1/configs/export"))  # type: ignore[no-any-return]

    results = await asyncio.gather(
        *(api.post(model_yaml(f"new/m{i}")) for i in range(20)), *(export() for _ in range(20))
    )
    for snap in results[20:]:
        new = [m for m in snap["models"] if m["model_id"].startswith("new/")]
        assert len(new) == snap["epoch"] - preseed  # every write is one model and one epoch
    final = await export()
    assert final["epoch"] == preseed + 20 and len(final["models"]) == 1 + preseed + 20


# -- idempotency ----------------------------------------------------------------------------


async def test_idempotent_replay_and_mismatch(make_api: MakeApi) -> None:
    api = await make_api()
    body = model_yaml("idem/m")
    first = await api.post(body, key="k1")
    again = await api.post(body, key="k1")
    assert first.status == again.status == 201
    assert await first.read() == await again.read()
    assert (await _json(await api.client.get("/v1/configs/epoch")))["epoch"] == 1
    r = await api.post(body + "\n", key="k1")  # any byte difference
    assert r.status == 422
    assert await r.read() == (
        b'{"detail":{"error":"idempotency_mismatch",'
        b'"message":"Idempotency-Key reused with different payload."}}'
    )
    plain = await api.post(body)  # without a key: an ordinary pure replay
    assert plain.status == 200 and (await _json(plain))["existing_profiles_skipped"] == ["default"]
    errors = [await api.post("{{bad", key="k2") for _ in range(2)]
    assert [r.status for r in errors] == [400, 400]  # errors are not cached: each runs again


async def test_twins_of_a_failed_request_are_never_told_it_succeeded(
    make_api: MakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await make_api()
    store = file_store(api.service)
    monkeypatch.setattr(store, "commit", _slow_commit(store, 0.3, fail=True))
    body = model_yaml("twin/m")
    responses = await asyncio.gather(*(api.post(body, key="same") for _ in range(3)))
    for r in responses:
        assert r.status == 503, await r.text()
        assert (await _json(r))["detail"]["error"] == "store_unavailable"
    # once the fault is gone, a retry with the key really executes
    monkeypatch.undo()
    r = await api.post(body, key="same")
    assert r.status == 201
    assert (await api.client.get("/v1/configs/models/twin/m")).status == 200


async def test_waiting_for_an_in_flight_twin_is_bounded(
    make_api: MakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await make_api(idempotency_wait=0.2)
    store = file_store(api.service)
    monkeypatch.setattr(store, "commit", _slow_commit(store, 1.0))
    body = model_yaml("slow/m")
    first = asyncio.ensure_future(api.post(body, key="slow"))
    await asyncio.sleep(0.1)
    r = await api.post(body, key="slow")
    assert r.status == 409
    detail = (await _json(r))["detail"]
    assert detail["error"] == "idempotency_key_in_flight" and detail["idempotency_key"] == "slow"
    r = await api.post(model_yaml("slow/m", description="other"), key="slow")
    assert r.status == 422  # a different body under an in-flight key is refused at once
    assert (await first).status == 201
    again = await api.post(body, key="slow")
    assert again.status == 201  # now cached


async def test_idempotency_cache_is_lru_with_ttl() -> None:
    now = [0.0]
    cache = IdempotencyCache(capacity=2, ttl=10.0, clock=lambda: now[0])
    for key in ("a", "b"):
        claim = await cache.begin(key, "h")
        assert not isinstance(claim, CachedResponse)
        claim.complete(201, b"{}")
        claim.release()
    assert isinstance(await cache.begin("a", "h"), CachedResponse)  # a hit refreshes "a"
    claim = await cache.begin("c", "h")
    assert not isinstance(claim, CachedResponse)
    claim.complete(200, b"{}")
    claim.release()
    assert isinstance(await cache.begin("a", "h"), CachedResponse)
    evicted = await cache.begin("b", "h")  # least recently used went first
    assert not isinstance(evicted, CachedResponse)
    evicted.release()
    now[0] = 11.0
    expired = await cache.begin("a", "h")
    assert not isinstance(expired, CachedResponse)
    expired.release()


async def test_cancelled_owner_releases_its_key() -> None:
    cache = IdempotencyCache(wait_timeout=1.0)

    async def owner() -> None:
        claim = await cache.begin("k", "h")
        assert not isinstance(claim, CachedResponse)
        try:
            await asyncio.sleep(10)
        finally:
            claim.release()

    task = asyncio.ensure_future(owner())
    await asyncio.sleep(0.01)
    waiter = asyncio.ensure_future(cache.begin("k", "h"))
    await asyncio.sleep(0.01)
    task.cancel()
    claim = await asyncio.wait_for(waiter, 1.0)  # the waiter takes over instead of hanging
    assert not isinstance(claim, CachedResponse)
    claim.release()
    with pytest.raises(IdempotencyInFlight):
        held = await cache.begin("x", "h")
        await asyncio.wait_for(cache.begin("x", "h"), 5)
    assert not isinstance(held, CachedResponse)
    held.release()


# -- startup: baseline, store, restore ------------------------------------------------------


def _settings(tmp_path: Path, layout: tuple[Path, Path], **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "bundles_dir": layout[0],
        "models_dir": layout[1],
        "store_dir": tmp_path / "store",
    }
    values.update(kw)
    return Settings(**values)


async def _started(settings: Settings) -> ConfigService:
    svc = ConfigService.from_settings(settings)
    await svc.start()
    return svc


async def test_restore_is_the_default_and_epochs_never_go_back(
    tmp_path: Path, layout: tuple[Path, Path]
) -> None:
    settings = _settings(tmp_path, layout)
    svc = await _started(settings)
    await svc.apply({"sie_id": "r/m", "profiles": {"default": {"adapter_path": BERT}}})
    await svc.apply({"sie_id": "test/model", "profiles": {"fast": {"adapter_path": BERT}}})
    await svc.stop()
    svc = await _started(settings)
    try:
        assert svc.epoch == 2
        registry = svc.registry
        assert registry is not None
        entry = registry.get("r/m")
        # restored with the epoch of its own write (1), not the store epoch (2): no status churn
        assert entry is not None and entry.source == "api" and entry.epoch == 1
        base = registry.get("test/model")
        assert base is not None and sorted(base.profiles) == ["default", "fast"] and base.source == "api"
        result = await svc.apply({"sie_id": "r/n", "profiles": {"default": {"adapter_path": BERT}}})
        assert result.epoch == 3 and result.created == ["default"]
        replay = await svc.apply({"sie_id": "r/m", "profiles": {"default": {"adapter_path": BERT}}})
        assert not replay.changed and replay.epoch == 1
    finally:
        await svc.stop()


async def test_restore_off_serves_baseline_only_and_says_so(
    tmp_path: Path, layout: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    svc = await _started(_settings(tmp_path, layout))
    await svc.apply({"sie_id": "r/m", "profiles": {"default": {"adapter_path": BERT}}})
    await svc.stop()
    with caplog.at_level(logging.WARNING):
        svc = await _started(_settings(tmp_path, layout, restore=False))
    try:
        assert svc.registry is not None and svc.registry.get("r/m") is None
        assert svc.epoch == 1  # the epoch is still the store's: it never goes backwards
        assert "SIE_CONFIG_RESTORE is off" in caplog.text and "1 stored model" in caplog.text
        result = await svc.apply({"sie_id": "r/x", "profiles": {"default": {"adapter_path": BERT}}})
        assert result.epoch == 2
    finally:
        await svc.stop()


async def test_bad_baseline_file_stops_startup_naming_it(tmp_path: Path, layout: tuple[Path, Path]) -> None:
    (layout[1] / "broken.yaml").write_text(
        "sie_id: x/y\nprofiles:\n  default: {adapter_path: 'not a path'}\n"
    )
    with pytest.raises(ConfigError, match=r"broken\.yaml"):
        await _started(_settings(tmp_path, layout))
    (layout[1] / "broken.yaml").write_text("{{{")
    with pytest.raises(ConfigError, match=r"broken\.yaml"):
        await _started(_settings(tmp_path, layout))
    (layout[1] / "broken.yaml").write_text((layout[1] / "test__model.yaml").read_text())
    with pytest.raises(ConfigError, match="already defined"):
        await _started(_settings(tmp_path, layout))
    # the store lock was released each time
    (layout[1] / "broken.yaml").unlink()
    svc = await _started(_settings(tmp_path, layout))
    await svc.stop()


async def test_unrestorable_stored_model_stops_startup(tmp_path: Path, layout: tuple[Path, Path]) -> None:
    svc = await _started(_settings(tmp_path, layout))
    await svc.apply({"sie_id": "r/m", "profiles": {"default": {"adapter_path": BERT}}})
    await svc.stop()
    stored = tmp_path / "store" / "models" / "r__m.yaml"
    stored.write_text("sie_id: r/m\nprofiles: [")
    with pytest.raises(ConfigError, match=r"r__m\.yaml"):
        await _started(_settings(tmp_path, layout))
    stored.write_text("sie_id: other/id\nprofiles:\n  default:\n    adapter_path: " + BERT + "\n")
    with pytest.raises(ConfigError, match="holds model"):
        await _started(_settings(tmp_path, layout))


async def test_corrupt_epoch_is_a_startup_error(tmp_path: Path, layout: tuple[Path, Path]) -> None:
    (tmp_path / "store" / "models").mkdir(parents=True)
    (tmp_path / "store" / "epoch").write_text("garbage")
    with pytest.raises(ConfigError, match="corrupt"):
        await _started(_settings(tmp_path, layout))


async def test_memory_only_service_still_counts_epochs(layout: tuple[Path, Path]) -> None:
    svc = await _started(Settings(bundles_dir=layout[0], models_dir=layout[1]))
    try:
        r1 = await svc.apply({"sie_id": "m/a", "profiles": {"default": {"adapter_path": BERT}}})
        r2 = await svc.apply({"sie_id": "m/a", "profiles": {"fast": {"adapter_path": BERT}}})
        assert (r1.epoch, r2.epoch, svc.epoch) == (1, 2, 2)
        ready, checks = svc.readiness()
        assert ready and checks["store"] == "disabled"
    finally:
        await svc.stop()


async def test_blocking_io_stays_off_the_event_loop(tmp_path: Path, layout: tuple[Path, Path]) -> None:
    """While a slow commit is on disk, the loop keeps serving (the commit runs in a thread)."""
    svc = await _started(_settings(tmp_path, layout))
    store = file_store(svc)
    loop_thread = threading.get_ident()
    seen: list[int] = []
    real = store.commit

    def commit(*args: Any) -> None:
        seen.append(threading.get_ident())
        time.sleep(0.2)
        real(*args)

    store.commit = commit  # type: ignore[method-assign]
    try:
        write = asyncio.ensure_future(
            svc.apply({"sie_id": "t/m", "profiles": {"default": {"adapter_path": BERT}}})
        )
        ticks = 0
        while not write.done():
            await asyncio.sleep(0.01)
            ticks += 1
        await write
        assert seen and seen[0] != loop_thread and ticks >= 10
    finally:
        await svc.stop()
