"""The one idempotent reconcile path for ModelConfig resources (no kopf imports here).

Crossplane-style split: *observe* reads the fleet (gateway replicas) and the store's view
of the model; *create/update* is ``ConfigService.apply`` (a pure replay when nothing
changed, so it is safe on every event, restart or retry). Every watch event, the resume
listing after a restart, and the periodic refresher all end in :meth:`Reconciler.sync`.

Status is written by a single task (:meth:`Reconciler.run`), only through the status
subresource and only when :func:`status_changed` says the facts changed, so a resync or
an operator restart produces no writes at all.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..catalog.registry import CaseConflict, ContentConflict, ValidationFailed
from ..kube.client import KubeClient, KubeError
from .fleet import FleetReader, FleetSnapshot
from .spec import API_GROUP, API_VERSION, KIND, PLURAL, spec_to_sie
from .status import StoreOutcome, compute_status, status_changed

log = logging.getLogger(__name__)

GROUP, VERSION = API_GROUP, API_VERSION
__all__ = ["GROUP", "KIND", "PLURAL", "VERSION", "Reconciler", "holds_claim"]

STALLED_KINDS = frozenset({"invalid", "unroutable", "duplicate", "conflict"})
TRANSIENT_KINDS = frozenset({"nats_unavailable", "store_error"})


def utcnow() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ConfigServiceLike(Protocol):
    """What the reconciler needs of configsvc.service.ConfigService."""

    async def apply(self, body: dict[str, Any], *, source: Literal["api", "filesystem"] = "api") -> Any: ...


def classify_exception(exc: BaseException) -> StoreOutcome | None:
    """Map a refused or failed write to the outcome shown in status; None if unknown."""
    if isinstance(exc, ContentConflict):
        what = []
        if exc.profiles:
            what.append(f"profiles {', '.join(exc.profiles)}")
        if exc.fields:
            what.append(f"fields {', '.join(exc.fields)}")
        return StoreOutcome(
            "conflict",
            f"the config store already holds model {exc.model_id} with different {' and '.join(what)}; "
            "stored profiles are append-only",
            conflicting_profiles=tuple(exc.profiles),
            conflicting_fields=tuple(exc.fields),
        )
    if isinstance(exc, CaseConflict):
        return StoreOutcome("conflict", str(exc))
    if isinstance(exc, ValidationFailed):
        text = "; ".join(exc.messages)
        if "bundle" in text and ("not in any known" in text or "resolve" in text):
            return StoreOutcome("unroutable", text)
        return StoreOutcome("invalid", text)
    name = type(exc).__name__
    if name == "NatsUnavailable":
        return StoreOutcome(
            "nats_unavailable", "NATS is not connected; the change will be published when it is"
        )
    if name == "StoreError":
        return StoreOutcome("store_error", f"the config store failed: {exc}")
    return None


@dataclass
class Tracked:
    """What the operator knows about one resource."""

    namespace: str
    name: str
    uid: str
    generation: int
    created: str
    sie_id: str
    spec: dict[str, Any]
    status: dict[str, Any] | None = None  # last status known to be on the server
    duplicate_of: str | None = None
    outcome: StoreOutcome | None = None
    outcome_generation: int = -1
    retry_at: float = 0.0
    backoff: float = 0.5
    write_retry_at: float = 0.0  # after a failed status patch, wait before the next try
    write_backoff: float = 0.5
    events_sent: set[str] = field(default_factory=set)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def ready(self) -> bool:
        for c in (self.status or {}).get("conditions") or []:
            if c.get("type") == "Ready":
                return c.get("status") == "True" and bool(c.get("observedGeneration") == self.generation)
        return False

    def ref(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
        }


Claim = tuple[str, str, bool]  # (creationTimestamp, name, already holds the sieId)


def holds_claim(status: Mapping[str, Any] | None) -> bool:
    """Whether a resource's status shows it owns its sieId (it was reconciled, not as a duplicate)."""
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("reason") != "DuplicateSieId")
    return False


def pick_winner(claims: Iterable[Claim]) -> Claim | None:
    """The oldest claim on one sieId wins. creationTimestamp has one-second resolution, so
    within the same second the resource that already holds the sieId keeps it (no
    flip-flop), and only then does the name decide."""
    items = sorted(claims, key=lambda c: (c[0], not c[2], c[1]))
    return items[0] if items else None


class Reconciler:
    def __init__(
        self,
        service: ConfigServiceLike,
        fleet: FleetReader,
        kube: KubeClient,
        *,
        fast_interval: float = 0.25,
        slow_interval: float = 15.0,
        max_backoff: float = 30.0,
        patch_concurrency: int = 16,
        publishes: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.fleet = fleet
        self.kube = kube
        self.fast_interval = fast_interval
        self.slow_interval = slow_interval
        self.max_backoff = max_backoff
        self.publishes = publishes
        self.clock = clock
        self.tracked: dict[tuple[str, str], Tracked] = {}
        self._kick = asyncio.Event()
        self._patch_sem = asyncio.Semaphore(patch_concurrency)
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    # -- event intake (called from the kopf handlers) ----------------------------------
    async def observe(self, event_type: str | None, body: Mapping[str, Any], claims: Iterable[Claim]) -> None:
        """A watch event (ADDED/MODIFIED/initial listing) for one resource."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if event_type == "DELETED":
            await self.forget(body)
            return
        spec = dict(body.get("spec") or {})
        t = self.tracked.get(key)
        if t is None or t.uid != meta.get("uid"):
            st = body.get("status")
            t = Tracked(
                namespace=key[0],
                name=key[1],
                uid=str(meta.get("uid")),
                generation=int(meta.get("generation") or 0),
                created=str(meta.get("creationTimestamp") or ""),
                sie_id=str(spec.get("sieId") or ""),
                spec=spec,
                status=dict(st) if isinstance(st, Mapping) else None,
            )
            self.tracked[key] = t
        else:
            old_sie_id = t.sie_id
            t.generation = int(meta.get("generation") or 0)
            t.spec = spec
            t.sie_id = str(spec.get("sieId") or "")
            if old_sie_id != t.sie_id:
                await self._release_claim(t.namespace, old_sie_id)
        winner = pick_winner(self._with_memory(t.namespace, claims))
        t.duplicate_of = winner[1] if winner is not None and winner[1] != t.name else None
        await self.sync(t)

    def _with_memory(self, namespace: str, claims: Iterable[Claim]) -> list[Claim]:
        """Claims from the index, corrected by what this process already decided (the
        index only learns of a win once the status patch comes back)."""
        out = []
        for created, name, holds in claims:
            t = self.tracked.get((namespace, name))
            if t is not None and t.outcome is not None:
                holds = t.outcome.kind != "duplicate"
            out.append((created, name, holds))
        return out

    async def forget(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        t = self.tracked.pop(key, None)
        self._locks.pop(key, None)
        if t is None:
            return
        if t.outcome is not None and t.outcome.kind == "accepted":
            await self._event(
                t,
                "Retained",
                f"ModelConfig deleted; model {t.sie_id} stays in the config store (append-only). "
                "Re-creating a ModelConfig with the same content adopts it.",
            )
        await self._release_claim(t.namespace, t.sie_id)

    async def _release_claim(self, namespace: str, sie_id: str) -> None:
        """A resource gave up a sieId (deleted, or its sieId changed): a duplicate that lost
        to it may now win."""
        peers = [p for p in self.tracked.values() if p.namespace == namespace and p.sie_id == sie_id]
        if peers:
            winner = pick_winner(
                (p.created, p.name, p.outcome is not None and p.outcome.kind != "duplicate") for p in peers
            )
            for p in peers:
                p.duplicate_of = winner[1] if winner is not None and winner[1] != p.name else None
                p.outcome_generation = -1
                await self.sync(p)

    # -- reconcile ---------------------------------------------------------------------
    async def sync(self, t: Tracked, *, force: bool = False) -> None:
        """Make the store hold this resource's model (idempotent), then refresh status soon."""
        lock = self._locks.setdefault(t.key, asyncio.Lock())
        async with lock:
            stale = t.outcome_generation != t.generation or force
            was_dup = t.outcome is not None and t.outcome.kind == "duplicate"
            if not stale and was_dup != (t.duplicate_of is not None):
                stale = True
            if stale:
                t.outcome = await self._store(t)
                t.outcome_generation = t.generation
                if t.outcome.kind in TRANSIENT_KINDS:
                    t.retry_at = self.clock() + t.backoff
                    t.backoff = min(t.backoff * 2, self.max_backoff)
                else:
                    t.backoff = 0.5
        self._kick.set()

    async def _store(self, t: Tracked) -> StoreOutcome:
        if t.duplicate_of is not None:
            outcome = StoreOutcome(
                "duplicate",
                f"sieId {t.sie_id} is already claimed by ModelConfig {t.duplicate_of} in this namespace "
                "(the older resource wins)",
            )
            await self._event_once(t, "DuplicateSieId", outcome.message, warning=True)
            return outcome
        try:
            doc = spec_to_sie(t.spec)
        except Exception as exc:
            outcome = StoreOutcome("invalid", f"spec cannot be converted: {exc}")
            await self._event_once(t, "InvalidSpec", outcome.message, warning=True)
            return outcome
        try:
            result = await self.service.apply(doc, source="api")
        except Exception as exc:
            mapped = classify_exception(exc)
            if mapped is None:
                log.exception("unexpected failure applying %s/%s", t.namespace, t.name)
                mapped = StoreOutcome("store_error", f"unexpected error: {type(exc).__name__}: {exc}")
            reason = {
                "conflict": "ContentConflict",
                "invalid": "InvalidSpec",
                "unroutable": "Unroutable",
                "nats_unavailable": "NatsUnavailable",
                "store_error": "StoreError",
            }.get(mapped.kind, "Failed")
            await self._event_once(t, reason, mapped.message, warning=True)
            return mapped
        entry = result.entry
        profiles = tuple(sorted(entry.profiles)) if entry is not None else ()
        if result.changed:
            # one Event per write (not Accepted + Published): at 1,000 resources applied at once
            # every API call the operator saves is time the API server gives to the user
            stored = f"stored model {t.sie_id} at config epoch {result.epoch}" + (
                f" (new profiles: {', '.join(result.created)})" if result.created else ""
            )
            if result.warnings:
                await self._event(t, "PublishFailed", f"{stored}; {'; '.join(result.warnings)}", warning=True)
            elif self.publishes and entry is not None:
                await self._event(
                    t, "Published", f"{stored}; published to bundles {', '.join(entry.bundles)} over NATS"
                )
            else:
                await self._event(t, "Accepted", stored)
        return StoreOutcome("accepted", epoch=int(result.epoch), profiles=profiles)

    # -- status writer -----------------------------------------------------------------
    def kick(self) -> None:
        self._kick.set()

    def _needs_fast(self, t: Tracked) -> bool:
        if t.outcome is None:
            return True
        if t.outcome.kind in STALLED_KINDS:
            return False
        return not t.ready

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh status of every tracked resource; fast while any is converging."""
        while not stop.is_set():
            busy = any(self._needs_fast(t) for t in self.tracked.values())
            timeout = self.fast_interval if busy else self.slow_interval
            try:
                await asyncio.wait_for(self._kick.wait(), timeout=timeout)
                await asyncio.sleep(0.02)  # let a burst of events land in one round
            except TimeoutError:
                pass
            self._kick.clear()
            if stop.is_set():
                break
            try:
                await self.refresh_once()
            except Exception:
                log.exception("status refresh failed")
                await asyncio.sleep(self.fast_interval)

    async def refresh_once(self) -> None:
        now_m = self.clock()
        for t in list(self.tracked.values()):
            if t.outcome is not None and t.outcome.kind in TRANSIENT_KINDS and now_m >= t.retry_at:
                await self.sync(t, force=True)
        if not self.tracked:
            return
        snapshot = await self.fleet.fetch()
        now = utcnow()
        writes = []
        for t in list(self.tracked.values()):
            if t.write_retry_at > now_m:
                continue
            new = self.compute(t, snapshot, now)
            if new is not None and status_changed(t.status, new):
                writes.append(self._write(t, new))
        if writes:
            await asyncio.gather(*writes)

    def compute(self, t: Tracked, snapshot: FleetSnapshot, now: str) -> dict[str, Any] | None:
        # a new generation is reported only once its own write was decided: the previous
        # outcome says nothing about it (it could otherwise look Ready before it was stored)
        if t.outcome is None or t.outcome_generation != t.generation:
            return None
        return compute_status(
            generation=t.generation,
            outcome=t.outcome,
            gateways=snapshot.observations(t.sie_id),
            previous=t.status,
            now=now,
        )

    async def _write(self, t: Tracked, status: dict[str, Any]) -> None:
        async with self._patch_sem:
            was_ready = t.ready
            try:
                await self.kube.patch_status(GROUP, VERSION, t.namespace, PLURAL, t.name, status)
            except Exception as exc:
                if isinstance(exc, KubeError) and exc.status == 404 and self.tracked.get(t.key) is t:
                    # deleted before its DELETED event reached us: the same cleanup as for it
                    await self.forget({"metadata": {"namespace": t.namespace, "name": t.name}})
                    return
                log.warning(
                    "status patch of %s/%s failed (retry in %.1f s): %s",
                    t.namespace,
                    t.name,
                    t.write_backoff,
                    exc,
                )
                t.write_retry_at = self.clock() + t.write_backoff
                t.write_backoff = min(t.write_backoff * 2, self.max_backoff)
                return
            t.write_backoff = 0.5
            t.write_retry_at = 0.0
            t.status = status
            if t.ready and not was_ready:
                await self._event(
                    t, "Ready", f"model {t.sie_id} is acked by every worker on every gateway replica"
                )

    # -- events ------------------------------------------------------------------------
    async def _event_once(self, t: Tracked, reason: str, message: str, *, warning: bool = False) -> None:
        key = f"{t.generation}:{reason}"
        if key in t.events_sent:
            return
        t.events_sent.add(key)
        await self._event(t, reason, message, warning=warning)

    async def _event(self, t: Tracked, reason: str, message: str, *, warning: bool = False) -> None:
        try:
            await self.kube.post_event(
                namespace=t.namespace,
                involved=t.ref(),
                reason=reason,
                message=message,
                type_="Warning" if warning else "Normal",
                now=utcnow(),
            )
        except Exception as exc:
            log.debug("event %s for %s/%s not posted: %s", reason, t.namespace, t.name, exc)
