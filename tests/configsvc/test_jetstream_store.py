"""The config service on a JetStream store, against a real 3-node nats-server cluster.

Why real servers: the properties that matter (a stale writer's append is refused, a
follower sees every write, an R3 stream survives a SIGKILLed node) live in nats-server's
clustering and compare-and-set checks; a fake would only test our reading of the docs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from cfgsvc_helpers import ADMIN, BERT, SGLANG, MakeApi, model_yaml
from jetstream_helpers import js_api, stream_name, until

from sie_operator.configsvc.leadership import NotLeader, StaticLeadership
from sie_operator.devcluster.natsserver import NatsCluster, NatsServer
from sie_operator.store import StoreRecord
from sie_operator.store.jetstream import (
    FollowState,
    JetStreamStore,
    append_headers,
    decode_record,
    encode_record,
    landed_epochs,
    parse_location,
    subject_for,
)


async def _json(resp: Any) -> Any:
    return orjson.loads(await resp.read())


def _profile(name: str, tokens: int = 8192) -> dict[str, Any]:
    return {name: {"adapter_path": BERT, "max_batch_tokens": tokens}}


# -- pure part ------------------------------------------------------------------------------


def test_pure_helpers() -> None:
    assert parse_location("jetstream://sie-config") == "sie-config"
    assert parse_location("/var/lib/store") is None
    with pytest.raises(ValueError, match="stream name"):
        parse_location("jetstream://a.b")
    # one subject per lower-cased id: case twins share it (the per-subject CAS sees both)
    assert subject_for("s", "Acme/Bert") == subject_for("s", "acme/bert")
    assert subject_for("s", "acme/bert").startswith("sie.store.s.m.") and "=" not in subject_for("s", "a")
    rec = decode_record(7, encode_record("acme/bert", "sie_id: acme/bert\n", 7, "w:1"))
    assert rec == StoreRecord(7, "acme/bert", "sie_id: acme/bert\n", 7, "w:1")
    with pytest.raises(ValueError, match="message 3"):
        decode_record(3, b'{"model_id": "x"}')
    assert append_headers(4, 0) == {
        "Nats-Expected-Last-Sequence": "4",
        "Nats-Expected-Last-Subject-Sequence": "0",
    }
    st = FollowState()
    assert st.accept(StoreRecord(1, "a/b", "", 1, "w"))
    assert not st.accept(StoreRecord(1, "a/b", "", 1, "w"))  # already applied (our own)
    assert st.accept(StoreRecord(3, "A/B", "", 3, "x")) and st.subject_seqs == {"a/b": 3} and st.epoch == 3
    assert landed_epochs(["w:1", "w:2"], [StoreRecord(5, "m", "", 5, "w:2")]) == [None, 5]


# -- the store on its own ----------------------------------------------------------------


async def test_stale_writer_is_fenced_and_absorbs(nats_cluster: NatsCluster) -> None:
    """A writer that has not seen the latest append cannot append; after catching up it
    holds every record, and a pipelined batch that partly landed says which part."""
    name = stream_name()
    a = JetStreamStore(nats_cluster.urls, name, replicas=3)
    b = JetStreamStore(nats_cluster.urls, name, replicas=3)
    try:
        assert await a.open() == 0 and await b.open() == 0
        assert (await a.commit([("m/one", "sie_id: m/one\n")], 1)).landed == [1]
        # b has not drained m/one: its append expects sequence 0 and is refused
        res = await b.commit([("m/two", "sie_id: m/two\n")], 1)
        assert res.landed == [None] and not res.in_order
        assert [r.model_id for r in b.drain()] == ["m/one"] and b.epoch == 1
        await a._sub.unsubscribe()  # a's follower stalls: a keeps planning on sequence 1
        assert (await b.commit([("m/two", "sie_id: m/two\n")], 2)).landed == [2]
        # a batch of a stale writer: its first append is refused, its second (another model,
        # expecting the sequence that is now the end) lands, with the epoch of its position
        res = await a.commit([("m/three", "x: 3\n"), ("m/four", "x: 4\n")], 3)
        assert res.landed == [None, 3] and not res.in_order
        absorbed = a.drain()
        assert [(r.model_id, r.epoch, r.seq) for r in absorbed] == [("m/two", 2, 2), ("m/four", 3, 3)]
        # a stale write of a model changed meanwhile never lands, even at the right position
        await b.catch_up(5)
        b.drain()
        await a.commit([("m/two", "changed: 1\n")], 4)
        stale = JetStreamStore(nats_cluster.urls, name)
        await stale.open()
        stale.state.applied_seq = 4  # pretend: right stream position, stale view of m/two
        stale.state.subject_seqs["m/two"] = 2
        stale.state.epoch = 4
        res = await stale.commit([("m/two", "lost: 1\n")], 5)
        assert res.landed == [None]
        await stale.close()
        # restore is one record per model, epoch = the largest
        fresh = JetStreamStore(nats_cluster.urls, name)
        assert await fresh.open() == 4
        stored = {m.model_id: (m.text, m.epoch) for m in await fresh.load_all()}
        assert stored == {
            "m/one": ("sie_id: m/one\n", 1),
            "m/two": ("changed: 1\n", 4),
            "m/four": ("x: 4\n", 3),
        }
        await fresh.close()
    finally:
        await a.close()
        await b.close()


async def test_existing_stream_of_another_kind_is_refused(nats_cluster: NatsCluster) -> None:
    import nats
    from nats.js.api import StreamConfig

    name = stream_name()
    nc = await nats.connect(servers=nats_cluster.urls.split(","))
    try:
        await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[f"other.{name}.>"]))
    finally:
        await nc.close()
    store = JetStreamStore(nats_cluster.urls, name)
    with pytest.raises(Exception, match="not a config store"):
        await store.open()


# -- the service -----------------------------------------------------------------------------


async def test_write_restart_restore(make_api: MakeApi, nats_cluster: NatsCluster) -> None:
    name = stream_name()
    api = await js_api(make_api, nats_cluster.urls, name, store_replicas=3)
    assert (await api.post(model_yaml("r/one"))).status == 201
    assert (await api.post(model_yaml("r/two"))).status == 201
    assert (await api.post(model_yaml("r/one", _profile("fast", 64)))).status == 201  # epoch 3
    assert (await api.post(model_yaml("r/one", _profile("fast", 64)))).status == 200  # replay
    before = await _json(await api.client.get("/v1/configs/export"))
    await api.service.stop()
    again = await js_api(make_api, nats_cluster.urls, name, store_replicas=3)
    after = await _json(await again.client.get("/v1/configs/export"))
    assert after["epoch"] == before["epoch"] == 3
    assert after["models"] == before["models"]
    registry = again.service.registry
    assert registry is not None
    epochs = {e.model_id: e.epoch for e in registry if e.source == "api"}
    assert epochs == {"r/one": 3, "r/two": 2}  # each model keeps the epoch of its own write


async def test_two_replicas_follow_each_other(make_api: MakeApi, nats_cluster: NatsCluster) -> None:
    """Without leadership both may write: every write is seen by the other, epochs equal."""
    name = stream_name()
    a = await js_api(make_api, nats_cluster.urls, name)
    b = await js_api(make_api, nats_cluster.urls, name)
    assert (await a.post(model_yaml("f/one"))).status == 201
    await b.service.catch_up()
    assert (await b.client.get("/v1/configs/models/f/one")).status == 200
    assert (await b.post(model_yaml("f/one", _profile("fast", 64)))).status == 201
    assert (await b.post(model_yaml("f/two"))).status == 201

    async def a_has_it() -> bool:
        return a.service.epoch == 3  # the follower applies without being asked

    await until(a_has_it, 10)
    ea = await _json(await a.client.get("/v1/configs/export"))
    eb = await _json(await b.client.get("/v1/configs/export"))
    assert ea["epoch"] == eb["epoch"] == 3 and ea["models"] == eb["models"]
    # both at once, many writes: no write lost, epochs dense and unique. A write that keeps
    # losing the race gets 503 store_conflict (nothing written) and is retried, as a client would.

    async def post(api: Any, mid: str) -> int:
        for _ in range(20):
            r = await api.post(model_yaml(mid))
            if r.status != 503:
                return int(r.status)
            assert (await _json(r))["detail"]["error"] == "store_conflict"
            await asyncio.sleep(0.05)
        return 503

    rs = await asyncio.gather(
        *(post(a, f"c/a{i}") for i in range(10)),
        *(post(b, f"c/b{i}") for i in range(10)),
    )
    assert rs == [201] * 20
    assert await a.service.catch_up() == await b.service.catch_up() == 23
    for api in (a, b):
        registry = api.service.registry
        assert registry is not None
        got = sorted(e.epoch for e in registry if e.model_id.startswith("c/"))
        assert got == list(range(4, 24))


async def test_stale_replica_write_is_fenced_then_retried(
    make_api: MakeApi, nats_cluster: NatsCluster
) -> None:
    """A replica whose follower is stalled plans against old content: its append is refused,
    it absorbs the other write and re-plans, and the result merges both: nothing is lost."""
    name = stream_name()
    a = await js_api(make_api, nats_cluster.urls, name)
    b = await js_api(make_api, nats_cluster.urls, name)
    store_b = b.service.store
    assert isinstance(store_b, JetStreamStore)
    await store_b._sub.unsubscribe()  # a follower that stopped receiving (fault injection)
    assert (await a.post(model_yaml("s/m", _profile("p1")))).status == 201
    r = await b.post(model_yaml("s/m", _profile("p2")))
    assert r.status == 201, await r.text()
    assert (await _json(r))["created_profiles"] == ["p2"]
    await a.service.catch_up()
    for api in (a, b):
        text = (await (await api.client.get("/v1/configs/models/s/m")).read()).decode()
        assert "p1:" in text and "p2:" in text
        assert api.service.epoch == 2


async def test_a_stuck_follower_is_restarted_without_any_write(
    make_api: MakeApi, nats_cluster: NatsCluster
) -> None:
    """A standby gets no writes: if its consumer dies silently, the upkeep watchdog notices
    it stopped behind the stream's end and re-creates it from where it was."""
    name = stream_name()
    a = await js_api(make_api, nats_cluster.urls, name)
    b = await js_api(make_api, nats_cluster.urls, name)
    store_b = b.service.store
    assert isinstance(store_b, JetStreamStore)
    await store_b._sub.unsubscribe()  # fault injection: the consumer is gone, nobody says so
    assert (await a.post(model_yaml("w/one"))).status == 201
    assert (await a.post(model_yaml("w/two"))).status == 201

    async def b_follows() -> bool:
        return b.service.epoch == 2

    await until(b_follows, 10)
    assert (await b.client.get("/v1/configs/models/w/two")).status == 200


async def test_nats_outage_gives_503_then_recovers(make_api: MakeApi, tmp_path: Path) -> None:
    """A real outage (the only NATS server stopped, then started again with its data):
    writes are refused cleanly, never a 500, the replica is unready; it recovers by itself
    and nothing acknowledged is lost."""
    server = NatsServer(log_dir=tmp_path / "nats", extra_args=["-js", "-sd", str(tmp_path / "js")]).start()
    try:
        api = await js_api(make_api, server.url, stream_name())
        assert (await api.post(model_yaml("o/one"))).status == 201
        server.stop()
        r = await api.post(model_yaml("o/two"))
        assert r.status == 503, await r.text()
        assert (await _json(r))["detail"]["error"] in ("nats_unavailable", "store_unavailable")
        assert (await api.client.get("/readyz")).status == 503
        assert (await api.client.get("/healthz")).status == 200  # a restart would not help
        server.start()

        async def ready() -> bool:
            return (await api.client.get("/readyz")).status == 200

        await until(ready, 20)
        assert (await api.post(model_yaml("o/two"))).status == 201
        assert api.service.epoch == 2
    finally:
        server.stop()


@pytest.mark.parametrize("which", ["connected", "stream-leader"])
async def test_r3_survives_a_sigkilled_node(make_api: MakeApi, nats_cluster: NatsCluster, which: str) -> None:
    """R3: SIGKILL a node (the one the store talks to, or the stream's leader) in the middle
    of a stream of writes. Writes continue (a write caught in the kill may get a 503 and is
    retried, as a client would); every acknowledged write is there after a restore."""
    name = stream_name()
    api = await js_api(make_api, nats_cluster.urls, name, store_replicas=3)
    store = api.service.store
    assert isinstance(store, JetStreamStore) and store._nc is not None and store._js is not None
    if which == "connected":
        victim = next(i for i in range(3) if str(nats_cluster.nodes[i].port) in str(store._nc.connected_url))
    else:
        info = await store._js.stream_info(name)
        assert info.cluster is not None and info.cluster.leader
        victim = int(info.cluster.leader.rsplit("-", 1)[1])
    acked: list[str] = []
    loop = asyncio.get_running_loop()
    try:
        for i in range(40):
            if i == 10:
                nats_cluster.kill(victim)
                killed = loop.time()
            mid = f"k/m{i:02d}"
            for _ in range(100):
                r = await api.post(model_yaml(mid))
                if r.status in (200, 201):
                    acked.append(mid)
                    break
                assert r.status == 503, await r.text()
                await asyncio.sleep(0.1)
            if i == 10:
                stall = loop.time() - killed
        assert len(acked) == 40
        print(f"write stall after SIGKILL of the {which} node: {stall:.2f}s")  # shown with -s
        assert stall < 20  # JetStream's stream-leader election takes ~5-7 s of it
    finally:
        nats_cluster.start(victim)
    await api.service.stop()
    again = await js_api(make_api, nats_cluster.urls, name, store_replicas=3)
    registry = again.service.registry
    assert registry is not None
    assert {e.model_id for e in registry if e.model_id.startswith("k/")} == set(acked)
    assert again.service.epoch == 40


# -- leadership ------------------------------------------------------------------------------


async def test_in_process_write_on_a_standby_raises_not_leader(
    make_api: MakeApi, nats_cluster: NatsCluster
) -> None:
    api = await js_api(make_api, nats_cluster.urls, stream_name())
    api.service.leadership = StaticLeadership(False, identity="pod-a")
    with pytest.raises(NotLeader, match="pod-a"):
        await api.service.apply({"sie_id": "l/m", "profiles": _profile("default")})
    assert api.service.epoch == 0


async def test_standby_forwards_writes_to_the_leader(make_api: MakeApi, nats_cluster: NatsCluster) -> None:
    name = stream_name()
    leader = await js_api(make_api, nats_cluster.urls, name, admin_token=ADMIN)
    standby = await js_api(make_api, nats_cluster.urls, name, admin_token=ADMIN)
    leader_url = str(leader.client.make_url("")).rstrip("/")
    standby.service.leadership = StaticLeadership(False, identity="pod-a", url=leader_url)
    seen: list[str | None] = []
    real_add = leader.service.apply

    async def spy(body: dict[str, Any], **kw: Any) -> Any:
        seen.append("leader")
        return await real_add(body, **kw)

    leader.service.apply = spy  # type: ignore[method-assign]
    r = await standby.post(model_yaml("p/m"), token=ADMIN, key="k1")
    assert r.status == 201, await r.text()
    assert (await _json(r))["model_id"] == "p/m" and seen == ["leader"]
    assert r.headers["X-Sie-Forwarded"] == "1"  # answered by the leader
    # a bad token is refused by the standby itself: nothing unauthenticated is forwarded
    r = await standby.post(model_yaml("p/x"), token="wrong")
    assert r.status in (401, 403)
    # the standby serves the write once its follower has it
    await standby.service.catch_up()
    got = await standby.client.get("/v1/configs/models/p/m", headers={"Authorization": f"Bearer {ADMIN}"})
    assert got.status == 200
    # a forwarded request is never forwarded again
    r = await standby.client.post(
        "/v1/configs/models",
        data=model_yaml("p/n"),
        headers={"Authorization": f"Bearer {ADMIN}", "X-Sie-Forwarded": "1"},
    )
    assert r.status == 503 and r.headers["Retry-After"] == "2"
    assert (await _json(r))["detail"]["error"] == "not_leader"
    metrics = (await (await standby.client.get("/metrics")).read()).decode()
    assert 'sie_config_not_leader_total{outcome="forwarded"} 1.0' in metrics
    assert 'sie_config_not_leader_total{outcome="refused"} 1.0' in metrics


async def test_not_leader_answer_shape(make_api: MakeApi, nats_cluster: NatsCluster, tmp_path: Path) -> None:
    api = await js_api(make_api, nats_cluster.urls, stream_name())
    api.service.leadership = StaticLeadership(False, identity="pod-b", url=None)
    r = await api.post(model_yaml("n/m"))
    assert r.status == 503 and r.headers["Retry-After"] == "2"
    detail = (await _json(r))["detail"]
    assert detail["error"] == "not_leader" and detail["leader"] == "pod-b"
    assert "not the leader" in detail["message"]
    # a leader URL that does not answer: the same 503, nothing written
    from sie_operator.devcluster.ports import free_port

    api.service.leadership = StaticLeadership(False, identity=None, url=f"http://127.0.0.1:{free_port()}")
    r = await api.post(model_yaml("n/m"))
    assert r.status == 503 and (await _json(r))["detail"] == {
        "error": "not_leader",
        "leader": None,
        "message": (await _json(r))["detail"]["message"],
    }
    # reads are served by every replica
    assert (await api.client.get("/v1/configs/epoch")).status == 200
    assert api.service.epoch == 0


# -- parity with the directory store ----------------------------------------------------------


async def test_same_answers_epochs_restore_and_deltas_as_the_directory_store(
    make_api: MakeApi, nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    """One sequence of writes against each backend: the HTTP answers, the NATS deltas, the
    export and the per-model epochs after a restart are identical."""
    import nats

    writes = [
        model_yaml("p/one"),
        model_yaml("p/two", {**_profile("default"), "sg": {"adapter_path": SGLANG}}),
        model_yaml("p/one", _profile("fast", 64)),
        model_yaml("p/one", _profile("fast", 64)),  # a pure replay: 200, no epoch, no delta
        model_yaml("test/model", _profile("extra", 32)),  # an append to a baseline model
        model_yaml("p/one", _profile("fast", 65)),  # a conflict: 409, nothing changes
    ]
    seen: dict[str, Any] = {}
    for kind in ("directory", "jetstream"):
        nc = await nats.connect(servers=nats_cluster.urls.split(","))
        deltas: list[tuple[str, Any]] = []

        async def on(msg: Any, deltas: list[tuple[str, Any]] = deltas) -> None:
            deltas.append((msg.subject, orjson.loads(msg.data)))

        await nc.subscribe("sie.config.models.>", cb=on)
        await nc.flush()
        stream = stream_name()
        where: dict[str, Any] = {}
        if kind == "directory":
            where = {"store_stream": None, "store_dir": tmp_path / "dir"}
        api = await js_api(make_api, nats_cluster.urls, stream, **where)
        answers = []
        for body in writes:
            r = await api.post(body)
            answers.append((r.status, await _json(r)))

        async def all_deltas(deltas: list[tuple[str, Any]] = deltas) -> bool:
            return len(deltas) >= 10

        await until(all_deltas, 10)
        await asyncio.sleep(0.2)
        await nc.close()
        export = await _json(await api.client.get("/v1/configs/export"))
        await api.service.stop()
        again = await js_api(make_api, nats_cluster.urls, stream, **where)
        restored = await _json(await again.client.get("/v1/configs/export"))
        registry = again.service.registry
        assert registry is not None
        epochs = sorted((e.model_id, e.epoch) for e in registry)
        for e in (export, restored):
            e.pop("generated_at")
        assert restored == export
        seen[kind] = (answers, deltas, export, epochs)
    assert seen["jetstream"] == seen["directory"]
    answers, deltas, export, epochs = seen["jetstream"]
    assert [s for s, _ in answers] == [201, 201, 201, 200, 201, 409]
    assert export["epoch"] == 4 and len(deltas) == 10
    assert ("p/one", 3) in epochs and ("p/two", 2) in epochs and ("test/model", 4) in epochs


async def test_leadership_is_checked_again_right_before_the_append(make_api: MakeApi) -> None:
    """A lease lost while a write waited in the queue: the write is refused, nothing stored
    (the directory store here: the gate is the service's, whatever the backend)."""

    class LosesItAfterTheFirstLook:
        def __init__(self) -> None:
            self.looks = 0

        def may_write(self) -> bool:
            self.looks += 1
            return self.looks == 1

        def leader_identity(self) -> str | None:
            return "pod-new"

        def leader_url(self) -> str | None:
            return None

    api = await make_api()
    api.service.leadership = LosesItAfterTheFirstLook()
    with pytest.raises(NotLeader, match="pod-new"):
        await api.service.apply({"sie_id": "g/m", "profiles": _profile("default")})
    assert api.service.epoch == 0 and api.service.store is not None and api.service.store.epoch == 0
    api.service.leadership = None
    r = await api.post(model_yaml("g/m"))
    assert r.status == 201 and api.service.epoch == 1
