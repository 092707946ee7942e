"""What the gateway fleet said, and how a blip of one replica is damped (pure).

A replica that fails one fetch (a GC pause, a rolling restart, a dropped connection) is
not unreachable yet: for a grace period (by default one heartbeat timeout, the time the
gateway itself gives a silent worker) its last good view stands in for it. Only a failure
that lasts longer than the grace period reaches status, so one blip costs no status patch
and no Event on any resource, while a replica that is really gone is reported after a
bounded, documented delay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..protocol.packed import PackedModels
from .status import GatewayObservation


@dataclass(frozen=True)
class GatewayView:
    """What one replica said in one fetch."""

    key: str  # URL we asked
    gateway_id: str
    reachable: bool
    error: str = ""
    config_epoch: int = 0
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # lower-case id -> snapshot


@dataclass(frozen=True)
class FleetSnapshot:
    views: tuple[GatewayView, ...]
    taken_at: float
    seq: int = 0  # numbers the snapshots of one reader
    # Lower-case ids of the models whose per-replica answer may differ from snapshot
    # ``changed_since`` (None: unknown, compare every model). Lets the core re-plan O(changed)
    # resources per update instead of comparing all of them (the streams say what changed).
    changed: frozenset[str] | None = None
    changed_since: int = -1

    def only_models_changed_since(self, prev: FleetSnapshot | None) -> bool:
        """Whether ``changed`` describes everything that differs from ``prev``: same replicas,
        same reachability, no epoch gone back (a replica's epoch moving up changes no
        resource that is already Ready: it is at or past every replica's epoch)."""
        if prev is None or self.changed is None or self.changed_since != prev.seq:
            return False
        if len(self.views) != len(prev.views):
            return False
        return all(
            a.key == b.key
            and a.gateway_id == b.gateway_id
            and a.reachable == b.reachable
            and a.error == b.error
            and a.config_epoch >= b.config_epoch
            for a, b in zip(self.views, prev.views, strict=True)
        )

    def facts(self, model_id: str, epoch_cap: int) -> tuple[tuple[Any, ...], ...]:
        """What each replica says of one model, as far as a status written for a write at
        ``epoch_cap`` can depend on it: equal facts, equal status. Cheap to keep per resource
        (a packed answer is compared as its bytes, not decoded), and a replica's epoch is capped
        there, since status only asks whether each replica has reached the write."""
        key = model_id.lower()
        return tuple(
            (
                v.gateway_id,
                v.reachable,
                v.error,
                min(v.config_epoch, epoch_cap),
                v.models.raw(key) if isinstance(v.models, PackedModels) else v.models.get(key),
            )
            for v in self.views
        )

    def observations(self, model_id: str) -> list[GatewayObservation]:
        key = model_id.lower()
        return [
            GatewayObservation(
                gateway_id=v.gateway_id,
                reachable=v.reachable,
                error=v.error,
                config_epoch=v.config_epoch,
                snapshot=v.models.get(key),
            )
            for v in self.views
        ]


@dataclass(frozen=True)
class ReplicaHealth:
    last_good: GatewayView | None
    failing_since: float | None = None


def damp(
    health: Mapping[str, ReplicaHealth], views: Sequence[GatewayView], now: float, grace: float
) -> tuple[dict[str, ReplicaHealth], tuple[GatewayView, ...]]:
    """The views to report, and the health to remember for the next fetch.

    Replicas that are no longer discovered are forgotten (a scaled-down replica is not
    unreachable, it is gone).
    """
    new_health: dict[str, ReplicaHealth] = {}
    out = []
    for v in views:
        if v.reachable:
            new_health[v.key] = ReplicaHealth(v)
            out.append(v)
            continue
        prev = health.get(v.key)
        since = prev.failing_since if prev is not None and prev.failing_since is not None else now
        last = prev.last_good if prev is not None else None
        new_health[v.key] = ReplicaHealth(last, since)
        out.append(last if last is not None and now - since < grace else v)
    return new_health, tuple(out)
