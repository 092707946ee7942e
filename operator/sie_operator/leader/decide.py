"""The pure core of Lease leader election: immutable snapshots in, decisions out.

Nothing here does I/O or reads a clock; every function takes "now" (the caller's
monotonic clock, in seconds) as an argument, so the seeded simulation in
``tests/leader`` drives exactly the code the asyncio ``Elector`` runs.

The semantics are client-go's ``leaderelection`` package:

- An observer never trusts the timestamps inside the Lease (``renewTime`` is another
  machine's wall clock, which may be minutes off). It remembers *when it saw the record
  change*, on its own monotonic clock (``observed_at``), and treats the holder as alive
  until ``observed_at + leaseDurationSeconds``. Only then may it try to take the Lease,
  with an update conditioned on the ``resourceVersion`` it read (compare-and-set): if the
  holder renewed meanwhile, the take fails.
- The holder may act as leader only until ``sent + renew_deadline``, where ``sent`` is
  its monotonic time just *before* it sent the last acquire/renew that succeeded. The
  server applied that write no earlier than ``sent``, so every observer saw the change
  no earlier than ``sent`` and waits ``lease_duration`` of its own clock from then. With
  ``lease_duration > renew_deadline`` and clock rates within ``max_drift`` of each other
  (``lease / (1 + drift) > renew_deadline / (1 - drift)``), the old leader stops before
  anyone else can start — even when it was SIGSTOPped in between, because the check is
  a clock comparison made whenever it is asked, not a timer that must fire.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

LEADER_URL_ANNOTATION = "sie.dev/leader-url"
JITTER = 0.2  # candidates poll every retry * [1, 1.2): client-go's JitterFactor 1.2


class ElectionConfigError(ValueError):
    """Inconsistent timings; ``str(exc)`` is one line."""


@dataclass(frozen=True)
class Timing:
    """Seconds. Defaults are client-go's (and Kubernetes controllers') 15/10/2."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    max_drift: float = 0.1  # relative clock-rate difference the timings must tolerate

    def __post_init__(self) -> None:
        if self.retry_period <= 0:
            raise ElectionConfigError(f"retry period must be > 0 s (got {self.retry_period})")
        if self.renew_deadline <= self.retry_period * (1 + JITTER):
            raise ElectionConfigError(
                f"renew deadline ({self.renew_deadline} s) must exceed 1.2 x the retry period "
                f"({self.retry_period} s), or a leader cannot renew in time"
            )
        if not 0 <= self.max_drift < 1:
            raise ElectionConfigError(f"max drift must be in [0, 1) (got {self.max_drift})")
        if self.lease_seconds / (1 + self.max_drift) <= self.renew_deadline / (1 - self.max_drift):
            raise ElectionConfigError(
                f"lease duration ({self.lease_duration} s) must exceed the renew deadline "
                f"({self.renew_deadline} s) by the clock-drift margin, or two leaders could overlap"
            )

    @property
    def lease_seconds(self) -> int:
        """What goes into ``leaseDurationSeconds`` (an integer in the API)."""
        return max(1, math.ceil(self.lease_duration))


@dataclass(frozen=True)
class LeaseRecord:
    """The parts of a coordination.k8s.io/v1 Lease the election reads and writes."""

    holder: str = ""  # "" = nobody (never held, or released)
    lease_seconds: int = 0
    acquire_time: str = ""  # RFC 3339 MicroTime, informational only
    renew_time: str = ""  # informational only: never used to judge expiry
    transitions: int = 0
    leader_url: str | None = None  # annotation sie.dev/leader-url
    resource_version: str = ""


@dataclass(frozen=True)
class State:
    """What one candidate knows. ``observed is None`` with ``absent`` = the Lease does not exist."""

    me: str
    observed: LeaseRecord | None = None
    observed_at: float | None = None  # my monotonic time when ``observed`` last changed
    absent: bool = False
    renewed_sent: float | None = None  # send time of my last acquire/renew that succeeded


class Act(enum.Enum):
    CREATE = "create"  # no Lease: create it with me as holder
    TAKE = "take"  # free or expired: update it to me (CAS on resourceVersion)
    RENEW = "renew"  # I hold it: update renewTime (CAS)
    WAIT = "wait"  # someone else holds it and has not expired in my eyes


@dataclass(frozen=True)
class Decision:
    act: Act
    expires: float | None = None  # WAIT: my monotonic time the holder's lease ends, as I judge it


def observe(state: State, record: LeaseRecord | None, now: float) -> State:
    """Fold in the answer to a GET (None: 404). ``observed_at`` moves only when the record changed."""
    if record is None:
        return replace(state, observed=None, observed_at=now, absent=True)
    if record != state.observed or state.observed_at is None:
        return replace(state, observed=record, observed_at=now, absent=False)
    return replace(state, absent=False)


def holder_expires(state: State, timing: Timing) -> float | None:
    """When the observed holder's lease ends on my clock (None: nobody to wait for)."""
    rec = state.observed
    if rec is None or not rec.holder or state.observed_at is None:
        return None
    seconds = rec.lease_seconds if rec.lease_seconds > 0 else timing.lease_seconds
    return state.observed_at + seconds


def decide(state: State, now: float, timing: Timing) -> Decision:
    """The next step after a GET. Expiry is judged on my clock from when I saw the change."""
    if state.observed is None:
        return Decision(Act.CREATE) if state.absent else Decision(Act.WAIT)
    holder = state.observed.holder
    if holder == state.me:
        return Decision(Act.RENEW)
    expires = holder_expires(state, timing)
    if expires is not None and now < expires:
        return Decision(Act.WAIT, expires)
    return Decision(Act.TAKE)


def next_record(
    state: State, decision: Decision, *, wall_now: str, timing: Timing, url: str | None
) -> LeaseRecord:
    """The record to write for CREATE/TAKE/RENEW: acquireTime and transitions kept on renew."""
    cur = state.observed or LeaseRecord()
    if decision.act is Act.RENEW:
        return replace(cur, lease_seconds=timing.lease_seconds, renew_time=wall_now, leader_url=url)
    if decision.act is Act.WAIT:
        raise ValueError("nothing to write while waiting")
    return LeaseRecord(
        holder=state.me,
        lease_seconds=timing.lease_seconds,
        acquire_time=wall_now,
        renew_time=wall_now,
        transitions=cur.transitions + (1 if decision.act is Act.TAKE and cur.holder else 0),
        leader_url=url,
        resource_version=cur.resource_version,
    )


def wrote(state: State, record: LeaseRecord, *, sent: float, now: float) -> State:
    """My create/update succeeded: I lead until ``sent + renew_deadline``."""
    best = sent if state.renewed_sent is None else max(state.renewed_sent, sent)
    return replace(state, observed=record, observed_at=now, absent=False, renewed_sent=best)


def released(state: State) -> State:
    """I gave the Lease up (or am about to): I stop leading now, whatever the clock says."""
    return replace(state, renewed_sent=None)


def leading_until(state: State, timing: Timing) -> float | None:
    return None if state.renewed_sent is None else state.renewed_sent + timing.renew_deadline


def may_write(state: State, now: float, timing: Timing) -> bool:
    """True only before ``sent + renew_deadline`` of my last successful acquire/renew."""
    until = leading_until(state, timing)
    return until is not None and now < until


def leader_identity(state: State, now: float, timing: Timing) -> str | None:
    """Me while I may write; else the observed holder while its lease lasts in my eyes."""
    if may_write(state, now, timing):
        return state.me
    rec = state.observed
    if rec is None or not rec.holder or rec.holder == state.me:
        return None
    expires = holder_expires(state, timing)
    return rec.holder if expires is not None and now < expires else None


def leader_url(state: State, now: float, timing: Timing, own_url: str | None) -> str | None:
    who = leader_identity(state, now, timing)
    if who is None:
        return None
    if who == state.me:
        return own_url
    return state.observed.leader_url if state.observed is not None else None


def next_wake(state: State, now: float, timing: Timing, jitter: float) -> float:
    """When to try again: every retry period while leading (and in time to notice the
    deadline), otherwise retry x (1 + 0.2 x jitter) with ``jitter`` in [0, 1) from the caller."""
    if may_write(state, now, timing):
        until = leading_until(state, timing)
        assert until is not None
        return min(now + timing.retry_period, until)
    return now + timing.retry_period * (1 + JITTER * jitter)


# -- the Lease object <-> LeaseRecord ------------------------------------------------------------


def from_lease(obj: Mapping[str, Any]) -> LeaseRecord:
    """A Lease as the API server returns it; missing fields read as empty."""
    spec = obj.get("spec") or {}
    meta = obj.get("metadata") or {}
    url = (meta.get("annotations") or {}).get(LEADER_URL_ANNOTATION)
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        lease_seconds=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=str(spec.get("acquireTime") or ""),
        renew_time=str(spec.get("renewTime") or ""),
        transitions=int(spec.get("leaseTransitions") or 0),
        leader_url=str(url) if url else None,
        resource_version=str(meta.get("resourceVersion") or ""),
    )


def to_lease(record: LeaseRecord, *, name: str, namespace: str) -> dict[str, Any]:
    """The body of a POST/PUT; a non-empty resourceVersion makes the PUT a compare-and-set."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if record.resource_version:
        meta["resourceVersion"] = record.resource_version
    meta["annotations"] = {LEADER_URL_ANNOTATION: record.leader_url} if record.leader_url else {}
    spec: dict[str, Any] = {
        "holderIdentity": record.holder or None,
        "leaseDurationSeconds": record.lease_seconds,
        "leaseTransitions": record.transitions,
    }
    if record.acquire_time:
        spec["acquireTime"] = record.acquire_time
    if record.renew_time:
        spec["renewTime"] = record.renew_time
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}


def release_record(state: State) -> LeaseRecord | None:
    """What to write on clean shutdown (holder cleared, as client-go's ReleaseOnCancel),
    or None when the last record I saw is not mine."""
    rec = state.observed
    if rec is None or rec.holder != state.me:
        return None
    return replace(rec, holder="", lease_seconds=1, leader_url=None)
