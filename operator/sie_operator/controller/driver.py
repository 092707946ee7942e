"""The thin async driver around the reconcile core: feeds it facts, performs its effects.

One task (``run``) owns the core's state and is the only caller of ``reconcile.step``.
Everything else talks to it through its inbox: kopf's watch events, the results of store
writes, status patches and lookups (each performed in its own task, bounded by a
semaphore), fleet snapshots (from the fleet loop) and complete listings (from the
listing loop). So no record is ever shared by two coroutines, and the ordering questions
all live in the core, where the simulation test drives them.

Listings: kopf re-lists after a watch restart (an expired resourceVersion, 410) without
sending DELETED for objects deleted in between. The driver therefore takes its own
complete listing at startup (no write happens before it: ownership needs the full
picture), whenever kopf delivers listing events again (a re-list), and every
``relist_interval`` seconds as a safety net; the core asks for a lookup of every tracked
object missing from a listing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Literal, Protocol

from sie_operator.aio import wait_event

from ..kube.client import KubeClient, KubeError
from .fleet import FleetReader
from .metrics import ReconcileMetrics
from .objects import ObjectRef, ObjectSnapshot
from .reconcile import (
    Confirm,
    CoreConfig,
    Effect,
    FleetSeen,
    Gone,
    Input,
    Listed,
    PatchDone,
    PatchStatus,
    PostEvent,
    Seen,
    State,
    StoreWrite,
    Tick,
    WriteDone,
    step,
)
from .spec import API_GROUP, API_VERSION, PLURAL, spec_to_sie
from .status import StoreOutcome
from .writes import WriteSnapshot, accepted_notice, classify_exception

log = logging.getLogger(__name__)

MAX_BATCH = 5000
# Events wait while status patches are queued (at most this long): under a burst the API
# server is the bottleneck, and status is what `kubectl wait`, Argo CD and Flux read.
EVENT_DEFER_MAX = 30.0


def utcnow() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ConfigServiceLike(Protocol):
    """What the driver needs of configsvc.service.ConfigService."""

    async def apply(self, body: dict[str, Any], *, source: Literal["api", "filesystem"] = "api") -> Any: ...


class Driver:
    def __init__(
        self,
        service: ConfigServiceLike,
        fleet: FleetReader,
        kube: KubeClient,
        *,
        namespaces: Sequence[str] | None,  # None: every namespace
        metrics: ReconcileMetrics | None = None,
        cfg: CoreConfig = CoreConfig(),
        fast_interval: float = 0.25,
        slow_interval: float = 15.0,
        relist_interval: float = 300.0,
        relist_debounce: float = 1.0,
        write_concurrency: int = 64,
        patch_concurrency: int = 32,
        event_concurrency: int = 16,
        publishes: bool = True,
        clock: Callable[[], float] = time.monotonic,
        may_write: Callable[[], bool] | None = None,
    ) -> None:
        self.service = service
        self.fleet = fleet
        self.kube = kube
        self.namespaces = list(namespaces) if namespaces is not None else None
        self.metrics = metrics or ReconcileMetrics()
        self.cfg = cfg
        self.fast_interval = fast_interval
        self.slow_interval = slow_interval
        self.relist_interval = relist_interval
        self.relist_debounce = relist_debounce
        self.publishes = publishes
        self.clock = clock
        # Leader election: checked right before every store write, status patch and Event,
        # so a replica whose term ran out writes nothing even before its session is stopped.
        self.may_write = may_write or (lambda: True)
        self.state = State()
        self._inbox: asyncio.Queue[Input] = asyncio.Queue()
        self._fleet_kick = asyncio.Event()
        self._relist_kick = asyncio.Event()
        self._write_sem = asyncio.Semaphore(write_concurrency)
        self._patch_sem = asyncio.Semaphore(patch_concurrency)
        self._event_sem = asyncio.Semaphore(event_concurrency)
        self._patches_pending = 0
        self._patches_idle = asyncio.Event()
        self._patches_idle.set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listed_once = False
        self._gauges_at = 0.0
        fleet.on_change = self.kick  # a readiness stream brought news: read the fleet now
        self._full_read_at = -1e9

    # -- intake (kopf handlers) ----------------------------------------------------------
    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        obj = ObjectSnapshot.from_body(body)
        if obj is None:
            return
        if event_type == "DELETED":
            self.submit(Gone(obj.ref))
            return
        self.submit(Seen(obj))
        if event_type is None and self._listed_once:
            self._relist_kick.set()  # kopf is listing again: its watch restarted

    def submit(self, inp: Input) -> None:
        self._inbox.put_nowait(inp)

    def kick(self) -> None:
        self._fleet_kick.set()

    # -- the loop ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        aux = [
            asyncio.create_task(self._fleet_loop(stop), name="fleet-loop"),
            asyncio.create_task(self._relist_loop(stop), name="relist-loop"),
        ]
        last_tick = self.clock()
        try:
            while not stop.is_set():
                try:
                    async with asyncio.timeout(self.fast_interval):  # keeps a cancellation (see aio)
                        first = await self._inbox.get()
                    batch = [first]
                    while len(batch) < MAX_BATCH and not self._inbox.empty():
                        batch.append(self._inbox.get_nowait())
                except TimeoutError:
                    batch = []
                for inp in batch:
                    self._apply(inp)
                if self.clock() - last_tick >= self.fast_interval:
                    last_tick = self.clock()
                    self._apply(Tick())
                self._update_gauges()
        finally:
            for t in (*aux, *self._tasks):
                t.cancel()
            await asyncio.gather(*aux, *self._tasks, return_exceptions=True)

    def _apply(self, inp: Input) -> None:
        try:
            effects = step(self.state, inp, now=self.clock(), wall=utcnow(), cfg=self.cfg)
        except Exception:  # a bug must not stop every other resource's reconcile
            log.exception("reconcile step failed on %s", type(inp).__name__)
            return
        for e in effects:
            self._perform(e)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _perform(self, e: Effect) -> None:
        if isinstance(e, StoreWrite):
            self._spawn(self._write(e.write), "store-write")
        elif isinstance(e, PatchStatus):
            self._patches_pending += 1
            self._patches_idle.clear()
            self._spawn(self._patch_counted(e.ref, e.status), "status-patch")
        elif isinstance(e, PostEvent):
            self._spawn(self._event(e.ref, e.notice.reason, e.notice.message, e.notice.warning), "event")
        elif isinstance(e, Confirm):
            self._spawn(self._confirm(e.ref), "confirm")

    def _update_gauges(self) -> None:
        now = self.clock()
        if now - self._gauges_at < 1.0:
            return
        self._gauges_at = now
        records = self.state.records
        self.metrics.tracked.set(len(records))
        self.metrics.converging.set(len(self.state.converging))
        self.metrics.owner_conflicts.set(
            sum(
                1 for r in records.values() if r.decided is not None and r.decided.outcome.kind == "duplicate"
            )
        )

    # -- effects ---------------------------------------------------------------------------
    async def _write(self, w: WriteSnapshot) -> None:
        async with self._write_sem:
            started = time.perf_counter()
            outcome, notice = await self._apply_to_store(w)
            self.metrics.write_seconds.observe(time.perf_counter() - started)
        self.metrics.reconciles.labels(outcome.kind).inc()
        self.submit(WriteDone(w, outcome, notice))
        if outcome.kind == "accepted":
            self._fleet_kick.set()

    async def _apply_to_store(self, w: WriteSnapshot) -> tuple[StoreOutcome, Any]:
        if not self.may_write():
            return StoreOutcome("store_error", "this replica is not the leader"), None
        try:
            doc = spec_to_sie(w.spec)
        except Exception as exc:
            return StoreOutcome("invalid", f"spec cannot be converted: {exc}"), None
        try:
            result = await self.service.apply(doc, source="api")
        except Exception as exc:
            mapped = classify_exception(exc)
            if mapped is None:
                log.exception("unexpected failure writing model %s", w.sie_id)
                mapped = StoreOutcome("store_error", f"unexpected error: {type(exc).__name__}: {exc}")
            return mapped, None
        entry = result.entry
        profiles = tuple(sorted(entry.profiles)) if entry is not None else ()
        notice = accepted_notice(
            w.sie_id,
            changed=bool(result.changed),
            epoch=int(result.epoch),
            created=tuple(result.created),
            warnings=tuple(result.warnings),
            bundles=tuple(entry.bundles) if entry is not None else (),
            publishes=self.publishes and entry is not None,
        )
        return StoreOutcome("accepted", epoch=int(result.epoch), profiles=profiles), notice

    async def _patch_counted(self, ref: ObjectRef, status: Mapping[str, Any]) -> None:
        try:
            await self._patch(ref, status)
        finally:
            self._patches_pending -= 1
            if self._patches_pending == 0:
                self._patches_idle.set()

    async def _patch(self, ref: ObjectRef, status: Mapping[str, Any]) -> None:
        async with self._patch_sem:
            if not self.may_write():
                self.submit(PatchDone(ref, None, "failed"))
                return
            try:
                body = await self.kube.patch_status(
                    API_GROUP, API_VERSION, ref.namespace, PLURAL, ref.name, status, uid=ref.uid
                )
            except KubeError as exc:
                if exc.status == 404:
                    result, error = "gone", "gone"
                elif exc.status in (409, 422):
                    result, error = "rejected", "rejected"  # another uid, or a real refusal: look it up
                else:
                    result, error = "failed", "failed"
                log.warning("status patch of %s failed: %s", ref.display, exc)
                self.metrics.status_patches.labels(result).inc()
                self.submit(PatchDone(ref, None, error))
                return
            except Exception as exc:
                log.warning("status patch of %s failed: %s", ref.display, exc)
                self.metrics.status_patches.labels("failed").inc()
                self.submit(PatchDone(ref, None, "failed"))
                return
        self.metrics.status_patches.labels("ok").inc()
        self.submit(PatchDone(ref, ObjectSnapshot.from_body(body) if isinstance(body, Mapping) else None))

    async def _event(self, ref: ObjectRef, reason: str, message: str, warning: bool) -> None:
        with contextlib.suppress(TimeoutError):
            await wait_event(self._patches_idle, EVENT_DEFER_MAX)
        async with self._event_sem:
            if not self.may_write():
                return
            try:
                await self.kube.post_event(
                    namespace=ref.namespace,
                    involved=ref.involved(),
                    reason=reason,
                    message=message,
                    type_="Warning" if warning else "Normal",
                    now=utcnow(),
                )
            except Exception as exc:
                self.metrics.event_failures.inc()
                log.debug("event %s for %s not posted: %s", reason, ref.display, exc)
                return
        self.metrics.events.labels(reason, "Warning" if warning else "Normal").inc()

    async def _confirm(self, ref: ObjectRef) -> None:
        delay = 0.5
        while True:
            try:
                items, _ = await self.kube.list_objects(
                    API_GROUP, API_VERSION, PLURAL, ref.namespace, field_selector=f"metadata.name={ref.name}"
                )
                break
            except Exception as exc:
                log.warning("looking up %s failed (retry in %.1f s): %s", ref.display, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        found = [o for o in (ObjectSnapshot.from_body(i) for i in items) if o is not None]
        same = [o for o in found if o.uid == ref.uid]
        if same:
            self.submit(Seen(same[0]))
            return
        self.metrics.confirmed_gone.inc()
        self.submit(Gone(ref))
        for o in found:  # the name now belongs to a new incarnation
            self.submit(Seen(o))

    # -- fleet and listings ------------------------------------------------------------------
    async def _fleet_loop(self, stop: asyncio.Event) -> None:
        """Read the fleet every fast interval while anything converges, else every slow one;
        a write that was just accepted asks for a read at once (20 ms later, so a burst of
        writes shares one read). A read asks only for the models still converging; every
        slow interval it asks for all of them."""
        warm = False  # the first read opens the replicas' streams before any resource needs them
        while not stop.is_set():
            busy = bool(self.state.converging) or self.fleet.degraded
            timeout = self.fast_interval if busy else self.slow_interval
            if warm:
                with contextlib.suppress(TimeoutError):
                    await wait_event(self._fleet_kick, timeout)
            self._fleet_kick.clear()
            await asyncio.sleep(0.005)  # a burst of kicks shares one read
            records = self.state.records
            if not records and warm:
                continue
            warm = True
            now = self.clock()
            wanted: tuple[str, ...] | None = None
            if now - self._full_read_at >= self.slow_interval:
                self._full_read_at = now  # every model, Ready ones too: a worker can go away
                self.fleet.known = tuple(sorted({r.obj.sie_id for r in records.values() if r.obj.sie_id}))
            elif not busy:
                continue  # nothing converging, no replica failing, no full read due
            else:  # only what is still converging; the rest keeps its last answer
                wanted = tuple(
                    sorted(
                        {
                            records[u].obj.sie_id
                            for u in self.state.converging
                            if u in records and records[u].obj.sie_id
                        }
                    )
                )
            try:
                snap = await self.fleet.fetch(wanted)
            except Exception:
                log.exception("reading the gateway fleet failed")
                continue
            reachable = sum(1 for v in snap.views if v.reachable)
            self.metrics.gateway_replicas.labels("reachable").set(reachable)
            self.metrics.gateway_replicas.labels("unreachable").set(len(snap.views) - reachable)
            self.submit(FleetSeen(snap))

    async def _relist_loop(self, stop: asyncio.Event) -> None:
        delay = 0.5
        while not stop.is_set():
            try:
                objs = await self._list_all()
            except Exception as exc:
                self.metrics.relists.labels("failed").inc()
                log.warning("listing ModelConfigs failed (retry in %.1f s): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = 0.5
            self.metrics.relists.labels("ok").inc()
            self.submit(Listed(tuple(objs)))
            self._listed_once = True
            self._relist_kick.clear()
            try:
                await wait_event(self._relist_kick, self.relist_interval)
                await asyncio.sleep(self.relist_debounce)  # one listing for kopf's whole burst
            except TimeoutError:
                pass

    async def _list_all(self) -> list[ObjectSnapshot]:
        out: list[ObjectSnapshot] = []
        for ns in self.namespaces if self.namespaces is not None else [None]:
            items, _ = await self.kube.list_objects(API_GROUP, API_VERSION, PLURAL, ns)
            out.extend(o for o in (ObjectSnapshot.from_body(i) for i in items) if o is not None)
        return out
