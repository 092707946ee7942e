"""Readiness changes as a feed: the engine behind ``GET /v1/configs/status?watch=true``.

Change detection is O(changed), never a diff of the catalog per event. The places where a
readiness input changes mark what they touch:

- the mirror applied a delta to model M (``model_changed``): M is dirty, and so are M's
  bundles, whose expected hash moved;
- a Healthy worker reported a new hash, or a bundle's Healthy set changed
  (``WorkerTable.listener``): the bundle is touched;
- a bootstrap swapped the registry (``registry_replaced``): everything is re-evaluated once
  (the bootstrap itself was O(catalog)).

A flush turns that into records: ``coalesce`` (50 ms) after a delta marked a model, or a
few ms after a worker report (an ack that completes a model's verdict should not wait); a
model a delta marked stays out of such an early flush until its 50 ms are over unless it is
acked by then, so a write acked within the window costs one record. A touched bundle is
re-levelled: each eligible worker's *level* (``readiness.worker_level``: the newest
mutation whose bundle state its hash is known to hold) is recomputed, and for a worker
whose level moved from ``a`` to ``b`` only the models whose last change lies in
``(min, max]`` can have changed: they are found by bisecting the bundle's models sorted by
last change (:class:`BundleOrder`), so a worker catching up with the last few writes costs
those few models. A changed eligible set changes every model of the bundle.

A dirty model is emitted only when its model-granular readiness (who holds the model and
who does not, per bundle) differs from what was last emitted for it; a change that only
moves workers between acked and pending while the verdict stays the same is held back
until ``settle`` seconds after the model's previous record, so a model converging on many
workers costs a few records, not one per worker. Each record gets the next sequence
number; the last ``history`` numbers are remembered (model ids only), so a client that
reconnects with a token inside that window gets just the models changed since, at their
current state.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from sie_operator.aio import wait_event
from sie_operator.catalog.registry import Registry
from sie_operator.protocol import readiness_stream as rs

from ..protocol.mirror import ConfigMirror
from . import readiness
from .health import WorkerTable

log = logging.getLogger(__name__)

DEFAULT_HISTORY = 65536
DEFAULT_COALESCE = 0.05
DEFAULT_SETTLE = 1.0
DEFAULT_MAX_BUFFER = 64 * 2**20
_SNAPSHOT_CHUNK = 1 << 20


def new_stream_id() -> str:
    """12 base-36 characters from the OS RNG: one per gateway process."""
    n = int.from_bytes(os.urandom(8), "big")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = []
    for _ in range(12):
        n, r = divmod(n, 36)
        out.append(digits[r])
    return "".join(out)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class BundleOrder:
    """A bundle's models by level (last change), for "which models lie in (lo, hi]".

    Sorted parallel lists with lazy deletion: a model that changes again is appended with
    its new level (levels only grow, so appending keeps the order) and its old entry turns
    stale; a query bisects and skips stale entries; the lists are compacted once stale
    entries outnumber live ones. A query costs O(log n + entries in the range).
    """

    __slots__ = ("_ids", "_levels", "_stale", "current")

    def __init__(self, items: Iterable[tuple[str, int]] = ()) -> None:
        self.current: dict[str, int] = dict(items)
        self._compact()

    def _compact(self) -> None:
        pairs = sorted((level, mid) for mid, level in self.current.items())
        self._levels = [level for level, _ in pairs]
        self._ids = [mid for _, mid in pairs]
        self._stale = 0

    def set(self, model_id: str, level: int) -> None:
        if self.current.get(model_id) == level:
            return
        if model_id in self.current:
            self._stale += 1
        self.current[model_id] = level
        if not self._levels or level >= self._levels[-1]:
            self._levels.append(level)
            self._ids.append(model_id)
        else:  # not expected (levels grow), but keep the lists sorted regardless
            pos = bisect.bisect_right(self._levels, level)
            self._levels.insert(pos, level)
            self._ids.insert(pos, model_id)
        if self._stale > 64 and self._stale > len(self.current):
            self._compact()

    def between(self, lo: int, hi: int) -> Iterator[str]:
        """Models whose level is in ``(lo, hi]``."""
        levels, ids, current = self._levels, self._ids, self.current
        for k in range(bisect.bisect_right(levels, lo), bisect.bisect_right(levels, hi)):
            mid = ids[k]
            if current.get(mid) == levels[k]:
                yield mid

    def __iter__(self) -> Iterator[str]:
        return iter(self.current)

    def __len__(self) -> int:
        return len(self.current)


@dataclass(slots=True)
class _Emitted:
    full: bytes
    verdict: bytes
    at: float


class Subscriber:
    """One open stream: the records waiting to be written, bounded in bytes."""

    def __init__(
        self, wanted: frozenset[str] | None, max_buffer: int, on_overflow: Callable[[], None] | None
    ) -> None:
        self.wanted = wanted  # lower-cased model ids, None = all
        self.max_buffer = max_buffer
        self.on_overflow = on_overflow
        self.closed = False
        self.overflowed = False
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._event = asyncio.Event()

    def wants(self, model_id: str) -> bool:
        return self.wanted is None or model_id.lower() in self.wanted

    def push(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > self.max_buffer:
            # A client that does not read: drop it rather than buffer without bound. It
            # reconnects with its last token and resumes (or gets a snapshot).
            self.overflowed = True
            self.close()
            if self.on_overflow is not None:
                self.on_overflow()
        self._event.set()

    def close(self) -> None:
        self.closed = True
        self._chunks.clear()
        self._size = 0
        self._event.set()

    async def next(self, wait: float) -> bytes | None:
        """Everything pending (b"" once closed); None when ``wait`` seconds passed with nothing."""
        if not self._chunks and not self.closed:
            with contextlib.suppress(TimeoutError):
                await wait_event(self._event, wait)
        self._event.clear()
        if self.closed:
            return b""
        if not self._chunks:
            return None
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        return data


@dataclass
class Opening:
    """What a new stream writes first: a snapshot or a resumed catch-up, already encoded."""

    chunks: list[bytes]
    kind: str  # rs.SNAPSHOT or rs.RESUMED
    reason: str | None
    records: int


class ReadinessFeed:
    """Dirty marking, coalesced flushes, the bounded change log and the subscribers."""

    def __init__(
        self,
        mirror: ConfigMirror,
        table: WorkerTable,
        gateway_id: str,
        *,
        history: int = DEFAULT_HISTORY,
        coalesce: float = DEFAULT_COALESCE,
        settle: float = DEFAULT_SETTLE,
        heartbeat: float = rs.DEFAULT_HEARTBEAT_SECONDS,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        clock: Callable[[], float] = time.monotonic,
        auto_flush: bool = True,
        stream_id: str | None = None,
        on_changes: Callable[[int], None] | None = None,
    ) -> None:
        if history < 1:
            raise ValueError("history must be at least 1")
        self.mirror = mirror
        self.table = table
        self.gateway_id = gateway_id
        self.coalesce = coalesce
        self.settle = settle
        self.heartbeat = heartbeat
        self.max_buffer = max_buffer
        self.clock = clock
        self.auto_flush = auto_flush
        self.stream_id = stream_id or new_stream_id()
        self.seq = 0
        self._log: deque[str] = deque(maxlen=history)
        self._state: dict[str, _Emitted] = {}
        self._order: dict[str, BundleOrder] = {}
        self._members: dict[str, tuple[tuple[str, str], ...]] = {}
        self._levels: dict[str, dict[str, int]] = {}
        self._dirty: dict[str, float] = {}  # model -> when a delta first marked it
        self._touched: set[str] = set()
        self._deferred: dict[str, float] = {}
        self._full = True
        self._subs: set[Subscriber] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self.records_emitted = 0
        self.on_changes = on_changes
        self.closed = False
        # the feed is the observer's delegate for these two hooks, and the table's listener
        table.listener = self.bundle_touched

    # -- hooks (O(1) each) ---------------------------------------------------------------
    def model_changed(self, model_id: str, bundles: Sequence[str]) -> None:
        self._dirty.setdefault(model_id, self.clock())
        level = readiness.model_level(self.mirror.model_seq(model_id))
        for b in bundles:
            order = self._order.get(b)
            if order is None:
                order = self._order[b] = BundleOrder()
            order.set(model_id, level)
            self._touched.add(b)
        self._schedule(self.coalesce)

    def registry_replaced(self) -> None:
        self._full = True
        self._schedule(self.coalesce)

    def bundle_touched(self, bundle: str) -> None:
        # A worker report is news for models already out there (an ack completing a
        # verdict): flushed within a few ms. Models a delta just marked keep waiting for
        # their own window unless they are acked by then (see ``flush(early=...)``).
        self._touched.add(bundle)
        self._schedule(self.coalesce / 10)

    # -- flushing ------------------------------------------------------------------------
    def _schedule(self, delay: float) -> None:
        if not self.auto_flush or self.closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        at = loop.time() + delay
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer = loop.call_at(at, self._timed_flush)
        self._timer_at = at

    def _timed_flush(self) -> None:
        try:
            self.flush(early=True)
        except Exception:  # a bug must not stop change detection for good: start over
            log.exception("readiness feed flush failed; re-evaluating every model")
            self._full = True
            self._timer = None
            self._schedule(1.0)

    @property
    def pending(self) -> bool:
        return bool(self._full or self._dirty or self._touched)

    def flush(self, *, force: bool = False, early: bool = False) -> int:
        """Emit the records of everything marked since the last flush; returns how many.

        ``force``: also emit held-back (settling) changes now, so that afterwards what was
        emitted equals the live state for every model (a new stream's snapshot relies on it).
        ``early`` (the timer's flushes): a model marked by a delta less than ``coalesce``
        ago stays marked unless it is already acked everywhere, so a write whose acks
        arrive within the window costs one record (acked), not two (pending, acked), and
        that record goes out as soon as the last ack is reported.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = float("inf")
        reg = self.mirror.registry
        now = self.clock()
        cand: set[str] = set()
        touched, self._touched = self._touched, set()
        if self._full:
            self._full = False
            self._rebuild(reg)
            cand.update(e.model_id for e in reg)
            cand.update(self._state)
            cand.update(self._dirty)
            self._dirty.clear()
            for b in list(self._levels.keys() | {b.name for b in reg.bundles.bundles}):
                self._relevel(reg, b, None)
        else:
            for b in touched:
                self._relevel(reg, b, cand)
            young: dict[str, float] = {}
            if early and not force:
                due = now - self.coalesce + 0.001  # timers may fire a hair early
                young = {m: t for m, t in self._dirty.items() if t > due}
            cand.update(self._dirty)
            self._dirty = young
            cand.difference_update(young)
        if self._deferred:
            for mid in [m for m, t in self._deferred.items() if force or t <= now]:
                del self._deferred[mid]
                cand.add(mid)
        if self._dirty:
            # A young model goes out early only if it is already acked everywhere.
            enc = self._encoder(reg)
            for mid in list(self._dirty):
                entry = reg.get(mid)
                if entry is not None and enc.model_acked(mid, entry.bundles):
                    del self._dirty[mid]
                    cand.add(mid)
        emitted = self._emit(reg, cand, now, force) if cand else 0
        if self._dirty:
            self._schedule(max(0.0, min(self._dirty.values()) + self.coalesce - now))
        if self._deferred:
            self._schedule(max(0.0, min(self._deferred.values()) - now))
        return emitted

    def _rebuild(self, reg: Registry) -> None:
        seq_of = self.mirror.model_seq
        by_bundle: dict[str, list[tuple[int, str]]] = {}
        for e in reg:
            level = readiness.model_level(seq_of(e.model_id))
            for b in e.bundles:
                by_bundle.setdefault(b, []).append((level, e.model_id))
        self._order = {b: BundleOrder((m, lv) for lv, m in items) for b, items in by_bundle.items()}

    def _relevel(self, reg: Registry, bundle: str, cand: set[str] | None) -> None:
        """Recompute the levels of a bundle's eligible workers; mark the models that moved."""
        workers = self.table.group(bundle)
        members = tuple((w.display_name, w.url) for w in workers)
        expected = reg.bundle_hash(bundle)
        seq_of = self.mirror.hash_seq
        levels = {
            w.url: readiness.worker_level(bundle, expected, w.config_hash, seq_of, w.previous_hashes)
            for w in workers
        }
        old_members = self._members.get(bundle)
        old_levels = self._levels.get(bundle, {})
        if members:
            self._members[bundle], self._levels[bundle] = members, levels
        else:
            self._members.pop(bundle, None)
            self._levels.pop(bundle, None)
        if cand is None:
            return
        order = self._order.get(bundle)
        if not order:
            return
        if members != (old_members or ()):
            cand.update(order)
            return
        for url, new in levels.items():
            old = old_levels.get(url)
            if old is None or old == new:
                continue
            lo, hi = (old, new) if old < new else (new, old)
            cand.update(order.between(lo, hi))

    def _encoder(self, reg: Registry) -> readiness.ModelEncoder:
        m = self.mirror
        return readiness.ModelEncoder(m.epoch, reg.bundle_hash, self.table.group, m.model_seq, m.hash_seq)

    def _emit(self, reg: Registry, cand: Iterable[str], now: float, force: bool) -> int:
        enc = self._encoder(reg)
        changes: list[tuple[str, Sequence[str] | None]] = []
        for mid in sorted(cand):
            entry = reg.get(mid)
            st = self._state.get(mid)
            if entry is None:
                if st is not None:
                    del self._state[mid]
                    self._deferred.pop(mid, None)
                    changes.append((mid, None))
                continue
            full, verdict = enc.keys(mid, entry.bundles)
            fd = _digest(full)
            if st is not None and st.full == fd:
                self._deferred.pop(mid, None)
                continue
            vd = _digest(verdict)
            if not force and st is not None and st.verdict == vd and now - st.at < self.settle:
                self._deferred.setdefault(mid, st.at + self.settle)
                continue
            self._deferred.pop(mid, None)
            self._state[mid] = _Emitted(fd, vd, now)
            changes.append((mid, entry.bundles))
        if not changes:
            return 0
        lines: list[tuple[str, bytes]] = []
        for mid, bundles in changes:
            self.seq += 1
            self._log.append(mid)
            if self._subs:
                token = rs.format_token(self.stream_id, self.seq)
                if bundles is None:
                    lines.append((mid, rs.encode_removed(token, mid)))
                else:
                    lines.append((mid, rs.encode_change(token, enc.encode(mid, bundles))))
        self.records_emitted += len(changes)
        if self.on_changes is not None:
            self.on_changes(len(changes))
        if lines:
            everything: bytes | None = None
            for sub in list(self._subs):
                if sub.wanted is None:
                    if everything is None:
                        everything = b"".join(line for _, line in lines)
                    sub.push(everything)
                else:
                    sub.push(b"".join(line for mid, line in lines if sub.wants(mid)))
        return len(changes)

    # -- streams -------------------------------------------------------------------------
    @property
    def token(self) -> str:
        return rs.format_token(self.stream_id, self.seq)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def subscribe(
        self, models: Iterable[str] = (), on_overflow: Callable[[], None] | None = None
    ) -> Subscriber:
        wanted = frozenset(m.lower() for m in models) or None
        sub = Subscriber(wanted, self.max_buffer, on_overflow)
        if self.closed:
            sub.close()
        else:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subs.discard(sub)
        sub.close()

    def open(self, sub: Subscriber, resume: rs.ResumeToken | None) -> Opening:
        """The first records of a stream, consistent with every record pushed to it later.

        Synchronous: flushes (forced, without ``sub``) so that the emitted state equals
        the live one, then reads the live state; ``sub`` receives every later flush.
        """
        self._subs.discard(sub)
        self.flush(force=True)
        if not sub.closed:
            self._subs.add(sub)
        reg = self.mirror.registry
        enc = self._encoder(reg)
        epoch = self.mirror.epoch
        reason = rs.REASON_INITIAL
        if resume is not None:
            oldest = self.seq - len(self._log)  # changes after this one are all remembered
            if resume.stream != self.stream_id:
                reason = rs.REASON_UNKNOWN_STREAM
            elif resume.seq < oldest or resume.seq > self.seq:
                reason = rs.REASON_EXPIRED
            else:
                return self._resumed(sub, resume.seq, reg, enc, epoch)
        out: list[bytes] = []
        count = 0
        for e in reg:
            if sub.wants(e.model_id):
                out.append(rs.encode_model(enc.encode(e.model_id, e.bundles)))
                count += 1
        head = rs.encode_snapshot(self.gateway_id, epoch, count, reason, self.heartbeat)
        tail = rs.encode_snapshot_end(self.token, epoch)
        return Opening(_chunked([head, *out, tail]), rs.SNAPSHOT, reason, count + 2)

    def _resumed(
        self, sub: Subscriber, since: int, reg: Registry, enc: readiness.ModelEncoder, epoch: int
    ) -> Opening:
        # The log holds seqs (self.seq - len + 1) .. self.seq; keep each model's last one.
        first = self.seq - len(self._log) + 1
        last_seq: dict[str, int] = {}
        for offset, mid in enumerate(self._log):
            seq = first + offset
            if seq > since:
                last_seq[mid] = seq
        token = rs.format_token(self.stream_id, since)
        out = [rs.encode_resumed(token, self.gateway_id, epoch, self.heartbeat)]
        # In order of each model's last change, each with that change's token: a stream
        # cut half-way resumes from the last record it got and misses nothing.
        for mid, seq in sorted(last_seq.items(), key=lambda kv: kv[1]):
            if not sub.wants(mid):
                continue
            token = rs.format_token(self.stream_id, seq)
            entry = reg.get(mid)
            if entry is None:
                out.append(rs.encode_removed(token, mid))
            else:
                out.append(rs.encode_change(token, enc.encode(mid, entry.bundles)))
        return Opening(_chunked(out), rs.RESUMED, None, len(out))

    def heartbeat_line(self) -> bytes:
        return rs.encode_heartbeat(self.token, self.mirror.epoch)

    def close(self) -> None:
        """End every stream (the gateway is stopping)."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sub in list(self._subs):
            sub.close()
        self._subs.clear()


def _chunked(lines: list[bytes]) -> list[bytes]:
    """Join lines into ~1 MiB writes (a 10k-model snapshot is tens of MiB)."""
    out: list[bytes] = []
    batch: list[bytes] = []
    size = 0
    for line in lines:
        batch.append(line)
        size += len(line)
        if size >= _SNAPSHOT_CHUNK:
            out.append(b"".join(batch))
            batch, size = [], 0
    if batch:
        out.append(b"".join(batch))
    return out
