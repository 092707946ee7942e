"""`sie-operator store-copy`: a directory store into an empty JetStream stream and back.

Why: switching a release to HA starts from an empty stream, and only ModelConfigs are
written back by the operator; models POSTed to the Config API would be lost. The copy must
keep every text byte for byte (bundle hashes stay), every model's epoch, and the store's
epoch (clients never see it go back); it must refuse a store that is not empty. Real
nats-server cluster, real CLI process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cfgsvc_helpers import BERT, MakeApi, model_yaml
from jetstream_helpers import js_api, stream_name

from sie_operator.devcluster.natsserver import NatsCluster
from sie_operator.store import StoredModel
from sie_operator.store.copy import CopyItem, batches, final_epochs, plan_copy


def store_copy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sie_operator.cli", "store-copy", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )


def m(mid: str, epoch: int | None) -> StoredModel:
    return StoredModel(mid, Path(mid), f"sie_id: {mid}\n", epoch)


def last_writes(plan: list[CopyItem]) -> dict[str, int]:
    return {i.model_id: i.epoch for i in plan}  # later writes win, as in a store


def test_plan_leaves_every_model_at_its_recorded_epoch() -> None:
    plan = plan_copy([m("b", 5), m("a", 2), m("c", 9)], 9)
    assert [i.epoch for i in plan] == list(range(1, 10))  # a store takes only the next epoch
    assert last_writes(plan) == {"a": 2, "b": 5, "c": 9}
    assert all(i.text == f"sie_id: {i.model_id}\n" for i in plan)
    # no recorded epoch (older layout): the lowest free epochs; the top reaches the source's epoch
    plan = plan_copy([m("x", None), m("y", None), m("z", 1)], 7)
    assert last_writes(plan) == {"z": 1, "x": 2, "y": 7} and [i.epoch for i in plan] == list(range(1, 8))
    assert plan_copy([], 4) == []


def test_plan_property_over_random_stores() -> None:
    import random

    rng = random.Random(7)
    for _ in range(500):
        n = rng.randint(1, 12)
        epochs = rng.sample(range(1, 40), n)
        models = [m(f"m{i}", e if rng.random() < 0.8 else None) for i, e in enumerate(epochs)]
        source = max((e or 0) for e in [x.epoch for x in models]) + rng.randint(0, 3)
        final = final_epochs(models, source)
        plan = plan_copy(models, source)
        assert [i.epoch for i in plan] == list(range(1, len(plan) + 1))
        assert last_writes(plan) == final and plan[-1].epoch >= source
        recorded = {x.model_id: x.epoch for x in models if x.epoch}
        top = max(final, key=lambda k: final[k])
        assert all(final[k] == e for k, e in recorded.items() if k != top)
        for run in batches(plan, size=rng.randint(1, 8)):
            assert len({i.model_id for i in run}) == len(run)
            assert [i.epoch for i in run] == list(range(run[0].epoch, run[0].epoch + len(run)))


async def _state(api: Any) -> tuple[Any, dict[str, int]]:
    export = await (await api.client.get("/v1/configs/export")).json()
    registry = api.service.registry
    assert registry is not None
    return export, {e.model_id: e.epoch for e in registry if e.source == "api"}


async def test_directory_to_stream_and_back(
    make_api: MakeApi, nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    source = tmp_path / "old-store"
    api = await make_api(store_dir=source)
    extra = {"fast": {"adapter_path": BERT, "max_batch_tokens": 64}}
    assert (await api.post(model_yaml("copy/a"))).status == 201
    assert (await api.post(model_yaml("copy/b"))).status == 201
    assert (await api.post(model_yaml("copy/a", extra))).status == 201  # a grows at epoch 3
    assert (await api.post(model_yaml("copy/c"))).status == 201
    before, epochs = await _state(api)
    assert before["epoch"] == 4 and epochs == {"copy/a": 3, "copy/b": 2, "copy/c": 4}
    await api.service.stop()

    stream = stream_name()
    urls = nats_cluster.urls
    done = store_copy(str(source), f"jetstream://{stream}", "--nats-url", urls, "--store-replicas", "3")
    assert done.returncode == 0, done.stderr
    assert await replicas_of(urls, stream) == 3
    assert "copied 3 model(s)" in done.stdout and "at epoch 4" in done.stdout

    replicated = await js_api(make_api, urls, stream, store_replicas=3)
    after, after_epochs = await _state(replicated)
    assert after["epoch"] == 4 and after["models"] == before["models"] and after_epochs == epochs

    # a store that is not empty is never written to
    again = store_copy(str(source), f"jetstream://{stream}", "--nats-url", urls)
    assert again.returncode == 1 and "already holds models (epoch 4)" in again.stderr
    assert again.stderr.splitlines()[-1].startswith("sie-operator store-copy: error: ")
    assert "Traceback" not in again.stderr
    assert replicated.service.registry is not None and replicated.service.epoch == 4
    await replicated.service.stop()

    back = tmp_path / "backup"
    done = store_copy(f"jetstream://{stream}", str(back), "--nats-url", urls, "--store-replicas", "1")
    assert done.returncode == 0, done.stderr
    assert await replicas_of(urls, stream) == 3  # the source is read, never changed
    restored = await make_api(store_dir=back)
    final, final_epochs = await _state(restored)
    assert final["epoch"] == 4 and final["models"] == before["models"] and final_epochs == epochs


async def replicas_of(urls: str, stream: str) -> int | None:
    """The stream's replica count; None if there is no such stream."""
    import nats
    import nats.js.errors

    nc = await nats.connect(servers=urls.split(","))
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.config.num_replicas or 1)
    except nats.js.errors.NotFoundError:
        return None
    finally:
        await nc.close()


async def test_a_missing_source_stream_is_not_created(nats_cluster: NatsCluster, tmp_path: Path) -> None:
    stream = stream_name()
    missing = store_copy(f"jetstream://{stream}", str(tmp_path / "t"), "--nats-url", nats_cluster.urls)
    assert missing.returncode == 1 and f"no JetStream stream {stream}" in missing.stderr
    assert await replicas_of(nats_cluster.urls, stream) is None


def test_refusals_are_one_line(tmp_path: Path) -> None:
    cases = [
        ((str(tmp_path / "missing"), str(tmp_path / "t")), "no store directory at"),
        ((str(tmp_path), str(tmp_path)), "source and target are the same store"),
        ((str(tmp_path), "jetstream://x"), "needs --nats-url"),
        ((str(tmp_path), "jetstream://bad name"), "stream name must be"),
    ]
    for args, message in cases:
        env_free = store_copy(*args)
        assert env_free.returncode == 2 and message in env_free.stderr, (args, env_free.stderr)
        assert env_free.stderr.count("\n") == 1


def test_a_directory_in_use_is_not_copied(tmp_path: Path) -> None:
    from sie_operator.store import FileStore

    held = FileStore(tmp_path / "live")
    held.open()
    held.commit([("a/b", model_yaml("a/b"))], 1)
    try:
        busy = store_copy(str(tmp_path / "live"), str(tmp_path / "copy"))
        assert busy.returncode == 1 and "in use by another process" in busy.stderr
    finally:
        held.close()
    done = store_copy(str(tmp_path / "live"), str(tmp_path / "copy"))
    assert done.returncode == 0 and "copied 1 model(s)" in done.stdout, done.stderr
