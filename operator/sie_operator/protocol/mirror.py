"""A mirror of the config service's registry: bootstrap, live deltas, poller, gap catch-up.

Used by the gateway (all bundles, ``_all`` subject) and by the reference worker (one
bundle: its own subject for content, ``_all`` only to see every write's epoch), so both
compute the bundle config hash from the same catalog ``Registry`` and agree by construction.

How it stays in step (the contract's rules plus the W5 fix):
- bootstrap = ``/epoch`` (bundles hash captured first), ``/bundles`` + ``/bundles/{id}``,
  ``/export``; a fresh Registry is built off the event loop and swapped in atomically, so
  bundles and models the service no longer has disappear (no append-only wedge, W10);
- deltas from trusted producers are applied in arrival order; the local epoch is a
  *contiguous* watermark: it moves only to ``local + 1`` (equal epochs are the other
  bundles' copies of one write), so a skipped epoch cannot be papered over;
- any sign of a gap (skipped epoch, a content hash different from the one the producer
  published for that bundle, a delta that does not apply) starts a catch-up at once;
- a NATS reconnect asks for an immediate ``/epoch`` check; the poller does the same every
  interval and catches up when the epoch or the bundles hash drifted;
- deltas received while a bootstrap is in flight are replayed on the new registry when
  they are newer than the export's epoch, so nothing is lost across the swap.

Model-granular readiness (gateway mode, :class:`AckHistory`): SIE acks per bundle (a
worker counts only if its whole-bundle hash equals the current one), so one write to a
bundle makes every other model of it pending until every worker catches up (contract W4).
The mirror therefore numbers its registry mutations and remembers, per bundle, which
digest the bundle had after each of them, and per model the mutation that last changed
it. The registry is append-only, so every bundle state recorded at or after a model's
last change holds that model with exactly its current content: a worker reporting such a
digest has the model even if it has not caught up with later, unrelated writes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from sie_operator.aio import wait_event
from sie_operator.catalog import yamlio
from sie_operator.catalog.bundles import Bundle, BundleSet
from sie_operator.catalog.hashing import model_fragment
from sie_operator.catalog.registry import ModelEntry, Registry, WriteRejected, same_value
from sie_operator.natsconn import redact_url

from .configclient import ConfigServiceClient, ConfigServiceError, EpochInfo
from .deltas import (
    ALL_SUBJECT,
    DEFAULT_TRUSTED_PRODUCERS,
    Delta,
    DeltaError,
    EpochStep,
    PollAction,
    classify_epoch,
    is_trusted,
    parse_delta,
    poll_action,
)

log = logging.getLogger(__name__)

DEGRADED_AFTER_ATTEMPTS = 10

# Several mirrors in one process (worker instances of a benchmark) receive the same YAML;
# parse it once. Registry.plan never mutates its input, so sharing the parsed object is safe.
_load_yaml = functools.lru_cache(maxsize=256)(yamlio.load)
DEGRADED_AFTER_SECONDS = 300.0
DEFAULT_HISTORY = 4096  # bundle digests remembered per bundle (about 1 MB per bundle at most)


# -- pure parts ---------------------------------------------------------------------------
@dataclass
class ExportOutcome:
    epoch: int
    total: int = 0
    applied: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def _export_doc(item: dict[str, Any]) -> Any:
    """The model document of one export entry: ``raw_yaml`` first, else ``model_config``."""
    raw = item.get("raw_yaml")
    if isinstance(raw, str) and raw.strip():
        return _load_yaml(raw)
    cfg = item.get("model_config")
    return cfg if isinstance(cfg, dict) else None


def build_registry(
    bundles: Sequence[Bundle], export_body: bytes, only_bundle: str | None = None
) -> tuple[Registry, ExportOutcome]:
    """A fresh Registry from fetched bundles and an ``/export`` body (CPU only; run it off-loop).

    ``allow_unroutable``: a mirror must hold whatever the service exported, even a model
    whose bundle is gone (it then reports ``no_bundles``). With ``only_bundle`` (a worker),
    models outside that bundle are left out. A model that does not apply is counted and
    skipped, not fatal: the mirror is then as close to the service as it can get, and a
    retry would fail the same way.
    """
    try:
        data = orjson.loads(export_body)
    except orjson.JSONDecodeError as exc:
        raise ConfigServiceError(f"GET /v1/configs/export: not JSON ({exc})") from exc
    models = data.get("models") if isinstance(data, dict) else None
    epoch = data.get("epoch", 0) if isinstance(data, dict) else None
    if not isinstance(models, list) or isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ConfigServiceError("GET /v1/configs/export: unexpected body")
    registry = Registry(BundleSet(tuple(bundles)))
    out = ExportOutcome(epoch=epoch, total=len(models))
    for item in models:
        if not isinstance(item, dict):
            out.failed.append(("?", "export entry is not an object"))
            continue
        model_id = str(item.get("model_id") or "?")
        affected = item.get("affected_bundles")
        if only_bundle is not None and isinstance(affected, list) and only_bundle not in affected:
            out.skipped += 1
            continue
        try:
            doc = _export_doc(item)
            if doc is None:
                out.skipped += 1
                continue
            plan = registry.plan(doc, source="api", allow_unroutable=True)
        except (yamlio.YamlError, WriteRejected) as exc:
            out.failed.append((model_id, str(exc)))
            continue
        if only_bundle is not None and only_bundle not in plan.bundles:
            out.skipped += 1
            continue
        if plan.changed:
            registry.apply(plan, epoch=epoch)
            out.applied += 1
    return registry, out


def _stable_adapters(old: Registry, new: Registry) -> Callable[[str], frozenset[str] | None]:
    """A bundle's adapters when both registries agree on them, else None (memoised)."""
    known: dict[str, frozenset[str] | None] = {}

    def check(bundle: str) -> frozenset[str] | None:
        if bundle not in known:
            a, b = old.bundles.get(bundle), new.bundles.get(bundle)
            same = a is not None and b is not None and frozenset(a.adapters) == frozenset(b.adapters)
            known[bundle] = frozenset(b.adapters) if same and b is not None else None
        return known[bundle]

    return check


def _same_content(
    prev: ModelEntry, entry: ModelEntry, adapters: Callable[[str], frozenset[str] | None]
) -> bool:
    """Whether ``entry`` has exactly ``prev``'s content in every one of its bundles."""
    if prev.bundles != entry.bundles:
        return False
    owned = [adapters(b) for b in entry.bundles]
    if any(a is None for a in owned):
        return False  # a bundle's adapters changed, and with them maybe the model's share of its hash
    if orjson.dumps(prev.doc, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        entry.doc, option=orjson.OPT_SORT_KEYS
    ):
        return True  # byte-identical: the common case, and cheap
    # Unchanged by the registry's rules (same_value) is not quite enough: it equates 8192
    # and 8192.0 or a null and an absent option, which the bundle hash does not.
    return same_value(prev.doc, entry.doc) and all(
        model_fragment(entry.model_id, prev.profiles, a) == model_fragment(entry.model_id, entry.profiles, a)
        for a in owned
        if a is not None
    )


def carried_over(old: Registry, new: Registry) -> dict[str, ModelEntry]:
    """Models of ``new`` whose content in every one of their bundles is the same as in ``old``.

    Maps the model id to the ``old`` entry it was compared with. Same bundles, owning the
    same adapters (a model's share of a bundle hash depends on the bundle's adapter list),
    and the same document (byte-identical, or equal by :func:`same_value` with the same
    share of every bundle hash). Reads ``old`` only through ``get`` (safe off-loop while
    the loop may still apply deltas to it; entries are never mutated, only replaced).
    """
    adapters = _stable_adapters(old, new)
    out: dict[str, ModelEntry] = {}
    for entry in new:
        prev = old.get(entry.model_id)
        if prev is not None and _same_content(prev, entry, adapters):
            out[entry.model_id] = prev
    return out


def bundle_digests(registry: Registry) -> dict[str, str]:
    """Every bundle's config hash (computed and cached in the registry; run it off-loop)."""
    return {b.name: registry.bundle_hash(b.name) for b in registry.bundles.bundles}


class AckHistory:
    """Mutation numbers for model-granular readiness (pure; see the module docstring).

    ``seq`` is bumped on every registry mutation (an applied delta, a bootstrap). Per model:
    the ``seq`` of its last change. Per bundle: digest -> the newest ``seq`` at which the
    bundle had that digest, at most ``limit`` digests (oldest dropped: a worker still on a
    forgotten digest then simply counts as "not known to have the model"). Only ever
    answers "this worker has the model's current content" when it is sure.
    """

    def __init__(self, limit: int = DEFAULT_HISTORY) -> None:
        if limit < 1:
            raise ValueError("history limit must be at least 1")
        self.limit = limit
        self.seq = 0
        self._models: dict[str, int] = {}
        self._bundles: dict[str, OrderedDict[str, int]] = {}

    def bump(self) -> int:
        self.seq += 1
        return self.seq

    def model_seq(self, model_id: str) -> int | None:
        return self._models.get(model_id)

    def hash_seq(self, bundle: str, digest: str) -> int | None:
        """The newest mutation after which ``bundle`` had ``digest``; None if not remembered."""
        seen = self._bundles.get(bundle)
        return seen.get(digest) if seen is not None else None

    def changed(self, model_id: str, seq: int) -> None:
        self._models[model_id] = seq

    def record(self, bundle: str, digest: str, seq: int) -> None:
        """``bundle`` has ``digest`` after mutation ``seq`` (an empty bundle has nothing to ack)."""
        if not digest:
            return
        seen = self._bundles.get(bundle)
        if seen is None:
            seen = self._bundles[bundle] = OrderedDict()
        seen[digest] = seq
        seen.move_to_end(digest)
        if len(seen) > self.limit:
            seen.popitem(last=False)

    def rebase(self, models: Mapping[str, int], digests: Mapping[str, str], seq: int) -> None:
        """After a registry swap: these model seqs; these digests (all bundles) at ``seq``.

        Histories of bundles that no longer exist are dropped; the others are kept, so
        workers that had a model before the swap still count for it afterwards.
        """
        self._models = dict(models)
        for gone in set(self._bundles) - set(digests):
            del self._bundles[gone]
        for bundle, digest in digests.items():
            self.record(bundle, digest, seq)

    def __len__(self) -> int:
        """Digests remembered over all bundles."""
        return sum(len(v) for v in self._bundles.values())

    def digests(self, bundle: str) -> tuple[str, ...]:
        """Remembered digests of ``bundle``, oldest first."""
        return tuple(self._bundles.get(bundle, ()))


# -- observation hooks (metrics live in the gateway, the worker only logs) ----------------
class MirrorObserver:
    """No-op hooks; the gateway overrides them with Prometheus metrics."""

    def delta(self, kind: str, result: str) -> None:
        pass

    def catchup(self, reason: str) -> None:
        pass

    def bootstrap_failed(self, degraded: bool) -> None:
        pass

    def bootstrapped(self, outcome: ExportOutcome) -> None:
        pass

    def epoch(self, value: int) -> None:
        pass

    def model_changed(self, model_id: str, bundles: Sequence[str]) -> None:
        """A delta changed one model (its bundles after the change): the watch stream's hook."""

    def registry_replaced(self) -> None:
        """A bootstrap swapped the whole registry in (anything may have changed)."""


# -- the adapter ---------------------------------------------------------------------------
class ConfigMirror:
    """Registry + epoch kept in step with the config service. Not thread-safe: one loop."""

    def __init__(
        self,
        client: ConfigServiceClient,
        *,
        bundle: str | None = None,
        trusted: tuple[str, ...] | None = DEFAULT_TRUSTED_PRODUCERS,
        poll_interval: float = 30.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        catchup_min_interval: float = 0.5,
        poll_grace: float = 0.5,
        observer: MirrorObserver | None = None,
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        history: int | None = None,
    ) -> None:
        """``history``: digests remembered per bundle for model-granular readiness; None
        means :data:`DEFAULT_HISTORY` for a gateway (all bundles) and 0 (off) for a worker
        (``bundle`` set), which never serves readiness."""
        self.client = client
        self.bundle = bundle
        self.trusted = trusted
        self.poll_interval = poll_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.catchup_min_interval = catchup_min_interval
        self.poll_grace = poll_grace
        self.observer = observer or MirrorObserver()
        self.on_change = on_change
        self.clock = clock

        self.registry = Registry(BundleSet())
        self.epoch = 0
        self.bundles_hash = ""
        self.bootstrapped = False
        self.degraded = False
        self.failed_models: list[tuple[str, str]] = []
        self._content_epoch = -1  # newest epoch whose model content is in the registry
        self._last_applied: tuple[str, str] | None = None  # skips the N-per-write copies
        self._buffer: list[tuple[bool, Delta]] | None = None  # set while a bootstrap runs
        self._catchup: str | None = None
        self._check: str | None = None
        self._wake = asyncio.Event()
        self._last_bootstrap = float("-inf")
        limit = history if history is not None else (DEFAULT_HISTORY if bundle is None else 0)
        self.history: AckHistory | None = AckHistory(limit) if limit > 0 else None
        self._touched: set[str] = set()  # models changed while a bootstrap is in flight

    # -- readiness lookups (model-granular) -------------------------------------------------
    def model_seq(self, model_id: str) -> int | None:
        """The mutation that last changed ``model_id`` (None without history)."""
        return self.history.model_seq(model_id) if self.history is not None else None

    def hash_seq(self, bundle: str, digest: str) -> int | None:
        """The newest mutation after which ``bundle`` had ``digest`` (None if unknown)."""
        return self.history.hash_seq(bundle, digest) if self.history is not None else None

    # -- requests from outside ------------------------------------------------------------
    def request_catchup(self, reason: str) -> None:
        """Re-bootstrap as soon as allowed (coalesced: one pending reason at a time)."""
        if self._catchup is None:
            self._catchup = reason
            self.observer.catchup(reason)
            log.info("config catch-up requested: %s (local epoch %d)", reason, self.epoch)
        self._wake.set()

    def request_check(self, reason: str) -> None:
        """Compare with ``/epoch`` now instead of at the next poll tick."""
        self._check = reason
        self._wake.set()

    # -- NATS side ------------------------------------------------------------------------
    def on_message(self, subject: str, data: bytes) -> None:
        try:
            delta = parse_delta(data)
        except DeltaError as exc:
            log.warning("dropping malformed config delta on %s: %s", subject, exc)
            return
        if not is_trusted(delta.router_id, self.trusted):
            self.observer.delta(delta.kind, "rejected_untrusted")
            log.warning("ignoring config delta from untrusted producer %r", delta.router_id)
            return
        tracked = subject == ALL_SUBJECT
        if self._buffer is not None:
            self._buffer.append((tracked, delta))
        if self.bootstrapped:
            self._process(tracked, delta, live=self._buffer is None)
        # else: the bootstrap in flight replays it, or the next one's export contains it

    def _process(self, tracked: bool, d: Delta, *, live: bool) -> None:
        """Apply one trusted delta; ``live`` False while a bootstrap will replace the registry."""
        relevant = self.bundle is None or d.bundle_id == self.bundle
        consistent = True
        if relevant and not d.is_epoch_bump:
            result = self._apply(d)
            self.observer.delta(d.kind, result)
            if result != "applied":
                consistent = False
                if live:
                    self.request_catchup(result)
        elif relevant:
            self.observer.delta(d.kind, "applied")
        if not tracked:
            return
        step = classify_epoch(self.epoch, d.epoch)
        if step is EpochStep.GAP:
            consistent = False
            if live:
                self.request_catchup("gap")
        elif consistent and relevant and d.bundle_config_hash and d.epoch >= self._content_epoch:
            local = self.registry.bundle_hash(d.bundle_id)
            if local != d.bundle_config_hash:
                consistent = False
                if live:
                    self.request_catchup("hash_mismatch")
        if consistent and step is EpochStep.NEXT:
            self.epoch = d.epoch
            self.observer.epoch(self.epoch)

    def _apply(self, d: Delta) -> str:
        key = (d.model_id, d.model_config)
        if key == self._last_applied:
            return "applied"
        try:
            doc = _load_yaml(d.model_config)
        except yamlio.YamlError as exc:
            log.warning("config delta for %r (epoch %d) is not YAML: %s", d.model_id, d.epoch, exc)
            return "parse_error"
        try:
            plan = self.registry.plan(doc, source="api", allow_unroutable=True)
        except WriteRejected as exc:
            log.warning("config delta for %r (epoch %d) does not apply: %s", d.model_id, d.epoch, exc)
            return "apply_error"
        self._last_applied = key
        self._content_epoch = max(self._content_epoch, d.epoch)
        if plan.changed and (self.bundle is None or self.bundle in plan.bundles):
            self.registry.apply(plan, epoch=d.epoch)
            self._record(plan.model_id, plan.bundles)
            self.observer.model_changed(plan.model_id, plan.bundles)
            self._changed()
        return "applied"

    def _record(self, model_id: str, bundles: Sequence[str]) -> None:
        """Number the mutation just applied and remember the bundles' digests after it.

        The digests are the ones the hash-mismatch check of :meth:`_process` reads next
        (``BundleHasher`` caches a digest until the bundle changes), so this costs no
        extra hashing on the live path.
        """
        if self.history is None:
            return
        seq = self.history.bump()
        self.history.changed(model_id, seq)
        for b in bundles:
            self.history.record(b, self.registry.bundle_hash(b), seq)
        if self._buffer is not None:
            self._touched.add(model_id)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- HTTP side ------------------------------------------------------------------------
    async def bootstrap_once(self) -> ExportOutcome:
        """One all-or-nothing bootstrap; raises ConfigServiceError, changes nothing then."""
        self._catchup = None  # this attempt answers every request made before it
        self._buffer = []
        self._touched = set()
        previous = self.registry
        try:
            info = await self.client.epoch()
            if self.bundle is None:
                bundles = [await self.client.bundle(b) for b in await self.client.bundle_ids()]
            else:
                bundles = [await self.client.bundle(self.bundle)]
            body = await self.client.export()
            registry, outcome, digests, carried = await asyncio.to_thread(
                self._build, bundles, body, previous
            )
        except BaseException:
            self._buffer = None
            raise
        buffered, self._buffer = self._buffer, None
        self._rebase_history(registry, digests, carried)
        if outcome.epoch < self.epoch:
            log.warning(
                "config service epoch went back from %d to %d; following it", self.epoch, outcome.epoch
            )
        self._last_bootstrap = self.clock()
        self.registry = registry
        self.epoch = outcome.epoch
        self.bundles_hash = info.bundles_hash
        self._content_epoch = outcome.epoch
        self._last_applied = None
        self.failed_models = outcome.failed
        self.bootstrapped = True
        self.degraded = False
        self.observer.registry_replaced()
        self.observer.bootstrapped(outcome)
        self.observer.epoch(self.epoch)
        if outcome.failed:
            shown = ", ".join(f"{m} ({why})" for m, why in outcome.failed[:5])
            log.error("bootstrap: %d exported model(s) could not be mirrored: %s", len(outcome.failed), shown)
        log.info(
            "bootstrapped from %s: epoch %d, %d bundle(s), %d model(s)%s",
            redact_url(self.client.base_url),
            outcome.epoch,
            len(bundles),
            len(registry),
            f", replaying {len(buffered)} delta(s)" if buffered else "",
        )
        for tracked, d in buffered:
            if d.epoch > outcome.epoch:
                self._process(tracked, d, live=True)
        self._changed()
        return outcome

    def _build(
        self, bundles: Sequence[Bundle], body: bytes, previous: Registry
    ) -> tuple[Registry, ExportOutcome, dict[str, str], dict[str, ModelEntry]]:
        """Off-loop part of a bootstrap: the registry, and for the history its digests and
        the models whose content did not change."""
        registry, outcome = build_registry(bundles, body, self.bundle)
        if self.history is None:
            return registry, outcome, {}, {}
        return registry, outcome, bundle_digests(registry), carried_over(previous, registry)

    def _rebase_history(
        self, registry: Registry, digests: dict[str, str], carried: dict[str, ModelEntry]
    ) -> None:
        """Number the swap: unchanged models keep their seq, the others get the swap's."""
        history = self.history
        if history is None:
            return
        seq = history.bump()
        old = self.registry
        touched, self._touched = self._touched, set()
        adapters = _stable_adapters(old, registry)
        seqs: dict[str, int] = {}
        for entry in registry:
            mid = entry.model_id
            kept = None
            if mid in touched:  # changed by a delta during the bootstrap: compare with that
                cur = old.get(mid)
                if cur is not None and _same_content(cur, entry, adapters):
                    kept = history.model_seq(mid)
            elif mid in carried:
                kept = history.model_seq(mid)
            seqs[mid] = kept if kept is not None else seq
        history.rebase(seqs, digests, seq)

    async def poll_once(self, reason: str = "poll") -> PollAction | None:
        """Compare with ``/epoch`` and request a catch-up on drift; None if unreachable."""
        info = await self._remote_epoch(reason)
        if info is None:
            return None
        action = poll_action(self.epoch, self.bundles_hash, info.epoch, info.bundles_hash)
        if action is PollAction.BEHIND and self.poll_grace > 0:
            # The delta of a write that just happened may be in flight: give it a moment
            # before paying for a whole export.
            await asyncio.sleep(self.poll_grace)
            if self.epoch >= info.epoch and self._catchup is None:
                return PollAction.IN_SYNC
        elif action is PollAction.AHEAD and self.poll_grace > 0:
            # With several config-service replicas, the one answering may follow the writer
            # a moment behind: ask again before following an epoch that went back (a store
            # really reset stays behind, and is then followed).
            await asyncio.sleep(self.poll_grace)
            info = await self._remote_epoch(reason)
            if info is None:
                return None
            action = poll_action(self.epoch, self.bundles_hash, info.epoch, info.bundles_hash)
        if action is not PollAction.IN_SYNC:
            self.request_catchup(action.value)
        return action

    async def _remote_epoch(self, reason: str) -> EpochInfo | None:
        try:
            return await self.client.epoch()
        except ConfigServiceError as exc:
            log.warning("epoch poll (%s) failed: %s", reason, exc)
            return None

    async def _sleep(self, seconds: float) -> bool:
        """Sleep until woken or timed out; True if woken."""
        try:
            await wait_event(self._wake, seconds)
            woke = True
        except TimeoutError:
            woke = False
        self._wake.clear()
        return woke

    async def run(self) -> None:
        """Bootstrap (with backoff) until it succeeds, then poll and catch up forever."""
        delay = self.backoff_initial
        failures = 0
        first_failure = 0.0
        while True:
            if not self.bootstrapped or self._catchup is not None:
                wait = self._last_bootstrap + self.catchup_min_interval - self.clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                reason, self._catchup = self._catchup, None
                try:
                    await self.bootstrap_once()
                except ConfigServiceError as exc:
                    failures += 1
                    first_failure = first_failure or self.clock()
                    self.degraded = (
                        failures >= DEGRADED_AFTER_ATTEMPTS
                        or self.clock() - first_failure >= DEGRADED_AFTER_SECONDS
                    )
                    self.observer.bootstrap_failed(self.degraded)
                    level = logging.ERROR if self.degraded else logging.WARNING
                    log.log(level, "bootstrap attempt %d failed (retry in %.1fs): %s", failures, delay, exc)
                    if reason is not None and self._catchup is None:
                        self._catchup = reason
                    await self._sleep(delay)
                    delay = min(delay * 2, self.backoff_max)
                    continue
                delay, failures, first_failure = self.backoff_initial, 0, 0.0
                continue
            woke = await self._sleep(self.poll_interval)
            if self._catchup is not None:
                continue
            if self._check is not None or not woke:
                reason, self._check = self._check or "poll", None
                await self.poll_once(reason)
