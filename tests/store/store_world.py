"""A deterministic world around the JetStream store's fencing, for the seeded simulation.

The world plays JetStream (one stream, ``max_msgs_per_subject=1``: an append carrying
``Nats-Expected-Last-Sequence`` is refused unless the stream's last sequence is that one,
one carrying ``Nats-Expected-Last-Subject-Sequence`` unless its subject's last message has
that sequence, 0 meaning none; the full history is kept beside the retained messages, for
the invariants), the network (each replica's publishes travel in order on its connection
but interleave with others' at the server, stay in flight for any number of steps, even
past the writer's timeout; acknowledgements get lost) and 2-3 config-service replicas.

Each replica runs the decisions of ``sie_operator.store.jetstream`` through the module
(``J.plan_appends``, ``J.settle``, ``J.landed_epochs``, ``J.unapplied``,
``FollowState.accept``) so a test can substitute a mutant, around a small faithful model
of ``ConfigService``: a committer taking batches of distinct (lower-cased) models from a
queue, planning each against the registry (a model is a set of profiles, a write adds one,
merging as the registry does; a case twin of a stored id is rejected), committing, and
after a result that is not in order absorbing what the follower brought, answering the
writes that landed and re-planning the others (after ``CONFLICT_RETRIES`` retries the
last plan answers it unchanged if it is there by now, else StoreUnconfirmed while an
unanswered append of it could still land, else StoreConflict); a follower that delivers
the retained messages in stream order with any lag and is drained into the registry
whenever the committer is idle. Faults: publishes failing part-way through a pipelined
batch, lost acknowledgements, publishes landing after their writer timed out, connection
losses that drop part of what is in flight, crashes and restarts (the state rebuilt from
the retained stream), concurrent writers on the same model, on case twins and on
different models.

Invariants, checked after every step (H1-H3 as each message lands, A1-A2 as each write
is answered):
- H1: epochs in the stream strictly increase with the sequence (so they are unique);
- H2: no lost update: each message of a model was planned against the content of the
  model's previous message (none for the first);
- H3: a write answered StoreConflict ("nothing was changed") never lands;
- A1: a write answered as stored is in the history with that epoch, its model and its
  profile (and, when it changed the model, written by one of its own attempts);
- A2: a write answered StoreConflict has no attempt in the history;
- M: a replica's epoch, its applied sequence and each model's epoch in its registry never
  go backwards (within one process);
and after quiescence:
- Q: every replica's registry, epoch and FollowState equal what the retained stream says;
- L: a replica writing alone (a batch of three models) gets every write stored at once.
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass, field
from typing import Any

from sie_operator.store import jetstream as J
from sie_operator.store.base import CommitResult, StoreRecord
from sie_operator.store.fs import StoreError

STREAM = "sim"
IDS = ("org/m1", "Org/M1", "org/m2", "org/m3")  # the first two are case twins: one subject
CONFLICT_RETRIES = 3  # as ConfigService
LAST = "Nats-Expected-Last-Sequence"
SUBJECT = "Nats-Expected-Last-Subject-Sequence"


class InvariantError(AssertionError):
    pass


def text_of(profiles: frozenset[str]) -> str:
    return ",".join(sorted(profiles))


def profiles_of(text: str) -> frozenset[str]:
    return frozenset(p for p in text.split(",") if p)


@dataclass(frozen=True)
class Msg:
    seq: int
    subject: str
    key: str
    model_id: str
    epoch: int
    tag: str
    profiles: frozenset[str]
    payload: bytes


@dataclass
class Write:
    wid: int
    model_id: str
    profile: str
    answer: tuple[Any, ...] | None = None  # ("stored", epoch, changed), ("conflict",), ("unconfirmed",)...
    tags: list[str] = field(default_factory=list)  # of its attempts


@dataclass(frozen=True)
class Plan:
    write: Write
    key: str
    planned_on: frozenset[str] | None  # the model's content the write was planned against
    profiles: frozenset[str]


@dataclass
class Entry:
    model_id: str
    epoch: int
    profiles: frozenset[str]


@dataclass
class Pending:
    write: Write
    attempts: int = 0
    doubt: int = 0  # the highest epoch an unanswered append of it would land with


@dataclass
class Commit:
    planned: list[tuple[Pending, str, frozenset[str]]]  # (item, model id, new content)
    writes: list[tuple[str, str]]
    appends: list[J.Append]
    published: int  # appends handed to the connection
    publish_error: str | None
    futures: int  # acknowledgements awaited (a publish that raised has one, never resolved)
    first: int  # the epoch of the first write
    unconfirmed: tuple[int, ...] = ()
    acks: dict[int, int | BaseException] = field(default_factory=dict)
    target: int | None = None  # behind: the stream end to catch up to


@dataclass
class Replica:
    name: str
    incarnation: int = 0
    writer_id: str = ""
    counter: int = 0
    state: J.FollowState = field(default_factory=J.FollowState)
    registry: dict[str, Entry] = field(default_factory=dict)
    epoch: int = 0  # the service's epoch
    delivered: int = 0  # the follower's cursor
    inbox: collections.deque[StoreRecord] = field(default_factory=collections.deque)
    queue: collections.deque[Pending] = field(default_factory=collections.deque)
    commit: Commit | None = None
    alive: bool = True
    seen: dict[str, int] = field(default_factory=dict)  # M: the highest values seen


@dataclass
class World:
    rng: random.Random
    replicas: list[Replica] = field(default_factory=list)
    history: list[Msg] = field(default_factory=list)
    retained: dict[str, Msg] = field(default_factory=dict)  # subject -> its last message
    wire: dict[int, collections.deque[tuple[int, J.Append]]] = field(default_factory=dict)
    acks: dict[int, collections.deque[tuple[int, str, int | BaseException]]] = field(default_factory=dict)
    plans: dict[str, Plan] = field(default_factory=dict)  # tag -> what it was planned on
    writes: list[Write] = field(default_factory=list)
    calm: bool = False
    steps: int = 0
    trace: list[str] = field(default_factory=list)
    refused: int = 0  # appends JetStream refused
    behind: int = 0  # commits that were not in order
    late: int = 0  # appends that landed after their writer stopped waiting for them
    skipped: int = 0  # messages a follower never saw (replaced before it got there)

    # -- setup ---------------------------------------------------------------------------
    def add_replica(self) -> None:
        i = len(self.replicas)
        self.replicas.append(Replica(f"r{i}"))
        self.wire[i] = collections.deque()
        self.acks[i] = collections.deque()
        self.restart(i)

    @property
    def last_seq(self) -> int:
        return len(self.history)

    # -- JetStream -------------------------------------------------------------------------
    def append(self, a: J.Append) -> int | BaseException:
        """One publish at the server: the two conditions, then the message lands."""
        if LAST in a.headers and int(a.headers[LAST]) != self.last_seq:
            self.refused += 1
            return J.AppendRefused(J.WRONG_LAST_SEQUENCE, f"wrong last sequence: {self.last_seq}")
        cur = self.retained.get(a.subject)
        if SUBJECT in a.headers and int(a.headers[SUBJECT]) != (cur.seq if cur else 0):
            self.refused += 1
            return J.AppendRefused(J.WRONG_LAST_SEQUENCE, f"wrong last sequence: {cur.seq if cur else 0}")
        seq = self.last_seq + 1
        rec = J.decode_record(seq, a.payload)
        key = J.model_key(rec.model_id)
        msg = Msg(seq, a.subject, key, rec.model_id, rec.epoch, rec.writer, profiles_of(rec.text), a.payload)
        self.trace.append(f"#{seq} {rec.model_id} e{rec.epoch} {rec.writer} {rec.text}")
        if self.history and self.history[-1].epoch >= msg.epoch:
            self.fail(f"H1: message {seq} has epoch {msg.epoch} after {self.history[-1].epoch}")
        plan = self.plans[rec.writer]
        before = cur.profiles if cur is not None else None
        if plan.planned_on != before:
            self.fail(
                f"H2: message {seq} ({rec.model_id} {rec.text}) was planned on {plan.planned_on} "
                f"but replaced {before}"
            )
        if plan.write.answer == ("conflict",):
            self.fail(f"H3: write {plan.write.wid} was answered StoreConflict, then landed at {seq}")
        self.history.append(msg)
        self.retained[a.subject] = msg
        return seq

    # -- the client side of JetStream (nats-py) ------------------------------------------
    def serve(self, i: int) -> None:
        """The next publish on replica i's connection reaches the server."""
        incarnation, a = self.wire[i].popleft()
        result = self.append(a)
        r, c = self.replicas[i], self.replicas[i].commit
        waiting = r.alive and r.incarnation == incarnation and c is not None and c.target is None
        if isinstance(result, int) and not (waiting and c is not None and a in c.appends):
            self.late += 1
        if not self.calm and self.rng.random() < 0.15:
            self.trace.append(f"  ack of {a.tag} lost")
            return
        self.acks[i].append((incarnation, a.tag, result))

    def ack(self, i: int) -> None:
        """An acknowledgement reaches its future (one reply token per publish)."""
        incarnation, tag, result = self.acks[i].popleft()
        r = self.replicas[i]
        c = r.commit
        if not r.alive or incarnation != r.incarnation or c is None or c.target is not None:
            return  # the commit already timed out (or the process is gone)
        index = next((k for k, a in enumerate(c.appends[: c.published]) if a.tag == tag), None)
        if index is None:
            return  # the answer to an earlier commit's publish
        c.acks.setdefault(index, result)
        if len(r.commit.acks) == r.commit.futures:
            self.settle(i)

    def deliver(self, i: int) -> None:
        """The ordered consumer hands the next retained message to the store's inbox."""
        r = self.replicas[i]
        nxt = self.next_retained(r.delivered)
        assert nxt is not None
        self.skipped += nxt.seq - r.delivered - 1
        r.delivered = nxt.seq
        r.inbox.append(J.decode_record(nxt.seq, nxt.payload))
        if r.commit is not None and r.commit.target is not None and r.delivered >= r.commit.target:
            self.caught_up(i)

    def next_retained(self, after: int) -> Msg | None:
        best: Msg | None = None
        for m in self.retained.values():
            if m.seq > after and (best is None or m.seq < best.seq):
                best = m
        return best

    # -- the store and the service of one replica -------------------------------------------
    def drain(self, r: Replica) -> list[StoreRecord]:
        out = []
        while r.inbox:
            rec = r.inbox.popleft()
            if r.state.accept(rec):
                out.append(rec)
        return out

    def apply_records(self, r: Replica, records: list[StoreRecord]) -> None:
        for rec in records:
            key = J.model_key(rec.model_id)
            entry = r.registry.get(key)
            if entry is not None and entry.model_id != rec.model_id:
                pass  # a case twin: the registry refuses it (logged), its epoch still counts
            else:
                merged = profiles_of(rec.text) | (entry.profiles if entry else frozenset())
                if entry is None or merged != entry.profiles:
                    r.registry[key] = Entry(rec.model_id, rec.epoch, merged)
            r.epoch = max(r.epoch, rec.epoch)

    def follow(self, i: int) -> None:
        r = self.replicas[i]
        self.apply_records(r, self.drain(r))

    def submit(self, i: int, model_id: str) -> Write:
        w = Write(len(self.writes), model_id, f"p{len(self.writes)}")
        self.writes.append(w)
        self.replicas[i].queue.append(Pending(w))
        return w

    def answer(self, w: Write, *answer: Any) -> None:
        assert w.answer is None, f"write {w.wid} answered twice"
        w.answer = answer
        self.trace.append(f"  write {w.wid} ({w.model_id} +{w.profile}): {answer}")
        if answer[0] == "stored":
            epoch, changed = answer[1], answer[2]
            msg = next((m for m in self.history if m.epoch == epoch), None)
            if msg is None or msg.key != J.model_key(w.model_id) or w.profile not in msg.profiles:
                self.fail(f"A1: write {w.wid} answered stored at epoch {epoch}, the history has {msg}")
            if changed and msg.tag not in w.tags:
                self.fail(f"A1: write {w.wid} answered stored at epoch {epoch}, written by {msg.tag}")
        elif answer[0] == "conflict":
            landed = [m.seq for m in self.history if m.tag in w.tags]
            if landed:
                self.fail(f"A2: write {w.wid} answered StoreConflict, landed at {landed}")

    def start_commit(self, i: int, limit: int | None = None) -> None:
        """ConfigService._commit_batch up to the store append, then JetStreamStore.commit's
        publishes."""
        r = self.replicas[i]
        batch: list[Pending] = []
        keys: set[str] = set()
        limit = limit or self.rng.randint(1, 3)
        while r.queue and len(batch) < limit:
            key = J.model_key(r.queue[0].write.model_id)
            if key in keys:
                break
            batch.append(r.queue.popleft())
            keys.add(key)
        self.apply_records(r, self.drain(r))
        planned: list[tuple[Pending, str, frozenset[str]]] = []
        plans: list[Plan] = []
        for item in batch:
            w = item.write
            key = J.model_key(w.model_id)
            entry = r.registry.get(key)
            if entry is not None and entry.model_id != w.model_id:
                self.answer(w, "rejected")  # CaseConflict
                continue
            if entry is not None and w.profile in entry.profiles:
                self.answer(w, "stored", entry.epoch, False)
                continue
            if item.attempts > CONFLICT_RETRIES:  # ConfigService._refuse
                self.answer(w, "unconfirmed" if item.doubt > r.epoch else "conflict")
                continue
            new = (entry.profiles if entry else frozenset()) | {w.profile}
            planned.append((item, w.model_id, new))
            plans.append(Plan(w, key, entry.profiles if entry else None, new))
        if not planned:
            return
        writes = [(mid, text_of(new)) for _, mid, new in planned]
        if J.unapplied(r.state, r.inbox):
            self.absorb(i, planned, CommitResult([None] * len(planned), False), r.epoch + 1)
            return
        try:
            appends = J.plan_appends(r.state, STREAM, writes, r.epoch + len(planned), r.writer_id, r.counter)
        except StoreError as exc:
            self.fail(f"E: replica {r.name} planned at epoch {r.epoch}: {exc}")
        published = len(appends)
        error = None
        if not self.calm and self.rng.random() < 0.1:
            published = self.rng.randrange(len(appends))  # the next publish raises
            error = "publish failed: connection closed"
        r.counter += published + (error is not None)  # as JetStreamStore._writes
        for a, p in zip(appends[:published], plans, strict=False):
            self.plans[a.tag] = p
            p.write.tags.append(a.tag)
        for a in appends[:published]:
            self.wire[i].append((r.incarnation, a))
        futures = published + (error is not None)
        r.commit = Commit(planned, writes, appends, published, error, futures, r.epoch + 1)

    def timeout(self, i: int) -> None:
        c = self.replicas[i].commit
        assert c is not None
        for index in range(c.futures):
            c.acks.setdefault(index, TimeoutError("no acknowledgement from JetStream"))
        self.settle(i)

    def settle(self, i: int) -> None:
        r = self.replicas[i]
        c = r.commit
        assert c is not None
        results = [c.acks[index] for index in range(c.futures)]
        settled = J.settle(r.state, c.writes, c.appends, results, c.publish_error)
        if settled.result is not None:
            r.state = settled.state
            r.commit = None
            first = r.epoch + 1
            for k, (_, mid, new) in enumerate(c.planned):
                r.registry[J.model_key(mid)] = Entry(mid, first + k, new)
            r.epoch += len(c.planned)
            for k, (item, _, _) in enumerate(c.planned):
                self.answer(item.write, "stored", first + k, True)
            return
        self.behind += 1
        c.unconfirmed = settled.unconfirmed
        c.target = self.last_seq  # catch_up: the stream's end as of now
        if r.delivered >= c.target:
            self.caught_up(i)

    def caught_up(self, i: int) -> None:
        r = self.replicas[i]
        c = r.commit
        assert c is not None
        r.commit = None
        landed = J.landed_epochs([a.tag for a in c.appends], J.unapplied(r.state, r.inbox))
        unsure = tuple(k for k in c.unconfirmed if landed[k] is None)
        self.absorb(i, c.planned, CommitResult(landed, False, unsure), c.first)

    def absorb(
        self, i: int, planned: list[tuple[Pending, str, frozenset[str]]], result: CommitResult, first: int
    ) -> None:
        """ConfigService._absorb: answer what landed, re-plan the rest (refused there at last)."""
        r = self.replicas[i]
        self.apply_records(r, self.drain(r))
        retry = []
        for k, ((item, _, _), epoch) in enumerate(zip(planned, result.landed, strict=True)):
            if epoch is not None:
                self.answer(item.write, "stored", epoch, True)
            else:
                if k in result.unconfirmed:
                    item.doubt = max(item.doubt, first + k)
                item.attempts += 1
                retry.append(item)
        r.queue.extendleft(reversed(retry))

    # -- processes -------------------------------------------------------------------------
    def crash(self, i: int) -> None:
        r = self.replicas[i]
        r.alive = False
        lost = [p for p, _, _ in r.commit.planned] if r.commit is not None else []
        r.commit = None
        for p in [*lost, *r.queue]:
            if p.write.answer is None:
                p.write.answer = ("lost",)  # the client sees its connection drop
        r.queue.clear()
        self.acks[i].clear()
        keep = self.rng.randint(0, len(self.wire[i]))  # what reached the server's socket still lands
        while len(self.wire[i]) > keep:
            self.wire[i].pop()
        self.trace.append(f"  {r.name} crashes ({keep} publish(es) still in flight)")

    def lose_connection(self, i: int) -> None:
        """A reconnect: the tail of what was in flight is lost, acks on the way too."""
        keep = self.rng.randint(0, len(self.wire[i]))
        while len(self.wire[i]) > keep:
            self.wire[i].pop()
        self.acks[i].clear()

    def restart(self, i: int) -> None:
        """JetStreamStore.open + ConfigService.start: the retained stream, in order."""
        r = self.replicas[i]
        r.incarnation += 1
        r.alive = True
        r.writer_id = f"{r.name}i{r.incarnation}"
        r.counter = 0
        r.state = J.FollowState()
        r.inbox.clear()
        r.delivered = 0
        r.registry = {}
        r.seen = {}
        r.commit = None
        restored: dict[str, StoreRecord] = {}
        for m in sorted(self.retained.values(), key=lambda m: m.seq):
            rec = J.decode_record(m.seq, m.payload)
            r.delivered = m.seq
            if r.state.accept(rec):
                restored[J.model_key(rec.model_id)] = rec
        for key, rec in restored.items():
            r.registry[key] = Entry(rec.model_id, rec.epoch, profiles_of(rec.text))
        r.epoch = r.state.epoch

    # -- the loop ----------------------------------------------------------------------------
    def actions(self, chaos: bool) -> list[tuple[float, str, int]]:
        acts: list[tuple[float, str, int]] = []
        for i, r in enumerate(self.replicas):
            if self.wire[i]:
                acts.append((3.0, "serve", i))
            if self.acks[i]:
                acts.append((3.0, "ack", i))
            if not r.alive:
                if chaos:
                    acts.append((0.3, "restart", i))
                continue
            if self.next_retained(r.delivered) is not None:
                acts.append((1.5, "deliver", i))
            if r.commit is None:
                if r.inbox:
                    acts.append((1.0, "follow", i))
                if r.queue:
                    acts.append((2.0, "commit", i))
            elif r.commit.target is None and (chaos or (not self.wire[i] and not self.acks[i])):
                # the ack timeout; in the calm only once nothing more can come
                acts.append((0.4 if chaos else 1.0, "timeout", i))
            if chaos:
                acts.append((1.2, "write", i))
                acts.append((0.08, "crash", i))
                acts.append((0.1, "disconnect", i))
        return acts

    def do(self, kind: str, i: int) -> None:
        if kind == "serve":
            self.serve(i)
        elif kind == "ack":
            self.ack(i)
        elif kind == "deliver":
            self.deliver(i)
        elif kind == "follow":
            self.follow(i)
        elif kind == "commit":
            self.start_commit(i)
        elif kind == "timeout":
            self.timeout(i)
        elif kind == "write":
            n = self.rng.randint(1, 3)
            for _ in range(n):
                self.submit(i, self.rng.choice(IDS))
        elif kind == "crash":
            self.crash(i)
        elif kind == "disconnect":
            self.lose_connection(i)
        elif kind == "restart":
            self.restart(i)

    def step(self, chaos: bool) -> bool:
        acts = self.actions(chaos)
        if not acts:
            return False
        x = self.rng.random() * sum(w for w, _, _ in acts)
        kind, i = acts[-1][1:]
        for w, k, j in acts:
            x -= w
            if x <= 0:
                kind, i = k, j
                break
        self.steps += 1
        self.trace.append(f"{self.steps} {kind} r{i}")
        self.do(kind, i)
        self.check()
        return True

    def quiesce(self) -> None:
        self.calm = True
        for i, r in enumerate(self.replicas):
            if not r.alive:
                self.restart(i)
        guard = 0
        while self.step(chaos=False):
            guard += 1
            if guard > 100_000:
                self.fail("no quiescence")

    # -- invariants ----------------------------------------------------------------------------
    def fail(self, what: str) -> None:
        raise InvariantError(what + "\n" + "\n".join(self.trace[-25:]))

    def check(self) -> None:
        for r in self.replicas:
            if not r.alive:
                continue
            seen = r.seen
            for k, v in (
                ("epoch", r.epoch),
                ("state.epoch", r.state.epoch),
                ("applied", r.state.applied_seq),
            ):
                if v < seen.get(k, 0):
                    self.fail(f"M: {r.name}'s {k} went back from {seen[k]} to {v}")
                seen[k] = v
            for k, e in r.registry.items():
                if e.epoch < seen.get(k, 0):
                    self.fail(f"M: {r.name}'s model {k} went back from epoch {seen[k]} to {e.epoch}")
                seen[k] = e.epoch

    def check_quiet(self) -> None:
        want = {m.key: Entry(m.model_id, m.epoch, m.profiles) for m in self.retained.values()}
        top = max((m.epoch for m in self.history), default=0)
        for r in self.replicas:
            if r.registry != want:
                self.fail(f"Q: {r.name}'s registry {r.registry} != the stream's {want}")
            if (r.epoch, r.state.epoch, r.state.applied_seq) != (top, top, self.last_seq):
                self.fail(
                    f"Q: {r.name} at epoch {r.epoch}/{r.state.epoch}, sequence {r.state.applied_seq}; "
                    f"the stream at {top}, {self.last_seq}"
                )
            subjects = {m.key: m.seq for m in self.retained.values()}
            if r.state.subject_seqs != subjects:
                self.fail(f"Q: {r.name}'s subject sequences {r.state.subject_seqs} != {subjects}")
        for w in self.writes:
            if w.answer is None:
                self.fail(f"Q: write {w.wid} was never answered")

    def check_alone(self) -> None:
        """L: each replica in turn writes a batch of three models with nobody else writing."""
        for i, r in enumerate(self.replicas):
            mine = [self.submit(i, f"org/calm{j}") for j in range(3)]
            self.start_commit(i, limit=3)
            self.quiesce()
            for w in mine:
                if w.answer is None or w.answer[0] != "stored" or len(w.tags) != 1:
                    self.fail(f"L: {r.name} writing alone: write {w.wid} answered {w.answer}, tags {w.tags}")
            self.check_quiet()


def run_schedule(seed: int, replicas: int | None = None, steps: int | None = None) -> World:
    rng = random.Random(seed)
    w = World(rng)
    for _ in range(replicas or 2 + seed % 2):
        w.add_replica()
    for _ in range(steps or rng.randint(20, 120)):
        if not w.step(chaos=True):
            break
    w.quiesce()
    w.check_quiet()
    w.check_alone()
    return w
