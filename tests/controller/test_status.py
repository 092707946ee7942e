"""compute_status: every reason, condition polarity, lastTransitionTime, determinism, bounds."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from typing import Any

import pytest
from k8s_schema_check import check

from sie_operator.controller import crd
from sie_operator.controller import status as st
from sie_operator.controller.status import GatewayObservation, StoreOutcome, compute_status, status_changed

NOW = "2025-01-01T00:00:00Z"
LATER = "2025-01-01T00:05:00Z"
STATUS_SCHEMA = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
ACCEPTED = StoreOutcome("accepted", epoch=7, profiles=("fast", "default"))


def bundle(
    bid: str, acked: Sequence[str] = (), pending: Sequence[str] = (), eligible: int | None = None
) -> dict[str, Any]:
    total = len(acked) + len(pending) if eligible is None else eligible
    return {
        "bundle_id": bid,
        "expected_bundle_config_hash": "ab" * 32,
        "total_eligible_workers": total,
        "acked_workers": list(acked),
        "pending_workers": list(pending),
        "acked": total > 0 and not pending,
    }


def snapshot(*bundles: dict[str, Any], epoch: int = 7) -> dict[str, Any]:
    return {
        "model_id": "acme/bert",
        "config_epoch": epoch,
        "all_bundles_acked": bool(bundles) and all(b["acked"] for b in bundles),
        "no_bundles": not bundles,
        "bundles": list(bundles),
        "source": "gateway-registry",
    }


def gw(
    gid: str = "gw-a",
    snap: dict[str, Any] | None = None,
    *,
    reachable: bool = True,
    error: str = "",
    epoch: int = 7,
) -> GatewayObservation:
    return GatewayObservation(gid, reachable, error, epoch, snap)


ACKED = snapshot(bundle("default", acked=["w1", "w2"]), bundle("sglang", acked=["s1"]))


def compute(
    outcome: StoreOutcome = ACCEPTED,
    gateways: Sequence[GatewayObservation] = (),
    previous: dict[str, Any] | None = None,
    now: str = NOW,
    generation: int = 3,
) -> dict[str, Any]:
    result = compute_status(
        generation=generation, outcome=outcome, gateways=gateways, previous=previous, now=now
    )
    # Whatever the inputs, the result fits the CRD and the typed status model once the API
    # server has applied it (a null member of a non-nullable field is pruned: the merge
    # patch's way to delete expectedConfigHash; verified on a real API server).
    stored = stored_form(result)
    assert check(stored, STATUS_SCHEMA, "status") == []
    crd.ModelConfigStatus.model_validate(stored)
    return result


def stored_form(value: Any) -> Any:
    """``value`` without null members, as the API server stores a merge-patched status."""
    if isinstance(value, dict):
        return {k: stored_form(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [stored_form(v) for v in value]
    return value


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status["conditions"] if c["type"] == ctype)
    return found


def verdict(status: dict[str, Any]) -> tuple[str, str, str, str]:
    """(Ready reason, Ready status, Reconciling status, Stalled status)."""
    return (
        cond(status, "Ready")["reason"],
        cond(status, "Ready")["status"],
        cond(status, "Reconciling")["status"],
        cond(status, "Stalled")["status"],
    )


# --------------------------------------------------------------------------- Ready


def test_ready_when_every_replica_acks_every_bundle() -> None:
    s = compute(gateways=[gw("gw-a", ACKED), gw("gw-b", ACKED)])
    assert verdict(s) == ("AllBundlesAcked", "True", "False", "False")
    assert cond(s, "Ready")["message"] == (
        "3 worker(s) acked on bundle(s) default, sglang at epoch 7; 2/2 gateways agree"
    )
    assert cond(s, "Reconciling")["reason"] == "ReconciliationSucceeded"
    assert cond(s, "Stalled")["reason"] == "NotStalled"
    assert s["observedGeneration"] == 3
    assert s["configEpoch"] == 7
    assert s["profiles"] == ["default", "fast"]
    assert s["bundles"] == [
        {
            "bundleId": "default",
            "expectedConfigHash": None,  # acked: deleted by the merge patch
            "eligibleWorkers": 2,
            "ackedWorkers": ["w1", "w2"],
            "pendingWorkers": [],
            "acked": True,
        },
        {
            "bundleId": "sglang",
            "expectedConfigHash": None,
            "eligibleWorkers": 1,
            "ackedWorkers": ["s1"],
            "pendingWorkers": [],
            "acked": True,
        },
    ]
    assert (s["ackedWorkers"], s["pendingWorkers"]) == (3, 0)
    assert s["gateways"] == {"seen": 2, "agreeing": 2}
    assert list(s) == [
        "observedGeneration",
        "conditions",
        "configEpoch",
        "profiles",
        "bundles",
        "ackedWorkers",
        "pendingWorkers",
        "gateways",
    ]


def test_replica_ahead_of_the_write_still_counts() -> None:
    s = compute(gateways=[gw("gw-a", snapshot(bundle("default", acked=["w1"]), epoch=9), epoch=9)])
    assert verdict(s)[:2] == ("AllBundlesAcked", "True")


# --------------------------------------------------------------------------- every reason

PENDING = snapshot(bundle("default", acked=["w1", "w3"], pending=["w2"]))
CASES: list[tuple[str, StoreOutcome, list[GatewayObservation], str, str]] = [
    (
        "invalid",
        StoreOutcome("invalid", "profiles: Field required"),
        [gw(snap=ACKED)],
        "InvalidSpec",
        "profiles: Field required",
    ),
    (
        "unroutable",
        StoreOutcome("unroutable", "Adapter(s) not in any known bundle: x.y"),
        [gw(snap=ACKED)],
        "Unroutable",
        "Adapter(s) not in any known bundle: x.y",
    ),
    (
        "duplicate",
        StoreOutcome("duplicate", "sieId acme/bert is claimed by ModelConfig a"),
        [gw(snap=ACKED)],
        "DuplicateSieId",
        "claimed by ModelConfig a",
    ),
    (
        "conflict",
        StoreOutcome(
            "conflict", "x", conflicting_profiles=("fast", "default"), conflicting_fields=("hf_id",)
        ),
        [gw(snap=ACKED)],
        "ContentConflict",
        "profile(s) default, fast differ from the stored ones; field(s) hf_id differ from the stored values",
    ),
    (
        "store-error",
        StoreOutcome("store_error", "disk full"),
        [gw(snap=ACKED)],
        "StoreError",
        "the config store write failed; will retry: disk full",
    ),
    ("nats", StoreOutcome("nats_unavailable"), [gw(snap=ACKED)], "NatsUnavailable", "NATS is unavailable"),
    (
        "all-unreachable",
        ACCEPTED,
        [
            gw("gw-a", reachable=False, error="connection refused"),
            gw("gw-b", reachable=False, error="timeout"),
        ],
        "GatewayUnreachable",
        "no gateway reachable (2): gw-a: connection refused; gw-b: timeout",
    ),
    (
        "some-unreachable",
        ACCEPTED,
        [gw("gw-a", ACKED), gw("gw-b", reachable=False, error="HTTP 503")],
        "GatewayUnreachable",
        "1/2 gateways unreachable: gw-b: HTTP 503",
    ),
    ("no-gateways", ACCEPTED, [], "NoGateways", "no gateway replica is configured or discovered"),
    (
        "behind-epoch",
        ACCEPTED,
        [gw("gw-a", ACKED), gw("gw-b", snapshot(bundle("d", acked=["w"]), epoch=5), epoch=5)],
        "GatewayBehind",
        "gw-b at epoch 5 < 7",
    ),
    ("behind-unknown", ACCEPTED, [gw("gw-a", None)], "GatewayBehind", "gw-a does not know the model yet"),
    (
        "no-bundles",
        ACCEPTED,
        [gw(snap=snapshot())],
        "NoBundles",
        "gateway gw-a routes the model to no bundle",
    ),
    (
        "no-workers",
        ACCEPTED,
        [gw(snap=snapshot(bundle("default", acked=["w1"]), bundle("sglang")))],
        "NoWorkers",
        "no eligible workers for bundle(s) sglang",
    ),
    (
        "pending",
        ACCEPTED,
        [gw(snap=PENDING)],
        "WorkersPending",
        "2/3 workers acked on bundle default; pending: w2",
    ),
    (
        "disagree",
        ACCEPTED,
        [gw("gw-a", ACKED), gw("gw-b", PENDING)],
        "GatewaysDisagree",
        "gateway gw-a reports all bundles acked but gateway gw-b: 2/3 workers acked on bundle default",
    ),
]


@pytest.mark.parametrize(
    ("outcome", "gateways", "reason", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_reason(
    outcome: StoreOutcome, gateways: list[GatewayObservation], reason: str, message: str
) -> None:
    s = compute(outcome, gateways)
    ready, reconciling, stalled = cond(s, "Ready"), cond(s, "Reconciling"), cond(s, "Stalled")
    assert ready["status"] == "False"
    assert ready["reason"] == reason
    assert message in ready["message"]
    if reason in {"InvalidSpec", "Unroutable", "DuplicateSieId", "ContentConflict"}:
        # terminal until the spec changes: kstatus Failed
        assert (stalled["status"], stalled["reason"], stalled["message"]) == (
            "True",
            reason,
            ready["message"],
        )
        assert (reconciling["status"], reconciling["reason"]) == ("False", "Stalled")
    else:
        # resolves without a spec change: kstatus InProgress
        assert (reconciling["status"], reconciling["reason"], reconciling["message"]) == (
            "True",
            reason,
            ready["message"],
        )
        assert (stalled["status"], stalled["reason"], stalled["message"]) == ("False", "NotStalled", "")


def test_every_reason_is_covered_and_valid() -> None:
    assert {c[3] for c in CASES} == set(st.REASONS)
    pattern = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    for reason in (*st.REASONS, st.ALL_BUNDLES_ACKED, st.RECONCILED, st.NOT_STALLED, "Stalled"):
        assert pattern.match(reason), reason


@pytest.mark.parametrize(
    ("outcome", "gateways", "reason"),
    [
        (StoreOutcome("invalid"), [gw(reachable=False)], "InvalidSpec"),
        (StoreOutcome("conflict"), [], "ContentConflict"),
        (StoreOutcome("nats_unavailable"), [gw(reachable=False)], "NatsUnavailable"),
        (ACCEPTED, [gw("gw-a", None), gw("gw-b", reachable=False)], "GatewayUnreachable"),
        (ACCEPTED, [gw("gw-a", snapshot()), gw("gw-b", None)], "GatewayBehind"),
        (ACCEPTED, [gw(snap=snapshot(bundle("a", pending=["x"]), bundle("b")))], "NoWorkers"),
        (ACCEPTED, [gw("gw-a", PENDING), gw("gw-b", snapshot())], "WorkersPending"),
    ],
    ids=[
        "invalid>unreachable",
        "conflict>no-gw",
        "nats>unreachable",
        "unreachable>behind",
        "behind>no-bundles",
        "no-workers>pending",
        "first-replica-decides",
    ],
)
def test_priority(outcome: StoreOutcome, gateways: list[GatewayObservation], reason: str) -> None:
    assert cond(compute(outcome, gateways), "Ready")["reason"] == reason


def test_content_conflict_falls_back_to_the_store_message() -> None:
    s = compute(StoreOutcome("conflict", "Model 'A' differs only in letter case from 'a'"), [])
    assert cond(s, "Ready")["message"] == "Model 'A' differs only in letter case from 'a'"


def test_many_pending_workers_are_summarised() -> None:
    pending = [f"w{i:02d}" for i in range(9)]
    s = compute(gateways=[gw(snap=snapshot(bundle("default", pending=pending)))])
    assert cond(s, "Ready")["message"] == (
        "0/9 workers acked on bundle default; pending: w00, w01, w02, w03, w04 (+4 more)"
    )


# --------------------------------------------------------------------------- conditions over time


def test_conditions_are_a_stable_set_with_observed_generation() -> None:
    for outcome, gateways in [(ACCEPTED, [gw(snap=ACKED)]), (StoreOutcome("invalid"), []), (ACCEPTED, [])]:
        s = compute(outcome, gateways, generation=11)
        assert [c["type"] for c in s["conditions"]] == ["Ready", "Reconciling", "Stalled"]
        for c in s["conditions"]:
            assert list(c) == [
                "type",
                "status",
                "observedGeneration",
                "lastTransitionTime",
                "reason",
                "message",
            ]
            assert c["observedGeneration"] == 11
        assert s["observedGeneration"] == 11


def test_last_transition_time_moves_only_when_status_flips() -> None:
    first = compute(gateways=[gw(snap=PENDING)], now=NOW)
    assert {c["lastTransitionTime"] for c in first["conditions"]} == {NOW}

    # Same verdict later, even with another message: times kept, status unchanged.
    more = snapshot(bundle("default", acked=["w1"], pending=["w2", "w3"]))
    second = compute(gateways=[gw(snap=more)], previous=first, now=LATER)
    assert {c["lastTransitionTime"] for c in second["conditions"]} == {NOW}
    assert cond(second, "Ready")["message"] != cond(first, "Ready")["message"]

    # Ready flips: Ready and Reconciling move, Stalled (still False) keeps its time.
    third = compute(gateways=[gw(snap=ACKED)], previous=second, now=LATER)
    assert cond(third, "Ready")["lastTransitionTime"] == LATER
    assert cond(third, "Reconciling")["lastTransitionTime"] == LATER
    assert cond(third, "Stalled")["lastTransitionTime"] == NOW

    # A new generation alone does not move times either.
    fourth = compute(gateways=[gw(snap=ACKED)], previous=third, now="2025-01-02T00:00:00Z", generation=4)
    assert [c["lastTransitionTime"] for c in fourth["conditions"]] == [LATER, LATER, NOW]
    assert all(c["observedGeneration"] == 4 for c in fourth["conditions"])


def test_garbage_previous_conditions_are_ignored() -> None:
    previous = {
        "conditions": [{"type": "Ready", "status": "False"}, "junk", {"status": "True"}],
        "configEpoch": "x",
    }
    s = compute(StoreOutcome("store_error"), [], previous=previous)
    assert cond(s, "Ready")["lastTransitionTime"] == NOW
    assert s["configEpoch"] == 0


# --------------------------------------------------------------------------- determinism and churn


def test_same_facts_give_the_identical_status_regardless_of_order() -> None:
    def world(seed: int) -> list[GatewayObservation]:
        rng = random.Random(seed)
        acked = ["w3", "w1", "w2", "w1"]  # duplicates possible on the wire
        rng.shuffle(acked)
        snaps = [
            gw(gid, snapshot(bundle("default", acked=acked), bundle("sglang", acked=["s1"])))
            for gid in ("gw-c", "gw-a", "gw-b")
        ]
        rng.shuffle(snaps)
        return snaps

    first = compute(gateways=world(1))
    for seed in range(2, 8):
        again = compute(gateways=world(seed), previous=first, now=LATER)
        assert json.dumps(again) == json.dumps(first)
        assert not status_changed(first, again)
    assert first["bundles"][0]["ackedWorkers"] == ["w1", "w2", "w3"]
    assert first["ackedWorkers"] == 5  # counts keep duplicates: they are distinct workers


def test_status_changed() -> None:
    old = compute(gateways=[gw(snap=ACKED)])
    assert status_changed(None, old)
    assert not status_changed(json.loads(json.dumps(old)), old)  # as read back from the API server
    assert not status_changed({**old, "kopf": {"progress": {}}}, old)  # foreign keys are not ours
    assert status_changed({k: v for k, v in old.items() if k != "gateways"}, old)
    changed = json.loads(json.dumps(old))
    changed["bundles"][0]["acked"] = 1  # a bool is not an int
    assert status_changed(changed, old)
    pending = compute(gateways=[gw(snap=PENDING)], previous=old)
    assert status_changed(old, pending)


# --------------------------------------------------------------------------- model-granular readiness


def gbundle(
    bid: str,
    model_acked: Sequence[str] = (),
    model_pending: Sequence[str] = (),
    sie_pending: Sequence[str] | None = None,
    expected: str = "ab" * 32,
) -> dict[str, Any]:
    """A bundle line of our gateway: SIE's fields plus the model-granular ones.

    By default every model-acked worker is SIE-pending too (the bundle moved on with
    writes of other models that the workers have not caught up with yet).
    """
    names = sorted([*model_acked, *model_pending])
    pending = sorted(names if sie_pending is None else sie_pending)
    return {
        "bundle_id": bid,
        "expected_bundle_config_hash": expected,
        "total_eligible_workers": len(names),
        "acked_workers": [n for n in names if n not in pending],
        "pending_workers": pending,
        "acked": bool(names) and not pending,
        "model_acked_workers": list(model_acked),
        "model_pending_workers": list(model_pending),
        "model_acked": bool(names) and not model_pending,
    }


def gsnapshot(*bundles: dict[str, Any], epoch: int = 7) -> dict[str, Any]:
    snap = snapshot(*bundles, epoch=epoch)
    snap["model_acked"] = bool(bundles) and all(b["model_acked"] for b in bundles)
    return snap


def test_model_granular_fields_decide_when_present() -> None:
    snap = gsnapshot(gbundle("default", model_acked=["w1", "w2"]), gbundle("sglang", model_acked=["s1"]))
    assert snap["all_bundles_acked"] is False  # SIE: every worker is behind on the bundle
    s = compute(gateways=[gw("gw-a", snap), gw("gw-b", snap)])
    assert verdict(s) == ("AllBundlesAcked", "True", "False", "False")
    assert cond(s, "Ready")["message"] == (
        "3 worker(s) acked on bundle(s) default, sglang at epoch 7; 2/2 gateways agree"
    )
    assert s["bundles"][0] == {
        "bundleId": "default",
        "expectedConfigHash": None,
        "eligibleWorkers": 2,
        "ackedWorkers": ["w1", "w2"],
        "pendingWorkers": [],
        "acked": True,
    }
    assert (s["ackedWorkers"], s["pendingWorkers"]) == (3, 0)
    assert s["gateways"] == {"seen": 2, "agreeing": 2}


def test_model_granular_pending_and_no_workers() -> None:
    snap = gsnapshot(gbundle("default", model_acked=["w1"], model_pending=["w2", "w3"]))
    s = compute(gateways=[gw(snap=snap)])
    assert verdict(s)[:2] == ("WorkersPending", "False")
    assert cond(s, "Ready")["message"] == "1/3 workers acked on bundle default; pending: w2, w3"
    b = s["bundles"][0]
    assert (b["ackedWorkers"], b["pendingWorkers"], b["acked"]) == (["w1"], ["w2", "w3"], False)
    assert b["expectedConfigHash"] == "ab" * 32  # shown while pending: compare with w2's hash
    assert (s["ackedWorkers"], s["pendingWorkers"]) == (1, 2)
    s = compute(gateways=[gw(snap=gsnapshot(gbundle("default", model_acked=["w1"]), gbundle("sglang")))])
    assert verdict(s)[0] == "NoWorkers"
    assert s["bundles"][1]["expectedConfigHash"] == "ab" * 32 and s["bundles"][1]["acked"] is False


def test_sie_fields_are_the_fallback_without_model_granular_ones() -> None:
    sie_pending = snapshot(bundle("default", acked=["w1"], pending=["w2"]))
    s = compute(gateways=[gw(snap=sie_pending)])
    assert verdict(s)[0] == "WorkersPending"
    assert s["bundles"][0]["pendingWorkers"] == ["w2"] and s["bundles"][0]["expectedConfigHash"] == "ab" * 32
    s = compute(gateways=[gw(snap=ACKED)])
    assert verdict(s)[0] == "AllBundlesAcked" and s["bundles"][0]["expectedConfigHash"] is None


def test_replicas_agree_on_the_model_granular_state() -> None:
    lagging = gsnapshot(gbundle("default", model_acked=["w1", "w2"]))  # SIE-pending, model-acked
    current = gsnapshot(gbundle("default", model_acked=["w1", "w2"], sie_pending=[]))
    s = compute(gateways=[gw("gw-a", current), gw("gw-b", lagging)])
    assert verdict(s)[0] == "AllBundlesAcked" and s["gateways"] == {"seen": 2, "agreeing": 2}
    behind = gsnapshot(gbundle("default", model_acked=["w1"], model_pending=["w2"]))
    s = compute(gateways=[gw("gw-a", current), gw("gw-b", behind)])
    assert verdict(s)[0] == "GatewaysDisagree" and s["gateways"]["agreeing"] == 1
    assert cond(s, "Ready")["message"].endswith(
        "gateway gw-b: 1/2 workers acked on bundle default; pending: w2"
    )
    # a replica whose top-level verdict says no is not overruled by its lines
    odd = {**current, "model_acked": False}
    s = compute(gateways=[gw("gw-a", current), gw("gw-b", odd)])
    assert verdict(s)[0] == "GatewaysDisagree"


def test_a_ready_status_does_not_change_when_other_models_are_written() -> None:
    steady = gsnapshot(gbundle("default", model_acked=["w1", "w2"], sie_pending=[]))
    ready = compute(gateways=[gw(snap=steady)])
    assert verdict(ready)[0] == "AllBundlesAcked"
    stored = stored_form(json.loads(json.dumps(ready)))  # as read back from the API server
    assert "expectedConfigHash" not in stored["bundles"][0]
    for n, (expected, sie_pending) in enumerate(
        [("cd" * 32, ["w1", "w2"]), ("ef" * 32, ["w2"]), ("01" * 32, [])]
    ):  # other models written: the bundle hash moves, the workers catch up one by one
        snap = gsnapshot(
            gbundle("default", model_acked=["w1", "w2"], sie_pending=sie_pending, expected=expected),
            epoch=8 + n,
        )
        again = compute(gateways=[gw(snap=snap, epoch=8 + n)], previous=stored, now=LATER)
        assert json.dumps(again) == json.dumps(ready)
        assert not status_changed(stored, again) and not status_changed(ready, again)


def test_expected_hash_null_and_absent_are_the_same_for_status_changed() -> None:
    pending = compute(gateways=[gw(snap=gsnapshot(gbundle("default", ["w1"], ["w2"])))])
    ready = compute(gateways=[gw(snap=gsnapshot(gbundle("default", ["w1", "w2"])))], previous=pending)
    assert status_changed(pending, ready)  # the hash goes away (and more)
    stored = stored_form(ready)
    assert not status_changed(stored, ready) and not status_changed(ready, stored_form(ready))
    with_hash = json.loads(json.dumps(stored))
    with_hash["bundles"][0]["expectedConfigHash"] = "ab" * 32  # lingering from an older writer
    assert status_changed(with_hash, ready)  # null deletes it: a write is due
    assert status_changed({**stored, "configEpoch": None}, ready)


# --------------------------------------------------------------------------- epoch, profiles, bundles


def test_config_epoch_and_profiles_kept_when_the_write_did_not_happen() -> None:
    ok = compute(gateways=[gw(snap=ACKED)])
    s = compute(StoreOutcome("nats_unavailable"), [gw(snap=ACKED)], previous=ok)
    assert (s["configEpoch"], s["profiles"]) == (7, ["default", "fast"])
    s = compute(StoreOutcome("conflict", profiles=("a", "b")), [], previous=ok)
    assert (s["configEpoch"], s["profiles"]) == (7, ["a", "b"])
    s = compute(StoreOutcome("invalid"), [], previous=None)
    assert (s["configEpoch"], s["profiles"]) == (0, [])


def test_duplicate_shows_no_foreign_readiness() -> None:
    s = compute(StoreOutcome("duplicate"), [gw("gw-a", ACKED), gw("gw-b", ACKED)])
    assert (s["bundles"], s["ackedWorkers"], s["pendingWorkers"]) == ([], 0, 0)
    assert s["gateways"] == {"seen": 2, "agreeing": 0}


def test_bundles_come_from_the_first_reachable_replica_that_knows_the_model() -> None:
    other = snapshot(bundle("default", acked=["x1"]))
    s = compute(
        gateways=[gw("gw-c", other), gw("gw-a", reachable=False), gw("gw-b", None), gw("gw-d", ACKED)]
    )
    assert s["bundles"][0]["ackedWorkers"] == ["x1"]
    assert s["gateways"]["seen"] == 4


def test_agreeing_counts_replicas_matching_the_first_at_the_write_epoch() -> None:
    behind = snapshot(bundle("default", acked=["w1", "w2"]), bundle("sglang", acked=["s1"]), epoch=5)
    s = compute(
        gateways=[gw("gw-a", ACKED), gw("gw-b", ACKED), gw("gw-c", PENDING), gw("gw-d", behind, epoch=5)]
    )
    assert s["gateways"] == {"seen": 4, "agreeing": 2}


def test_lists_and_messages_are_bounded() -> None:
    acked = [f"worker-{i:03d}" for i in range(100)]
    long_name = "n" * 2000
    bundles = [bundle("default", acked=[*acked, long_name], pending=[f"p{i}" for i in range(50)])]
    bundles += [bundle(f"b{i:03d}", acked=["w"]) for i in range(100)]
    s = compute(gateways=[gw(snap=snapshot(*bundles))])
    first = s["bundles"][0]
    assert len(s["bundles"]) == st.MAX_BUNDLES
    assert len(first["ackedWorkers"]) == len(first["pendingWorkers"]) == st.MAX_WORKER_NAMES
    assert first["ackedWorkers"] == sorted(first["ackedWorkers"])
    assert max(len(n) for n in first["ackedWorkers"]) <= st.MAX_WORKER_NAME
    assert s["ackedWorkers"] == 101 + 63 and s["pendingWorkers"] == 50  # counts stay exact
    assert len(cond(s, "Ready")["message"]) <= st.MAX_MESSAGE

    many = [gw(f"gw-{i:03d}", reachable=False, error="e" * 500) for i in range(50)]
    s = compute(gateways=many)
    assert len(cond(s, "Ready")["message"]) <= st.MAX_MESSAGE
    assert cond(s, "Ready")["message"].endswith("...")


def test_malformed_snapshots_do_not_crash() -> None:
    weird: list[dict[str, Any]] = [
        {"bundles": "nope"},
        {
            "bundles": [
                None,
                3,
                {"bundle_id": 5},
                {"bundle_id": "ok", "acked_workers": "w1", "total_eligible_workers": -3},
            ]
        },
        {
            "bundles": [{"bundle_id": "dup", "acked": True}, {"bundle_id": "dup", "acked": False}],
            "config_epoch": "7",
        },
    ]
    for snap in weird:
        compute(gateways=[gw(snap=snap)])
