"""The election core against thousands of seeded schedules, and against its own mutants.

``lease_world.World`` plays the Lease API server, the network and 2-4 processes with drifting
clocks, pauses, crashes, restarts and clean shutdowns (see its docstring for the invariants
S1, S2 and L1). Each mutant below is a plausible mistake; the simulation must catch every one
of them, or it is not testing what it claims to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import lease_world
import pytest
from lease_world import InvariantError, run_schedule

from sie_operator.devcluster.seeded import failing_seeds
from sie_operator.leader import decide as D

SCHEDULES = 4_000
CHUNKS = 4


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_schedules_keep_every_invariant(chunk: int) -> None:
    size = SCHEDULES // CHUNKS
    failures = failing_seeds(run_schedule, InvariantError, range(chunk * size, (chunk + 1) * size))
    assert not failures, "\n".join(failures[:5])


# -- mutants: each must fail some schedule ------------------------------------------------------

_leading_until, _wrote, _observe, _next_record = D.leading_until, D.wrote, D.observe, D.next_record


def until_lease_duration(state: D.State, timing: D.Timing) -> float | None:
    """Lead for the whole lease instead of the renew deadline."""
    return None if state.renewed_sent is None else state.renewed_sent + timing.lease_duration


def wrote_at_receipt(state: D.State, record: D.LeaseRecord, *, sent: float, now: float) -> D.State:
    """Count the deadline from the answer instead of from the send."""
    return _wrote(state, record, sent=now, now=now)


def observe_holder_changes_only(state: D.State, record: D.LeaseRecord | None, now: float) -> D.State:
    """Restart the observer's timer only when the holder changes, not on every renewal."""
    prev = state.observed
    if record is not None and prev is not None and record.holder == prev.holder:
        return replace(state, observed=record, absent=False)
    return _observe(state, record, now)


def write_without_resource_version(state: D.State, decision: D.Decision, **kw: Any) -> D.LeaseRecord:
    """An unconditional PUT (no compare-and-set)."""
    return replace(_next_record(state, decision, **kw), resource_version="")


_current: dict[str, lease_world.Node] = {}


def expiry_from_renew_time(state: D.State, timing: D.Timing) -> float | None:
    """Trust the holder's renewTime (its wall clock) against my wall clock."""
    rec = state.observed
    if rec is None or not rec.holder:
        return None
    return float(rec.renew_time) + rec.lease_seconds - _current["node"].wall_offset


MUTANTS: dict[str, tuple[str, Callable[..., Any], int]] = {
    # name: (function replaced, mutant, schedules to try)
    "lead for lease_duration, not renew_deadline": ("leading_until", until_lease_duration, 1000),
    "deadline from the answer, not the send": ("wrote", wrote_at_receipt, 500),
    "observed time reset only on a new holder": ("observe", observe_holder_changes_only, 20),
    "update without resourceVersion": ("next_record", write_without_resource_version, 100),
    "expiry from the record's renewTime": ("holder_expires", expiry_from_renew_time, 20),
}


@pytest.fixture
def node_tracking(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    answered = lease_world.World.answered

    def tracked(self: lease_world.World, i: int, op: str, answer: tuple[str, Any]) -> None:
        _current["node"] = self.nodes[i]
        answered(self, i, op, answer)

    monkeypatch.setattr(lease_world.World, "answered", tracked)
    yield
    _current.clear()


@pytest.mark.parametrize("name", list(MUTANTS))
def test_the_simulation_catches_the_mutant(
    name: str, monkeypatch: pytest.MonkeyPatch, node_tracking: None
) -> None:
    attr, mutant, tries = MUTANTS[name]
    monkeypatch.setattr(D, attr, mutant)
    failed = 0
    for seed in range(tries):
        try:
            run_schedule(seed)
        except InvariantError:
            failed += 1
    print(f"{name}: {failed}/{tries} schedules fail")
    assert failed, f"mutant '{name}' survived {tries} schedules"
