"""A deterministic world around the reconcile core, for the seeded simulation test.

The world plays every part the driver talks to: the API server (objects, generations,
resourceVersions, a watch stream that can reorder, duplicate and drop events, uid
preconditions on status patches), the config store (append-only, content conflicts,
transient NATS failures, slow writes whose answer arrives late), the gateway fleet
(replicas behind, workers pending, replicas unreachable) and a fake clock. Each step is
chosen by a seeded ``random.Random``; after every step the invariants of issue 9 are
checked. Effects the core asks for are queued and performed by later steps, in any order,
so the core meets every interleaving a real event loop could produce.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sie_operator.controller.fleetview import FleetSnapshot, GatewayView
from sie_operator.controller.objects import ObjectRef, ObjectSnapshot
from sie_operator.controller.reconcile import (
    Confirm,
    CoreConfig,
    Effect,
    FleetSeen,
    Gone,
    Input,
    Listed,
    PatchDone,
    PatchStatus,
    PostEvent,
    Seen,
    State,
    StoreWrite,
    Tick,
    WriteDone,
    desired_status,
    desired_write,
    is_ready,
    step,
)
from sie_operator.controller.status import StoreOutcome, status_changed
from sie_operator.controller.writes import WriteSnapshot

CFG = CoreConfig(retry_initial=0.5, retry_max=8.0)
NAMES = ("a", "b", "c")
NAMESPACES = ("ns1", "ns2")
IDS = ("org/m1", "org/m2", "Org/M1")  # the third differs only in case: the same id to the store


class InvariantError(AssertionError):
    pass


@dataclass
class ServerObject:
    uid: str
    namespace: str
    name: str
    created: str
    generation: int
    rv: int
    spec: dict[str, Any]
    status: dict[str, Any] | None = None

    def snapshot(self) -> ObjectSnapshot:
        return ObjectSnapshot(
            ref=ObjectRef(self.namespace, self.name, self.uid),
            created=self.created,
            generation=self.generation,
            resource_version=str(self.rv),
            spec=self.spec,
            status=self.status,
        )


@dataclass
class StoredModel:
    sie_id: str
    profiles: dict[str, Any]
    epoch: int
    history: list[int]  # epochs at which the model changed


@dataclass
class Replica:
    gid: str
    epoch: int = 0  # the store epoch the gateway has caught up to
    acked: int = 0  # its workers have caught up to this epoch
    reachable: bool = True


@dataclass
class World:
    rng: random.Random
    replicas: int = 2
    patch_failure_rate: float = 0.05
    now: float = 1000.0
    rv: int = 0
    uids: int = 0
    objects: dict[tuple[str, str], ServerObject] = field(default_factory=dict)
    specs: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # (uid, gen) -> spec
    watch: list[Input] = field(default_factory=list)
    writes: list[WriteSnapshot] = field(default_factory=list)  # asked, not yet performed
    answers: list[Input] = field(default_factory=list)  # write/patch/lookup answers not yet delivered
    patches: list[PatchStatus] = field(default_factory=list)
    lookups: list[Confirm] = field(default_factory=list)
    fleet_queue: list[FleetSnapshot] = field(default_factory=list)
    store: dict[str, StoredModel] = field(default_factory=dict)
    epoch: int = 0
    nats_up: bool = True
    gateways: list[Replica] = field(default_factory=list)
    reported_acked: dict[tuple[str, str], int] = field(default_factory=dict)  # (gateway, key) -> epoch
    state: State = field(default_factory=State)
    events: list[PostEvent] = field(default_factory=list)
    patches_sent: int = 0
    ready_patched_by: dict[str, int] = field(default_factory=dict)  # uid -> id() of the core state
    trace: list[str] = field(default_factory=list)
    # Like our gateways' readiness streams: a replica re-sends a model only when what it says
    # of it changed (its epoch and hash in the object stay as they were sent), and each
    # snapshot names the models that changed since the previous one (the core's O(changed)
    # path). Off: every model's object is rebuilt each time and nothing says what changed.
    stream_mode: bool = False
    fast_fleet_updates: int = 0
    full_fleet_updates: int = 0
    fleet_seq: int = 0
    last_fleet: FleetSnapshot | None = None
    sent: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (gateway, key) -> object

    def __post_init__(self) -> None:
        self.gateways = [Replica(f"gw-{i}") for i in range(self.replicas)]

    # -- the core ------------------------------------------------------------------------
    def _check_fleet_acted_on(self) -> None:
        """I6: once the core has seen a fleet snapshot, no resource is left showing a status
        that snapshot contradicts with nothing under way (a patch, a write, a timer, a wait
        for a fresher snapshot): a fleet change the core skipped would stay wrong."""
        st = self.state
        if not st.synced:
            return
        for uid, rec in st.records.items():
            if rec.patching or rec.inflight is not None or uid in st.timers or rec.accepted_at:
                continue
            desired = desired_status(rec, desired_write(st, rec.obj), st.fleet, f"t{int(self.now)}")
            if desired is not None and status_changed(rec.obj.status, desired):
                raise InvariantError(f"I6: {rec.obj.ref.display} left stale after a fleet snapshot")

    def feed(self, inp: Input) -> list[Effect]:
        before = {u: r.obj.status for u, r in self.state.records.items()}
        if isinstance(inp, FleetSeen):
            if inp.fleet.only_models_changed_since(self.state.fleet):
                self.fast_fleet_updates += 1
            else:
                self.full_fleet_updates += 1
        effects = step(self.state, inp, now=self.now, wall=f"t{int(self.now)}", cfg=CFG)
        if isinstance(inp, FleetSeen):
            self._check_fleet_acted_on()
        for e in effects:
            if isinstance(e, StoreWrite):
                self._check_owner(e.write)
                self.writes.append(e.write)
            elif isinstance(e, PatchStatus):
                # I5: a patch only when the desired status differs from the observed one
                if not status_changed(before.get(e.ref.uid), e.status) and not status_changed(
                    self._core_status(e.ref.uid), e.status
                ):
                    raise InvariantError(f"I5: patch of {e.ref.display} equals the observed status")
                self.patches.append(e)
                self.patches_sent += 1
            elif isinstance(e, PostEvent):
                self.events.append(e)
            elif isinstance(e, Confirm):
                self.lookups.append(e)
        self.trace.append(type(inp).__name__)
        return effects

    def _core_status(self, uid: str) -> Any:
        rec = self.state.records.get(uid)
        return rec.obj.status if rec is not None else None

    def _check_owner(self, w: WriteSnapshot) -> None:
        """I3 (core side): only the owner of a sieId writes it."""
        rec = self.state.records.get(w.uid)
        assert rec is not None
        if self.state.owners.get(rec.obj.sie_key) != w.uid:
            raise InvariantError(f"I3: {w.uid} writes {w.sie_id} without owning it")

    def restart_operator(self) -> None:
        """A new process: no memory; writes in flight may or may not have landed."""
        for w in self.writes:
            if self.rng.random() < 0.5:
                self._store_apply(w)
        self.writes.clear()
        self.answers.clear()
        self.patches.clear()
        self.lookups.clear()
        self.fleet_queue.clear()
        self.watch.clear()
        self.state = State()
        self.relist()

    # -- the API server ------------------------------------------------------------------
    def _bump(self) -> int:
        self.rv += 1
        return self.rv

    def create(self, ns: str, name: str, sie_id: str, content: int) -> ServerObject:
        self.uids += 1
        spec = {"sieId": sie_id, "profiles": {"default": {"maxBatchTokens": content}}}
        obj = ServerObject(f"u{self.uids}", ns, name, f"{int(self.now) // 2:08d}", 1, self._bump(), spec)
        self.objects[(ns, name)] = obj
        self.specs[(obj.uid, 1)] = spec
        self.watch.append(Seen(obj.snapshot()))
        return obj

    def add_profile(self, obj: ServerObject) -> None:
        profiles = dict(obj.spec["profiles"])
        profiles[f"p{len(profiles)}"] = {"maxBatchTokens": self.rng.randint(1, 3)}
        obj.spec = {**obj.spec, "profiles": profiles}
        obj.generation += 1
        obj.rv = self._bump()
        self.specs[(obj.uid, obj.generation)] = obj.spec
        self.watch.append(Seen(obj.snapshot()))

    def delete(self, obj: ServerObject, *, send_event: bool = True) -> None:
        del self.objects[(obj.namespace, obj.name)]
        self._bump()
        if send_event:
            self.watch.append(Gone(ObjectRef(obj.namespace, obj.name, obj.uid)))

    def tamper_status(self, obj: ServerObject) -> None:
        """Someone else writes the status (a second writer, a kubectl patch)."""
        obj.status = {
            "observedGeneration": obj.generation,
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "Tampered", "observedGeneration": 0}
            ],
        }
        obj.rv = self._bump()
        self.watch.append(Seen(obj.snapshot()))

    def relist(self) -> None:
        self.watch.append(Listed(tuple(o.snapshot() for o in self.objects.values())))

    def perform_patch(self, p: PatchStatus) -> None:
        obj = self.objects.get((p.ref.namespace, p.ref.name))
        if obj is None:
            self.answers.append(PatchDone(p.ref, None, "gone"))
            return
        if obj.uid != p.ref.uid:
            self.answers.append(PatchDone(p.ref, None, "rejected"))  # the JSON patch's uid test
            return
        if self.rng.random() < self.patch_failure_rate:
            self.answers.append(PatchDone(p.ref, None, "failed"))
            return
        obj.status = {k: v for k, v in p.status.items()}
        obj.rv = self._bump()
        if is_ready(obj.status, obj.generation):
            self.ready_patched_by[obj.uid] = id(self.state)
        self._check_ready_claims(obj)
        snap = obj.snapshot()
        self.watch.append(Seen(snap))
        self.answers.append(PatchDone(p.ref, snap))

    def perform_lookup(self, c: Confirm) -> None:
        obj = self.objects.get((c.ref.namespace, c.ref.name))
        if obj is not None and obj.uid == c.ref.uid:
            self.answers.append(Seen(obj.snapshot()))
            return
        self.answers.append(Gone(c.ref))
        if obj is not None:
            self.answers.append(Seen(obj.snapshot()))

    # -- the store -------------------------------------------------------------------------
    def _store_apply(self, w: WriteSnapshot) -> StoreOutcome:
        key = w.sie_id.lower()
        m = self.store.get(key)
        if m is not None and m.sie_id != w.sie_id:
            return StoreOutcome("conflict", "case conflict")
        new = {}
        for name, content in w.spec["profiles"].items():
            if m is not None and name in m.profiles:
                if m.profiles[name] != content:
                    return StoreOutcome("conflict", f"profile {name} differs", conflicting_profiles=(name,))
            else:
                new[name] = content
        if new and not self.nats_up:
            return StoreOutcome("nats_unavailable", "NATS down")
        if new:
            self.epoch += 1
            if m is None:
                m = self.store[key] = StoredModel(w.sie_id, {}, 0, [])
            m.profiles.update(new)
            m.epoch = self.epoch
            m.history.append(self.epoch)
        assert m is not None
        return StoreOutcome("accepted", epoch=m.epoch, profiles=tuple(sorted(m.profiles)))

    def perform_write(self, w: WriteSnapshot) -> None:
        self.answers.append(WriteDone(w, self._store_apply(w)))

    # -- the fleet ---------------------------------------------------------------------------
    def advance_gateway(self, g: Replica, full: bool = False) -> None:
        g.epoch = self.epoch if full else self.rng.randint(g.epoch, self.epoch)
        g.acked = g.epoch if full else self.rng.randint(g.acked, g.epoch)

    def take_fleet(self) -> FleetSnapshot:
        views = []
        for g in self.gateways:
            if not g.reachable:
                views.append(GatewayView(g.gid, g.gid, False, "connection refused"))
                continue
            models = {}
            for key, m in self.store.items():
                known = [e for e in m.history if e <= g.epoch]
                if not known:
                    continue
                acked = g.acked >= known[-1]
                if acked:
                    self.reported_acked[(g.gid, key)] = max(self.reported_acked.get((g.gid, key), 0), g.epoch)
                prev = self.sent.get((g.gid, key))
                if self.stream_mode and prev is not None and self._same_news(prev, m, acked, known[-1]):
                    models[key] = prev
                    continue
                models[key] = {
                    "model_id": m.sie_id,
                    "written_at": known[-1],
                    "config_epoch": g.epoch,
                    "all_bundles_acked": acked,
                    "model_acked": acked,
                    "bundles": [
                        {
                            "bundle_id": "default",
                            "acked": acked,
                            "model_acked": acked,
                            "expected_bundle_config_hash": f"h{g.epoch}",
                            "total_eligible_workers": 1,
                            "model_acked_workers": ["w0"] if acked else [],
                            "model_pending_workers": [] if acked else ["w0"],
                        }
                    ],
                }
            if self.stream_mode:
                self.sent.update({(g.gid, k): v for k, v in models.items()})
            views.append(GatewayView(g.gid, g.gid, True, config_epoch=g.epoch, models=models))
        self.fleet_seq += 1
        snap = FleetSnapshot(tuple(views), self.now, self.fleet_seq)
        if self.stream_mode and self.last_fleet is not None:
            snap = replace(
                snap, changed=changed_models(self.last_fleet, snap), changed_since=self.last_fleet.seq
            )
        self.last_fleet = snap
        return snap

    @staticmethod
    def _same_news(prev: dict[str, Any], m: StoredModel, acked: bool, written_at: int) -> bool:
        return prev["written_at"] == written_at and prev["model_acked"] == acked

    # -- invariants ----------------------------------------------------------------------------
    def _check_ready_claims(self, obj: ServerObject) -> None:
        st = obj.status or {}
        gen = st.get("observedGeneration")
        if not isinstance(gen, int) or not is_ready(st, gen):
            return
        spec = self.specs.get((obj.uid, gen))
        if spec is None:
            raise InvariantError(f"I1: {obj.name} Ready at generation {gen} it never had")
        m = self.store.get(spec["sieId"].lower())
        for name, content in spec["profiles"].items():
            if m is None or m.profiles.get(name) != content:
                raise InvariantError(
                    f"I1: {obj.namespace}/{obj.name} Ready at generation {gen}, store lacks profile {name}"
                )
        epoch = st.get("configEpoch", 0)
        for g in self.gateways:
            if self.reported_acked.get((g.gid, spec["sieId"].lower()), -1) < epoch:
                raise InvariantError(
                    f"I2: {obj.name} Ready at epoch {epoch} but {g.gid} never reported it acked"
                )

    def check(self) -> None:
        owners: dict[str, list[str]] = {}
        for obj in self.objects.values():
            self._check_ready_claims(obj)
            st = obj.status or {}
            for c in st.get("conditions") or ():
                if c.get("type") == "Ready" and c.get("reason") not in ("DuplicateSieId", "Tampered"):
                    owners.setdefault(obj.spec["sieId"].lower(), []).append(f"{obj.namespace}/{obj.name}")
        for key, who in owners.items():
            if len(who) > 1:
                raise InvariantError(f"I3: {key} claimed by {who}")

    # -- driving -------------------------------------------------------------------------------
    def _take(self, queue: list[Any]) -> Any:
        return queue.pop(self.rng.randrange(len(queue)))

    def random_step(self) -> None:
        r = self.rng
        actions: list[tuple[float, Callable[[], None]]] = [(1.0, self._act_tick)]
        live = list(self.objects.values())
        free = [(ns, n) for ns in NAMESPACES for n in NAMES if (ns, n) not in self.objects]
        if free:
            actions.append((1.5, lambda: self.create(*r.choice(free), r.choice(IDS), r.randint(1, 2))))
        if live:
            actions.append((1.5, lambda: self.add_profile(r.choice(live))))
            actions.append((0.8, lambda: self.delete(r.choice(live), send_event=r.random() < 0.7)))
            actions.append((0.3, lambda: self.tamper_status(r.choice(live))))
        if self.watch:
            actions.append((6.0, self._act_watch))
        if self.writes:
            actions.append((3.0, lambda: self.perform_write(self._take(self.writes))))
        if self.answers:
            actions.append((4.0, lambda: self.feed(self._take(self.answers))))
        if self.patches:
            actions.append((3.0, lambda: self.perform_patch(self._take(self.patches))))
        if self.lookups:
            actions.append((1.0, lambda: self.perform_lookup(self._take(self.lookups))))
        actions.append((2.0, self._act_fleet))
        actions.append((0.4, self._act_nats))
        actions.append((0.4, self._act_reachability))
        actions.append((0.3, self._act_worker_restart))
        actions.append((0.3, self.relist))
        actions.append((0.05, self.restart_operator))
        total = sum(w for w, _ in actions)
        x = r.random() * total
        for w, act in actions:
            x -= w
            if x <= 0:
                act()
                break
        self.check()

    def _act_tick(self) -> None:
        self.now += self.rng.choice((0.1, 0.5, 2.0, 10.0))
        self.feed(Tick())

    def _act_watch(self) -> None:
        inp = self._take(self.watch)
        if self.rng.random() < 0.1:
            self.watch.append(inp)  # delivered twice
        self.feed(inp)

    def _act_fleet(self) -> None:
        for g in self.gateways:
            if self.rng.random() < 0.7:
                self.advance_gateway(g)
        self.feed(FleetSeen(self.take_fleet()))

    def _act_nats(self) -> None:
        self.nats_up = not self.nats_up

    def _act_worker_restart(self) -> None:
        """A replica's workers restart: models they had acked are pending again until they
        catch up (Ready resources must turn not Ready, and back)."""
        g = self.rng.choice(self.gateways)
        g.acked = self.rng.randint(0, g.acked)

    def _act_reachability(self) -> None:
        g = self.rng.choice(self.gateways)
        g.reachable = not g.reachable

    def quiesce(self, max_rounds: int = 40) -> int:
        """Faults healed and inputs stopped: deliver everything until nothing is asked for.

        Returns the number of rounds it took (I4: bounded)."""
        self.nats_up = True
        for g in self.gateways:
            g.reachable = True
        self.relist()  # the periodic listing finds deletions whose event was lost
        for rounds in range(1, max_rounds + 1):
            activity = bool(self.watch or self.writes or self.answers or self.patches or self.lookups)
            while self.watch:
                self.feed(self.watch.pop(0))
            while self.writes:
                self.perform_write(self.writes.pop(0))
            while self.lookups:
                self.perform_lookup(self.lookups.pop(0))
            while self.answers:
                self.feed(self.answers.pop(0))
            while self.patches:
                self.perform_patch(self.patches.pop(0))
            for g in self.gateways:
                self.advance_gateway(g, full=True)
            self.now += CFG.retry_max + 1
            sent = self.patches_sent
            effects = self.feed(FleetSeen(self.take_fleet())) + self.feed(Tick())
            self.check()
            if not activity and not effects and sent == self.patches_sent:
                return rounds
        raise InvariantError(f"I4: no convergence within {max_rounds} rounds")

    def check_converged(self) -> None:
        """After quiesce: every live object has the true, final status."""
        live = {o.uid: o for o in self.objects.values()}
        if set(self.state.records) != set(live):
            raise InvariantError(f"ghosts or missing: core {sorted(self.state.records)} vs {sorted(live)}")
        owners: dict[str, str] = {}
        for o in live.values():
            st = o.status or {}
            if st.get("observedGeneration") != o.generation:
                raise InvariantError(
                    f"I4: {o.name} status at {st.get('observedGeneration')} != {o.generation}"
                )
            ready = {c["type"]: c for c in st.get("conditions") or ()}.get("Ready") or {}
            reason = ready.get("reason")
            if reason == "DuplicateSieId":
                continue
            if reason not in ("AllBundlesAcked", "ContentConflict"):
                raise InvariantError(f"I4: {o.namespace}/{o.name} ended at {reason}")
            key = o.spec["sieId"].lower()
            if key in owners:
                raise InvariantError(f"I3: {key} owned by {owners[key]} and {o.namespace}/{o.name}")
            owners[key] = f"{o.namespace}/{o.name}"
        announced = {e.ref.uid for e in self.events if e.notice.reason == "Ready"}
        for o in live.values():
            ready = {c["type"]: c for c in (o.status or {}).get("conditions") or ()}["Ready"]
            # a Ready Event per transition made by this process (a restart may lose one in flight)
            if self.ready_patched_by.get(o.uid) == id(self.state) and o.uid not in announced:
                raise InvariantError(f"{o.namespace}/{o.name} turned Ready without a Ready Event")
            if ready["reason"] == "DuplicateSieId":
                owner = owners.get(o.spec["sieId"].lower())
                if owner is None or owner not in ready["message"]:
                    raise InvariantError(f"{o.name} is a duplicate of {owner}, says {ready['message']!r}")


def changed_models(prev: FleetSnapshot, new: FleetSnapshot) -> frozenset[str]:
    """What a stream would have said changed: every model whose object differs in some replica."""
    out: set[str] = set()
    for a, b in zip(prev.views, new.views, strict=False):
        for key in a.models.keys() | b.models.keys():
            if a.models.get(key) is not b.models.get(key):
                out.add(key)
    return frozenset(out)


def run_schedule(seed: int, steps: int = 40) -> World:
    world = World(random.Random(seed), replicas=1 + seed % 2, stream_mode=seed % 4 >= 2)
    world.relist()  # the driver's startup listing
    for _ in range(steps):
        world.random_step()
    world.quiesce()
    world.check_converged()
    return world
