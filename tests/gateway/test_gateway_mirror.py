"""Unit tests of the mirror's sync decisions against an in-memory config service.

The service side uses the same catalog Registry as the real config service; the real
HTTP/NATS path is covered by test_gateway_integration.py.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import orjson
import pytest
from gw_helpers import SGLANG, FakeService, fake_client, model_doc, unique_model

from sie_operator.catalog import hashing
from sie_operator.catalog.bundles import Bundle, BundleSet
from sie_operator.catalog.registry import same_value
from sie_operator.protocol.deltas import ALL_SUBJECT
from sie_operator.protocol.mirror import ConfigMirror, MirrorObserver, build_registry, carried_over


class Recorder(MirrorObserver):
    def __init__(self) -> None:
        self.deltas: list[tuple[str, str]] = []
        self.catchups: list[str] = []
        self.failures = 0

    def delta(self, kind: str, result: str) -> None:
        self.deltas.append((kind, result))

    def catchup(self, reason: str) -> None:
        self.catchups.append(reason)

    def bootstrap_failed(self, degraded: bool) -> None:
        self.failures += 1


def make_mirror(svc: FakeService, **kw: Any) -> tuple[ConfigMirror, Recorder]:
    rec = Recorder()
    kw.setdefault("poll_grace", 0.0)
    return ConfigMirror(fake_client(svc), observer=rec, **kw), rec


def deliver(mirror: ConfigMirror, messages: list[tuple[str, bytes]], only_all: bool = True) -> None:
    for subject, data in messages:
        if not only_all or subject == ALL_SUBJECT:
            mirror.on_message(subject, data)


async def test_bootstrap_mirrors_models_and_hashes() -> None:
    svc = FakeService()
    svc.write(model_doc("a/one"))
    svc.write(model_doc("a/two", adapter=SGLANG))
    m, _ = make_mirror(svc)
    outcome = await m.bootstrap_once()
    assert m.bootstrapped and m.epoch == 2 and outcome.applied == 2 and not outcome.failed
    assert [e.model_id for e in m.registry] == ["a/one", "a/two"]
    for b in svc.bundles.names():
        assert m.registry.bundle_hash(b) == svc.registry.bundle_hash(b)
    assert m.bundles_hash == svc.bundles.hash


async def test_in_order_deltas_advance_the_epoch_without_catchup() -> None:
    svc = FakeService()
    m, rec = make_mirror(svc)
    await m.bootstrap_once()
    deliver(m, svc.write(model_doc("b/one")))
    deliver(m, svc.write(model_doc("b/one", "extra")))
    assert m.epoch == 2 and rec.catchups == []
    assert sorted(m.registry.get("b/one").profiles) == ["default", "extra"]  # type: ignore[union-attr]
    assert m.registry.bundle_hash("default") == svc.registry.bundle_hash("default")
    assert ("model_added", "applied") in rec.deltas


async def test_skipped_epoch_triggers_catchup_at_once_and_bootstrap_heals() -> None:
    svc = FakeService()
    m, rec = make_mirror(svc)
    await m.bootstrap_once()
    svc.write(model_doc("c/lost"))  # epoch 1: never delivered
    deliver(m, svc.write(model_doc("c/seen")))  # epoch 2 arrives
    assert rec.catchups == ["gap"]
    assert m.epoch == 0  # the watermark does not jump over the hole (W5)
    await m.bootstrap_once()
    assert m.epoch == 2 and m.registry.get("c/lost") is not None


async def test_equal_epoch_copies_for_several_bundles_are_not_a_gap() -> None:
    svc = FakeService()
    m, rec = make_mirror(svc)
    await m.bootstrap_once()
    doc = model_doc("d/multi")
    doc["profiles"]["sg"] = {"adapter_path": SGLANG, "max_batch_tokens": 64}
    msgs = svc.write(doc)
    assert len([s for s, _ in msgs if s == ALL_SUBJECT]) == 2
    deliver(m, msgs)
    assert rec.catchups == [] and m.epoch == 1
    assert m.registry.get("d/multi").bundles == ("default", "sglang")  # type: ignore[union-attr]


async def test_lost_write_without_epochs_is_caught_by_the_hash_check() -> None:
    """A store-less service publishes epoch 0 forever; the published hash still reveals the hole."""
    svc = FakeService()
    m, rec = make_mirror(svc)
    await m.bootstrap_once()
    svc.write(model_doc("e/lost"))
    svc.epoch = 0
    msgs = svc.write(model_doc("e/next"))
    svc.epoch = 0
    msgs = [(s, orjson.dumps({**orjson.loads(d), "epoch": 0})) for s, d in msgs]
    deliver(m, msgs)
    assert rec.catchups == ["hash_mismatch"]


async def test_untrusted_producer_is_ignored() -> None:
    svc = FakeService()
    m, rec = make_mirror(svc)
    await m.bootstrap_once()
    evil = FakeService(producer="evil-config")
    evil.epoch = 0
    deliver(m, evil.write(model_doc("f/evil")))
    assert m.registry.get("f/evil") is None and m.epoch == 0
    assert rec.deltas == [("model_added", "rejected_untrusted")]
    trusting, _ = make_mirror(svc, trusted=None)
    await trusting.bootstrap_once()
    deliver(trusting, FakeService(producer="anyone").write(model_doc("f/any")))
    assert trusting.registry.get("f/any") is not None


async def test_conflicting_delta_is_an_apply_error_and_catches_up() -> None:
    svc = FakeService()
    svc.write(model_doc("g/m", mbt=100))
    m, rec = make_mirror(svc)
    await m.bootstrap_once()
    other = FakeService()
    other.epoch = 1
    deliver(m, other.write(model_doc("g/m", mbt=999)))  # same profile, other content
    assert ("model_added", "apply_error") in rec.deltas
    assert rec.catchups == ["apply_error"]


async def test_deltas_before_first_bootstrap_are_left_to_the_export() -> None:
    svc = FakeService()
    m, _ = make_mirror(svc)
    deliver(m, svc.write(model_doc("h/early")))
    assert len(m.registry) == 0 and not m.bootstrapped
    await m.bootstrap_once()
    assert m.registry.get("h/early") is not None and m.epoch == 1


async def test_deltas_during_a_bootstrap_are_replayed_after_the_swap() -> None:
    svc = FakeService()
    svc.write(model_doc("i/base"))
    m, rec = make_mirror(svc)
    await m.bootstrap_once()
    gate = asyncio.Event()
    real_export = svc.export

    async def slow_export() -> bytes:
        body = await real_export()  # the cut is taken now (epoch 1) ...
        await gate.wait()  # ... and delivered later
        return body

    svc.export = slow_export  # type: ignore[method-assign]
    m.client.export = slow_export  # type: ignore[method-assign]
    task = asyncio.create_task(m.bootstrap_once())
    await asyncio.sleep(0.01)
    svc.write(model_doc("i/gap"))  # epoch 2 published but lost ...
    deliver(m, svc.write(model_doc("i/late")))  # ... epoch 3 arrives mid-bootstrap
    assert rec.catchups == []  # not decided while the registry is about to be replaced
    gate.set()
    await task
    assert m.registry.get("i/late") is not None  # replayed onto the new registry
    assert rec.catchups == ["gap"]  # and the replay noticed the hole after the cut
    assert m.epoch == 1


async def test_worker_mode_keeps_its_bundle_and_tracks_every_write() -> None:
    svc = FakeService()
    svc.write(model_doc("j/default"))
    svc.write(model_doc("j/sglang", adapter=SGLANG))
    m, rec = make_mirror(svc, bundle="default")
    await m.bootstrap_once()
    assert [e.model_id for e in m.registry] == ["j/default"]
    assert m.registry.bundle_hash("default") == svc.registry.bundle_hash("default")
    deliver(m, svc.write(model_doc("j/sglang2", adapter=SGLANG)), only_all=False)  # other bundle
    deliver(m, svc.write(model_doc("j/default2")), only_all=False)  # own bundle: subject + _all
    assert rec.catchups == [] and m.epoch == 4
    assert m.registry.get("j/sglang2") is None and m.registry.get("j/default2") is not None
    assert m.registry.bundle_hash("default") == svc.registry.bundle_hash("default")


async def test_poll_requests_catchup_on_drift() -> None:
    svc = FakeService()
    m, rec = make_mirror(svc)
    await m.bootstrap_once()
    assert (await m.poll_once()).value == "in_sync"  # type: ignore[union-attr]
    svc.write(model_doc("k/m"))
    assert (await m.poll_once()).value == "behind"  # type: ignore[union-attr]
    await m.bootstrap_once()
    svc.epoch = 0  # service lost its epoch
    assert (await m.poll_once()).value == "ahead"  # type: ignore[union-attr]
    await m.bootstrap_once()
    assert m.epoch == 0  # followed it down
    assert rec.catchups == ["behind", "ahead"]


async def test_a_replica_a_moment_behind_is_asked_again_before_following_it_down() -> None:
    """Several config-service replicas: the one answering may follow the writer a moment
    behind; its lower epoch is checked again after the grace instead of re-exported at once."""
    svc = FakeService()
    svc.write(model_doc("k/m"))
    m, rec = make_mirror(svc, poll_grace=0.2)
    await m.bootstrap_once()
    current = svc.epoch
    svc.epoch = current - 1  # the replica answering has not applied the last write yet

    async def catch_up() -> None:
        await asyncio.sleep(0.05)
        svc.epoch = current

    task = asyncio.create_task(catch_up())
    assert (await m.poll_once()).value == "in_sync"  # type: ignore[union-attr]
    await task
    assert rec.catchups == [] and m.epoch == current
    svc.epoch = 0  # a store really reset stays behind: followed after the grace
    assert (await m.poll_once()).value == "ahead"  # type: ignore[union-attr]
    assert rec.catchups == ["ahead"]


async def test_run_retries_until_the_service_answers() -> None:
    svc = FakeService()
    svc.write(model_doc("l/m"))
    svc.fail = True
    m, rec = make_mirror(svc, backoff_initial=0.02, backoff_max=0.05, poll_interval=0.05)
    task = asyncio.create_task(m.run())
    try:
        await asyncio.sleep(0.15)
        assert not m.bootstrapped and rec.failures >= 2
        svc.fail = False
        for _ in range(100):
            if m.bootstrapped:
                break
            await asyncio.sleep(0.01)
        assert m.bootstrapped and m.registry.get("l/m") is not None
        # the poller notices a write whose delta never came
        svc.write(model_doc("l/later"))
        for _ in range(200):
            if m.registry.get("l/later") is not None:
                break
            await asyncio.sleep(0.01)
        assert m.registry.get("l/later") is not None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_build_registry_counts_failures_and_keeps_unroutable_models() -> None:
    svc = FakeService()
    svc.write(model_doc(unique_model()))
    export = {
        "epoch": 5,
        "models": [
            {"model_id": "x/ok", "raw_yaml": None, "model_config": model_doc("x/ok")},
            {
                "model_id": "x/orphan",
                "raw_yaml": None,
                "model_config": model_doc("x/orphan", adapter="gone.mod:X"),
            },
            {"model_id": "x/bad", "raw_yaml": "profiles: [", "model_config": None},
            {"model_id": "x/none", "raw_yaml": None, "model_config": None},
        ],
    }
    reg, out = build_registry(list(svc.bundles.bundles), orjson.dumps(export))
    assert out.epoch == 5 and out.applied == 2 and out.skipped == 1
    assert [m for m, _ in out.failed] == ["x/bad"]
    assert reg.get("x/orphan").bundles == ()  # type: ignore[union-attr]


# -- model-granular readiness: mutation numbers and digest history --------------------------
def _seq(m: ConfigMirror, model_id: str) -> int:
    value = m.model_seq(model_id)
    assert value is not None, model_id
    return value


async def test_every_applied_delta_numbers_the_model_and_records_the_bundle_digests() -> None:
    svc = FakeService()
    m, _ = make_mirror(svc)
    await m.bootstrap_once()
    deliver(m, svc.write(model_doc("n/a")))
    after_a = svc.registry.bundle_hash("default")
    deliver(m, svc.write(model_doc("n/b")))
    doc = model_doc("n/multi")
    doc["profiles"]["sg"] = {"adapter_path": SGLANG, "max_batch_tokens": 64}
    deliver(m, svc.write(doc))
    a, b, multi = _seq(m, "n/a"), _seq(m, "n/b"), _seq(m, "n/multi")
    assert a < b < multi
    assert m.hash_seq("default", after_a) == a  # the state a lagging worker may still report
    assert m.hash_seq("default", m.registry.bundle_hash("default")) == multi
    assert m.hash_seq("sglang", m.registry.bundle_hash("sglang")) == multi
    assert m.hash_seq("default", "f" * 64) is None
    deliver(m, svc.write(model_doc("n/a")))  # nothing new: no mutation, no new number
    assert _seq(m, "n/a") == a and m.history is not None and m.history.seq == multi


async def test_recording_digests_costs_no_extra_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hash-mismatch check already computes each affected bundle's digest once per
    write; the history reuses exactly that (BundleHasher caches it)."""
    svc = FakeService()
    m, rec = make_mirror(svc)
    await m.bootstrap_once()
    computed: list[int] = []
    real = hashing.BundleHasher.digest

    def counting(self: hashing.BundleHasher) -> str:
        if self._hash is None:
            computed.append(1)
        return real(self)

    doc = model_doc("o/multi")
    doc["profiles"]["sg"] = {"adapter_path": SGLANG, "max_batch_tokens": 64}
    for msgs, bundles in ((svc.write(model_doc("o/one")), 1), (svc.write(doc), 2)):
        computed.clear()
        monkeypatch.setattr(hashing.BundleHasher, "digest", counting)
        deliver(m, msgs)
        monkeypatch.setattr(hashing.BundleHasher, "digest", real)
        assert len(computed) == bundles
    assert rec.catchups == []


async def test_bootstrap_keeps_the_number_of_unchanged_models() -> None:
    svc = FakeService()
    svc.write(model_doc("p/keep"))
    svc.write(model_doc("p/grows"))
    m, _ = make_mirror(svc)
    await m.bootstrap_once()
    deliver(m, svc.write(model_doc("p/live")))
    before = {mid: _seq(m, mid) for mid in ("p/keep", "p/grows", "p/live")}
    old_digest = m.registry.bundle_hash("default")
    svc.write(model_doc("p/lost"))  # never delivered
    svc.write(model_doc("p/grows", "extra"))  # changed while we were not listening
    await m.bootstrap_once()
    assert _seq(m, "p/keep") == before["p/keep"] and _seq(m, "p/live") == before["p/live"]
    assert _seq(m, "p/lost") == _seq(m, "p/grows") > before["p/live"]  # the bootstrap's number
    assert m.hash_seq("default", old_digest) == before["p/live"]  # history kept across the swap
    assert m.hash_seq("default", m.registry.bundle_hash("default")) == _seq(m, "p/lost")


async def test_a_bundle_whose_adapters_change_renumbers_its_models() -> None:
    svc = FakeService()
    svc.write(model_doc("q/st"))
    svc.write(model_doc("q/sg", adapter=SGLANG))
    m, _ = make_mirror(svc)
    await m.bootstrap_once()
    st, sg = _seq(m, "q/st"), _seq(m, "q/sg")
    default = svc.bundles.get("default")
    assert default is not None
    widened = Bundle(default.name, default.priority, (*default.adapters, "acme.extra"), default.default)
    svc.bundles = BundleSet(tuple(widened if b.name == "default" else b for b in svc.bundles.bundles))
    await m.bootstrap_once()
    assert _seq(m, "q/st") > st  # its share of "default" may differ now
    assert _seq(m, "q/sg") == sg


def test_carried_over_compares_documents_and_bundles() -> None:
    svc = FakeService()
    for mid in ("r/same", "r/more", "r/option", "r/null"):
        doc = model_doc(mid)
        doc["profiles"]["default"]["adapter_options"] = {"loadtime": {"pooling": "cls"}}
        svc.write(doc)
    old = svc.registry
    docs = {e.model_id: copy.deepcopy(e.doc) for e in old}
    # equal for the registry (same_value: a null is an absent key) but not for the bundle hash
    docs["r/option"]["profiles"]["default"]["adapter_options"]["loadtime"]["normalize"] = None
    docs["r/null"]["description"] = None  # same_value-equal and not part of any bundle hash
    body = orjson.dumps({"epoch": 4, "models": [{"model_id": k, "model_config": v} for k, v in docs.items()]})
    new, outcome = build_registry(list(svc.bundles.bundles), body)
    assert outcome.applied == 4 and not outcome.failed
    assert same_value(old.get("r/option").doc, new.get("r/option").doc)  # type: ignore[union-attr]
    new.put(model_doc("r/more", "extra"))
    new.put(model_doc("r/new"))
    carried = carried_over(old, new)
    assert set(carried) == {"r/same", "r/null"} and carried["r/same"] is old.get("r/same")


async def test_a_model_written_during_a_bootstrap_keeps_the_number_of_its_delta() -> None:
    svc = FakeService()
    svc.write(model_doc("s/base"))
    m, _ = make_mirror(svc)
    await m.bootstrap_once()
    base = _seq(m, "s/base")
    gate = asyncio.Event()
    real_export = svc.export

    async def slow_export() -> bytes:
        body = await real_export()
        await gate.wait()
        return body

    m.client.export = slow_export  # type: ignore[method-assign]
    msgs = svc.write(model_doc("s/during"))  # in the export's cut ...
    task = asyncio.create_task(m.bootstrap_once())
    await asyncio.sleep(0.01)
    deliver(m, msgs)  # ... and applied live to the old registry meanwhile
    during = _seq(m, "s/during")
    gate.set()
    await task
    assert _seq(m, "s/during") == during and _seq(m, "s/base") == base
    assert m.history is not None and m.history.seq > during


async def test_history_is_bounded_and_off_in_worker_mode() -> None:
    svc = FakeService()
    m, _ = make_mirror(svc, history=2)
    await m.bootstrap_once()
    digests = []
    for i in range(4):
        deliver(m, svc.write(model_doc(f"t/m{i}")))
        digests.append(m.registry.bundle_hash("default"))
    assert m.history is not None and m.history.digests("default") == tuple(digests[-2:])
    assert m.hash_seq("default", digests[0]) is None
    worker, _ = make_mirror(svc, bundle="default")
    await worker.bootstrap_once()
    assert worker.history is None and worker.model_seq("t/m0") is None
    assert worker.hash_seq("default", digests[-1]) is None
