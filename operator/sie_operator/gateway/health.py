"""Worker health state machine and the table of known workers (pure; the clock is injected).

Contract §6.3: a decoded frame refreshes the heartbeat; ``ready: true`` makes a worker
Healthy; ``ready: false`` keeps a Healthy worker Healthy (SIE's quirk, kept for
compatibility: a shutting-down worker closes its socket right after) and otherwise leaves
it Unknown; a Healthy worker silent for longer than the heartbeat timeout is demoted at the
next sweep; a closed or failed connection demotes at once. Only Healthy workers count for
readiness.

The table also keeps, per bundle, the Healthy workers sorted by name, rebuilt only when
membership changes (health, bundle or name), so a readiness read costs
O(bundles of the model x workers of those bundles) and frames that only carry a new hash
cost O(1). A ``listener`` is told the bundle whenever what readiness reads of it changes
(membership, or the hash a Healthy worker reports): the watch stream's change detection.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


class Health(enum.Enum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


def on_frame(state: Health, ready: bool) -> Health:
    if ready:
        return Health.HEALTHY
    return Health.HEALTHY if state is Health.HEALTHY else Health.UNKNOWN


def on_disconnect(state: Health) -> Health:
    return Health.UNHEALTHY


def on_sweep(state: Health, last_heartbeat: float, now: float, timeout: float) -> Health:
    if state is Health.HEALTHY and now - last_heartbeat > timeout:
        return Health.UNHEALTHY
    return state


@dataclass(frozen=True)
class Frame:
    """The parts of a worker status frame the gateway uses (contract §6.2)."""

    name: str = ""
    ready: bool = False
    bundle: str = ""
    bundle_config_hash: str = ""
    machine_profile: str = ""
    pool_name: str = ""
    gpu_count: int = 0
    loaded_models: tuple[str, ...] = ()


PREVIOUS_HASHES = 16


@dataclass
class WorkerRecord:
    url: str
    health: Health = Health.UNKNOWN
    name: str = ""
    bundle: str = "default"
    config_hash: str = ""
    # hashes reported before this one, newest first (bounded): a worker only moves forward,
    # so they bound what it holds while the replica has not caught up to its current hash
    previous_hashes: tuple[str, ...] = ()
    ready: bool = False
    machine_profile: str = ""
    pool_name: str = ""
    gpu_count: int = 1
    loaded_models: tuple[str, ...] = ()
    last_heartbeat: float | None = None
    connected: bool = False

    @property
    def display_name(self) -> str:
        """Identity in acked/pending lists: the reported name, else the URL."""
        return self.name or self.url

    @property
    def healthy(self) -> bool:
        return self.health is Health.HEALTHY


@dataclass
class WorkerTable:
    """Workers by URL, the state machine applied to them, and the per-bundle grouping."""

    heartbeat_timeout: float = 15.0
    clock: Callable[[], float] = time.monotonic
    listener: Callable[[str], None] | None = None
    _workers: dict[str, WorkerRecord] = field(default_factory=dict)
    _groups: dict[str, tuple[WorkerRecord, ...]] | None = None

    # -- membership ------------------------------------------------------------------------
    def add(self, url: str) -> WorkerRecord:
        rec = self._workers.get(url)
        if rec is None:
            rec = self._workers[url] = WorkerRecord(url=url)
        return rec

    def remove(self, url: str) -> None:
        rec = self._workers.pop(url, None)
        if rec is not None and rec.healthy:
            self._invalidate(rec.bundle)

    def get(self, url: str) -> WorkerRecord | None:
        return self._workers.get(url)

    def __iter__(self) -> Iterator[WorkerRecord]:
        return iter(sorted(self._workers.values(), key=lambda w: (w.display_name, w.url)))

    def __len__(self) -> int:
        return len(self._workers)

    # -- transitions -----------------------------------------------------------------------
    def frame(self, url: str, frame: Frame) -> None:
        rec = self._workers.get(url)
        if rec is None:  # removed by discovery while its socket was still open
            return
        name, bundle = frame.name, frame.bundle or "default"
        new_health = on_frame(rec.health, frame.ready)
        membership = (rec.healthy or new_health is Health.HEALTHY) and (
            new_health is not rec.health or name != rec.name or bundle != rec.bundle
        )
        touched: tuple[str, ...] = (rec.bundle, bundle) if membership else ()
        if not membership and new_health is Health.HEALTHY and frame.bundle_config_hash != rec.config_hash:
            touched = (bundle,)
        if bundle != rec.bundle:
            rec.previous_hashes = ()
        elif frame.bundle_config_hash != rec.config_hash and rec.config_hash:
            rec.previous_hashes = (rec.config_hash, *rec.previous_hashes)[:PREVIOUS_HASHES]
        rec.health = new_health
        rec.name = name
        rec.bundle = bundle
        rec.config_hash = frame.bundle_config_hash
        rec.ready = frame.ready
        rec.machine_profile = frame.machine_profile
        rec.pool_name = frame.pool_name
        rec.gpu_count = frame.gpu_count or 1
        rec.loaded_models = frame.loaded_models
        rec.last_heartbeat = self.clock()
        rec.connected = True
        if membership:
            self._groups = None
        for b in touched:
            self._notify(b)

    def disconnected(self, url: str) -> None:
        rec = self._workers.get(url)
        if rec is None:
            return
        was_healthy = rec.healthy
        rec.health = on_disconnect(rec.health)
        rec.connected = False
        rec.previous_hashes = ()  # a new connection may be a restarted worker: nothing carries over
        if was_healthy:
            self._invalidate(rec.bundle)

    def sweep(self) -> list[str]:
        """Demote Healthy workers whose last frame is too old; returns their URLs."""
        now = self.clock()
        demoted = []
        for rec in self._workers.values():
            if rec.last_heartbeat is None:
                continue
            new = on_sweep(rec.health, rec.last_heartbeat, now, self.heartbeat_timeout)
            if new is not rec.health:
                rec.health = new
                demoted.append(rec.url)
                self._invalidate(rec.bundle)
        return demoted

    # -- readiness view --------------------------------------------------------------------
    def group(self, bundle: str) -> tuple[WorkerRecord, ...]:
        """Healthy workers reporting exactly ``bundle``, sorted by display name then URL."""
        if self._groups is None:
            groups: dict[str, list[WorkerRecord]] = {}
            for rec in self._workers.values():
                if rec.healthy:
                    groups.setdefault(rec.bundle, []).append(rec)
            self._groups = {
                b: tuple(sorted(ws, key=lambda w: (w.display_name, w.url))) for b, ws in groups.items()
            }
        return self._groups.get(bundle, ())

    def counts(self) -> dict[str, int]:
        out = {h.value: 0 for h in Health}
        for rec in self._workers.values():
            out[rec.health.value] += 1
        return out

    def _invalidate(self, bundle: str) -> None:
        self._groups = None
        self._notify(bundle)

    def _notify(self, bundle: str) -> None:
        if self.listener is not None:
            self.listener(bundle)
