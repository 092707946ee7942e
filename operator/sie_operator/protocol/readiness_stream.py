"""The readiness watch stream of ``GET /v1/configs/status?watch=true``: records, tokens, a decoder.

Why newline-delimited JSON (``application/x-ndjson``) and not SSE: every record is one JSON
object on one line, the same framing as a Kubernetes watch, so a client needs a line
splitter and a JSON parser, nothing else; the per-model objects are byte for byte the ones
of the bulk ``GET /v1/configs/status`` body, so one parser serves both.

Records (one JSON object per line, ``\\n``-terminated, UTF-8; ``type`` says which):

``snapshot``      begins a full snapshot; ``reason`` says why one is sent (``initial``: no
                  resume asked; ``unknown_stream``: the token is from another gateway
                  process; ``expired``: older than the gateway's bounded change history)::

    {"type":"snapshot","gateway_id":"gw-0","config_epoch":12,"count":2,"reason":"initial","heartbeat_seconds":5.0}

``model``         one model of the snapshot being sent (``count`` of them follow)::

    {"type":"model","model":{"model_id":"org/a","all_bundles_acked":true,...}}

``snapshot_end``  the snapshot is complete; its token resumes right after it::

    {"type":"snapshot_end","resume":"k2c9x0.41","config_epoch":12}

``resumed``       instead of a snapshot: the token was honoured, the models changed since
                  follow as ``change``/``removed`` records (the client keeps its state)::

    {"type":"resumed","resume":"k2c9x0.38","gateway_id":"gw-0","config_epoch":12,"heartbeat_seconds":5.0}

``change``        one model's readiness changed; ``model`` is its current object::

    {"type":"change","resume":"k2c9x0.42","model":{"model_id":"org/a",...}}

``removed``       a model left this replica's registry (a re-bootstrap dropped it)::

    {"type":"removed","resume":"k2c9x0.43","model_id":"org/gone"}

``heartbeat``     nothing to say for ``heartbeat_seconds``; carries the current token
                  (``null`` while the gateway has not bootstrapped and sent no snapshot yet)::

    {"type":"heartbeat","resume":"k2c9x0.43","config_epoch":12}

A resume token is ``<stream>.<seq>``: ``stream`` names one gateway process (a restarted
gateway has another one, so an old token gets a fresh snapshot), ``seq`` the last change
the client has seen. Tokens are opaque to clients: pass the last one seen back as
``resume=`` on reconnect, with the same ``model=`` filter as before.

Unknown record types are ignored by the decoder (forward compatibility); a malformed line
raises :class:`StreamError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from sie_operator.protocol.packed import PackedModels

CONTENT_TYPE = "application/x-ndjson"
DEFAULT_HEARTBEAT_SECONDS = 5.0

SNAPSHOT = "snapshot"
MODEL = "model"
SNAPSHOT_END = "snapshot_end"
RESUMED = "resumed"
CHANGE = "change"
REMOVED = "removed"
HEARTBEAT = "heartbeat"
RECORD_TYPES = (SNAPSHOT, MODEL, SNAPSHOT_END, RESUMED, CHANGE, REMOVED, HEARTBEAT)

REASON_INITIAL = "initial"
REASON_UNKNOWN_STREAM = "unknown_stream"
REASON_EXPIRED = "expired"

_STREAM_ID = re.compile(r"[0-9a-z]{1,32}")
_TOKEN = re.compile(r"([0-9a-z]{1,32})\.(0|[1-9][0-9]{0,18})")


class StreamError(ValueError):
    """A line that is not a valid record of this protocol."""


def is_stream_content_type(content_type: str | None) -> bool:
    """Whether a response to ``?watch=true`` is this stream. A gateway without it answers
    otherwise: an older one of ours ignores ``watch`` and sends the bulk JSON body, SIE's
    own gateway has no ``/v1/configs/status`` (404) -- read those the old way."""
    return (content_type or "").split(";", 1)[0].strip().lower() == CONTENT_TYPE


# -- resume tokens ---------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class ResumeToken:
    stream: str
    seq: int

    def __post_init__(self) -> None:
        if not _STREAM_ID.fullmatch(self.stream):
            raise ValueError(f"stream id {self.stream!r} must be 1-32 characters of [0-9a-z]")
        if self.seq < 0:
            raise ValueError("seq must be >= 0")

    def __str__(self) -> str:
        return f"{self.stream}.{self.seq}"


def format_token(stream: str, seq: int) -> str:
    return str(ResumeToken(stream, seq))


def parse_token(text: str) -> ResumeToken | None:
    """The token, or None when ``text`` is not one (a client bug: the gateway answers 400)."""
    m = _TOKEN.fullmatch(text.strip()) if isinstance(text, str) else None
    return ResumeToken(m.group(1), int(m.group(2))) if m else None


# -- encoding (the gateway) ------------------------------------------------------------------
# Per-model objects arrive already encoded (the gateway splices them once per change and
# writes the same bytes to every client), so these take ``bytes`` for them.
def _line(obj: Mapping[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"


def encode_snapshot(
    gateway_id: str, config_epoch: int, count: int, reason: str, heartbeat_seconds: float
) -> bytes:
    return _line(
        {
            "type": SNAPSHOT,
            "gateway_id": gateway_id,
            "config_epoch": config_epoch,
            "count": count,
            "reason": reason,
            "heartbeat_seconds": heartbeat_seconds,
        }
    )


def encode_model(model_json: bytes) -> bytes:
    return b'{"type":"model","model":' + model_json + b"}\n"


def encode_snapshot_end(token: str, config_epoch: int) -> bytes:
    return _line({"type": SNAPSHOT_END, "resume": token, "config_epoch": config_epoch})


def encode_resumed(token: str, gateway_id: str, config_epoch: int, heartbeat_seconds: float) -> bytes:
    return _line(
        {
            "type": RESUMED,
            "resume": token,
            "gateway_id": gateway_id,
            "config_epoch": config_epoch,
            "heartbeat_seconds": heartbeat_seconds,
        }
    )


def encode_change(token: str, model_json: bytes) -> bytes:
    return b'{"type":"change","resume":' + orjson.dumps(token) + b',"model":' + model_json + b"}\n"


def encode_removed(token: str, model_id: str) -> bytes:
    return _line({"type": REMOVED, "resume": token, "model_id": model_id})


def encode_heartbeat(token: str | None, config_epoch: int) -> bytes:
    return _line({"type": HEARTBEAT, "resume": token, "config_epoch": config_epoch})


# -- decoding (the operator) -----------------------------------------------------------------
def decode_record(line: bytes | str) -> dict[str, Any]:
    """One line as a record dict with a known or unknown ``type``; StreamError if malformed."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise StreamError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise StreamError("a record must be a JSON object with a string 'type'")
    kind = obj["type"]
    if kind in (MODEL, CHANGE):
        model = obj.get("model")
        if not isinstance(model, dict) or not isinstance(model.get("model_id"), str):
            raise StreamError(f"{kind} record without a model object carrying a string model_id")
    if kind == REMOVED and not isinstance(obj.get("model_id"), str):
        raise StreamError("removed record without a string model_id")
    if kind in (SNAPSHOT_END, RESUMED, CHANGE, REMOVED) and not isinstance(obj.get("resume"), str):
        raise StreamError(f"{kind} record without a resume token")
    if kind == HEARTBEAT and not isinstance(obj.get("resume"), str | None):
        raise StreamError("heartbeat resume token must be a string or null")
    return obj


@dataclass(frozen=True)
class Update:
    """What one record did to the decoder's state.

    ``changed``: lower-cased ids of the models whose object was replaced, added or removed
    (for ``snapshot_end``: only those that differ from the state before the snapshot).
    ``reset``: the whole state was replaced by a snapshot.
    """

    kind: str
    changed: frozenset[str] = frozenset()
    reset: bool = False


_NOTHING = frozenset[str]()


@dataclass
class ReadinessStreamDecoder:
    """Client-side state of one stream: model id (lower case) -> latest per-model object.

    Feed it lines (:meth:`feed_line`) or raw chunks (:meth:`feed`); after a dropped
    connection call :meth:`connection_lost` and reconnect with :meth:`query`. A snapshot
    is staged and replaces the state only when complete, so a connection lost half-way
    through one leaves the previous state (and its token) intact. ``synced`` is True
    once the state is complete (after ``snapshot_end`` or ``resumed``) on this connection.
    The models are held packed (``PackedModels``): a read decodes one.
    """

    models: PackedModels = field(default_factory=PackedModels)
    resume_token: str | None = None
    gateway_id: str | None = None
    config_epoch: int | None = None
    heartbeat_seconds: float | None = None
    synced: bool = False
    snapshots: int = 0  # completed snapshots (a resume that was refused shows up here)
    resumes: int = 0  # honoured resumes
    last_reason: str | None = None  # reason of the last snapshot
    _staged: PackedModels | None = None
    _buffer: bytes = b""

    # -- input ---------------------------------------------------------------------------
    def feed(self, chunk: bytes) -> list[Update]:
        """Bytes as they arrive; a trailing partial line is kept for the next chunk."""
        data = self._buffer + chunk
        lines = data.split(b"\n")
        self._buffer = lines.pop()
        return [self.feed_line(line) for line in lines if line.strip()]

    def feed_line(self, line: bytes | str) -> Update:
        rec = decode_record(line)
        kind = rec["type"]
        if kind == SNAPSHOT:
            self._staged = PackedModels()
            self.synced = False
            self._meta(rec)
            reason = rec.get("reason")
            self.last_reason = reason if isinstance(reason, str) else None
            return Update(kind)
        if kind == MODEL:
            if self._staged is None:
                raise StreamError("model record outside a snapshot")
            model = rec["model"]
            self._staged.put(model["model_id"].lower(), model)
            return Update(kind)
        if kind == SNAPSHOT_END:
            if self._staged is None:
                raise StreamError("snapshot_end without a snapshot")
            old, new = self.models, self._staged
            self.models, self._staged = new, None
            self.resume_token = rec["resume"]
            self._meta(rec)
            self.synced = True
            self.snapshots += 1
            changed = {k for k in old.keys() | new.keys() if old.raw(k) != new.raw(k)}
            return Update(kind, frozenset(changed), reset=True)
        if self._staged is not None and kind in (RESUMED, CHANGE, REMOVED):
            raise StreamError(f"{kind} record inside a snapshot")
        if kind == RESUMED:
            self.resume_token = rec["resume"]
            self._meta(rec)
            self.synced = True
            self.resumes += 1
            return Update(kind)
        if kind == CHANGE:
            model = rec["model"]
            key = model["model_id"].lower()
            self.models.put(key, model)
            self.resume_token = rec["resume"]
            self._epoch(model.get("config_epoch"))
            return Update(kind, frozenset((key,)))
        if kind == REMOVED:
            key = rec["model_id"].lower()
            gone = self.models.pop(key)
            self.resume_token = rec["resume"]
            return Update(kind, frozenset((key,)) if gone else _NOTHING)
        if kind == HEARTBEAT:
            # Before the first snapshot of a connection a heartbeat has no token (and one
            # mid-snapshot would not describe the state we hold): keep ours then.
            if rec.get("resume") is not None and self._staged is None and self.synced:
                self.resume_token = rec["resume"]
            self._epoch(rec.get("config_epoch"))
            return Update(kind)
        return Update(kind)  # unknown: ignored

    def connection_lost(self) -> None:
        """Forget a half-received snapshot and partial line; keep the state and token."""
        self._staged = None
        self._buffer = b""
        self.synced = False

    # -- output --------------------------------------------------------------------------
    def query(self, models: Iterable[str] = ()) -> list[tuple[str, str]]:
        """Query parameters for the next connection (resume when we hold a token)."""
        params = [("watch", "true")]
        if self.resume_token is not None:
            params.append(("resume", self.resume_token))
        params.extend(("model", m) for m in models)
        return params

    def get(self, model_id: str) -> Mapping[str, Any] | None:
        return self.models.get(model_id.lower())

    def idle_timeout(self, heartbeats: float = 3.0) -> float:
        """Seconds without a line after which the connection should be taken for dead."""
        return heartbeats * (self.heartbeat_seconds or DEFAULT_HEARTBEAT_SECONDS)

    # -- helpers -------------------------------------------------------------------------
    def _meta(self, rec: Mapping[str, Any]) -> None:
        gid = rec.get("gateway_id")
        if isinstance(gid, str):
            self.gateway_id = gid
        hb = rec.get("heartbeat_seconds")
        if isinstance(hb, int | float) and not isinstance(hb, bool) and hb > 0:
            self.heartbeat_seconds = float(hb)
        self._epoch(rec.get("config_epoch"))

    def _epoch(self, value: Any) -> None:
        if isinstance(value, int) and not isinstance(value, bool):
            self.config_epoch = value
