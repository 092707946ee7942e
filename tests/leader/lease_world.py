"""A deterministic world around the leader-election core, for the seeded simulation.

The world plays the API server (one Lease, linearizable: every request takes effect at one
instant between its send and its answer, updates are compare-and-set on resourceVersion
and a PUT without one is unconditional, as in Kubernetes), the network (delays up to
seconds, lost answers after the write was applied, errors, outages) and the processes
(per-node monotonic clocks running at rates within ``DRIFT`` of real time, wall clocks off
by up to a minute, SIGSTOP-like pauses, crashes, restarts with the same identity and clean
shutdowns that release the Lease).

Each node runs exactly the loop of ``sie_operator.leader.elector.Elector.run`` — GET, fold
the answer in (``observe``), ``decide``, maybe write, sleep until ``next_wake`` — calling
the pure functions through the module (``D.may_write`` ...) so a test can substitute a
mutant. After every event the world checks:

- S1 (safety): never two live nodes with ``may_write()`` true at the same real instant
  (a paused node counts: its answer is what it would say the moment it resumes);
- S2: a node that may write is the holder in the server's record;
and at the end of the calm phase (no faults, everyone up):
- L1 (liveness): a leader exists within the bound, and then stays the one leader.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sie_operator.leader import decide as D

DRIFT = 0.08  # clock rates in [1 - DRIFT, 1 + DRIFT] of real time
TIMING = D.Timing(lease_duration=15.0, renew_deadline=10.0, retry_period=2.0, max_drift=0.1)
REQUEST_TIMEOUT = TIMING.renew_deadline / 2  # as the Elector's default
CHAOS = 150.0  # real seconds of faults
CALM = 60.0  # then no faults: a leader must emerge and stay
SLOW = 12.0  # the longest a request or an answer can be delayed


class InvariantError(AssertionError):
    pass


@dataclass
class Node:
    identity: str
    rate: float
    base: float  # monotonic clock = base + rate * real time
    wall_offset: float  # wall clock = monotonic clock + wall_offset
    state: D.State
    incarnation: int = 0
    alive: bool = True
    paused_until: float | None = None
    req: int = 0  # the id of the request this node awaits (0: none)
    sent: float = 0.0  # monotonic send time of the awaited write
    op: str = ""  # the awaited request: get, create or update
    stopping: bool = False

    def mono(self, t: float) -> float:
        return self.base + self.rate * t

    def real_after(self, t: float, local: float) -> float:
        return t + max(0.0, local) / self.rate


@dataclass(order=True)
class Event:
    at: float
    seq: int
    kind: str = field(compare=False)
    node: int = field(compare=False)
    data: Any = field(compare=False, default=None)


@dataclass
class World:
    rng: random.Random
    nodes: list[Node] = field(default_factory=list)
    queue: list[Event] = field(default_factory=list)
    now: float = 0.0
    record: D.LeaseRecord | None = None
    rv: int = 0
    api_down_until: float = 0.0
    calm: bool = False
    seq: Any = field(default_factory=itertools.count)
    reqs: Any = field(default_factory=lambda: itertools.count(1))
    events: int = 0
    trace: list[str] = field(default_factory=list)
    first_leader: float | None = None  # calm phase: when a leader first appeared
    settled_at: float = float("inf")  # from then on exactly one leader, always the same
    settled_leader: str | None = None
    on_event: Callable[[World], None] | None = None

    # -- setup -----------------------------------------------------------------------------
    def add_node(self, identity: str) -> None:
        n = Node(
            identity,
            rate=1 + self.rng.uniform(-DRIFT, DRIFT),
            base=self.rng.uniform(0, 1e5),
            wall_offset=self.rng.uniform(1.7e9, 1.7e9 + 120),
            state=D.State(identity),
        )
        self.nodes.append(n)
        self.at(self.rng.uniform(0, 3), "wake", len(self.nodes) - 1, 0)

    def at(self, t: float, kind: str, node: int, data: Any = None) -> None:
        heapq.heappush(self.queue, Event(t, next(self.seq), kind, node, data))

    # -- the network and the server -------------------------------------------------------
    def delay(self) -> float:
        if self.calm:
            return self.rng.uniform(0.001, 0.2)
        r = self.rng.random()
        if r < 0.05:
            return self.rng.uniform(2, SLOW)
        return self.rng.uniform(0.001, 0.3)

    def send(self, i: int, op: str, body: D.LeaseRecord | None = None) -> None:
        n = self.nodes[i]
        req = next(self.reqs)
        n.req, n.op = req, op
        arrive = self.now + self.delay()
        self.at(arrive, "serve", i, (n.incarnation, req, op, body))
        self.at(n.real_after(self.now, REQUEST_TIMEOUT), "timeout", i, (n.incarnation, req))

    def serve(self, i: int, data: Any) -> None:
        """The linearization point of one request; its answer travels back (or is lost)."""
        incarnation, req, op, body = data
        if self.now < self.api_down_until:
            answer: tuple[str, Any] = ("error", None)
        else:
            answer = self.apply(op, body)
        lost = not self.calm and self.rng.random() < 0.05
        if not lost:
            self.at(self.now + self.delay(), "answer", i, (incarnation, req, answer))

    def apply(self, op: str, body: D.LeaseRecord | None) -> tuple[str, Any]:
        if op == "get":
            return ("ok", self.record) if self.record is not None else ("notfound", None)
        assert body is not None
        if op == "create":
            if self.record is not None:
                return ("conflict", None)
        elif self.record is None:
            return ("notfound", None)
        elif body.resource_version and body.resource_version != self.record.resource_version:
            return ("conflict", None)
        self.rv += 1
        self.record = replace(body, resource_version=str(self.rv))
        self.trace.append(f"{self.now:.2f} {op} {self.record.holder or '-'} rv{self.rv}")
        return ("ok", self.record)

    # -- one node's loop (Elector.run) ------------------------------------------------------
    def wake(self, i: int) -> None:
        n = self.nodes[i]
        if n.stopping:
            return
        self.send(i, "get")

    def sleep(self, i: int) -> None:
        n = self.nodes[i]
        n.req = 0
        mono = n.mono(self.now)
        wake = D.next_wake(n.state, mono, TIMING, self.rng.random())
        self.at(n.real_after(self.now, wake - mono), "wake", i, n.incarnation)

    def answered(self, i: int, op: str, answer: tuple[str, Any]) -> None:
        n = self.nodes[i]
        mono = n.mono(self.now)
        status, rec = answer
        if n.stopping:  # the release's answer: the process exits
            n.alive = False
            n.req = 0
            return
        if op == "get":
            if status in ("ok", "notfound"):
                n.state = D.observe(n.state, rec, mono)
                d = D.decide(n.state, mono, TIMING)
                if d.act is not D.Act.WAIT:
                    wall = f"{mono + n.wall_offset:.3f}"
                    body = D.next_record(n.state, d, wall_now=wall, timing=TIMING, url=f"http://{n.identity}")
                    n.sent = mono
                    self.send(i, "create" if d.act is D.Act.CREATE else "update", body)
                    return
        elif status == "ok":
            n.state = D.wrote(n.state, rec, sent=n.sent, now=mono)
        self.sleep(i)

    # -- faults -----------------------------------------------------------------------------
    def fault(self) -> None:
        r = self.rng.random()
        i = self.rng.randrange(len(self.nodes))
        leaders = [k for k, m in enumerate(self.nodes) if m in self.writers()]
        if leaders and self.rng.random() < 0.5:  # the leader is the interesting victim
            i = leaders[0]
        n = self.nodes[i]
        if r < 0.35:
            if n.alive and n.paused_until is None:
                n.paused_until = self.now + self.rng.choice((1.0, 5.0, 12.0, 20.0, 40.0)) * self.rng.random()
                self.at(n.paused_until, "resume", i, n.incarnation)
        elif r < 0.5:
            if n.alive:
                n.alive = False  # SIGKILL: in-flight requests still land
                n.paused_until = None
            else:
                self.restart(i)
        elif r < 0.6:
            if n.alive and n.paused_until is None and not n.stopping:
                self.shutdown(i)
            elif not n.alive:
                self.restart(i)
        elif r < 0.7:
            self.api_down_until = max(self.api_down_until, self.now + self.rng.uniform(0.5, 12))
        self.at(self.now + self.rng.expovariate(1 / 4.0), "fault", 0)

    def shutdown(self, i: int) -> None:
        """Clean shutdown: stop leading first, then clear the holder (ReleaseOnCancel)."""
        n = self.nodes[i]
        rec = D.release_record(n.state)
        n.state = D.released(n.state)
        n.stopping = True
        if rec is None:
            n.alive = False
            return
        self.send(i, "update", rec)

    def restart(self, i: int) -> None:
        n = self.nodes[i]
        n.incarnation += 1
        n.alive, n.stopping, n.paused_until, n.req = True, False, None, 0
        n.base = self.rng.uniform(0, 1e5)  # a new process: a new monotonic origin
        n.state = D.State(n.identity)
        self.at(self.now + self.rng.uniform(0, 1), "wake", i, n.incarnation)

    # -- the loop ---------------------------------------------------------------------------
    def step(self) -> bool:
        if not self.queue:
            return False
        ev = heapq.heappop(self.queue)
        self.now = ev.at
        self.events += 1
        if ev.kind == "fault":
            if not self.calm:
                self.fault()
        elif ev.kind == "calm":
            self.calm = True
            self.api_down_until = 0.0
            for i, n in enumerate(self.nodes):
                if not n.alive:
                    self.restart(i)
                elif n.paused_until is not None:
                    n.paused_until = self.now
                    self.at(self.now, "resume", i, n.incarnation)
        elif ev.kind == "serve":
            self.serve(ev.node, ev.data)
        else:
            self.node_event(ev)
        self.check()
        if self.on_event is not None:
            self.on_event(self)
        return True

    def node_event(self, ev: Event) -> None:
        n = self.nodes[ev.node]
        if not n.alive:
            return
        if ev.kind == "resume":
            if ev.data == n.incarnation and n.paused_until is not None and self.now >= n.paused_until:
                n.paused_until = None
            return
        if n.paused_until is not None:  # stopped: the event waits for SIGCONT
            self.at(max(n.paused_until, self.now), ev.kind, ev.node, ev.data)
            return
        if ev.kind == "wake":
            if ev.data == n.incarnation and n.req == 0:
                self.wake(ev.node)
        elif ev.kind == "answer":
            incarnation, req, answer = ev.data
            if incarnation == n.incarnation and req == n.req:
                n.req = -1  # handled; a later timeout of this request is ignored
                self.answered(ev.node, n.op, answer)
        elif ev.kind == "timeout":
            incarnation, req = ev.data
            if incarnation == n.incarnation and req == n.req:
                if n.stopping:
                    n.alive = False
                    return
                self.sleep(ev.node)

    # -- invariants ---------------------------------------------------------------------------
    def writers(self) -> list[Node]:
        return [n for n in self.nodes if n.alive and D.may_write(n.state, n.mono(self.now), TIMING)]

    def check(self) -> None:
        w = self.writers()
        if len(w) > 1:
            raise InvariantError(
                f"S1 at t={self.now:.3f}: {[n.identity for n in w]} may all write\n" + self.tail()
            )
        if w and (self.record is None or self.record.holder != w[0].identity):
            holder = self.record.holder if self.record else None
            raise InvariantError(
                f"S2 at t={self.now:.3f}: {w[0].identity} may write but the Lease holder is {holder!r}\n"
                + self.tail()
            )
        if self.calm:
            if w and self.first_leader is None:
                self.first_leader = self.now
            if self.now >= self.settled_at:
                who = w[0].identity if w else None
                if self.settled_leader is None:
                    self.settled_leader = who
                if who is None or who != self.settled_leader:
                    raise InvariantError(
                        f"L1 at t={self.now:.3f}: leader {who} after {self.settled_leader}, with no fault\n"
                        + self.tail()
                    )

    def tail(self) -> str:
        return "\n".join(self.trace[-12:])


def run_schedule(seed: int, nodes: int | None = None) -> World:
    rng = random.Random(seed)
    w = World(rng)
    for k in range(nodes or 2 + seed % 3):
        w.add_node(f"n{k}")
    w.at(rng.expovariate(1 / 4.0), "fault", 0)
    w.at(CHAOS, "calm", 0)
    # in-flight chaos requests resolve (answer or timeout), then at most one lease must lapse
    bound = (
        CHAOS + SLOW + (REQUEST_TIMEOUT + TIMING.lease_duration + 3 * 1.2 * TIMING.retry_period) / (1 - DRIFT)
    )
    w.settled_at = bound
    while w.queue and w.now < CHAOS + CALM:
        w.step()
    if w.first_leader is None or w.first_leader > bound:
        raise InvariantError(f"L1: no leader within {bound - CHAOS:.1f} s of calm (first {w.first_leader})")
    return w
