"""The reconcile core against every event ordering: a seeded simulation with invariants.

``sim_world.World`` plays the API server, the store, the fleet and the clock; each seed is
one schedule of creates, spec changes, deletes (some without a DELETED event), re-lists,
operator restarts, status tampering, NATS outages, slow and failing writes and patches,
lagging and unreachable gateway replicas, delivered in a seeded random order. After every
step: I1 Ready at generation g => the store holds g's profiles; I2 Ready => every replica
reported the model acked at or after the write's epoch; I3 one owner per sieId; I5 no
patch equal to the observed status. At the end: I4, it converges in bounded rounds to the
true status with no ghost and no churn.

The named schedules below are the six failures issue 9 found in the previous reconciler.
"""

from __future__ import annotations

import random

import pytest
from sim_world import InvariantError, World, run_schedule

from sie_operator.controller.fleetview import FleetSnapshot, GatewayView, ReplicaHealth, damp
from sie_operator.controller.reconcile import FleetSeen, PatchStatus, StoreWrite, Tick, WriteDone
from sie_operator.devcluster.seeded import failing_seeds

SCHEDULES = 10_000
CHUNKS = 4


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_schedules_keep_every_invariant(chunk: int) -> None:
    size = SCHEDULES // CHUNKS
    failures = failing_seeds(run_schedule, InvariantError, range(chunk * size, (chunk + 1) * size))
    assert not failures, "\n".join(failures[:10])


def settle(w: World) -> None:
    w.quiesce()
    w.check_converged()


def ready_reason(w: World, ns: str, name: str) -> str:
    obj = w.objects[(ns, name)]
    return str({c["type"]: c for c in (obj.status or {})["conditions"]}["Ready"]["reason"])


def deliver_watch(w: World) -> None:
    while w.watch:
        w.feed(w.watch.pop(0))
        w.check()


def started_world(replicas: int = 1) -> World:
    w = World(random.Random(0), replicas=replicas)
    w.relist()
    deliver_watch(w)
    return w


def test_named_lost_spec_update_while_the_old_write_is_in_flight() -> None:
    """Bug 1: generation 2 arrives while generation 1's write is in flight; the old
    reconciler recorded generation 1's outcome under generation 2 and never wrote it."""
    w = started_world()
    w.create("ns1", "a", "org/m1", 1)
    deliver_watch(w)
    assert [x.generation for x in w.writes] == [1]
    w.add_profile(w.objects[("ns1", "a")])  # generation 2 adds profile p1
    deliver_watch(w)
    w.perform_write(w.writes.pop(0))
    for g in w.gateways:
        w.advance_gateway(g, full=True)
    w.feed(FleetSeen(w.take_fleet()))
    effects = w.feed(w.answers.pop(0))  # generation 1's outcome
    w.check()
    assert [e.write.generation for e in effects if isinstance(e, StoreWrite)] == [2]
    assert not any(isinstance(e, PatchStatus) for e in effects)  # nothing to say of generation 2 yet
    settle(w)
    assert "p1" in w.store["org/m1"].profiles
    assert ready_reason(w, "ns1", "a") == "AllBundlesAcked"


def test_named_spec_changes_during_a_nats_outage_all_land() -> None:
    w = started_world()
    w.create("ns1", "a", "org/m1", 1)
    deliver_watch(w)
    w.nats_up = False
    for _ in range(3):
        w.add_profile(w.objects[("ns1", "a")])
        deliver_watch(w)
        while w.writes:
            w.perform_write(w.writes.pop(0))
        while w.answers:
            w.feed(w.answers.pop(0))
            w.check()
        w.now += 1
        w.feed(Tick())
    assert "org/m1" not in w.store
    w.nats_up = True
    settle(w)
    assert sorted(w.store["org/m1"].profiles) == ["default", "p1", "p2", "p3"]
    assert w.objects[("ns1", "a")].status["observedGeneration"] == 4  # type: ignore[index]


def test_named_recreated_resource_gets_status_when_the_old_delete_comes_late() -> None:
    """Bug 2: the old uid's DELETED processed after the new uid's ADDED forgot the new one."""
    w = started_world()
    old = w.create("ns1", "a", "org/m1", 1)
    settle(w)
    w.delete(old)
    gone = w.watch.pop()
    w.create("ns1", "a", "org/m1", 1)
    deliver_watch(w)  # the new incarnation first
    w.feed(gone)  # then the old one's DELETED
    settle(w)
    assert w.objects[("ns1", "a")].uid != old.uid
    assert ready_reason(w, "ns1", "a") == "AllBundlesAcked"


def test_named_patch_for_an_old_incarnation_never_lands_on_the_new_one() -> None:
    w = started_world()
    old = w.create("ns1", "a", "org/m1", 1)
    deliver_watch(w)
    w.perform_write(w.writes.pop(0))
    w.feed(w.answers.pop(0))
    for g in w.gateways:
        w.advance_gateway(g, full=True)
    w.feed(FleetSeen(w.take_fleet()))  # says Ready: the patch goes out at once
    assert w.patches and w.patches[0].ref.uid == old.uid
    w.delete(old, send_event=False)
    new = w.create("ns1", "a", "org/m1", 2)
    w.perform_patch(w.patches.pop(0))  # the uid test refuses it
    assert w.objects[("ns1", "a")].status is None
    settle(w)
    assert w.objects[("ns1", "a")].uid == new.uid
    assert ready_reason(w, "ns1", "a") == "ContentConflict"  # the store holds the old content


def test_named_ghost_owner_after_a_relist_without_deleted() -> None:
    """Bug 3: after a 410 re-list the deleted owner stayed, and its duplicate stayed Stalled."""
    w = started_world()
    owner = w.create("ns1", "a", "org/m1", 1)
    settle(w)
    w.now += 5
    w.create("ns1", "b", "org/m1", 1)
    settle(w)
    assert ready_reason(w, "ns1", "b") == "DuplicateSieId"
    w.delete(owner, send_event=False)  # the watch missed it
    w.relist()
    deliver_watch(w)
    assert w.lookups  # missing from the listing: looked up
    settle(w)
    assert ready_reason(w, "ns1", "b") == "AllBundlesAcked"


def test_named_status_drift_is_repaired() -> None:
    """Bug 4: an external edit of status stayed forever."""
    w = started_world()
    w.create("ns1", "a", "org/m1", 1)
    settle(w)
    before = w.patches_sent
    w.tamper_status(w.objects[("ns1", "a")])
    settle(w)
    assert ready_reason(w, "ns1", "a") == "AllBundlesAcked"
    assert w.patches_sent == before + 1


def blip_patches(grace: float, resources: int, blip: float, poll: float = 0.25) -> tuple[int, int]:
    """Status patches and Events caused by one gateway blip, with the real damping."""
    w = started_world(replicas=1)
    w.patch_failure_rate = 0.0
    for i in range(resources):
        w.create(f"ns{i % 2 + 1}", f"r{i}", f"org/m{i}", 1)
    settle(w)
    patches, events = w.patches_sent, len(w.events)
    health: dict[str, ReplicaHealth] = {}
    snaps = []
    t = 0.0
    while t <= blip + 3 * poll:
        w.gateways[0].reachable = not (poll <= t < poll + blip)
        snaps.append((t, w.take_fleet()))
        t += poll
    for at, snap in snaps:
        w.now += poll
        health, views = damp(health, snap.views, at, grace)
        w.feed(FleetSeen(FleetSnapshot(views, at)))
        while w.patches:
            w.perform_patch(w.patches.pop(0))
        while w.answers:
            w.feed(w.answers.pop(0))
        deliver_watch(w)
    w.check()
    return w.patches_sent - patches, len(w.events) - events


def test_named_one_gateway_blip_flips_nothing() -> None:
    """Bug 5: one failed fetch set Ready=False on every resource, and back."""
    assert blip_patches(grace=15.0, resources=20, blip=2.0) == (0, 0)
    # without damping the same blip costs two patches and a Ready Event per resource
    assert blip_patches(grace=0.0, resources=20, blip=2.0) == (40, 20)


def test_damping_reports_a_lasting_failure_after_the_grace_period() -> None:
    good = GatewayView("u", "gw", True, config_epoch=3)
    bad = GatewayView("u", "u", False, "refused")
    health: dict[str, ReplicaHealth] = {}
    health, views = damp(health, [good], 0.0, 5.0)
    assert views == (good,)
    health, views = damp(health, [bad], 1.0, 5.0)
    assert views == (good,)  # within the grace period: the last good view stands
    health, views = damp(health, [bad], 5.9, 5.0)
    assert views == (good,)
    health, views = damp(health, [bad], 6.0, 5.0)
    assert views == (bad,)
    health, views = damp(health, [good], 7.0, 5.0)
    assert views == (good,) and health["u"].failing_since is None
    _, views = damp({}, [bad], 0.0, 5.0)
    assert views == (bad,)  # never seen good: nothing to stand in for it


def test_named_same_sie_id_in_two_namespaces_has_one_owner() -> None:
    """Bug 6: duplicate detection was per namespace, while the store is one id space."""
    w = started_world()
    w.create("ns1", "a", "org/m1", 1)
    settle(w)
    w.now += 5
    w.create("ns2", "a", "org/m1", 2)  # other content: would conflict, or append, if written
    w.create("ns2", "b", "Org/M1", 1)  # the same id to the store, in other case
    settle(w)
    for name in ("a", "b"):
        assert ready_reason(w, "ns2", name) == "DuplicateSieId"
        msg = {c["type"]: c for c in w.objects[("ns2", name)].status["conditions"]}["Ready"]["message"]  # type: ignore[index]
        assert "ns1/a" in msg
    assert ready_reason(w, "ns1", "a") == "AllBundlesAcked"
    assert w.store["org/m1"].profiles == {"default": {"maxBatchTokens": 1}}
    assert all(not isinstance(a, WriteDone) or a.write.uid == w.objects[("ns1", "a")].uid for a in w.answers)


def test_restart_decides_ownership_from_the_status_on_a_tie() -> None:
    w = started_world()
    w.create("ns2", "z", "org/m1", 1)
    w.create("ns1", "a", "org/m1", 1)  # same creation second, sorts first by namespace
    deliver_watch(w)
    # z was decided first by an earlier operator (its status says so); a restart keeps it
    w.state.owners["org/m1"] = w.objects[("ns2", "z")].uid
    settle(w)
    assert ready_reason(w, "ns2", "z") == "AllBundlesAcked"
    w.restart_operator()
    settle(w)
    assert ready_reason(w, "ns2", "z") == "AllBundlesAcked"
    assert ready_reason(w, "ns1", "a") == "DuplicateSieId"


def test_named_streamed_news_of_one_model_reaches_its_ready_resource() -> None:
    """O(changed) fleet updates: the replica's workers restart and the stream re-sends only
    the models they had acked; the core re-plans just those resources, and each Ready one
    turns not Ready at once (I6 checks the same after every snapshot of every schedule)."""
    w = World(random.Random(0), replicas=1, stream_mode=True)
    w.relist()
    deliver_watch(w)
    w.create("ns1", "a", "org/m1", 1)
    w.create("ns1", "b", "org/m2", 1)
    settle(w)
    assert ready_reason(w, "ns1", "a") == ready_reason(w, "ns1", "b") == "AllBundlesAcked"
    before = w.last_fleet
    w.gateways[0].acked = 0
    snap = w.take_fleet()
    assert snap.changed == {"org/m1", "org/m2"} and snap.only_models_changed_since(before)
    patched = [e for e in w.feed(FleetSeen(snap)) if isinstance(e, PatchStatus)]
    reasons = {e.ref.name: {c["type"]: c for c in e.status["conditions"]}["Ready"]["reason"] for e in patched}
    assert reasons == {"a": "WorkersPending", "b": "WorkersPending"}


def test_stream_mode_schedules_take_the_changed_path() -> None:
    """The O(changed) path is what stream-mode schedules exercise (not a fallback)."""
    fast = full = 0
    for seed in range(2, 400, 4):
        w = run_schedule(seed)
        fast += w.fast_fleet_updates
        full += w.full_fleet_updates
    assert fast > 2 * full, (fast, full)
