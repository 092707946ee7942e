"""The reconcile core: every decision of the operator, as one pure state machine.

Inputs are facts (an object seen, an object gone, a complete listing, a write's outcome,
a fleet snapshot, a status patch's result, time passing); :func:`step` folds one into the
state and returns the effects to perform (store writes, status patches, Events,
confirmations). It does no I/O and reads no clock: the async driver (``driver.py``) feeds
it and performs the effects, and the simulation test feeds it every event ordering.

The decisions, each made in one place:
- *ownership* of a sieId: ``ownership.decide_owner``, over every live resource in every
  watched namespace;
- *desired write*: an immutable ``WriteSnapshot`` (uid, generation, role); its outcome is
  recorded for that snapshot only, so an outcome can never be reported under a generation
  it was not written for, and a newer generation is written as soon as the write in flight
  is decided (never lost behind a retry of an older one);
- *desired status*: ``status.compute_status`` of the decided outcome of the object's
  current generation and the fleet; nothing is reported for a generation whose write is
  not decided;
- *patch or not*: desired status against the status of the latest observed object (watch
  events, listings and patch responses refresh it), so drift made by anyone is repaired
  and an unchanged status is never written. Patches carry the uid as a precondition.

The state is owned by one driver task and changed only here; records are immutable.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .fleetview import FleetSnapshot
from .objects import ObjectRef, ObjectSnapshot, not_older
from .ownership import Claimant, decide_owner, held_by_status
from .status import StoreOutcome, compute_status, status_changed
from .writes import (
    STALLED_KINDS,
    TRANSIENT_KINDS,
    Notice,
    WriteSnapshot,
    duplicate_outcome,
    failure_notice,
    ready_notice,
    retained_notice,
)

MAX_TOMBSTONES = 65536


@dataclass(frozen=True)
class CoreConfig:
    retry_initial: float = 0.5  # first retry of a transiently failed write or patch
    retry_max: float = 30.0
    # after an accepted write, wait this long at most for a fleet snapshot taken after it that
    # says Ready before reporting (the driver asks for one at once): one status patch, not two
    fresh_fleet_wait: float = 2.0


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Seen:
    """An object as the API server showed it (watch event, listing, confirmation)."""

    obj: ObjectSnapshot


@dataclass(frozen=True)
class Gone:
    """This incarnation no longer exists (DELETED, 404, or its name now has another uid)."""

    ref: ObjectRef


@dataclass(frozen=True)
class Listed:
    """A complete listing of every watched namespace: the first one unlocks writes; after a
    watch restart it is how deletions that sent no DELETED event are found."""

    objs: tuple[ObjectSnapshot, ...]


@dataclass(frozen=True)
class WriteDone:
    write: WriteSnapshot
    outcome: StoreOutcome
    notice: Notice | None = None  # Published / Accepted / PublishFailed of a changing write


@dataclass(frozen=True)
class FleetSeen:
    fleet: FleetSnapshot


@dataclass(frozen=True)
class PatchDone:
    ref: ObjectRef
    obj: ObjectSnapshot | None = None  # the object the API server returned
    error: str | None = None  # "gone" (404), "rejected" (422/409: confirm), "failed" (retry)


@dataclass(frozen=True)
class Tick:
    """Time passed: due retries run."""


Input = Seen | Gone | Listed | WriteDone | FleetSeen | PatchDone | Tick


# --------------------------------------------------------------------------- effects


@dataclass(frozen=True)
class StoreWrite:
    write: WriteSnapshot


@dataclass(frozen=True)
class PatchStatus:
    ref: ObjectRef
    status: Mapping[str, Any]


@dataclass(frozen=True)
class PostEvent:
    ref: ObjectRef
    notice: Notice


@dataclass(frozen=True)
class Confirm:
    """Look the name up: is this uid still there?"""

    ref: ObjectRef


Effect = StoreWrite | PatchStatus | PostEvent | Confirm


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class Decided:
    write: WriteSnapshot
    outcome: StoreOutcome


@dataclass(frozen=True, slots=True)
class Record:
    obj: ObjectSnapshot
    decided: Decided | None = None
    inflight: WriteSnapshot | None = None
    retry_at: float = 0.0
    backoff: float = 0.0
    patching: bool = False
    patch_retry_at: float = 0.0
    patch_backoff: float = 0.0
    notices: frozenset[str] = frozenset()  # "generation:reason" of warnings already posted
    # what the fleet said of this model when its status was last decided: a fleet update
    # that says the same re-plans nothing (O(changed), not O(resources), per update)
    seen_fleet: tuple[Any, ...] | None = field(default=None, compare=False)
    # whether our last successful patch made it Ready (the Ready Event marks that transition;
    # the watch event of a patch can overtake its response, so the observed status cannot tell)
    announced_ready: bool = False
    accepted_at: float = 0.0  # when the current accepted write was decided (0: no wait)


@dataclass
class State:
    """Owned by one task; changed only by :func:`step`."""

    records: dict[str, Record] = field(default_factory=dict)  # uid -> record
    claims: dict[str, set[str]] = field(default_factory=dict)  # sie key -> uids declaring it
    owners: dict[str, str] = field(default_factory=dict)  # sie key -> owner uid
    fleet: FleetSnapshot | None = None
    synced: bool = False  # a complete listing was seen: ownership can be decided
    tombstones: OrderedDict[str, None] = field(default_factory=OrderedDict)
    timers: dict[str, float] = field(default_factory=dict)  # uid -> when a retry is due
    confirming: set[str] = field(default_factory=set)
    converging: set[str] = field(default_factory=set)  # uids not yet Ready (or Stalled)
    awaiting_fleet: set[str] = field(default_factory=set)  # accepted writes the fleet has not seen

    def owner_ref(self, key: str) -> ObjectRef | None:
        uid = self.owners.get(key)
        rec = self.records.get(uid) if uid is not None else None
        return rec.obj.ref if rec is not None else None


# --------------------------------------------------------------------------- pure decisions


def desired_write(state: State, obj: ObjectSnapshot) -> WriteSnapshot:
    owner = state.owners.get(obj.sie_key)
    dup_of = None
    if obj.sie_key and owner is not None and owner != obj.uid:
        ref = state.owner_ref(obj.sie_key)
        dup_of = ref.display if ref is not None else "?"
    return WriteSnapshot(obj.uid, obj.generation, obj.sie_id, dup_of, obj.spec)


def desired_status(
    rec: Record, want: WriteSnapshot, fleet: FleetSnapshot | None, wall: str
) -> dict[str, Any] | None:
    """The status to show, or None while the current generation's write is undecided."""
    d = rec.decided
    if d is None or d.write != want:
        return None
    if d.outcome.kind == "accepted" and fleet is None:
        return None  # no fleet snapshot yet: nothing true to say about readiness
    return compute_status(
        generation=want.generation,
        outcome=d.outcome,
        gateways=fleet.observations(want.sie_id) if fleet is not None else [],
        previous=rec.obj.status,
        now=wall,
    )


def _fleet_view(fleet: FleetSnapshot | None, rec: Record) -> tuple[Any, ...] | None:
    """What the fleet says of this resource's model, as far as its status can depend on it
    (``FleetSnapshot.facts``: the epoch moving on with other models' writes is no news)."""
    if fleet is None:
        return None
    d = rec.decided
    return fleet.facts(rec.obj.sie_id, d.outcome.epoch if d is not None else 0)


def _fleet_touched(state: State, prev: FleetSnapshot | None, new: FleetSnapshot) -> set[str]:
    """The resources whose view of the fleet changed: O(changed) when the snapshot says which
    models changed (streams do), else every resource is compared."""
    records = state.records
    uids: Iterable[str]
    if new.only_models_changed_since(prev):
        assert new.changed is not None
        cands = set(state.converging)  # waiting for a replica's epoch to reach their write
        for key in new.changed:
            cands |= state.claims.get(key, set())
        uids = [u for u in cands if u in records]
    else:
        uids = records.keys()
    return {u for u in uids if records[u].seen_fleet != _fleet_view(new, records[u])}


def is_ready(status: Mapping[str, Any] | None, generation: int) -> bool:
    for c in (status or {}).get("conditions") or ():
        if isinstance(c, Mapping) and c.get("type") == "Ready":
            return c.get("status") == "True" and c.get("observedGeneration") == generation
    return False


def _settled(rec: Record) -> bool:
    """Nothing will change without new input: Ready or Stalled at the current generation."""
    d = rec.decided
    if d is None or rec.inflight is not None or d.write.generation != rec.obj.generation:
        return False
    if d.outcome.kind in STALLED_KINDS:
        return True
    return is_ready(rec.obj.status, rec.obj.generation)


# --------------------------------------------------------------------------- the step


def step(state: State, inp: Input, *, now: float, wall: str, cfg: CoreConfig) -> list[Effect]:
    """Fold one input into ``state``; return the effects to perform."""
    effects: list[Effect] = []
    touched: set[str] = set()
    if isinstance(inp, Seen):
        touched |= _see(state, inp.obj)
    elif isinstance(inp, Gone):
        touched |= _gone(state, inp.ref, effects)
    elif isinstance(inp, Listed):
        touched |= _listed(state, inp.objs, effects)
    elif isinstance(inp, WriteDone):
        touched |= _write_done(state, inp, now, cfg, effects)
    elif isinstance(inp, FleetSeen):
        prev, state.fleet = state.fleet, inp.fleet
        touched |= _fleet_touched(state, prev, inp.fleet) | (state.awaiting_fleet & state.records.keys())
    elif isinstance(inp, PatchDone):
        touched |= _patch_done(state, inp, now, cfg, effects)
    elif isinstance(inp, Tick):
        due = [uid for uid, at in state.timers.items() if at <= now]
        touched |= set(due)
    for uid in sorted(touched):
        _plan(state, uid, now, wall, cfg, effects)
    return effects


def _see(state: State, obj: ObjectSnapshot) -> set[str]:
    uid = obj.uid
    state.confirming.discard(uid)
    if uid in state.tombstones:
        return set()  # a late view of an incarnation known to be gone
    rec = state.records.get(uid)
    if rec is not None and not not_older(obj.resource_version, rec.obj.resource_version):
        return set()
    old_key = rec.obj.sie_key if rec is not None else None
    state.records[uid] = replace(rec, obj=obj) if rec is not None else Record(obj)
    touched = {uid}
    if old_key != obj.sie_key:
        if old_key is not None:
            _unclaim(state, old_key, uid)
            touched |= _reassign(state, old_key)
        state.claims.setdefault(obj.sie_key, set()).add(uid)
        touched |= _reassign(state, obj.sie_key)
    return touched


def _unclaim(state: State, key: str, uid: str) -> None:
    uids = state.claims.get(key)
    if uids is not None:
        uids.discard(uid)
        if not uids:
            del state.claims[key]


def _reassign(state: State, key: str) -> set[str]:
    """Decide the owner of one sieId again; the uids to re-plan if it changed."""
    if not state.synced or not key:
        return set()
    uids = state.claims.get(key, set())
    current = state.owners.get(key)
    claimants = []
    for u in uids:
        o = state.records[u].obj
        claimants.append(Claimant(u, o.ref.namespace, o.ref.name, o.created, held_by_status(o.status)))
    owner = decide_owner(claimants, current)
    if owner is None:
        state.owners.pop(key, None)
    else:
        state.owners[key] = owner
    return set(uids) if owner != current else set()


def _gone(state: State, ref: ObjectRef, effects: list[Effect]) -> set[str]:
    uid = ref.uid
    state.confirming.discard(uid)
    state.tombstones[uid] = None
    while len(state.tombstones) > MAX_TOMBSTONES:
        state.tombstones.popitem(last=False)
    rec = state.records.pop(uid, None)
    state.timers.pop(uid, None)
    state.converging.discard(uid)
    state.awaiting_fleet.discard(uid)
    if rec is None:
        return set()
    key = rec.obj.sie_key
    owned = state.owners.get(key) == uid
    if owned and rec.decided is not None and rec.decided.outcome.kind == "accepted":
        effects.append(PostEvent(rec.obj.ref, retained_notice(rec.obj.sie_id)))
    _unclaim(state, key, uid)
    if owned:
        state.owners.pop(key, None)
    return _reassign(state, key)


def _listed(state: State, objs: Iterable[ObjectSnapshot], effects: list[Effect]) -> set[str]:
    touched: set[str] = set()
    present = set()
    for obj in objs:
        present.add(obj.uid)
        touched |= _see(state, obj)
    if not state.synced:
        state.synced = True
        for key in sorted(state.claims):
            _reassign(state, key)
        touched |= set(state.records)
    for uid, rec in state.records.items():
        if uid not in present and uid not in state.confirming:
            # missing from a complete listing: deleted while we were not watching, unless
            # it was created after the listing was taken; one lookup tells which
            state.confirming.add(uid)
            effects.append(Confirm(rec.obj.ref))
    return touched


def _backoff(current: float, cfg: CoreConfig) -> float:
    return min(max(current * 2, cfg.retry_initial), cfg.retry_max)


def _write_done(state: State, inp: WriteDone, now: float, cfg: CoreConfig, effects: list[Effect]) -> set[str]:
    rec = state.records.get(inp.write.uid)
    if rec is None or rec.inflight != inp.write:
        return set()  # the resource is gone: nothing to report on
    outcome = inp.outcome
    if outcome.kind in TRANSIENT_KINDS:
        backoff = _backoff(rec.backoff, cfg)
        rec = replace(
            rec, inflight=None, decided=Decided(inp.write, outcome), retry_at=now + backoff, backoff=backoff
        )
    else:
        rec = replace(rec, inflight=None, decided=Decided(inp.write, outcome), retry_at=0.0, backoff=0.0)
    if outcome.kind == "accepted":
        rec = replace(rec, accepted_at=now)
    if inp.notice is not None:
        effects.append(PostEvent(rec.obj.ref, inp.notice))
    state.records[rec.obj.uid] = _notify_once(rec, failure_notice(outcome), inp.write.generation, effects)
    return {rec.obj.uid}


def _notify_once(rec: Record, notice: Notice | None, generation: int, effects: list[Effect]) -> Record:
    if notice is None:
        return rec
    key = f"{generation}:{notice.reason}"
    if key in rec.notices:
        return rec
    effects.append(PostEvent(rec.obj.ref, notice))
    return replace(rec, notices=rec.notices | {key})


def _patch_done(state: State, inp: PatchDone, now: float, cfg: CoreConfig, effects: list[Effect]) -> set[str]:
    uid = inp.ref.uid
    rec = state.records.get(uid)
    if rec is None:
        return set()
    if inp.error == "gone":
        return _gone(state, inp.ref, effects)
    if inp.error is not None:
        backoff = _backoff(rec.patch_backoff, cfg)
        state.records[uid] = replace(rec, patching=False, patch_retry_at=now + backoff, patch_backoff=backoff)
        if inp.error == "rejected" and uid not in state.confirming:
            state.confirming.add(uid)
            effects.append(Confirm(inp.ref))
        return {uid}
    rec = replace(rec, patching=False, patch_retry_at=0.0, patch_backoff=0.0)
    if inp.obj is not None and inp.obj.uid == uid:
        ready_now = is_ready(inp.obj.status, inp.obj.generation)
        if ready_now and not rec.announced_ready:
            effects.append(PostEvent(rec.obj.ref, ready_notice(rec.obj.sie_id)))
        rec = replace(rec, announced_ready=ready_now)
        if not_older(inp.obj.resource_version, rec.obj.resource_version):
            rec = replace(rec, obj=inp.obj)
    state.records[uid] = rec
    return {uid}


def _plan(state: State, uid: str, now: float, wall: str, cfg: CoreConfig, effects: list[Effect]) -> None:
    """Start what this resource needs next: its write, then its status."""
    rec = state.records.get(uid)
    if rec is None or not state.synced:
        return
    want = desired_write(state, rec.obj)
    if rec.inflight is None:
        d = rec.decided
        if want.duplicate_of is not None:
            if d is None or d.write != want:
                rec = replace(rec, decided=Decided(want, duplicate_outcome(want)), retry_at=0.0, backoff=0.0)
                rec = _notify_once(rec, failure_notice(rec.decided.outcome), want.generation, effects)  # type: ignore[union-attr]
        elif d is None or d.write != want or (d.outcome.kind in TRANSIENT_KINDS and now >= rec.retry_at):
            rec = replace(rec, inflight=want)
            effects.append(StoreWrite(want))
    rec = replace(rec, seen_fleet=_fleet_view(state.fleet, rec))
    wait_until = 0.0
    desired: dict[str, Any] | None = None
    if rec.accepted_at:
        # Just written: report once the fleet says Ready, or at the end of the wait whatever
        # it says (a fleet that has not seen the write yet, or workers still loading, would
        # otherwise cost a "pending" patch and then a Ready one: two API writes, not one).
        fleet_at = state.fleet.taken_at if state.fleet is not None else float("-inf")
        ready_now = False
        if fleet_at >= rec.accepted_at:
            desired = desired_status(rec, want, state.fleet, wall)
            ready_now = desired is not None and is_ready(desired, want.generation)
        if not ready_now and now < rec.accepted_at + cfg.fresh_fleet_wait:
            wait_until = rec.accepted_at + cfg.fresh_fleet_wait
            state.awaiting_fleet.add(uid)
        else:
            rec = replace(rec, accepted_at=0.0)
            state.awaiting_fleet.discard(uid)
    if not wait_until and not rec.patching and now >= rec.patch_retry_at:
        if desired is None:
            desired = desired_status(rec, want, state.fleet, wall)
        if desired is not None and status_changed(rec.obj.status, desired):
            rec = replace(rec, patching=True)
            effects.append(PatchStatus(rec.obj.ref, desired))
    state.records[uid] = rec
    due = [
        t for t in (rec.retry_at if rec.inflight is None else 0.0, rec.patch_retry_at, wait_until) if t > now
    ]
    if due:
        state.timers[uid] = min(due)
    else:
        state.timers.pop(uid, None)
    if _settled(rec):
        state.converging.discard(uid)
    else:
        state.converging.add(uid)
