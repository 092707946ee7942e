"""The config store as a replicated JetStream stream shared by every config-service replica.

Layout: stream ``NAME`` holds subjects ``sie.store.NAME.m.<token>``, one subject per model,
``<token>`` being the URL-safe base64 (no padding) of the lower-cased model id. Each message
is one write: JSON ``{"model_id", "epoch", "writer", "yaml"}``. The stream keeps one message
per subject (``max_msgs_per_subject=1``), so a restore reads one message per model, not the
history, and the store epoch is the largest epoch among the retained messages (the stream's
last message always carries it).

Why per-message compare-and-set: several processes may append (a new leader while the old
one is not yet fenced, or config-api replicas without leader election). Every append
carries ``Nats-Expected-Last-Sequence`` = the stream sequence this process has applied,
so JetStream refuses it if anything landed that this process has not seen, and
``Nats-Expected-Last-Subject-Sequence`` = the sequence of the model's last write known
here, so even a later write of a pipelined batch cannot land over a change to its model
it was not planned against (the lower-cased key also catches case twins). Consequence of
the first header: a message at sequence ``s`` always has epoch ``s + C`` for one constant
``C`` (0 for a stream this code created), so epochs stay unique and dense even when two
writers race and parts of their batches interleave.

A batch of k writes is pipelined (k publishes expecting s, s+1, ...; then k acks; the acks
come back on one reply subscription of our own: nats-py's ``publish_async`` never resolves
a refused publish, it raises the refusal inside its reply callback). Only a
fully acknowledged batch is applied directly by the writer. On any failure the store is
*behind*: it waits until its follower has received everything up to the stream's end,
and the service absorbs those records (its own writes that landed among them, recognised
by their writer tag) through the same path as records written by other replicas; the
writes that did not land are handed back to be re-planned, those whose append got no
answer marked ``unconfirmed``: such an append can still land later, but only while the
stream ends where it ended when the append was planned (tests/store/ simulates all this).

Hot follower: an ordered push consumer delivers every message of the stream (from the
first at startup); records with a sequence the service has already applied (its own
writes) are dropped, others go to the registry in stream order. A watchdog re-creates the
consumer from the last delivered sequence if it stops making progress behind the stream
end (nats-py resets an ordered consumer itself after missed heartbeats; this is the
belt to those braces, e.g. after a JetStream leader change).

Pure helpers (subjects, records, headers, :class:`FollowState`) and the decisions of a
commit (:func:`plan_appends`: what to publish with which conditions; :func:`settle`: fully
acknowledged or behind; :func:`landed_epochs`: which of ours the follower brought) come
first, so tests/store/ can drive them against a model of JetStream; the adapter
(:class:`JetStreamStore`) owns the NATS connection and only does the I/O.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from sie_operator.aio import wait_event
from sie_operator.natsconn import NatsAuth, bounded_close, connect_options, redact_url
from sie_operator.store.base import CommitResult, StoreRecord, StoreUnconfirmed
from sie_operator.store.fs import StoredModel, StoreError

log = logging.getLogger(__name__)

STREAM_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
SCHEME = "jetstream://"
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed expected-sequence check
MAX_REPLICAS = 5


# -- pure part --------------------------------------------------------------------------


def parse_location(raw: str) -> str | None:
    """The stream name of ``jetstream://NAME``, None for anything without that scheme;
    ValueError (one line) for a jetstream:// location with a bad name."""
    if not raw.startswith(SCHEME):
        return None
    name = raw[len(SCHEME) :].rstrip("/")
    if not STREAM_NAME_RE.fullmatch(name):
        raise ValueError(
            f"{raw!r}: the JetStream stream name must be 1-64 characters of letters, digits, '-' or '_'"
        )
    return name


def subject_prefix(stream: str) -> str:
    return f"sie.store.{stream}.m"


def model_key(model_id: str) -> str:
    """Per-model CAS key: the registry refuses case twins, so they share one subject."""
    return model_id.lower()


def subject_for(stream: str, model_id: str) -> str:
    token = base64.urlsafe_b64encode(model_key(model_id).encode("utf-8")).rstrip(b"=").decode("ascii")
    return f"{subject_prefix(stream)}.{token}"


def encode_record(model_id: str, text: str, epoch: int, writer: str) -> bytes:
    return orjson.dumps({"model_id": model_id, "epoch": epoch, "writer": writer, "yaml": text})


def decode_record(seq: int, data: bytes) -> StoreRecord:
    """A stream message as a record; ValueError (naming the sequence) if it is not one of ours."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"stream message {seq} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"stream message {seq} is not a JSON object")
    mid, epoch, text, writer = obj.get("model_id"), obj.get("epoch"), obj.get("yaml"), obj.get("writer", "")
    if not isinstance(mid, str) or not isinstance(text, str) or not isinstance(writer, str):
        raise ValueError(f"stream message {seq} lacks model_id/yaml")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        raise ValueError(f"stream message {seq} has no valid epoch")
    return StoreRecord(seq, mid, text, epoch, writer)


def append_headers(expected_last_seq: int, subject_seq: int) -> dict[str, str]:
    """The two compare-and-set conditions of one append (see the module docstring)."""
    return {
        "Nats-Expected-Last-Sequence": str(expected_last_seq),
        "Nats-Expected-Last-Subject-Sequence": str(subject_seq),
    }


@dataclass
class FollowState:
    """What this process has applied of the stream: the last sequence, the epoch, and the
    sequence of each model's last write (for the per-subject CAS). Pure bookkeeping."""

    applied_seq: int = 0
    epoch: int = 0
    subject_seqs: dict[str, int] = field(default_factory=dict)

    def accept(self, rec: StoreRecord) -> bool:
        """Take a record in stream order; False for one already applied (e.g. our own)."""
        if rec.seq <= self.applied_seq:
            return False
        self.applied_seq = rec.seq
        self.epoch = max(self.epoch, rec.epoch)  # never backwards
        self.subject_seqs[model_key(rec.model_id)] = rec.seq
        return True


def landed_epochs(tags: Sequence[str], records: Sequence[StoreRecord]) -> list[int | None]:
    """For each write tag, the epoch of its record among ``records`` (None: did not land)."""
    by_tag = {r.writer: r.epoch for r in records}
    return [by_tag.get(t) for t in tags]


class AppendRefused(StoreError):
    """JetStream refused an append (``code`` 10071: an expected sequence did not match)."""

    def __init__(self, code: int, description: str) -> None:
        self.code = code
        super().__init__(f"JetStream refused the append: {description} (error {code})")


def _describe_failure(exc: int | BaseException) -> str:
    if isinstance(exc, AppendRefused) and exc.code == WRONG_LAST_SEQUENCE:
        return f"another writer appended first ({exc})"
    if isinstance(exc, BaseException):
        return redact_url(str(exc)) or type(exc).__name__
    return f"acknowledged at an unexpected stream sequence {exc}"


@dataclass(frozen=True)
class Append:
    """One planned publish of a commit: where it goes, its two conditions, and what its
    acknowledgement must say (``seq``: the stream sequence it lands at if accepted)."""

    subject: str
    headers: dict[str, str]
    payload: bytes
    tag: str
    seq: int


def plan_appends(
    state: FollowState,
    stream: str,
    writes: Sequence[tuple[str, str]],
    epoch: int,
    writer_id: str,
    counter: int,
) -> list[Append]:
    """The appends of one commit planned against ``state``: write ``i`` expects the stream
    to end at ``applied_seq + i`` and its model's subject at the last write known here, and
    carries epoch ``epoch - k + 1 + i`` and tag ``writer_id:counter + 1 + i``. StoreError if
    the epochs do not follow the applied epoch (the caller planned against another state)."""
    k = len(writes)
    base = state.applied_seq
    first = epoch - k + 1
    if first != state.epoch + 1:
        raise StoreError(f"epoch {first} does not follow the stored epoch {state.epoch}")
    out = []
    for i, (mid, text) in enumerate(writes):
        tag = f"{writer_id}:{counter + 1 + i}"
        out.append(
            Append(
                subject_for(stream, mid),
                append_headers(base + i, state.subject_seqs.get(model_key(mid), 0)),
                encode_record(mid, text, first + i, tag),
                tag,
                base + 1 + i,
            )
        )
    return out


@dataclass(frozen=True)
class Settled:
    """What the acknowledgements of a commit mean: ``result`` when every append landed as
    planned (``state`` is then the state after it), else None and ``error`` says why the
    store is behind (``state`` is unchanged: the follower brings the landed ones), and
    ``unconfirmed`` lists the writes whose append JetStream did not refuse (it may have
    landed, or land later)."""

    result: CommitResult | None
    state: FollowState
    error: str | None = None
    unconfirmed: tuple[int, ...] = ()


def settle(
    state: FollowState,
    writes: Sequence[tuple[str, str]],
    appends: Sequence[Append],
    results: Sequence[int | BaseException],
    publish_error: str | None = None,
) -> Settled:
    """Decide a commit from its acknowledgements (a stream sequence or the exception, one
    per append that was published): fully acknowledged at the planned sequences and
    nothing failed to publish, or behind."""
    k = len(writes)
    acked = [r if isinstance(r, int) and r == a.seq else None for a, r in zip(appends, results, strict=False)]
    if publish_error is None and len(acked) == k and all(a is not None for a in acked):
        subject_seqs = dict(state.subject_seqs)
        for (mid, _), a in zip(writes, appends, strict=True):
            subject_seqs[model_key(mid)] = a.seq
        epochs: list[int | None] = [state.epoch + 1 + i for i in range(k)]
        after = FollowState(state.applied_seq + k, state.epoch + k, subject_seqs)
        return Settled(CommitResult(epochs, True), after)
    error = publish_error
    if error is None:
        bad = next((r for r, a in zip(results, acked, strict=False) if a is None), None)
        error = _describe_failure(bad) if bad is not None else "not every append was published"
    unconfirmed = tuple(i for i, r in enumerate(results) if not isinstance(r, AppendRefused))
    return Settled(None, state, error, unconfirmed)


def unapplied(state: FollowState, records: Sequence[StoreRecord]) -> list[StoreRecord]:
    """The records of ``records`` beyond what ``state`` has applied (others', or ours that
    landed out of order)."""
    return [r for r in records if r.seq > state.applied_seq]


# -- adapter ----------------------------------------------------------------------------


class JetStreamStore:
    """A stream on a NATS JetStream cluster as the config store (see the module docstring)."""

    kind = "jetstream"
    shared = True

    def __init__(
        self,
        url: str,
        stream: str,
        *,
        auth: NatsAuth | None = None,
        replicas: int = 1,
        name: str = "sie-config-store",
        startup_timeout: float = 30.0,
        op_timeout: float = 5.0,
        idle_heartbeat: float = 1.0,
        create: bool = True,
        adjust_replicas: bool = True,
    ) -> None:
        """``create``: create the stream if missing (else StoreError); ``adjust_replicas``:
        set an existing stream's replica count to ``replicas`` (a tool reading a store
        passes False to both, so it changes nothing it was not asked to)."""
        if not STREAM_NAME_RE.fullmatch(stream):
            raise StoreError(f"invalid JetStream stream name {stream!r}")
        self.url = url
        self.shown_url = redact_url(url)
        self.stream = stream
        self.auth = auth or NatsAuth()
        self.replicas = replicas
        self.create = create
        self.adjust_replicas = adjust_replicas
        self.client_name = name
        self.startup_timeout = startup_timeout
        self.op_timeout = op_timeout
        self.idle_heartbeat = idle_heartbeat
        self.state = FollowState()
        self.writer_id = uuid.uuid4().hex[:16]
        self._writes = 0
        self._nc: NATS | None = None
        self._js: Any = None
        self._sub: Any = None
        self._inbox: collections.deque[StoreRecord] = collections.deque()
        self._delivered = 0  # highest stream sequence the consumer delivered
        self._progress = asyncio.Event()  # set on every delivery (catch-up waits on it)
        self._records = asyncio.Event()  # set on every delivery (the service's follower waits)
        self._behind: str | None = None
        self._opened = False
        self._restored: list[StoredModel] | None = None
        self._bad_records = 0
        self._watch: tuple[float, int] = (0.0, 0)  # (last check, delivered then)
        self._reply_prefix = ""
        self._acks: dict[str, asyncio.Future[int]] = {}  # reply token -> stream sequence

    # -- status --------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def opened(self) -> bool:
        return self._opened

    @property
    def broken(self) -> str | None:
        if not self._opened:
            return None
        if self._nc is None or not self._nc.is_connected:
            return f"not connected to NATS at {self.shown_url}"
        if self._behind:
            return f"behind the stream: {self._behind}"
        return None

    @property
    def fatal(self) -> str | None:
        return None  # reconnects and catch-up repair everything; a restart would not help

    @property
    def max_record_bytes(self) -> int | None:
        """The server's max_payload: a record is one message (headers included)."""
        nc = self._nc
        return int(nc.max_payload) if nc is not None and nc.is_connected else None

    @property
    def behind(self) -> str | None:
        return self._behind

    @property
    def delivered_seq(self) -> int:
        return self._delivered

    def describe(self) -> str:
        return f"{SCHEME}{self.stream} (R{self.replicas}) on {self.shown_url}"

    # -- open / restore ------------------------------------------------------------------
    async def open(self) -> int:
        """Connect (retrying until startup_timeout), create the stream if missing, read it
        to the end. StoreError (one line) if that cannot be done."""
        if self._opened:
            return self.state.epoch
        try:
            options = connect_options(self.url, self.auth)
        except ValueError as exc:
            raise StoreError(str(exc)) from exc
        deadline = time.monotonic() + self.startup_timeout
        last = ""
        while True:
            nc = NATS()
            try:
                await nc.connect(
                    **options,
                    name=self.client_name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    connect_timeout=2,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                )
                break
            except Exception as exc:
                last = redact_url(str(exc)) or type(exc).__name__
                await bounded_close(nc.close(), 1.0)
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"cannot reach NATS at {self.shown_url} for the JetStream store: {last}"
                    ) from None
                await asyncio.sleep(0.5)
        self._nc = nc
        self._js = nc.jetstream(timeout=self.op_timeout)
        try:
            self._reply_prefix = nc.new_inbox()
            await nc.subscribe(self._reply_prefix + ".*", cb=self._on_ack)
            await self._ensure_stream(deadline)
            while True:  # the consumer create can time out while a restarted node catches up
                try:
                    await self._subscribe(1)
                    break
                except Exception as exc:
                    if time.monotonic() > deadline:
                        why = redact_url(str(exc)) or type(exc).__name__
                        raise StoreError(f"cannot follow the JetStream stream {self.stream}: {why}") from None
                    await asyncio.sleep(0.5)
            await self.catch_up(max(self.op_timeout, deadline - time.monotonic()))
        except BaseException:
            await self.close()
            raise
        restored: dict[str, StoreRecord] = {}
        for rec in self.drain():
            restored[model_key(rec.model_id)] = rec
        if self._bad_records:
            await self.close()
            raise StoreError(
                f"JetStream stream {self.stream} holds {self._bad_records} message(s) that are not model "
                "records (see the log); refusing to serve a partial catalog"
            )
        self._restored = [
            StoredModel(r.model_id, Path(f"{SCHEME}{self.stream}/{r.model_id}"), r.text, r.epoch)
            for r in sorted(restored.values(), key=lambda r: r.model_id)
        ]
        self._opened = True
        log.info(
            "JetStream store %s: %d model(s), epoch %d, stream sequence %d",
            self.describe(),
            len(self._restored),
            self.state.epoch,
            self.state.applied_seq,
        )
        return self.state.epoch

    async def _ensure_stream(self, deadline: float) -> None:
        """Create the stream if missing; adjust the replica count if it differs."""
        want = StreamConfig(
            name=self.stream,
            subjects=[f"{subject_prefix(self.stream)}.*"],
            max_msgs_per_subject=1,
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            allow_direct=True,
            deny_delete=True,
        )
        while True:
            try:
                try:
                    info = await self._js.stream_info(self.stream)
                except nats.js.errors.NotFoundError:
                    if not self.create:
                        raise StoreError(f"no JetStream stream {self.stream} on {self.shown_url}") from None
                    await self._js.add_stream(want)
                    log.info("created JetStream stream %s (R%d)", self.stream, self.replicas)
                    return
                cfg = info.config
                if cfg.max_msgs_per_subject != 1 or list(cfg.subjects or []) != want.subjects:
                    raise StoreError(
                        f"JetStream stream {self.stream} exists with other subjects or retention "
                        f"(subjects {cfg.subjects}, max_msgs_per_subject {cfg.max_msgs_per_subject}); "
                        "it is not a config store: pick another name"
                    )
                if self.adjust_replicas and (cfg.num_replicas or 1) != self.replicas:
                    try:
                        cfg.num_replicas = self.replicas
                        await self._js.update_stream(cfg)
                        log.info("JetStream stream %s: replicas set to %d", self.stream, self.replicas)
                    except Exception as exc:
                        log.warning(
                            "JetStream stream %s: cannot change replicas to %d: %s",
                            self.stream,
                            self.replicas,
                            exc,
                        )
                return
            except StoreError:
                raise
            except Exception as exc:  # no JetStream leader yet (cluster forming), timeouts
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"JetStream stream {self.stream} on {self.shown_url} is not usable: "
                        f"{redact_url(str(exc)) or type(exc).__name__} (is JetStream enabled?)"
                    ) from None
                await asyncio.sleep(0.5)

    async def _subscribe(self, start_seq: int) -> None:
        old, self._sub = self._sub, None
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.unsubscribe(), self.op_timeout)
        cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, start_seq))
        self._sub = await self._js.subscribe(
            f"{subject_prefix(self.stream)}.*",
            stream=self.stream,
            cb=self._on_msg,
            ordered_consumer=True,
            idle_heartbeat=self.idle_heartbeat,
            config=cfg,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )

    async def _on_msg(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        if seq <= self._delivered:
            return  # re-delivered after a consumer reset
        self._delivered = seq
        try:
            rec = decode_record(seq, msg.data)
        except ValueError as exc:
            self._bad_records += 1
            log.error("JetStream store %s: skipping %s", self.stream, exc)
        else:
            self._inbox.append(rec)
        self._progress.set()
        self._records.set()

    async def _on_ack(self, msg: Msg) -> None:
        fut = self._acks.pop(msg.subject.rpartition(".")[2], None)
        if fut is None or fut.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            fut.set_exception(StoreError("no JetStream responder for the stream (no stream leader?)"))
            return
        try:
            resp = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            fut.set_exception(StoreError(f"unreadable JetStream acknowledgement {msg.data[:80]!r}"))
            return
        err = resp.get("error") if isinstance(resp, dict) else None
        if err:
            code = int(err.get("err_code") or 0)
            fut.set_exception(AppendRefused(code, str(err.get("description") or err)))
        elif isinstance(resp, dict) and isinstance(resp.get("seq"), int):
            fut.set_result(resp["seq"])
        else:
            fut.set_exception(StoreError(f"unexpected JetStream acknowledgement {resp!r}"))

    async def _on_disconnected(self) -> None:
        """Appends in flight on a lost connection get no ack: fail them now, not at the timeout."""
        acks, self._acks = self._acks, {}
        for fut in acks.values():
            if not fut.done():
                fut.set_exception(StoreError("NATS connection lost before the acknowledgement"))

    async def _on_error(self, exc: Exception) -> None:
        log.warning("JetStream store NATS %s: %s", self.shown_url, redact_url(str(exc)) or type(exc).__name__)

    async def _stream_last_seq(self) -> int:
        info = await self._js.stream_info(self.stream)
        return int(info.state.last_seq)

    async def load_all(self) -> list[StoredModel]:
        restored, self._restored = self._restored or [], None
        return restored

    async def list_ids(self) -> list[str]:
        return [m.model_id for m in self._restored or []]

    # -- follower --------------------------------------------------------------------------
    def drain(self) -> list[StoreRecord]:
        out = []
        while self._inbox:
            rec = self._inbox.popleft()
            if self.state.accept(rec):
                out.append(rec)
        return out

    async def wait_records(self) -> None:
        await self._records.wait()
        self._records.clear()

    async def catch_up(self, within: float) -> None:
        """Wait until the consumer delivered everything up to the stream's end as of now.

        If it makes no progress for a while, re-create it from the last delivered
        sequence once; StoreError if the stream cannot be reached or the end not reached."""
        self._require_connection()
        deadline = time.monotonic() + within
        while True:  # a reconnect or a stream leader election can take a few seconds
            try:
                remaining = deadline - time.monotonic()
                last = await asyncio.wait_for(self._stream_last_seq(), max(0.1, min(remaining, 2.0)))
                break
            except Exception as exc:
                if time.monotonic() + 0.2 >= deadline:
                    why = redact_url(str(exc)) or type(exc).__name__
                    raise StoreError(f"cannot read the JetStream stream {self.stream}: {why}") from None
                await asyncio.sleep(0.2)
        resubscribed = False
        stall = min(2.0, within / 2)
        while self._delivered < last:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreError(
                    f"JetStream store {self.stream}: follower at sequence {self._delivered}, "
                    f"stream at {last} (not caught up in {within:.1f}s)"
                )
            self._progress.clear()
            try:
                await wait_event(self._progress, min(remaining, stall))
            except TimeoutError:
                if not resubscribed:
                    resubscribed = True
                    log.warning(
                        "JetStream store %s: follower stalled at %d of %d; re-creating its consumer",
                        self.stream,
                        self._delivered,
                        last,
                    )
                    with contextlib.suppress(Exception):
                        await self._subscribe(self._delivered + 1)
        self._behind = None

    # -- writes ------------------------------------------------------------------------------
    def _require_connection(self) -> None:
        """Fail at once while NATS is down: nats-py would buffer the request until reconnected
        and every write would wait for the full timeout before its 503."""
        if self._js is None:
            raise StoreError("store is not open")
        if self._nc is None or not self._nc.is_connected:
            raise StoreError(f"not connected to NATS at {self.shown_url}")

    async def commit(self, writes: Sequence[tuple[str, str]], epoch: int) -> CommitResult:
        if not self._opened:
            raise StoreError("store is not open")
        self._require_connection()
        k = len(writes)
        if self._behind:
            await self.catch_up(self.op_timeout)  # raises if still failing
        if unapplied(self.state, self._inbox):
            # others' records arrived after the service planned: its plans may be stale, so
            # append nothing; the service absorbs them and re-plans
            return CommitResult([None] * k, False)
        appends = plan_appends(self.state, self.stream, writes, epoch, self.writer_id, self._writes)
        nc = self._nc
        assert nc is not None
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[int]] = []
        error: str | None = None
        try:
            for a in appends:
                self._writes += 1
                fut: asyncio.Future[int] = loop.create_future()
                token = f"{self.writer_id}{self._writes}"
                self._acks[token] = fut
                futures.append(fut)
                await nc.publish(
                    a.subject, a.payload, reply=f"{self._reply_prefix}.{token}", headers=a.headers
                )
        except Exception as exc:
            error = f"publish failed: {redact_url(str(exc)) or type(exc).__name__}"
        results: list[int | BaseException] = []
        if futures:
            _, pending = await asyncio.wait(futures, timeout=self.op_timeout)
            for f in futures:
                if f in pending:
                    f.cancel()
                    results.append(TimeoutError("no acknowledgement from JetStream"))
                elif f.cancelled():
                    results.append(TimeoutError("cancelled"))
                else:
                    results.append(f.exception() or f.result())
            for t in [t for t, f in self._acks.items() if f.done()]:
                del self._acks[t]
        settled = settle(self.state, writes, appends, results, error)
        if settled.result is not None:
            self.state = settled.state
            return settled.result
        self._behind = settled.error
        log.warning(
            "JetStream store %s: append refused or unconfirmed (%s); catching up", self.stream, settled.error
        )
        try:
            await self.catch_up(2 * self.op_timeout)
        except StoreError as exc:
            if settled.unconfirmed:
                raise StoreUnconfirmed(f"{settled.error}; then {exc}") from exc
            raise
        landed = landed_epochs([a.tag for a in appends], unapplied(self.state, self._inbox))
        unsure = tuple(i for i in settled.unconfirmed if landed[i] is None)
        return CommitResult(landed, False, unsure)

    async def maintain(self) -> None:
        """Catch up after a failure; re-create a follower that stopped behind the stream end."""
        if not self._opened or self._js is None or self._nc is None or not self._nc.is_connected:
            return
        if self._behind:
            with contextlib.suppress(StoreError):
                await self.catch_up(self.op_timeout)
            return
        now = time.monotonic()
        checked, delivered_then = self._watch
        if now - checked < 2.0:
            return
        self._watch = (now, self._delivered)
        if self._delivered != delivered_then:
            return  # moving
        try:
            last = await asyncio.wait_for(self._stream_last_seq(), self.op_timeout)
        except Exception:
            return
        if last > self._delivered and checked:
            log.warning(
                "JetStream store %s: follower stuck at %d, stream at %d; re-creating its consumer",
                self.stream,
                self._delivered,
                last,
            )
            with contextlib.suppress(Exception):
                await self._subscribe(self._delivered + 1)

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        nc, self._nc = self._nc, None
        if sub is not None and nc is not None and nc.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.unsubscribe(), 2.0)
        if nc is not None and not nc.is_closed:
            await bounded_close(nc.close(), 2.0)
        self._js = None
        self._opened = False
