"""Fast unit tests of the pure parts: deltas/epochs, health machine, readiness, parsing."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import pytest

from sie_operator.gateway import readiness
from sie_operator.gateway.auth import AuthConfigError, AuthPolicy, extract_token, parse_tokens
from sie_operator.gateway.discovery import WorkerUrlError, parse_worker_urls
from sie_operator.gateway.health import Frame, Health, WorkerTable, on_disconnect, on_frame, on_sweep
from sie_operator.gateway.workers import FrameError, parse_frame, status_url
from sie_operator.kube.endpointslices import endpoint_urls
from sie_operator.protocol.deltas import (
    DeltaError,
    EpochStep,
    PollAction,
    classify_epoch,
    is_trusted,
    parse_delta,
    parse_producer_list,
    poll_action,
)
from sie_operator.protocol.mirror import AckHistory
from sie_operator.worker.state import ReportedHash, check_bundle_name, status_frame


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- deltas and epochs ---------------------------------------------------------------------
def _payload(**kw: object) -> bytes:
    base: dict[str, object] = {
        "router_id": "sie-config-0",
        "bundle_id": "default",
        "epoch": 3,
        "bundle_config_hash": "h",
    }
    base.update(kw)
    return orjson.dumps(base)


def test_parse_delta_reads_the_contract_payload() -> None:
    d = parse_delta(_payload(model_id="a/b", model_config="sie_id: a/b\n", affected_bundles=["default"]))
    assert (d.router_id, d.bundle_id, d.epoch, d.model_id) == ("sie-config-0", "default", 3, "a/b")
    assert d.kind == "model_added" and not d.is_epoch_bump
    assert parse_delta(_payload(model_config="  ")).kind == "epoch_bump"


def test_parse_delta_accepts_producer_id_alias() -> None:
    raw = orjson.dumps({"producer_id": "sie-config", "bundle_id": "b", "epoch": 0, "bundle_config_hash": ""})
    assert parse_delta(raw).router_id == "sie-config"


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1]", _payload(epoch=-1), _payload(epoch=True), _payload(epoch="3"),
     _payload(bundle_id=None), _payload(model_config=5), _payload(affected_bundles="x"),
     orjson.dumps({"bundle_id": "b", "epoch": 1})],
)  # fmt: skip
def test_parse_delta_rejects_bad_payloads(raw: bytes) -> None:
    with pytest.raises(DeltaError):
        parse_delta(raw)


def test_trust_is_exact_or_dash_prefix() -> None:
    allow = parse_producer_list(None)
    assert allow == ("sie-config",)
    assert is_trusted("sie-config", allow)
    assert is_trusted("sie-config-7f9c-abcde", allow)
    assert not is_trusted("sie-configX", allow)
    assert not is_trusted("sie-cluster-config-1", allow)
    assert not is_trusted("evil", allow)
    assert is_trusted("anything", None)  # trust-any
    assert not is_trusted("sie-config", ())
    assert parse_producer_list(" a, ,b,a ") == ("a", "b")


@pytest.mark.parametrize(
    ("local", "delta", "step"),
    [(5, 3, EpochStep.SEEN), (5, 5, EpochStep.SEEN), (5, 6, EpochStep.NEXT), (5, 7, EpochStep.GAP),
     (0, 0, EpochStep.SEEN), (0, 1, EpochStep.NEXT), (0, 2, EpochStep.GAP)],
)  # fmt: skip
def test_gap_detection(local: int, delta: int, step: EpochStep) -> None:
    assert classify_epoch(local, delta) is step


def test_equal_epochs_of_one_write_are_not_a_gap() -> None:
    local = 4
    for copy_epoch in (5, 5, 5):  # one write, three bundles
        step = classify_epoch(local, copy_epoch)
        assert step is not EpochStep.GAP
        if step is EpochStep.NEXT:
            local = copy_epoch
    assert local == 5


def test_poll_action_branches() -> None:
    assert poll_action(3, "h", 3, "h") is PollAction.IN_SYNC
    assert poll_action(3, "h", 3, "") is PollAction.IN_SYNC  # empty remote hash = unknown
    assert poll_action(3, "h", 4, "h") is PollAction.BEHIND
    assert poll_action(3, "h", 1, "h") is PollAction.AHEAD
    assert poll_action(3, "h", 3, "other") is PollAction.BUNDLES_CHANGED


# -- health state machine ------------------------------------------------------------------
def test_state_machine_transitions() -> None:
    assert on_frame(Health.UNKNOWN, True) is Health.HEALTHY
    assert on_frame(Health.UNKNOWN, False) is Health.UNKNOWN
    assert on_frame(Health.HEALTHY, False) is Health.HEALTHY  # SIE quirk kept: not demoted
    assert on_frame(Health.UNHEALTHY, False) is Health.UNKNOWN
    assert on_frame(Health.UNHEALTHY, True) is Health.HEALTHY
    assert on_disconnect(Health.HEALTHY) is Health.UNHEALTHY
    assert on_sweep(Health.HEALTHY, 0.0, 15.0, 15.0) is Health.HEALTHY
    assert on_sweep(Health.HEALTHY, 0.0, 15.1, 15.0) is Health.UNHEALTHY
    assert on_sweep(Health.UNKNOWN, 0.0, 99.0, 15.0) is Health.UNKNOWN


def test_silent_worker_is_demoted_after_timeout_by_sweep() -> None:
    clock = FakeClock()
    table = WorkerTable(heartbeat_timeout=15.0, clock=clock)
    table.add("http://w1:8080")
    table.frame("http://w1:8080", Frame(name="w1", ready=True, bundle="default", bundle_config_hash="h"))
    assert [w.name for w in table.group("default")] == ["w1"]
    clock.advance(14.9)
    assert table.sweep() == []
    clock.advance(0.2)
    assert table.sweep() == ["http://w1:8080"]
    assert table.group("default") == ()
    # a fresh frame brings it back
    table.frame("http://w1:8080", Frame(name="w1", ready=True, bundle="default"))
    assert len(table.group("default")) == 1


def test_disconnect_demotes_at_once_and_unknown_is_invisible() -> None:
    table = WorkerTable(clock=FakeClock())
    for u in ("http://a", "http://b"):
        table.add(u)
    table.frame("http://a", Frame(name="a", ready=True))
    table.frame("http://b", Frame(name="b", ready=False))  # never ready: Unknown
    assert [w.name for w in table.group("default")] == ["a"]  # empty bundle counts as default
    table.disconnected("http://a")
    assert table.group("default") == ()
    assert table.counts() == {"unknown": 1, "healthy": 0, "unhealthy": 1}


def test_groups_are_sorted_by_name_and_follow_bundle_and_name_changes() -> None:
    table = WorkerTable(clock=FakeClock())
    for i, name in enumerate(["zeta", "alpha", "mid"]):
        table.add(f"http://w{i}")
        table.frame(f"http://w{i}", Frame(name=name, ready=True, bundle="default"))
    assert [w.name for w in table.group("default")] == ["alpha", "mid", "zeta"]
    table.frame("http://w1", Frame(name="alpha", ready=True, bundle="sglang"))
    assert [w.name for w in table.group("default")] == ["mid", "zeta"]
    assert [w.name for w in table.group("sglang")] == ["alpha"]
    table.frame("http://w0", Frame(name="aaa", ready=True, bundle="default"))
    assert [w.name for w in table.group("default")] == ["aaa", "mid"]
    table.remove("http://w0")
    assert [w.name for w in table.group("default")] == ["mid"]
    table.frame("http://w0", Frame(name="ghost", ready=True))  # frame after removal: ignored
    assert [w.name for w in table.group("default")] == ["mid"]


def test_unnamed_worker_is_listed_by_url() -> None:
    table = WorkerTable(clock=FakeClock())
    table.add("http://10.0.0.1:8080")
    table.frame("http://10.0.0.1:8080", Frame(ready=True, bundle="default"))
    assert table.group("default")[0].display_name == "http://10.0.0.1:8080"


# -- readiness -----------------------------------------------------------------------------
@dataclass
class W:
    display_name: str
    config_hash: str
    previous_hashes: tuple[str, ...] = ()


def test_bundle_entry_acked_and_pending() -> None:
    e = readiness.bundle_entry("default", "h1", [W("a", "h1"), W("b", "h0"), W("c", "h1")])
    assert e == {
        "bundle_id": "default",
        "expected_bundle_config_hash": "h1",
        "total_eligible_workers": 3,
        "acked_workers": ["a", "c"],
        "pending_workers": ["b"],
        "acked": False,
        # without history the model-granular fields equal the SIE ones
        "model_acked_workers": ["a", "c"],
        "model_pending_workers": ["b"],
        "model_acked": False,
    }
    assert readiness.bundle_entry("default", "h1", [W("a", "h1")])["acked"] is True


def test_no_workers_is_never_acked_and_empty_expected_hash_acks_nobody() -> None:
    assert readiness.bundle_entry("b", "h", [])["acked"] is False
    e = readiness.bundle_entry("b", "", [W("a", "")])
    assert e["pending_workers"] == ["a"] and e["acked"] is False


def test_model_snapshot_all_acked_and_no_bundles() -> None:
    groups = {"default": [W("w1", "H")], "sglang": [W("w2", "X")]}
    hashes = {"default": "H", "sglang": "S"}
    snap = readiness.snapshot_for("m", ["default"], 7, hashes.__getitem__, lambda b: groups.get(b, []))
    assert snap["all_bundles_acked"] is True and snap["no_bundles"] is False and snap["config_epoch"] == 7
    snap = readiness.snapshot_for(
        "m", ["default", "sglang"], 7, hashes.__getitem__, lambda b: groups.get(b, [])
    )
    assert snap["all_bundles_acked"] is False
    assert snap["bundles"][1]["pending_workers"] == ["w2"]
    empty = readiness.snapshot_for("m", [], 7, hashes.__getitem__, lambda b: [])
    assert empty == {
        "model_id": "m",
        "config_epoch": 7,
        "all_bundles_acked": False,
        "model_acked": False,
        "no_bundles": True,
        "bundles": [],
        "source": "gateway-registry",
    }


def test_bulk_snapshot_computes_each_bundle_once() -> None:
    calls: list[str] = []

    def expected(b: str) -> str:
        calls.append(b)
        return "H"

    body = readiness.bulk_snapshot(
        "gw-1", 3, [("a", ["default"]), ("b", ["default"]), ("c", [])], expected, lambda b: [W("w", "H")]
    )
    assert calls == ["default"]
    assert body["gateway_id"] == "gw-1" and body["config_epoch"] == 3
    models = [("a", ["default"]), ('b/é"x', ["default", "other"]), ("c", [])]
    groups = {"default": [W("w1", "H"), W("w2", "H")], "other": [W("w3", "old")]}
    args = ('gw-"1', 3, models, lambda b: "H", lambda b: groups.get(b, []))
    raw = readiness.bulk_snapshot_json(*args)  # type: ignore[arg-type]
    assert orjson.loads(raw) == readiness.bulk_snapshot(*args)  # type: ignore[arg-type]
    assert raw == orjson.dumps(readiness.bulk_snapshot(*args), option=orjson.OPT_SORT_KEYS)  # type: ignore[arg-type]
    assert [m["all_bundles_acked"] for m in body["models"]] == [True, True, False]
    assert body["models"][2]["no_bundles"] is True


# -- model-granular readiness ------------------------------------------------------------------
def test_ack_history_records_newest_seq_and_is_bounded() -> None:
    h = AckHistory(limit=3)
    assert h.model_seq("m") is None and h.hash_seq("default", "x") is None
    s1 = h.bump()
    h.changed("m", s1)
    h.record("default", "d1", s1)
    h.record("default", "", s1)  # an empty bundle has nothing to ack
    s2 = h.bump()
    h.record("default", "d2", s2)
    assert (s1, s2) == (1, 2) and h.model_seq("m") == 1
    assert h.hash_seq("default", "d1") == 1 and h.hash_seq("default", "d2") == 2
    assert h.hash_seq("other", "d1") is None
    s3 = h.bump()
    h.record("default", "d1", s3)  # the same content again: the newest seq wins ...
    assert h.hash_seq("default", "d1") == 3
    assert h.digests("default") == ("d2", "d1")  # ... and it is the most recent again
    for i in range(4, 6):
        h.record("default", f"d{i}", h.bump())
    assert h.digests("default") == ("d1", "d4", "d5") and len(h) == 3  # oldest (d2) dropped
    assert h.hash_seq("default", "d2") is None  # forgotten: "not known to have" anything
    h.record("gone", "g1", h.bump())
    h.rebase({"m": 1, "n": 7}, {"default": "d7"}, 7)
    assert h.hash_seq("gone", "g1") is None  # bundle no longer exists
    assert h.hash_seq("default", "d7") == 7 and h.hash_seq("default", "d5") == 5  # kept
    assert h.model_seq("n") == 7 and h.model_seq("m") == 1
    with pytest.raises(ValueError):
        AckHistory(limit=0)


# Bundle "default" had digest "old" after mutation 4 and "mid" after 6; it is now at "new" (8).
LEVELS = {("default", "old"): 4, ("default", "mid"): 6, ("default", "new"): 8}


def seq_of(bundle: str, digest: str) -> int | None:
    return LEVELS.get((bundle, digest))


WORKERS = [W("a", "new"), W("b", "old"), W("c", "mid"), W("d", "alien")]


def test_worker_on_an_older_recorded_hash_is_model_acked_for_older_models_only() -> None:
    old_model = readiness.bundle_entry("default", "new", WORKERS, 3, seq_of)  # last changed at 3
    assert old_model == {
        "bundle_id": "default",
        "expected_bundle_config_hash": "new",
        "total_eligible_workers": 4,
        # SIE fields unchanged: bundle-granular
        "acked_workers": ["a"],
        "pending_workers": ["b", "c", "d"],
        "acked": False,
        # b and c hold a bundle state that already had the model's current content;
        # d's hash was never this replica's: not known to have anything
        "model_acked_workers": ["a", "b", "c"],
        "model_pending_workers": ["d"],
        "model_acked": False,
    }
    at_5 = readiness.bundle_entry("default", "new", WORKERS, 5, seq_of)
    assert at_5["model_acked_workers"] == ["a", "c"] and at_5["model_pending_workers"] == ["b", "d"]
    at_6 = readiness.bundle_entry("default", "new", WORKERS, 6, seq_of)  # recorded at 6: included
    assert at_6["model_acked_workers"] == ["a", "c"]
    newest = readiness.bundle_entry("default", "new", WORKERS, 8, seq_of)
    assert newest["model_acked_workers"] == ["a"] and newest["model_pending_workers"] == ["b", "c", "d"]
    unknown_model = readiness.bundle_entry("default", "new", WORKERS, None, seq_of)
    assert unknown_model["model_acked_workers"] == ["a"]  # only the expected hash counts then
    fine = [W("a", "new"), W("b", "old")]
    e = readiness.bundle_entry("default", "new", fine, 2, seq_of)
    assert e["model_acked"] is True and e["acked"] is False
    assert readiness.bundle_entry("default", "new", [], 2, seq_of)["model_acked"] is False  # never vacuous
    # the expected hash acks for every model even if not recorded (e.g. no history)
    e = readiness.bundle_entry("default", "unrecorded", [W("a", "unrecorded")], 99, seq_of)
    assert e["model_acked"] is True


def test_model_snapshot_model_acked_needs_every_bundle() -> None:
    groups = {"default": [W("w1", "old")], "sglang": [W("s1", "S")]}
    hashes = {"default": "new", "sglang": "S"}
    snap = readiness.snapshot_for(
        "m", ["default", "sglang"], 9, hashes.__getitem__, lambda b: groups.get(b, []), 3, seq_of
    )
    assert snap["model_acked"] is True and snap["all_bundles_acked"] is False
    snap = readiness.snapshot_for(
        "m", ["default", "sglang"], 9, hashes.__getitem__, lambda b: groups.get(b, []), 5, seq_of
    )
    assert snap["model_acked"] is False
    assert snap["bundles"][0]["model_pending_workers"] == ["w1"] and snap["bundles"][1]["model_acked"]


def test_bulk_snapshot_model_granular_lines_are_shared_per_pending_set() -> None:
    seqs = {"m/old": 3, "m/older": 1, "m/mid": 5, "m/new": 8, "m/none": None}
    models = [(m, ["default"]) for m in seqs] + [("m/nobundle", [])]
    args = ("gw", 4, models, lambda b: "new", lambda b: WORKERS, seqs.get, seq_of)
    raw = readiness.bulk_snapshot_json(*args)  # type: ignore[arg-type]
    body = readiness.bulk_snapshot(*args)  # type: ignore[arg-type]
    assert orjson.loads(raw) == body
    assert raw == orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    by_id = {m["model_id"]: m for m in body["models"]}
    assert by_id["m/old"]["bundles"][0]["model_acked_workers"] == ["a", "b", "c"]
    assert by_id["m/older"]["bundles"][0] == by_id["m/old"]["bundles"][0]
    assert by_id["m/mid"]["bundles"][0]["model_acked_workers"] == ["a", "c"]
    assert by_id["m/new"]["bundles"][0]["model_acked_workers"] == ["a"]
    assert by_id["m/none"]["bundles"][0]["model_acked_workers"] == ["a"]
    assert by_id["m/nobundle"]["model_acked"] is False and by_id["m/nobundle"]["no_bundles"] is True
    for m in body["models"]:
        assert m["all_bundles_acked"] is False
        single = readiness.snapshot_for(
            m["model_id"], ["default"] if m["bundles"] else [], 4, lambda b: "new", lambda b: WORKERS,
            seqs.get(m["model_id"]), seq_of,
        )  # fmt: skip
        assert single == m
    # the lines are memoised per (bundle, model-pending set): "older" and "old" share one
    view = readiness.BundleView("default", "new", WORKERS, seq_of)
    assert view.variant(1) == view.variant(3) == 1 and view.variant(5) == 2 and view.variant(8) == 3
    assert view.entry(1) is view.for_model(3)
    all_fine = readiness.BundleView("default", "new", [W("a", "new"), W("b", "new")], seq_of)
    assert {all_fine.variant(s) for s in (1, 5, 8, None)} == {0}  # steady state: one line for all


# -- static discovery, frames ----------------------------------------------------------------
def test_static_worker_list_parsing() -> None:
    assert parse_worker_urls(["w1:8080, w2:8080 ,,http://w3:9000/", "w1:8080"]) == [
        "http://w1:8080",
        "http://w2:8080",
        "http://w3:9000",
    ]
    assert parse_worker_urls(["https://w:443"]) == ["https://w:443"]
    assert parse_worker_urls(["", "  "]) == []
    assert parse_worker_urls(["a:1\nb:2"]) == ["http://a:1", "http://b:2"]
    for bad in ("ftp://w:1", "w:notaport", "http://:80", "http://w:1/?q=1"):
        with pytest.raises(WorkerUrlError):
            parse_worker_urls([bad])


def test_status_url() -> None:
    assert status_url("http://10.0.0.1:8080") == "ws://10.0.0.1:8080/ws/status"
    assert status_url("https://w/") == "wss://w/ws/status"


def test_endpointslice_ready_endpoints_only() -> None:
    obj = {
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
            {"addresses": ["10.0.0.3"]},  # unset means ready
            {"addresses": ["fd00::4"], "conditions": {}},
            {"addresses": ["10.0.0.5"], "conditions": {"ready": True, "terminating": True}},  # draining
        ],
        "ports": [{"name": "http", "port": 9000}],
    }
    assert endpoint_urls(obj, port=8080) == {
        "http://10.0.0.1:8080",
        "http://10.0.0.3:8080",
        "http://[fd00::4]:8080",
    }
    assert endpoint_urls(obj, port=8080, use_slice_port=True) == {
        "http://10.0.0.1:9000",
        "http://10.0.0.3:9000",
        "http://[fd00::4]:9000",
    }
    assert endpoint_urls({"endpoints": None}, port=1) == frozenset()


def test_frame_types_are_checked() -> None:
    f = parse_frame(
        b'{"name":"w","ready":true,"bundle":"default","bundle_config_hash":"h","gpu_count":1,"x":null}'
    )
    assert (f.name, f.ready, f.bundle, f.bundle_config_hash, f.gpu_count) == ("w", True, "default", "h", 1)
    for bad in ('{"ready":null}', '{"gpu_count":null}', '{"gpu_count":1.5}', '{"name":3}', "[]", "nope"):
        with pytest.raises(FrameError):
            parse_frame(bad)


# -- auth ------------------------------------------------------------------------------------
def test_auth_rules() -> None:
    open_ = AuthPolicy()
    assert open_.check("GET", "/v1/configs/models", None) is None
    p = AuthPolicy.from_settings("token", parse_tokens(None, "r1, r2"), "adm", exempt_operational=False)
    assert p.check("GET", "/healthz", None) is None
    assert p.check("GET", "/readyz", None) is None
    assert p.check("GET", "/metrics", None) == (401, "Missing Authorization header")
    assert p.check("GET", "/v1/configs/models", "Bearer r2") is None
    assert p.check("GET", "/v1/configs/models", "bearer r1") is None
    assert p.check("GET", "/v1/configs/models", "r1") is None  # raw token
    assert p.check("GET", "/v1/configs/models", "Bearer adm") is None  # admin reads (difference)
    assert p.check("GET", "/v1/configs/models", "Bearer nope") == (401, "Invalid token")
    assert p.check("POST", "/v1/configs/models", "Bearer r1") == (403, "Admin token required")
    assert p.check("POST", "/v1/configs/models", "Bearer adm") is None  # then 405 from the router
    assert p.check("POST", "/v1/configs/resolve", "Bearer r1") is None  # a read (difference)
    noadmin = AuthPolicy.from_settings("static", ("r",), None, exempt_operational=True)
    assert noadmin.check("POST", "/v1/configs/models", "r") == (403, "Admin token not configured")
    assert noadmin.check("GET", "/metrics", None) is None
    assert noadmin.check("GET", "/ws/cluster-status", None) is None
    assert extract_token("  Bearer   abc ") == "abc"
    assert parse_tokens("", "a,b") == ("a", "b")
    assert parse_tokens("x", "a") == ("x",)
    with pytest.raises(AuthConfigError):
        AuthPolicy.from_settings("tokne", (), None, False)
    with pytest.raises(AuthConfigError):
        AuthPolicy.from_settings("token", (), None, False)


# -- worker pure parts ------------------------------------------------------------------------
def test_reported_hash_follows_the_loaded_one_after_the_delay() -> None:
    clock = FakeClock()
    r = ReportedHash(delay=2.0, clock=clock)
    r.load("h0", immediate=True)
    assert r.current() == "h0" and r.next_change_in() is None
    r.load("h1")
    clock.advance(1.0)
    r.load("h2")
    assert r.current() == "h0" and r.next_change_in() == pytest.approx(1.0)
    clock.advance(1.0)
    assert r.current() == "h1"
    clock.advance(1.0)
    assert r.current() == "h2" and r.next_change_in() is None
    r.load("h2")  # no change, nothing queued
    assert r.next_change_in() is None
    instant = ReportedHash(delay=0.0, clock=clock)
    instant.load("x")
    assert instant.current() == "x"


def test_status_frame_types() -> None:
    f = status_frame(
        name="w", bundle="default", ready=True, config_hash="h", config_epoch=3, started=0.0, pid=1
    )
    assert parse_frame(orjson.dumps(f)).ready is True
    assert type(f["gpu_count"]) is int and type(f["config_epoch"]) is int and f["loaded_models"] == []


def test_bundle_name_rule() -> None:
    assert check_bundle_name("default") == "default"
    for bad in ("", "a.b", "a b", "*", ">"):
        with pytest.raises(ValueError):
            check_bundle_name(bad)


def test_a_worker_ahead_of_the_replica_keeps_the_level_it_was_known_to_hold() -> None:
    """A burst of writes: the worker applies a delta before this replica does. Its new hash is
    unknown here, but it held "h2" (mutation 2) before, and workers only move forward."""
    seqs = {("default", "h1"): 1, ("default", "h2"): 2}

    def seq_of(bundle: str, digest: str) -> int | None:
        return seqs.get((bundle, digest))

    assert readiness.worker_level("default", "h2", "h3", seq_of, ("h2", "h1")) == 2
    assert readiness.worker_level("default", "h2", "h3", seq_of, ()) == readiness.worker_level(
        "default", "h2", "zz", seq_of
    )  # nothing known: no model counts as acked on it
    assert readiness.worker_level("default", "h2", "h1", seq_of, ("h0",)) == 1  # its own known hash wins


def test_the_worker_table_remembers_the_hashes_a_worker_reported() -> None:
    table = WorkerTable(heartbeat_timeout=10)
    table.add("u")
    for digest in ("a", "b", "c"):
        table.frame("u", Frame(name="w", ready=True, bundle="default", bundle_config_hash=digest))
    rec = table.get("u")
    assert rec is not None and rec.config_hash == "c" and rec.previous_hashes == ("b", "a")
    table.frame("u", Frame(name="w", ready=True, bundle="other", bundle_config_hash="x"))
    assert rec.previous_hashes == ()  # another bundle: nothing of the old one carries over
