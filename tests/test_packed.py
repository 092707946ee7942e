"""Readiness records and object statuses are held packed; reads must behave like the dicts.

The operator keeps one readiness record per model per replica and one status per resource,
as compact JSON (protocol/packed.py, controller/objects.py). What users rely on: a read gives
the object that was stored, a caller's change to what it read never reaches the held state,
and equal answers compare equal without being decoded.
"""

from __future__ import annotations

import orjson

from sie_operator.controller.fleetview import FleetSnapshot, GatewayView
from sie_operator.controller.objects import ObjectSnapshot
from sie_operator.protocol.packed import PackedModels
from sie_operator.protocol.readiness_stream import (
    ReadinessStreamDecoder,
    encode_change,
    encode_model,
    encode_snapshot,
    encode_snapshot_end,
)


def record(model_id: str, acked: bool, epoch: int = 3) -> dict[str, object]:
    return {
        "model_id": model_id,
        "config_epoch": epoch,
        "model_acked": acked,
        "bundles": [{"bundle_id": "default", "model_acked_workers": ["w0"] if acked else []}],
    }


def test_packed_models_read_back_what_was_put_and_a_read_is_a_copy() -> None:
    p = PackedModels()
    p.put("org/a", record("Org/A", True))
    assert p["org/a"] == record("Org/A", True) and p.get("org/b") is None
    assert "org/a" in p and list(p) == ["org/a"] and len(p) == 1
    p["org/a"]["bundles"].clear()  # type: ignore[attr-defined]
    assert p["org/a"]["bundles"] == record("Org/A", True)["bundles"]
    snap = p.copy()
    p.put("org/a", record("Org/A", False))
    assert p.pop("org/b") is False and snap["org/a"]["model_acked"] is True
    assert p.pop("org/a") is True and "org/a" not in p and "org/a" in snap


def test_decoder_state_survives_a_caller_editing_what_it_read() -> None:
    d = ReadinessStreamDecoder()
    d.feed_line(encode_snapshot("gw", 3, 1, "initial", 5.0))
    d.feed_line(encode_model(orjson.dumps(record("Org/A", False))))
    d.feed_line(encode_snapshot_end("s1.1", 3))
    got = d.get("ORG/A")
    assert got is not None and got["model_acked"] is False
    got["model_acked"] = True  # type: ignore[index]
    assert d.models["org/a"]["model_acked"] is False
    u = d.feed_line(encode_change("s1.2", orjson.dumps(record("Org/A", False))))
    assert u.changed == {"org/a"}  # a change record is news even when it says the same
    assert d.models == {"org/a": record("Org/A", False)}


def test_fleet_facts_are_equal_exactly_when_the_answers_are() -> None:
    def snap(acked: bool, epoch: int) -> FleetSnapshot:
        models = PackedModels.of({"org/a": record("Org/A", acked)})
        return FleetSnapshot((GatewayView("u", "gw", True, config_epoch=epoch, models=models),), 0.0)

    assert snap(True, 7).facts("Org/A", 5) == snap(True, 9).facts("ORG/A", 5)  # both past the write
    assert snap(True, 4).facts("org/a", 5) != snap(True, 5).facts("org/a", 5)
    assert snap(True, 7).facts("org/a", 5) != snap(False, 7).facts("org/a", 5)
    plain_view = GatewayView("u", "gw", True, config_epoch=7, models={"org/a": record("Org/A", True)})
    plain = FleetSnapshot((plain_view,), 0.0)
    assert plain.facts("org/a", 5)[0][4] == record("Org/A", True)


def test_object_status_is_read_as_stored_and_a_read_is_a_copy() -> None:
    status = {"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}], "n": 2**70}
    meta = {"uid": "u1", "name": "a", "namespace": "ns", "generation": 2}
    body = {"metadata": meta, "spec": {}, "status": status}
    obj = ObjectSnapshot.from_body(body)
    assert obj is not None
    got = obj.status
    assert got is not None and got["conditions"] == status["conditions"] and got["n"] == 2**70
    got["conditions"].clear()
    assert obj.status is not None and obj.status["conditions"] == status["conditions"]
    none = ObjectSnapshot.from_body({**body, "status": None})
    assert none is not None and none.status is None
