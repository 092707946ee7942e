"""The JetStream store's fencing against thousands of seeded schedules, and against its mutants.

``store_world.World`` plays a JetStream stream (both expected-sequence headers, one retained
message per subject), the network and 2-3 config-service replicas whose commits are decided
by the pure functions of ``sie_operator.store.jetstream`` (see its docstring for the faults
and the invariants H1-H3, A1-A2, M, Q and L). Each mutant below is a plausible mistake in
those functions; the simulation must catch every one of them, or it is not testing what it
claims to.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest
from store_world import LAST, SUBJECT, InvariantError, World, run_schedule

from sie_operator.devcluster.seeded import failing_seeds
from sie_operator.store import jetstream as J
from sie_operator.store.base import StoreRecord

SCHEDULES = 3_000
CHUNKS = 4


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_schedules_keep_every_invariant(chunk: int) -> None:
    size = SCHEDULES // CHUNKS
    failures = failing_seeds(run_schedule, InvariantError, range(chunk * size, (chunk + 1) * size))
    assert not failures, "\n".join(failures[:3])


def test_the_schedules_exercise_every_fault() -> None:
    """Each fault and each kind of answer happens in the first 500 schedules."""
    seen: collections.Counter[str] = collections.Counter()
    for seed in range(500):
        w = run_schedule(seed)
        seen.update(refused=w.refused, behind=w.behind, late=w.late, skipped=w.skipped)
        seen.update("answer " + str(x.answer[0] if x.answer else None) for x in w.writes)
        seen.update(
            "answer unchanged" for x in w.writes if x.answer and x.answer[0] == "stored" and not x.answer[2]
        )
    print(dict(seen))
    for kind in ("refused", "behind", "late", "skipped"):
        assert seen[kind] > 10, (kind, seen)
    for answer in ("stored", "unchanged", "rejected", "conflict", "unconfirmed", "lost"):
        assert seen[f"answer {answer}"], (answer, seen)


# -- mutants: each must fail some schedule ------------------------------------------------------

_plan_appends, _settle, _accept = J.plan_appends, J.settle, J.FollowState.accept


def without_header(name: str) -> Callable[..., list[J.Append]]:
    def plan(*args: Any, **kw: Any) -> list[J.Append]:
        return [
            replace(a, headers={k: v for k, v in a.headers.items() if k != name})
            for a in _plan_appends(*args, **kw)
        ]

    return plan


def expect_the_base_for_all(*args: Any, **kw: Any) -> list[J.Append]:
    """Every append of a batch expects the stream to end where the batch started."""
    out = _plan_appends(*args, **kw)
    base = out[0].headers[LAST] if out else "0"
    return [replace(a, headers={**a.headers, LAST: base}) for a in out]


def expect_the_subject_one_later(*args: Any, **kw: Any) -> list[J.Append]:
    """The subject condition off by one: the sequence of the batch's base instead of the model's."""
    out = _plan_appends(*args, **kw)
    return [replace(a, headers={**a.headers, SUBJECT: a.headers[LAST]}) for a in out]


def timeouts_count_as_landed(
    state: J.FollowState,
    writes: Sequence[tuple[str, str]],
    appends: Sequence[J.Append],
    results: Sequence[int | BaseException],
    publish_error: str | None = None,
) -> J.Settled:
    """An append with no answer is taken as stored (only a refusal counts as a failure)."""
    fixed = [a.seq if isinstance(r, TimeoutError) else r for a, r in zip(appends, results, strict=False)]
    return _settle(state, writes, appends, fixed, publish_error)


def no_doubt(*args: Any, **kw: Any) -> J.Settled:
    """Every append that did not land counts as refused, answered or not."""
    return replace(_settle(*args, **kw), unconfirmed=())


def landed_by_position(tags: Sequence[str], records: Sequence[StoreRecord]) -> list[int | None]:
    """Take the records that arrived for the writes, in order, without looking at the tags."""
    return [records[i].epoch if i < len(records) else None for i in range(len(tags))]


def accept_everything(self: J.FollowState, rec: StoreRecord) -> bool:
    """Take records at or below applied_seq too (our own writes, applied again)."""
    self.applied_seq = rec.seq
    self.epoch = max(self.epoch, rec.epoch)
    self.subject_seqs[J.model_key(rec.model_id)] = rec.seq
    return True


MUTANTS: dict[str, tuple[Any, str, Callable[..., Any], int]] = {
    # name: (owner, function replaced, mutant, schedules to try)
    "no Nats-Expected-Last-Subject-Sequence": (J, "plan_appends", without_header(SUBJECT), 300),
    "no Nats-Expected-Last-Sequence": (J, "plan_appends", without_header(LAST), 300),
    "every append expects the batch's base": (J, "plan_appends", expect_the_base_for_all, 300),
    "subject condition on the stream's last sequence": (J, "plan_appends", expect_the_subject_one_later, 300),
    "an unanswered append counts as stored": (J, "settle", timeouts_count_as_landed, 300),
    "an unanswered append counts as refused": (J, "settle", no_doubt, 1000),
    "landed writes matched by position, not tag": (J, "landed_epochs", landed_by_position, 300),
    "accept records at or below applied_seq": (J.FollowState, "accept", accept_everything, 300),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_the_simulation_catches_the_mutant(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    owner, attr, mutant, tries = MUTANTS[name]
    monkeypatch.setattr(owner, attr, mutant)
    failed = 0
    kinds: dict[str, int] = {}
    for seed in range(tries):
        try:
            run_schedule(seed)
        except (InvariantError, AssertionError) as exc:
            failed += 1
            kind = str(exc).split(":")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
    print(f"{name}: {failed}/{tries} schedules fail {kinds}")
    assert failed, f"mutant '{name}' survived {tries} schedules"


# -- named schedules -------------------------------------------------------------------------------


def quiet_world(replicas: int = 1) -> World:
    """A world with no random faults: the test drives every step."""
    w = World(random.Random(0))
    for _ in range(replicas):
        w.add_replica()
    w.calm = True
    return w


def attempts_time_out(w: World, times: int) -> None:
    """Replica 0's commit gets no answer in time, ``times`` times over; nothing lands yet."""
    for _ in range(times):
        w.start_commit(0, limit=1)
        w.timeout(0)  # catch-up: the stream's end is where it was, nothing of ours there
        w.check()


def test_named_an_early_attempt_lands_late_and_the_write_is_still_refused() -> None:
    """Bug A2 (fixed): the first three attempts of a write stay in flight past their
    timeouts; the first then lands while the last is refused, and the write was answered
    StoreConflict ("nothing was changed") although its model now held it. Now the refusal
    comes from one more plan against the absorbed state, which finds the write stored."""
    w = quiet_world()
    write = w.submit(0, "org/m1")
    attempts_time_out(w, 3)
    w.start_commit(0, limit=1)  # the last attempt
    for _ in range(4):
        w.serve(0)  # the first lands at 1, the other three are refused
    while w.acks[0]:
        w.ack(0)
    w.deliver(0)  # caught up: the first attempt is absorbed as a record of the stream
    w.start_commit(0)  # the last plan finds the write already there
    assert write.answer == ("stored", 1, False)
    w.quiesce()
    w.check_quiet()


def test_named_an_attempt_lands_after_the_write_was_refused() -> None:
    """Bug H3 (fixed): all four attempts time out and the write was answered StoreConflict;
    then the first, still in flight, lands. Now a write with an unanswered append that could
    still land (its epoch is beyond the stream's end) is answered StoreUnconfirmed."""
    w = quiet_world()
    write = w.submit(0, "org/m1")
    attempts_time_out(w, 4)
    w.start_commit(0)  # the last plan: still a change, and four appends are unanswered
    assert write.answer == ("unconfirmed",)  # not StoreConflict's "nothing was changed"
    w.serve(0)
    assert [m.tag for m in w.history] == [write.tags[0]]
    w.quiesce()
    w.check_quiet()
