"""The readiness watch stream's wire format and its pure decoder (protocol/readiness_stream.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sie_operator.protocol import readiness_stream as rs


def obj(model_id: str, acked: bool = True, epoch: int = 1) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "config_epoch": epoch,
        "all_bundles_acked": acked,
        "model_acked": acked,
        "no_bundles": False,
        "bundles": [],
        "source": "gateway-registry",
    }


def enc(o: dict[str, Any]) -> bytes:
    return orjson.dumps(o, option=orjson.OPT_SORT_KEYS)


def snapshot(*models: dict[str, Any], token: str = "s1.3", reason: str = "initial") -> list[bytes]:
    return [
        rs.encode_snapshot("gw-0", 7, len(models), reason, 5.0),
        *(rs.encode_model(enc(m)) for m in models),
        rs.encode_snapshot_end(token, 7),
    ]


def test_tokens_round_trip_and_malformed_ones_are_refused() -> None:
    t = rs.parse_token("k2c9x0.42")
    assert t == rs.ResumeToken("k2c9x0", 42) and str(t) == "k2c9x0.42"
    assert rs.format_token("abc", 0) == "abc.0"
    for bad in ["", "abc", "abc.", ".1", "ABC.1", "abc.-1", "abc.01", "a-b.1", "abc.1.2", "x" * 33 + ".1"]:
        assert rs.parse_token(bad) is None, bad
    with pytest.raises(ValueError):
        rs.ResumeToken("no way", 1)


def test_every_record_is_one_json_line_with_its_type() -> None:
    lines = [
        *snapshot(obj("org/a")),
        rs.encode_resumed("s1.3", "gw-0", 7, 5.0),
        rs.encode_change("s1.4", enc(obj("org/a"))),
        rs.encode_removed("s1.5", "org/a"),
        rs.encode_heartbeat("s1.5", 7),
        rs.encode_heartbeat(None, 0),
    ]
    kinds = []
    for line in lines:
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        kinds.append(rs.decode_record(line)["type"])
    assert kinds == [
        "snapshot",
        "model",
        "snapshot_end",
        "resumed",
        "change",
        "removed",
        "heartbeat",
        "heartbeat",
    ]
    change = orjson.loads(rs.encode_change("s1.4", enc(obj("org/a"))))
    assert change == {"type": "change", "resume": "s1.4", "model": obj("org/a")}


def test_decoder_snapshot_then_changes_keyed_by_lower_case_id() -> None:
    d = rs.ReadinessStreamDecoder()
    for line in snapshot(obj("Org/A", acked=False), obj("org/b")):
        d.feed_line(line)
    assert d.synced and d.snapshots == 1 and d.resume_token == "s1.3" and d.gateway_id == "gw-0"
    assert d.heartbeat_seconds == 5.0 and d.config_epoch == 7 and d.last_reason == "initial"
    assert d.idle_timeout(2) == 10.0
    assert set(d.models) == {"org/a", "org/b"} and d.get("ORG/A") == obj("Org/A", acked=False)
    u = d.feed_line(rs.encode_change("s1.4", enc(obj("Org/A", epoch=8))))
    assert u.kind == "change" and u.changed == {"org/a"} and not u.reset
    assert d.models["org/a"]["model_acked"] is True and d.resume_token == "s1.4" and d.config_epoch == 8
    u = d.feed_line(rs.encode_removed("s1.5", "org/B"))
    assert u.changed == {"org/b"} and "org/b" not in d.models and d.resume_token == "s1.5"
    assert d.feed_line(rs.encode_removed("s1.6", "org/never")).changed == frozenset()
    u = d.feed_line(rs.encode_heartbeat("s1.9", 9))
    assert u.kind == "heartbeat" and d.resume_token == "s1.9" and d.config_epoch == 9
    assert d.query(["org/a"]) == [("watch", "true"), ("resume", "s1.9"), ("model", "org/a")]


def test_a_new_snapshot_replaces_the_state_and_reports_only_differences() -> None:
    d = rs.ReadinessStreamDecoder()
    for line in snapshot(obj("a"), obj("b"), obj("c")):
        d.feed_line(line)
    updates = [
        d.feed_line(line) for line in snapshot(obj("a"), obj("b", acked=False), obj("d"), token="t2.0")
    ]
    end = updates[-1]
    assert end.kind == "snapshot_end" and end.reset and end.changed == {"b", "c", "d"}
    assert set(d.models) == {"a", "b", "d"} and d.resume_token == "t2.0" and d.snapshots == 2


def test_a_connection_lost_mid_snapshot_keeps_the_previous_state_and_token() -> None:
    d = rs.ReadinessStreamDecoder()
    for line in snapshot(obj("a")):
        d.feed_line(line)
    partial = snapshot(obj("x"), obj("y"), token="t2.0")[:2]
    for line in partial:
        d.feed_line(line)
    assert not d.synced
    # a heartbeat seen mid-snapshot must not move the token (it does not describe our state)
    d.feed_line(rs.encode_heartbeat("t2.0", 7))
    d.connection_lost()
    assert set(d.models) == {"a"} and d.resume_token == "s1.3" and not d.synced
    # the next connection resumes: state kept, changes applied on top
    assert d.query() == [("watch", "true"), ("resume", "s1.3")]
    d.feed_line(rs.encode_resumed("s1.3", "gw-0", 7, 5.0))
    d.feed_line(rs.encode_change("s1.4", enc(obj("b"))))
    assert d.synced and d.resumes == 1 and set(d.models) == {"a", "b"} and d.resume_token == "s1.4"


def test_heartbeat_without_token_before_the_first_snapshot() -> None:
    d = rs.ReadinessStreamDecoder()
    assert d.idle_timeout() == 3 * rs.DEFAULT_HEARTBEAT_SECONDS
    assert d.feed_line(rs.encode_heartbeat(None, 0)).kind == "heartbeat"
    assert d.resume_token is None and d.query() == [("watch", "true")]


def test_feed_splits_chunks_at_any_byte() -> None:
    data = b"".join([*snapshot(obj("a"), obj("b")), rs.encode_change("s1.4", enc(obj("a", acked=False)))])
    for step in (1, 7, 64, len(data)):
        d = rs.ReadinessStreamDecoder()
        kinds = []
        for i in range(0, len(data), step):
            kinds += [u.kind for u in d.feed(data[i : i + step])]
        assert kinds == ["snapshot", "model", "model", "snapshot_end", "change"], step
        assert d.models["a"]["model_acked"] is False and d.resume_token == "s1.4"


def test_unknown_record_types_are_ignored() -> None:
    d = rs.ReadinessStreamDecoder()
    assert d.feed_line(b'{"type":"future_thing","x":1}').kind == "future_thing"
    assert d.models == {}


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1,2]",
        b'{"no":"type"}',
        b'{"type":"change","resume":"s.1"}',
        b'{"type":"change","model":{"model_id":"a"}}',
        b'{"type":"change","resume":"s.1","model":{"model_id":1}}',
        b'{"type":"removed","resume":"s.1"}',
        b'{"type":"snapshot_end"}',
        b'{"type":"heartbeat","resume":5}',
    ],
)
def test_malformed_lines_raise_stream_error(line: bytes) -> None:
    with pytest.raises(rs.StreamError):
        rs.ReadinessStreamDecoder().feed_line(line)


def test_records_out_of_place_raise_stream_error() -> None:
    d = rs.ReadinessStreamDecoder()
    with pytest.raises(rs.StreamError):
        d.feed_line(rs.encode_model(enc(obj("a"))))
    with pytest.raises(rs.StreamError):
        d.feed_line(rs.encode_snapshot_end("s1.1", 1))
    d.feed_line(rs.encode_snapshot("gw", 1, 1, "initial", 5.0))
    with pytest.raises(rs.StreamError):
        d.feed_line(rs.encode_change("s1.2", enc(obj("a"))))


def test_protocol_module_imports_nothing_from_gateway_or_controller() -> None:
    import ast
    from pathlib import Path

    tree = ast.parse(Path(rs.__file__).read_text())
    imported: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            imported.append(node.module or "")
    assert imported and not [
        m for m in imported if m.startswith(("sie_operator.gateway", "sie_operator.controller"))
    ]


def test_stream_content_type_tells_a_stream_from_a_bulk_body() -> None:
    assert rs.is_stream_content_type("application/x-ndjson")
    assert rs.is_stream_content_type("Application/X-NDJSON; charset=utf-8")
    for other in ("application/json", "text/plain", "", None):
        assert not rs.is_stream_content_type(other)
