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
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from sie_operator.catalog import yamlio
from sie_operator.catalog.bundles import Bundle, BundleSet
from sie_operator.catalog.registry import Registry, WriteRejected

from .configclient import ConfigServiceClient, ConfigServiceError
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
    ) -> None:
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
            self._changed()
        return "applied"

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- HTTP side ------------------------------------------------------------------------
    async def bootstrap_once(self) -> ExportOutcome:
        """One all-or-nothing bootstrap; raises ConfigServiceError, changes nothing then."""
        self._catchup = None  # this attempt answers every request made before it
        self._buffer = []
        try:
            info = await self.client.epoch()
            if self.bundle is None:
                bundles = [await self.client.bundle(b) for b in await self.client.bundle_ids()]
            else:
                bundles = [await self.client.bundle(self.bundle)]
            body = await self.client.export()
            registry, outcome = await asyncio.to_thread(build_registry, bundles, body, self.bundle)
        except BaseException:
            self._buffer = None
            raise
        buffered, self._buffer = self._buffer, None
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
        self.observer.bootstrapped(outcome)
        self.observer.epoch(self.epoch)
        if outcome.failed:
            shown = ", ".join(f"{m} ({why})" for m, why in outcome.failed[:5])
            log.error("bootstrap: %d exported model(s) could not be mirrored: %s", len(outcome.failed), shown)
        log.info(
            "bootstrapped from %s: epoch %d, %d bundle(s), %d model(s)%s",
            self.client.base_url,
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

    async def poll_once(self, reason: str = "poll") -> PollAction | None:
        """Compare with ``/epoch`` and request a catch-up on drift; None if unreachable."""
        try:
            info = await self.client.epoch()
        except ConfigServiceError as exc:
            log.warning("epoch poll (%s) failed: %s", reason, exc)
            return None
        action = poll_action(self.epoch, self.bundles_hash, info.epoch, info.bundles_hash)
        if action is PollAction.BEHIND and self.poll_grace > 0:
            # The delta of a write that just happened may be in flight: give it a moment
            # before paying for a whole export.
            await asyncio.sleep(self.poll_grace)
            if self.epoch >= info.epoch and self._catchup is None:
                return PollAction.IN_SYNC
        if action is not PollAction.IN_SYNC:
            self.request_catchup(action.value)
        return action

    async def _sleep(self, seconds: float) -> bool:
        """Sleep until woken or timed out; True if woken."""
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
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
