"""The readiness feed behind the watch stream, in process (real mirror, worker table, decoder).

The central property: whatever sequence of writes, hash reports and health changes happens,
a client that applies the records it was sent holds, after a flush, exactly the
model-granular readiness a bulk read returns at that moment -- with change detection that
only looks at what the events touched.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from gw_helpers import FakeService, fake_client, model_doc

from sie_operator.catalog.registry import Registry
from sie_operator.gateway import readiness
from sie_operator.gateway.health import Frame, WorkerTable
from sie_operator.gateway.metrics import GatewayMetrics
from sie_operator.gateway.service import _Observers
from sie_operator.gateway.watch import BundleOrder, ReadinessFeed, Subscriber
from sie_operator.protocol import readiness_stream as rs
from sie_operator.protocol.mirror import ConfigMirror


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(
        self, *, settle: float = 0.0, history: int = 65536, workers: int = 4, digests: int | None = None
    ) -> None:
        self.svc = FakeService()
        self.clock = Clock()
        self.table = WorkerTable(clock=self.clock)
        self.observers = _Observers(GatewayMetrics())
        self.mirror = ConfigMirror(fake_client(self.svc), observer=self.observers, history=digests)
        self.feed = ReadinessFeed(
            self.mirror, self.table, "gw-t", settle=settle, history=history, clock=self.clock
        )
        self.feed.auto_flush = False
        self.observers.feed = self.feed
        self.urls = [f"http://w{i}" for i in range(workers)]
        for url in self.urls:
            self.table.add(url)

    async def bootstrap(self) -> None:
        await self.mirror.bootstrap_once()

    def write(self, model_id: str, *profiles: str) -> None:
        for subject, payload in self.svc.write(model_doc(model_id, *profiles)):
            if subject.endswith("._all"):
                self.mirror.on_message(subject, payload)

    def report(self, url: str, digest: str, ready: bool = True) -> None:
        name = url.rsplit("/", 1)[1]
        self.table.frame(url, Frame(name=name, ready=ready, bundle="default", bundle_config_hash=digest))

    def expected(self) -> str:
        return self.mirror.registry.bundle_hash("default")

    def live(self) -> dict[str, dict[str, Any]]:
        body = readiness.bulk_snapshot_json(
            "gw-t",
            self.mirror.epoch,
            ((e.model_id, e.bundles) for e in self.mirror.registry),
            self.mirror.registry.bundle_hash,
            self.table.group,
            self.mirror.model_seq,
            self.mirror.hash_seq,
        )
        return {m["model_id"].lower(): m for m in orjson.loads(body)["models"]}


def granular(m: dict[str, Any]) -> tuple[Any, ...]:
    """What the stream promises to keep current: model-granular readiness."""
    return (
        m["model_id"],
        m["model_acked"],
        m["no_bundles"],
        tuple(
            (
                b["bundle_id"],
                b["total_eligible_workers"],
                tuple(b["model_acked_workers"]),
                tuple(b["model_pending_workers"]),
                b["model_acked"],
            )
            for b in m["bundles"]
        ),
    )


async def drain(sub: Subscriber, decoder: rs.ReadinessStreamDecoder) -> int:
    data = await sub.next(0)
    return len(decoder.feed(data)) if data else 0


async def connect(rig: Rig, token: str | None = None, models: tuple[str, ...] = ()) -> tuple[Subscriber, Any]:
    sub = rig.feed.subscribe(models)
    opening = rig.feed.open(sub, rs.parse_token(token) if token else None)
    return sub, opening


def assert_same(decoder: rs.ReadinessStreamDecoder, live: dict[str, dict[str, Any]]) -> None:
    assert decoder.models.keys() == live.keys()
    for k, m in live.items():
        assert granular(decoder.models[k]) == granular(m), k


@pytest.mark.parametrize("seed,digests", [(12, None), (7, 3), (99, 1)])
async def test_random_events_keep_every_client_equal_to_the_bulk_read(seed: int, digests: int | None) -> None:
    """``digests``: bundle digests the mirror remembers; tiny values make workers fall off
    the history (their level drops to "never") without any event of their own."""
    rnd = random.Random(seed)
    rig = Rig(history=20000, digests=digests)
    for i in range(30):
        rig.svc.write(model_doc(f"seed/m{i:03d}"))
    await rig.bootstrap()
    for url in rig.urls:
        rig.report(url, rig.expected())
    sub, opening = await connect(rig)
    d = rs.ReadinessStreamDecoder()
    for chunk in opening.chunks:
        d.feed(chunk)
    assert d.synced and d.last_reason == "initial"
    assert_same(d, rig.live())
    late: rs.ReadinessStreamDecoder | None = None
    late_sub: Subscriber | None = None
    n = 0
    for step in range(600):
        r = rnd.random()
        url = rnd.choice(rig.urls)
        if r < 0.25:
            n += 1
            profiles = ("default",) if rnd.random() < 0.7 else ("default", f"p{step}")
            mid = f"live/m{n:03d}" if rnd.random() < 0.7 else f"seed/m{rnd.randrange(30):03d}"
            try:
                rig.write(mid, *profiles)
            except Exception:
                continue  # a write the fake service refuses (conflict) does not matter here
        elif r < 0.6:
            rig.report(url, rig.expected())
        elif r < 0.75:
            digests = rig.mirror.history.digests("default") if rig.mirror.history else ()
            if digests:
                rig.report(url, rnd.choice(digests))
        elif r < 0.8:
            rig.report(url, "f" * 64)  # a hash this replica never had
        elif r < 0.88:
            rig.table.disconnected(url)
        elif r < 0.92:
            rig.clock.now += 20
            rig.table.sweep()
        elif r < 0.95:
            await rig.bootstrap()
        else:
            rig.report(url, rig.expected(), ready=False)
        if rnd.random() < 0.3:  # the timer's early flushes in between, as time goes by
            rig.feed.flush(early=True)
            rig.clock.now += rnd.choice([0.0, 0.01, 0.06])
        if step % 7 == 0 or rnd.random() < 0.3:
            rig.feed.flush()
            await drain(sub, d)
            live = rig.live()
            assert_same(d, live)
            if late is not None and late_sub is not None:
                await drain(late_sub, late)
                assert_same(late, live)
        if step == 300:
            # a second client that connected, lost its connection and comes back with its token
            late_sub, opening = await connect(rig)
            late = rs.ReadinessStreamDecoder()
            for chunk in opening.chunks:
                late.feed(chunk)
            rig.feed.unsubscribe(late_sub)
            late_sub = None
            late.connection_lost()
            token = late.resume_token
        if step == 320:
            assert late is not None
            late_sub, opening = await connect(rig, token)
            assert opening.kind == rs.RESUMED
            for chunk in opening.chunks:
                late.feed(chunk)
    assert rig.feed.records_emitted > 0


async def test_a_write_emits_the_written_model_only_and_acks_emit_it_once_more() -> None:
    rig = Rig(settle=0.0)
    for i in range(200):
        rig.svc.write(model_doc(f"big/m{i:03d}"))
    await rig.bootstrap()
    for url in rig.urls:
        rig.report(url, rig.expected())
    rig.feed.flush()
    sub, opening = await connect(rig)
    d = rs.ReadinessStreamDecoder()
    for chunk in opening.chunks:
        d.feed(chunk)
    assert len(d.models) == 200
    before = rig.feed.records_emitted
    rig.write("big/new")
    rig.feed.flush()
    assert rig.feed.records_emitted - before == 1  # not the 200 others, whose expected hash moved
    assert await drain(sub, d) == 1 and d.models["big/new"]["model_acked"] is False
    for url in rig.urls:
        rig.report(url, rig.expected())
    rig.feed.flush()
    assert rig.feed.records_emitted - before == 2
    assert await drain(sub, d) == 1 and d.models["big/new"]["model_acked"] is True
    assert all(m["model_acked"] for m in d.models.values())
    # A hash this replica does not know yet, on the same connection: the worker is ahead of
    # it (workers only move forward), so what it was known to hold stands: no record.
    rig.report(rig.urls[0], "1" * 64)
    assert rig.feed.flush() == 0
    # A restarted worker (a new connection) with a hash this replica never had changes every
    # model: 201 records.
    rig.table.disconnected(rig.urls[0])
    rig.report(rig.urls[0], "0" * 64)
    rig.feed.flush()
    assert rig.feed.records_emitted - before == 2 + 201
    rig.report(rig.urls[0], rig.expected())
    rig.feed.flush()
    assert rig.feed.records_emitted - before == 2 + 2 * 201
    # frames that repeat the same hash change nothing
    for url in rig.urls:
        rig.report(url, rig.expected())
    assert not rig.feed.pending and rig.feed.flush() == 0


async def test_worker_list_changes_settle_while_the_verdict_stays() -> None:
    rig = Rig(settle=1.0)
    await rig.bootstrap()
    rig.write("s/a")
    for url in rig.urls:
        rig.report(url, rig.expected())
    rig.feed.flush()
    sub, opening = await connect(rig)
    d = rs.ReadinessStreamDecoder()
    for chunk in opening.chunks:
        d.feed(chunk)
    rig.write("s/b")
    rig.feed.flush()
    assert await drain(sub, d) == 1  # s/b: new, all workers pending
    rig.report(rig.urls[0], rig.expected())
    rig.feed.flush()
    assert await drain(sub, d) == 0  # only the split moved: held back
    assert d.models["s/b"]["bundles"][0]["model_pending_workers"] == ["w0", "w1", "w2", "w3"]
    rig.clock.now += 1.5
    rig.feed.flush()
    assert await drain(sub, d) == 1
    assert d.models["s/b"]["bundles"][0]["model_pending_workers"] == ["w1", "w2", "w3"]
    for url in rig.urls[1:]:
        rig.report(url, rig.expected())
    rig.feed.flush()  # the verdict flips: sent at once, settle or not
    assert await drain(sub, d) == 1 and d.models["s/b"]["model_acked"] is True


async def test_resume_inside_history_sends_only_changes_outside_it_a_marked_snapshot() -> None:
    rig = Rig(history=5)
    await rig.bootstrap()
    for i in range(3):
        rig.write(f"r/m{i}")
    for url in rig.urls:
        rig.report(url, rig.expected())
    rig.feed.flush()
    _, opening = await connect(rig)
    d = rs.ReadinessStreamDecoder()
    for chunk in opening.chunks:
        d.feed(chunk)
    token = d.resume_token
    assert token is not None and len(d.models) == 3
    rig.write("r/m3")
    rig.write("r/m1", "default", "extra")
    rig.feed.flush()
    _, opening = await connect(rig, token)
    assert opening.kind == rs.RESUMED and opening.records == 3  # resumed + 2 changes, no snapshot
    for chunk in opening.chunks:
        d.feed(chunk)
    assert d.resumes == 1 and set(d.models) == {f"r/m{i}" for i in range(4)}
    assert_same(d, rig.live())
    for i in range(4, 12):  # more changes than the history keeps
        rig.write(f"r/m{i}")
    rig.feed.flush()
    _, opening = await connect(rig, token)
    assert opening.kind == rs.SNAPSHOT and opening.reason == rs.REASON_EXPIRED
    _, opening = await connect(rig, "otherstream.3")
    assert opening.kind == rs.SNAPSHOT and opening.reason == rs.REASON_UNKNOWN_STREAM
    _, opening = await connect(rig, f"{rig.feed.stream_id}.{rig.feed.seq + 5}")
    assert opening.reason == rs.REASON_EXPIRED  # from the future: not ours to honour


async def test_model_filter_applies_to_snapshot_changes_and_resume() -> None:
    rig = Rig()
    await rig.bootstrap()
    rig.write("f/a")
    rig.write("f/b")
    rig.feed.flush()
    sub, opening = await connect(rig, models=("F/A", "f/later"))
    d = rs.ReadinessStreamDecoder()
    for chunk in opening.chunks:
        d.feed(chunk)
    assert set(d.models) == {"f/a"}
    rig.write("f/b", "default", "x")
    rig.write("f/later")
    rig.feed.flush()
    await drain(sub, d)
    assert set(d.models) == {"f/a", "f/later"}


async def test_overflowing_subscriber_is_closed_and_told() -> None:
    rig = Rig()
    rig.feed.max_buffer = 10
    await rig.bootstrap()
    dropped: list[bool] = []
    sub = rig.feed.subscribe(on_overflow=lambda: dropped.append(True))
    rig.feed.open(sub, None)
    rig.write("o/a")
    rig.feed.flush()
    assert dropped == [True] and sub.overflowed and await sub.next(0) == b""


@pytest.mark.parametrize("history", [0, -1])
def test_history_must_be_positive(history: int) -> None:
    with pytest.raises(ValueError):
        Rig(history=history)


def test_bundle_order_ranges_skip_stale_entries_and_compact() -> None:
    order = BundleOrder([("a", 1), ("b", 2), ("c", 3)])
    assert sorted(order.between(1, 3)) == ["b", "c"] and sorted(order.between(-1, 1)) == ["a"]
    order.set("a", 4)  # a changed again: its entry at 1 turns stale
    assert sorted(order.between(-1, 3)) == ["b", "c"] and list(order.between(3, 9)) == ["a"]
    order.set("a", 4)  # same level: nothing to do
    assert len(order) == 3
    for level in range(5, 200):
        order.set("b", level)
    assert list(order.between(150, 199)) == ["b"] and sorted(order) == ["a", "b", "c"]
    assert len(order._levels) < 100  # compacted along the way
    order.set("z", 0)  # out of order: still sorted
    assert list(order.between(-1, 0)) == ["z"]


async def test_a_bootstrap_that_drops_models_sends_removed_and_only_real_changes() -> None:
    rig = Rig()
    for i in range(5):
        rig.svc.write(model_doc(f"b/m{i}"))
    await rig.bootstrap()
    for url in rig.urls:
        rig.report(url, rig.expected())
    rig.feed.flush()
    sub, opening = await connect(rig)
    d = rs.ReadinessStreamDecoder()
    for chunk in opening.chunks:
        d.feed(chunk)
    assert len(d.models) == 5
    await rig.bootstrap()  # same content again: nothing changed for anybody
    assert rig.feed.flush() == 0
    # the service lost two models (a restored backup, say): the next bootstrap drops them
    rig.svc.registry = Registry(rig.svc.bundles)
    for i in range(3):
        rig.svc.registry.put(model_doc(f"b/m{i}"))
    await rig.bootstrap()
    rig.feed.flush()
    await drain(sub, d)
    assert set(d.models) == {"b/m0", "b/m1", "b/m2"}
    assert_same(d, rig.live())


async def test_early_flushes_hold_a_fresh_write_until_it_is_acked_or_its_window_ends() -> None:
    rig = Rig(settle=0.0)
    await rig.bootstrap()
    for url in rig.urls:
        rig.report(url, rig.expected())
    rig.feed.flush()
    sub, opening = await connect(rig)
    d = rs.ReadinessStreamDecoder()
    for chunk in opening.chunks:
        d.feed(chunk)
    before = rig.feed.records_emitted
    rig.write("e/quick")
    assert rig.feed.flush(early=True) == 0  # pending, but its window is not over: held
    for url in rig.urls[:3]:
        rig.report(url, rig.expected())
    assert rig.feed.flush(early=True) == 0  # still one worker to go
    rig.report(rig.urls[3], rig.expected())
    assert rig.feed.flush(early=True) == 1  # the last ack: out at once, and only this record
    await drain(sub, d)
    assert rig.feed.records_emitted - before == 1 and d.models["e/quick"]["model_acked"] is True
    rig.write("e/slow")
    assert rig.feed.flush(early=True) == 0
    rig.clock.now += rig.feed.coalesce
    assert rig.feed.flush(early=True) == 1  # its window is over: sent pending
    await drain(sub, d)
    assert d.models["e/slow"]["model_acked"] is False
    assert_same(d, rig.live())


async def test_closing_the_feed_ends_streams_and_refuses_new_ones() -> None:
    rig = Rig()
    await rig.bootstrap()
    sub = rig.feed.subscribe()
    rig.feed.open(sub, None)
    rig.feed.close()
    assert await sub.next(5) == b"" and rig.feed.subscribers == 0
    late = rig.feed.subscribe()
    assert late.closed and await late.next(5) == b"" and rig.feed.subscribers == 0
