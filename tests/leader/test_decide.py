"""The pure election core, one situation at a time: the named schedules.

Each test is a situation the simulation found (or that a mutant in test_election_sim
stands for), written out step by step on the pure functions with explicit clocks.
"""

from __future__ import annotations

import pytest

from sie_operator.leader import decide as D

T = D.Timing()  # 15 / 10 / 2


def lease(holder: str, rv: str, renew: str = "t", url: str | None = None) -> D.LeaseRecord:
    return D.LeaseRecord(
        holder=holder, lease_seconds=15, renew_time=renew, resource_version=rv, leader_url=url
    )


def test_no_lease_means_create_and_then_lead_until_send_plus_renew_deadline() -> None:
    a = D.observe(D.State("a"), None, now=100.0)
    d = D.decide(a, 100.0, T)
    assert d.act is D.Act.CREATE
    rec = D.next_record(a, d, wall_now="w1", timing=T, url="http://a")
    assert (rec.holder, rec.lease_seconds, rec.transitions, rec.leader_url) == ("a", 15, 0, "http://a")
    a = D.wrote(a, lease("a", "1"), sent=100.0, now=100.5)
    assert D.may_write(a, 109.99, T)
    assert not D.may_write(a, 110.0, T)  # from the send, not from the answer at 100.5
    assert D.leader_identity(a, 105.0, T) == "a"


def test_named_paused_leader_stops_before_the_observer_may_take_over() -> None:
    """A leader renews at 100 (its clock), is SIGSTOPped for 30 s. The observer saw the
    renewal no earlier than it was sent and waits a full lease on its own clock: the old
    leader's may_write() is already false when it wakes, whatever it last believed."""
    a = D.wrote(D.State("a"), lease("a", "5"), sent=100.0, now=100.2)
    b = D.observe(D.State("b"), lease("a", "5"), now=7.0)  # b's clock reads 7 at that moment
    assert D.decide(b, 21.9, T).act is D.Act.WAIT
    assert D.decide(b, 22.0, T).act is D.Act.TAKE
    # real time elapsed ~15 s: a's clock reads ~115 > 110
    assert not D.may_write(a, 115.0, T)
    assert D.leader_identity(b, 21.0, T) == "a"
    assert D.leader_identity(b, 22.0, T) is None


def test_named_renewTime_from_a_skewed_wall_clock_is_ignored() -> None:
    """The holder's wall clock is a minute behind: renewTime looks long expired. An observer
    judging by it would take a live lease; ours waits a lease from its own observation."""
    b = D.observe(D.State("b"), lease("a", "5", renew="2026-11-29T00:00:00.000000Z"), now=50.0)
    assert D.decide(b, 64.9, T) == D.Decision(D.Act.WAIT, 65.0)


def test_every_renewal_restarts_the_observers_timer() -> None:
    b = D.observe(D.State("b"), lease("a", "5"), now=0.0)
    b = D.observe(b, lease("a", "5"), now=10.0)  # unchanged: timer keeps running
    assert b.observed_at == 0.0
    b = D.observe(b, lease("a", "6"), now=12.0)  # renewed: timer restarts
    assert D.decide(b, 20.0, T).act is D.Act.WAIT
    assert D.decide(b, 27.0, T).act is D.Act.TAKE


def test_named_renew_and_take_are_compare_and_set() -> None:
    """An update without resourceVersion is unconditional in Kubernetes: a renewal that
    raced with a takeover would silently overwrite the new holder (found by the simulation
    as the 'update without resourceVersion' mutant)."""
    a = D.observe(D.State("a"), lease("a", "7"), now=0.0)
    assert D.next_record(a, D.decide(a, 0.0, T), wall_now="w", timing=T, url=None).resource_version == "7"
    b = D.observe(D.State("b"), lease("a", "7"), now=0.0)
    take = D.next_record(b, D.decide(b, 16.0, T), wall_now="w", timing=T, url=None)
    assert (take.holder, take.resource_version, take.transitions, take.acquire_time) == ("b", "7", 1, "w")


def test_renewal_keeps_acquire_time_and_transitions() -> None:
    cur = D.LeaseRecord("a", 15, "acq", "r1", 3, None, "9")
    a = D.observe(D.State("a"), cur, now=0.0)
    rec = D.next_record(a, D.decide(a, 0.0, T), wall_now="r2", timing=T, url="http://a")
    assert (rec.acquire_time, rec.renew_time, rec.transitions, rec.leader_url) == ("acq", "r2", 3, "http://a")


def test_release_clears_the_holder_and_a_standby_takes_at_once() -> None:
    a = D.wrote(D.State("a"), lease("a", "3", url="http://a"), sent=0.0, now=0.1)
    rel = D.release_record(a)
    assert rel is not None and (rel.holder, rel.lease_seconds, rel.leader_url) == ("", 1, None)
    assert not D.may_write(D.released(a), 0.2, T)
    b = D.observe(D.State("b"), D.LeaseRecord("", 1, resource_version="4"), now=5.0)
    assert D.decide(b, 5.0, T).act is D.Act.TAKE
    assert D.release_record(b) is None  # not mine: nothing to release


def test_leader_url_comes_from_the_annotation_of_a_live_holder() -> None:
    b = D.observe(D.State("b"), lease("a", "3", url="http://10.0.0.1:8080"), now=0.0)
    assert D.leader_url(b, 1.0, T, "http://b") == "http://10.0.0.1:8080"
    assert D.leader_url(b, 16.0, T, "http://b") is None
    a = D.wrote(D.State("a"), lease("a", "3"), sent=0.0, now=0.0)
    assert D.leader_url(a, 1.0, T, "http://a") == "http://a"


def test_next_wake_keeps_the_leader_in_time_for_its_deadline() -> None:
    a = D.wrote(D.State("a"), lease("a", "3"), sent=0.0, now=0.0)
    assert D.next_wake(a, 1.0, T, 0.9) == 3.0
    assert D.next_wake(a, 9.0, T, 0.9) == 10.0
    assert 12.0 <= D.next_wake(a, 10.0, T, 0.99) < 12.4


def test_lease_object_round_trip() -> None:
    rec = D.LeaseRecord("a", 15, "t0", "t1", 2, "http://a", "42")
    body = D.to_lease(rec, name="sie-operator", namespace="ns")
    assert body["metadata"]["resourceVersion"] == "42"
    assert body["metadata"]["annotations"] == {D.LEADER_URL_ANNOTATION: "http://a"}
    assert D.from_lease(body) == rec
    assert D.from_lease({}) == D.LeaseRecord()
    released = D.to_lease(D.LeaseRecord("", 1, resource_version="43"), name="x", namespace="ns")
    assert released["spec"]["holderIdentity"] is None and released["metadata"]["annotations"] == {}


@pytest.mark.parametrize(
    ("kw", "word"),
    [
        ({"lease_duration": 10.0, "renew_deadline": 10.0}, "lease duration"),
        ({"lease_duration": 11.0, "renew_deadline": 10.0}, "lease duration"),
        ({"renew_deadline": 2.0}, "renew deadline"),
        ({"retry_period": 0.0}, "retry period"),
    ],
)
def test_inconsistent_timings_are_a_one_line_error(kw: dict[str, float], word: str) -> None:
    with pytest.raises(D.ElectionConfigError) as err:
        D.Timing(**kw)
    assert word in str(err.value) and "\n" not in str(err.value)
