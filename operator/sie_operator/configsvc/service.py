"""ConfigService: the one write path shared by the HTTP API and the Kubernetes reconciler.

A write is: plan (validate and classify against the registry, no change), persist (store,
durable), apply (registry, O(changed)), bump the epoch, publish one delta per affected
bundle. A refused or failed step leaves everything before it untouched: nothing is
applied that is not durable, and nothing durable is left unapplied in this process.

Writes go through one committer task under one asyncio lock. Requests that queue up
while a commit is on disk form the next batch (group commit): each write of a batch is
planned on its own and gets its own epoch and its own publish, but they share one journal
fsync. Two writes to the same model (case-insensitively) never share a batch, so every
plan sees the writes before it. Applying a batch and moving the epoch happen in one step
of the event loop, so readers (export) get a consistent cut without taking the lock.

Stores: a local directory (one writer) or a JetStream stream shared by several replicas
(see ``sie_operator.store.jetstream``). With a shared store a follower task applies the
records other replicas wrote, in stream order, under the same lock as the write path, so
a plan always sees everything applied before it; the epoch only moves forward. An append
the stream refuses (another writer was first) or cannot confirm makes the service absorb
what did land (its own writes among it) and refuse the rest: the refused writes are
re-planned against the absorbed state and retried (a few times), then answered
``503 store_conflict`` -- unless an append of it may still land (it was never answered),
then ``503 store_unavailable`` saying so (StoreUnconfirmed). A write whose earlier attempt
did land meanwhile is found by the last plan and answered unchanged.

Leadership: ``leadership`` (``None``: always writable) gates every write before it is
queued and again right before the store append; see ``leadership.py``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from sie_operator.catalog import yamlio
from sie_operator.catalog.bundles import BundleError, BundleSet, load_bundle_dir, shipped_bundles
from sie_operator.catalog.registry import (
    ModelEntry,
    ModelTooLarge,
    Registry,
    Source,
    ValidationFailed,
    WritePlan,
    WriteRejected,
    same_value,
)
from sie_operator.store import (
    CommitResult,
    ConfigStore,
    DirectoryStore,
    FileStore,
    StoreConflict,
    StoredModel,
    StoreError,
    StoreRecord,
    StoreUnconfirmed,
)
from sie_operator.store.jetstream import JetStreamStore

from . import yamlemit
from .leadership import Leadership, NotLeader
from .metrics import Metrics
from .publisher import NatsPublisher, build_payload, is_trusted_by_default
from .settings import Settings

log = logging.getLogger(__name__)

HEAL_BACKOFF_MAX = 10.0  # seconds between attempts to heal a broken store, at most
CONFLICT_RETRIES = 3  # times a write refused by a shared store is re-planned before a 503
# What a JetStream record holds besides the model's YAML and id: keys, epoch, writer tag and
# the two expected-sequence headers (about 200 bytes)
RECORD_ENVELOPE_BYTES = 1024

PUBLISH_PARTIAL = (
    "nats_publish_partial: Config persisted but NATS notification failed for bundle(s) {bundles!r}. "
    "Workers on those bundles will stay on the previous epoch until the gateway's periodic epoch "
    "poll triggers a re-export."
)
PUBLISH_FAILED = (
    "nats_publish_failed: Config persisted but NATS notification failed. Workers may not be updated."
)


class ConfigError(Exception):
    """Startup configuration that cannot be used (bad bundles, bad baseline file, corrupt
    store...); ``str(exc)`` is one line naming what to fix."""


class RegistryUnavailable(Exception):
    status = 503
    error = "registry_unavailable"
    message = (
        "ModelRegistry failed to initialize (e.g. bad bundle/model YAML). See /readyz and config "
        "service logs; fix the on-disk state and restart."
    )


class NatsUnavailable(Exception):
    status = 503
    error = "nats_unavailable"
    message = "NATS not connected -- cannot distribute config changes."


@dataclass
class ApplyResult:
    model_id: str
    created: list[str]
    skipped: list[str]
    warnings: list[str]
    bundles_by_profile: dict[str, list[str]]
    epoch: int  # epoch of the write that made the model's current content durable
    changed: bool
    entry: ModelEntry


@dataclass(frozen=True)
class Snapshot:
    epoch: int
    entries: list[ModelEntry]


@dataclass
class _Pending:
    body: dict[str, Any]
    source: Source
    future: asyncio.Future[ApplyResult]
    key: str | None  # lower-cased model id, to keep two writes of one model apart
    attempts: int = 0  # store conflicts so far (re-planned after absorbing, CONFLICT_RETRIES times)
    doubt: int = 0  # the highest epoch an unanswered append of it would land with (0: none)


@dataclass
class _Applied:
    item: _Pending
    plan: WritePlan
    entry: ModelEntry
    epoch: int
    hashes: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# -- document checks --------------------------------------------------------------------


def _model_key(body: Mapping[str, Any]) -> str | None:
    mid = body.get("sie_id") or body.get("name")
    return mid.lower() if isinstance(mid, str) else None


# -- the service ------------------------------------------------------------------------


class ConfigService:
    def __init__(
        self,
        bundles: BundleSet,
        *,
        models_dir: Path | None = None,
        store: ConfigStore | FileStore | None = None,
        restore: bool = True,
        publisher: NatsPublisher | None = None,
        metrics: Metrics | None = None,
        checkpoint_interval: float = 0.5,
        max_batch: int = 64,
        leadership: Leadership | None = None,
    ) -> None:
        self.bundles = bundles
        self.models_dir = models_dir
        self.store: ConfigStore | None = DirectoryStore(store) if isinstance(store, FileStore) else store
        self.leadership = leadership
        self.restore = restore
        self.metrics = metrics if metrics is not None else Metrics()
        self.publisher = publisher
        self.checkpoint_interval = checkpoint_interval
        self.max_batch = max_batch
        self.registry: Registry | None = None
        self.epoch = 0
        self.started = False
        self._lock = asyncio.Lock()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._committer: asyncio.Task[None] | None = None
        self._checkpointer: asyncio.Task[None] | None = None  # store upkeep (checkpoint, heal)
        self._follower: asyncio.Task[None] | None = None  # shared store: applies others' records
        self._finishing: set[asyncio.Task[None]] = set()  # batches waiting for their NATS flush
        self._api_models = 0

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> ConfigService:
        """Build (not start) a service; ConfigError for an unusable bundles directory."""
        try:
            if settings.bundles_dir is None:
                bundles = shipped_bundles()
            else:
                d = settings.bundles_dir
                if d.is_dir() and not os.access(d, os.R_OK | os.X_OK):
                    raise ConfigError(f"bundles directory {str(d)!r} is not readable")
                bundles = load_bundle_dir(d)
                if not bundles.bundles:
                    raise ConfigError(f"bundles directory {str(d)!r} holds no *.yaml bundle files")
        except BundleError as exc:
            raise ConfigError(str(exc)) from exc
        metrics = metrics if metrics is not None else Metrics()
        store: ConfigStore | None = None
        if settings.store_stream:
            assert settings.nats_url is not None  # Settings refuses a jetstream store without it
            store = JetStreamStore(
                settings.nats_url,
                settings.store_stream,
                auth=settings.nats_auth,
                replicas=settings.store_replicas,
                name=f"{settings.producer_id}-store",
            )
        elif settings.store_dir:
            store = DirectoryStore(FileStore(settings.store_dir, durability=settings.store_durability))
        publisher = None
        if settings.nats_url:
            publisher = NatsPublisher(
                settings.nats_url,
                settings.producer_id,
                metrics,
                auth=settings.nats_auth,
                connect_timeout=settings.nats_connect_timeout,
                reconnect_wait=settings.nats_reconnect_wait,
                flush_timeout=settings.nats_flush_timeout,
            )
        return cls(
            bundles,
            models_dir=settings.models_dir,
            store=store,
            restore=settings.restore,
            publisher=publisher,
            metrics=metrics,
            checkpoint_interval=settings.checkpoint_interval,
        )

    # -- properties ----------------------------------------------------------------------
    @property
    def router_id(self) -> str:
        """The producer id in responses; ``standalone`` without NATS, as in SIE."""
        return self.publisher.producer_id if self.publisher is not None else "standalone"

    @property
    def nats_connected(self) -> bool:
        return self.publisher is not None and self.publisher.connected

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """(ready, per-component state): registry loaded, store usable, NATS connected."""
        checks: dict[str, str] = {}
        checks["registry"] = "ok" if self.registry is not None else "not loaded"
        if self.store is None:
            checks["store"] = "disabled"
        elif not self.store.opened:
            checks["store"] = "not open"
        elif self.store.broken:
            checks["store"] = f"error: {self.store.broken}"
        else:
            checks["store"] = "ok"
        if self.publisher is None:
            checks["nats"] = "disabled"
        else:
            checks["nats"] = "connected" if self.publisher.connected else "disconnected"
        ready = (
            checks["registry"] == "ok"
            and checks["store"] in ("ok", "disabled")
            and checks["nats"] in ("connected", "disabled")
        )
        return ready, checks

    def liveness(self) -> str | None:
        """None while the process can serve; else why only a restart can repair it.

        A broken store that can still heal itself (e.g. a full disk) is *not* a liveness
        failure: a restart would not free space, and readiness already takes the replica
        out of traffic. A fatal one is: the restart's startup recovery is the repair."""
        if self.store is not None and self.store.fatal:
            return f"config store needs a restart: {self.store.fatal}"
        return None

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Load baseline models, open and restore the store, start NATS in the background.

        Raises ConfigError for anything the operator must fix; never waits for NATS.
        """
        if self.started:
            return
        registry = Registry(self.bundles)
        # The registry is private to this task until assigned below, so building it in a
        # worker thread (file reads, YAML parsing) is safe and keeps the loop responsive.
        if self.models_dir is not None:
            await asyncio.to_thread(self._load_baseline, registry, self.models_dir)
        epoch = 0
        if self.store is not None:
            try:
                epoch = await self.store.open()
                if self.restore:
                    stored = await self.store.load_all()
                    await asyncio.to_thread(self._restore, registry, stored, epoch)
                else:
                    ids = await self.store.list_ids()
                    if ids:
                        log.warning(
                            "SIE_CONFIG_RESTORE is off: %d stored model(s) in %s are NOT served, while "
                            "/epoch still reports the stored epoch %d; writing one of them again replaces "
                            "its stored file",
                            len(ids),
                            self.store.describe(),
                            epoch,
                        )
            except StoreError as exc:
                await self.store.close()
                raise ConfigError(str(exc)) from exc
            except ConfigError:
                await self.store.close()
                raise
        self.registry = registry
        self.epoch = epoch
        self._api_models = sum(1 for e in registry if e.source == "api")
        self._update_gauges()
        if self.publisher is not None:
            if not is_trusted_by_default(self.publisher.producer_id):
                log.warning(
                    "producer id %r is not trusted by SIE gateways' default allowlist (sie-config, "
                    "sie-config-*): they will drop live deltas unless configured to trust it",
                    self.publisher.producer_id,
                )
            self.publisher.start()
        if self.store is not None:
            loop = asyncio.get_running_loop()
            self._checkpointer = loop.create_task(self._checkpoint_loop(), name="store-upkeep")
            if self.store.shared:
                self._follower = loop.create_task(self._follow_loop(), name="store-follower")
        self.started = True
        log.info(
            "config service ready: %d models (%d from the store), epoch %d, bundles hash %s",
            len(registry),
            self._api_models,
            epoch,
            self.bundles.hash[:12] or "-",
        )

    async def stop(self) -> None:
        """Finish queued writes (bounded), stop NATS, checkpoint and close the store."""
        committer = self._committer
        if committer is not None and not committer.done():
            try:
                await asyncio.wait_for(asyncio.shield(committer), timeout=10.0)
            except (TimeoutError, asyncio.CancelledError):
                committer.cancel()
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(RegistryUnavailable())
        if self._finishing:  # flushes are bounded by the publisher's flush timeout
            await asyncio.gather(*self._finishing, return_exceptions=True)
        for task in (self._checkpointer, self._follower):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._checkpointer = self._follower = None
        if self.publisher is not None:
            await self.publisher.stop()
        if self.store is not None and self.store.opened:
            await self.store.close()
        self.started = False

    def _load_baseline(self, registry: Registry, models_dir: Path) -> None:
        """SIE's filesystem models. A file that cannot be used stops startup, naming it
        (SIE logs and skips it, silently serving a smaller catalog)."""
        if not models_dir.is_dir():
            raise ConfigError(f"models directory {str(models_dir)!r} does not exist")
        files: dict[str, Path] = {}
        for path in sorted(models_dir.glob("*.yaml")):
            try:
                text = path.read_text("utf-8")
                doc = yamlio.load(text)
            except (OSError, UnicodeDecodeError, yamlio.YamlError) as exc:
                raise ConfigError(f"model file {path}: {exc}") from exc
            if not isinstance(doc, dict):
                raise ConfigError(f"model file {path}: expected a YAML mapping")
            try:
                plan = registry.plan(doc, source="filesystem", allow_unroutable=True)
            except WriteRejected as exc:
                raise ConfigError(f"model file {path}: {exc}") from exc
            if plan.model_id in files or not plan.is_new:
                other = files.get(plan.model_id)
                raise ConfigError(f"model file {path}: model {plan.model_id!r} is already defined by {other}")
            files[plan.model_id] = path
            registry.apply(plan, yaml_text=text, epoch=0)
            self._warn_unroutable(plan, f"model file {path.name}")

    def _restore(self, registry: Registry, stored: list[StoredModel], epoch: int) -> None:
        """Replay stored models (default on). A stored model that cannot be restored stops
        startup: skipping it would hide acknowledged data while /epoch says all is well."""
        for sm in stored:
            try:
                doc = yamlio.load(sm.text)
            except yamlio.YamlError as exc:
                raise ConfigError(f"stored model file {sm.path}: {exc}") from exc
            if not isinstance(doc, dict):
                raise ConfigError(f"stored model file {sm.path}: expected a YAML mapping")
            doc_id = doc.get("sie_id") or doc.get("name")
            if doc_id != sm.model_id:
                raise ConfigError(f"stored model file {sm.path}: holds model {doc_id!r}, not {sm.model_id!r}")
            try:
                plan = registry.plan(doc, source="api", allow_unroutable=True)
            except WriteRejected as exc:
                raise ConfigError(
                    f"stored model file {sm.path} cannot be restored: {exc} (fix the baseline model or "
                    "the bundles, or move the file away)"
                ) from exc
            if not plan.changed:
                continue
            text = sm.text if same_value(plan.doc, doc) else yamlemit.dump(plan.doc)
            # the epoch recorded for this model's last write; SIE-written stores have none,
            # and then the store epoch is the safe upper bound
            model_epoch = sm.epoch if sm.epoch is not None and sm.epoch <= epoch else epoch
            registry.apply(plan, yaml_text=text, epoch=model_epoch)
            self._warn_unroutable(plan, f"stored model {sm.model_id}")

    def _warn_unroutable(self, plan: WritePlan, what: str) -> None:
        unknown = sorted(m for m in plan.modules if not self.bundles.knows_module(m))
        if not plan.bundles:
            log.error("%s: model %r routes to no bundle (adapters %s)", what, plan.model_id, unknown)
        elif unknown:
            log.error("%s: adapter module(s) %s are in no bundle", what, ", ".join(unknown))

    async def _checkpoint_loop(self) -> None:
        """Store upkeep (checkpoints; healing or catching up a broken store, with backoff) so
        it recovers even when no write arrives: an unready replica gets no traffic."""
        store = self.store
        assert store is not None
        loop = asyncio.get_running_loop()
        backoff = self.checkpoint_interval
        next_heal = 0.0
        while True:
            await asyncio.sleep(self.checkpoint_interval)
            was_broken = store.broken is not None
            if was_broken and (store.fatal or loop.time() < next_heal):
                continue
            try:
                await store.maintain()
            except Exception:
                log.exception("store upkeep failed")
            if not was_broken:
                continue
            if store.broken is None:
                backoff = self.checkpoint_interval
                if store.shared:
                    async with self._lock:
                        self._apply_records(store.drain())
            else:
                backoff = min(backoff * 2, HEAL_BACKOFF_MAX)
                next_heal = loop.time() + backoff

    async def _follow_loop(self) -> None:
        """Apply what other replicas write to the shared store, as it arrives."""
        store = self.store
        assert store is not None
        while True:
            await store.wait_records()
            async with self._lock:
                self._apply_records(store.drain())

    def _apply_records(self, records: list[StoreRecord]) -> None:
        """The follower path: stored records (in stream order) into the registry, epoch
        forward only. Called with the write lock held, or from the committer (which holds
        it). A record the registry refuses is logged and skipped; its epoch still counts,
        so this replica's epoch matches the stream's."""
        registry = self.registry
        if registry is None or not records:
            return
        self.metrics.store_followed.inc(len(records))
        for rec in records:
            try:
                doc = yamlio.load(rec.text)
                if not isinstance(doc, dict):
                    raise ValueError("expected a YAML mapping")
                plan = registry.plan(doc, source="api", allow_unroutable=True)
            except (yamlio.YamlError, ValueError, WriteRejected) as exc:
                log.error("stored record %d (model %r) cannot be applied: %s", rec.seq, rec.model_id, exc)
            else:
                if plan.changed:
                    previous = registry.get(plan.model_id)
                    text = rec.text if same_value(plan.doc, doc) else yamlemit.dump(plan.doc)
                    registry.apply(plan, yaml_text=text, epoch=rec.epoch)
                    if previous is None or previous.source != "api":
                        self._api_models += 1
            self.epoch = max(self.epoch, rec.epoch)
        self._update_gauges()

    async def catch_up(self, within: float = 10.0) -> int:
        """Wait until everything in the store as of now is applied here; returns the epoch.

        For a shared (JetStream) store: the follower has received the stream up to its end
        and the records are in the registry. StoreError if that cannot be done in time."""
        if self.store is not None and self.store.shared:
            await self.store.catch_up(within)
            async with self._lock:
                self._apply_records(self.store.drain())
        return self.epoch

    # -- reads ---------------------------------------------------------------------------
    def export_snapshot(self) -> Snapshot:
        """A consistent (epoch, models) cut: entries are immutable once applied, and a batch
        is applied together with its epoch in one loop step, so copying the list suffices."""
        if self.registry is None:
            raise RegistryUnavailable()
        return Snapshot(self.epoch, list(self.registry))

    # -- the write path ------------------------------------------------------------------
    async def apply(self, body: dict[str, Any], *, source: Source = "api") -> ApplyResult:
        """Validate, persist, apply, bump the epoch and publish one model document.

        Raises WriteRejected (4xx), NatsUnavailable (a change while NATS is down),
        StoreError (nothing applied; StoreConflict when another writer kept winning),
        NotLeader (this replica may not write now) or RegistryUnavailable (not started).
        """
        if self.registry is None:
            raise RegistryUnavailable()
        self._check_leader()
        if not isinstance(body, dict):
            raise ValidationFailed(["Expected a mapping at top level"])
        loop = asyncio.get_running_loop()
        item = _Pending(body, source, loop.create_future(), _model_key(body))
        self._queue.append(item)
        if self._committer is None or self._committer.done():
            self._committer = loop.create_task(self._commit_loop(), name="config-committer")
        return await item.future

    async def _commit_loop(self) -> None:
        async with self._lock:
            while self._queue:
                batch = self._take_batch()
                try:
                    await self._commit_batch(batch)
                except BaseException as exc:
                    for item in batch:
                        if not item.future.done():
                            if isinstance(exc, Exception):
                                item.future.set_exception(exc)
                            else:
                                item.future.cancel()
                    if not isinstance(exc, Exception):
                        raise
                    log.exception("unexpected error in the config write path")

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        keys: set[str] = set()
        while self._queue and len(batch) < self.max_batch:
            item = self._queue[0]
            if item.key is not None and item.key in keys:
                break
            self._queue.popleft()
            if item.future.done():  # the caller went away before its write started
                continue
            batch.append(item)
            if item.key is not None:
                keys.add(item.key)
        return batch

    def _check_leader(self) -> None:
        lead = self.leadership
        if lead is not None and not lead.may_write():
            raise NotLeader(lead.leader_identity())

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        registry = self.registry
        assert registry is not None
        store = self.store
        if store is not None and store.shared:
            # plan against everything the stream holds that has arrived (and, after a
            # failed append, against everything up to its end)
            if store.broken:
                with contextlib.suppress(StoreError):  # the commit below reports it
                    await store.catch_up(5.0)
            self._apply_records(store.drain())
        planned: list[tuple[_Pending, WritePlan, str]] = []
        for item in batch:
            try:
                plan = registry.plan(item.body, source=item.source)
            except WriteRejected as exc:
                item.future.set_exception(exc)
                continue
            except Exception as exc:  # a bug, not bad input: fail this write alone
                log.exception("planning a write of %r failed", item.key)
                item.future.set_exception(exc)
                continue
            if not plan.changed:
                entry = registry.get(plan.model_id)
                assert entry is not None
                item.future.set_result(
                    ApplyResult(plan.model_id, [], plan.skipped, [], {}, entry.epoch, False, entry)
                )
                continue
            if item.attempts > CONFLICT_RETRIES:
                self._refuse(item)
                continue
            if self.publisher is not None and not self.publisher.connected:
                item.future.set_exception(NatsUnavailable())
                continue
            text = yamlemit.dump(plan.doc)
            too_large = self._too_large(plan, text)
            if too_large is not None:
                item.future.set_exception(too_large)
                continue
            planned.append((item, plan, text))
        if not planned:
            return

        first = self.epoch + 1
        last = self.epoch + len(planned)
        want_hashes = self.publisher is not None
        applied: list[_Applied] = []
        if self.store is not None:
            try:
                self._check_leader()  # the lease may have been lost while this batch waited
                result = await self.store.commit([(p.model_id, y) for _, p, y in planned], last)
            except (StoreError, NotLeader) as exc:
                if isinstance(exc, StoreError):
                    self._count_store_writes("failure", len(planned))
                    log.error("store commit failed, %d write(s) refused: %s", len(planned), exc)
                for item, _, _ in planned:
                    if not item.future.done():
                        item.future.set_exception(exc)
                return
            if not result.in_order:
                self._absorb(planned, result, first, applied, want_hashes)
                if not applied:
                    return
                self._update_gauges()
        if not applied:
            self._count_store_writes("success", len(planned))
            # Durable: apply the whole batch and move the epoch in one step (no await).
            for i, (item, plan, text) in enumerate(planned):
                previous = registry.get(plan.model_id)
                entry = registry.apply(plan, yaml_text=text, epoch=first + i)
                if plan.source == "api" and (previous is None or previous.source != "api"):
                    self._api_models += 1
                hashes = {b: registry.bundle_hash(b) for b in plan.bundles} if want_hashes else {}
                applied.append(_Applied(item, plan, entry, first + i, hashes))
            self.epoch = last
            self._update_gauges()

        if self.publisher is None:
            self._resolve(applied)
            return
        published = await self._publish(applied)
        if not published:
            self._resolve(applied)
            return
        # The flush (a PING/PONG round trip) is awaited off the committer, so the next batch
        # is persisted while this one's messages travel; publishes stay in epoch order.
        task = asyncio.get_running_loop().create_task(self._flush_then_resolve(applied, published))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    def _too_large(self, plan: WritePlan, text: str) -> ModelTooLarge | None:
        """Refuse, before anything is written, a model whose store record cannot fit in one
        NATS message (JetStream): the record carries the whole merged YAML, JSON-escaped, and
        a model that grew by appended profiles can pass the 1 MiB body limit and still not
        fit. Only the store decides: a directory store takes any size, and a delta too large
        to publish is answered like SIE's (stored, ``nats_publish_failed`` warning; gateways
        and workers fetch it over HTTP when they next see the epoch move)."""
        limit = self.store.max_record_bytes if self.store is not None else None
        if not limit:
            return None
        size = len(orjson.dumps(text)) + 2 * len(plan.model_id.encode()) + RECORD_ENVELOPE_BYTES
        return ModelTooLarge(plan.model_id, size, limit) if size > limit else None

    def _count_store_writes(self, result: str, n: int) -> None:
        self.metrics.store_writes.labels(op="write_model", result=result).inc(n)
        self.metrics.store_writes.labels(op="increment_epoch", result=result).inc(n)

    def _absorb(
        self,
        planned: list[tuple[_Pending, WritePlan, str]],
        result: CommitResult,
        first: int,
        applied: list[_Applied],
        want_hashes: bool,
    ) -> None:
        """After an append that did not land whole and in order: apply what the stream now
        holds (other writers' records and those of ours that landed), answer our landed
        writes from it, and queue the others to be re-planned: a few times they are retried,
        then the last plan refuses them (:meth:`_refuse`) -- or answers one unchanged whose
        earlier attempt did land meanwhile."""
        registry = self.registry
        assert registry is not None and self.store is not None
        self._apply_records(self.store.drain())
        retry: list[_Pending] = []
        for i, ((item, plan, _), epoch) in enumerate(zip(planned, result.landed, strict=True)):
            if epoch is not None:
                entry = registry.get(plan.model_id)
                assert entry is not None
                hashes = {b: registry.bundle_hash(b) for b in plan.bundles} if want_hashes else {}
                applied.append(_Applied(item, plan, entry, epoch, hashes))
            elif not item.future.done():
                if i in result.unconfirmed:
                    item.doubt = max(item.doubt, first + i)
                item.attempts += 1
                retry.append(item)
                if item.attempts <= CONFLICT_RETRIES:
                    self.metrics.store_conflicts.labels(outcome="retried").inc()
        self._count_store_writes("success", len(applied))
        self._count_store_writes("failure", len(planned) - len(applied))
        self._queue.extendleft(reversed(retry))  # first in line, in their original order

    def _refuse(self, item: _Pending) -> None:
        """A write the store kept refusing, planned once more and still a change: StoreConflict
        when nothing of it can land any more, StoreUnconfirmed while an unanswered append of
        it still could (its epoch is beyond everything applied here, after a catch-up)."""
        self.metrics.store_conflicts.labels(outcome="refused").inc()
        if item.doubt > self.epoch:
            item.future.set_exception(
                StoreUnconfirmed(
                    "the store did not confirm the write and it may still be stored; retry it "
                    "(once stored it is answered unchanged)"
                )
            )
        else:
            item.future.set_exception(
                StoreConflict(
                    "another config service replica wrote to the store at the same time; "
                    "nothing was changed, retry"
                )
            )

    def _resolve(self, applied: list[_Applied]) -> None:
        for a in applied:
            if not a.item.future.done():
                a.item.future.set_result(
                    ApplyResult(
                        a.plan.model_id,
                        list(a.plan.created),
                        list(a.plan.skipped),
                        a.warnings,
                        a.plan.bundles_by_profile if a.plan.created else {},
                        a.epoch,
                        True,
                        a.entry,
                    )
                )

    async def _publish(self, applied: list[_Applied]) -> list[_Applied]:
        """One delta per affected bundle, bundle subject then ``_all``, writes in epoch order.
        Returns the writes whose messages all went out (they still need a flush). Failures
        become warnings: the write is durable anyway."""
        publisher = self.publisher
        assert publisher is not None
        published: list[_Applied] = []
        for a in applied:
            bundles = list(a.plan.bundles)
            if not bundles:
                continue
            payloads = [
                (
                    b,
                    build_payload(
                        router_id=publisher.producer_id,
                        bundle_id=b,
                        epoch=a.epoch,
                        bundle_config_hash=a.hashes.get(b, ""),
                        model_id=a.plan.model_id,
                        profiles_added=a.plan.created,
                        model_config=a.entry.yaml_text,
                        affected_bundles=bundles,
                    ),
                )
                for b in bundles
            ]
            result = await publisher.publish(payloads)
            if not result.failed_bundles:
                published.append(a)
            elif len(result.failed_bundles) < result.total:
                a.warnings.append(PUBLISH_PARTIAL.format(bundles=result.failed_bundles))
                self.metrics.nats_publishes.labels(result="partial").inc()
            else:
                a.warnings.append(PUBLISH_FAILED)
                self.metrics.nats_publishes.labels(result="failure").inc()
        return published

    async def _flush_then_resolve(self, applied: list[_Applied], published: list[_Applied]) -> None:
        """Bounded flush, then answer the batch (a failed flush is a warning on each write)."""
        publisher = self.publisher
        assert publisher is not None
        try:
            if await publisher.flush():
                self.metrics.nats_publishes.labels(result="success").inc(len(published))
            else:
                for a in published:
                    a.warnings.append(PUBLISH_FAILED)
                self.metrics.nats_publishes.labels(result="failure").inc(len(published))
        finally:
            self._resolve(applied)

    def _update_gauges(self) -> None:
        total = len(self.registry) if self.registry is not None else 0
        self.metrics.epoch.set(self.epoch)
        self.metrics.models.labels(source="api").set(self._api_models)
        self.metrics.models.labels(source="filesystem").set(max(0, total - self._api_models))
