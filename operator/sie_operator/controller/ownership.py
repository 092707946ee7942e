"""Who owns each sieId: decided here and nowhere else (pure).

The config store is one id space (case-insensitive) for every namespace the operator
watches, so two ModelConfigs declaring one sieId, in any namespaces, would write into the
same stored model. Exactly one of them owns the id; every other declaration is
``Stalled/DuplicateSieId`` naming the owner.

The rule: the current owner keeps the id while it lives and still declares it (no
flip-flop when something else changes). Without a current owner (the first decision after
the full listing, or the owner went away) the oldest ``creationTimestamp`` wins; as that
has one-second resolution, ties go to a resource whose status already shows it holding
the id (so a restarted operator keeps yesterday's decision), then to namespace, name and
uid, so the result never depends on the order events arrived in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DUPLICATE_REASON = "DuplicateSieId"


@dataclass(frozen=True)
class Claimant:
    uid: str
    namespace: str
    name: str
    created: str
    held: bool  # its last status shows it owning the id


def held_by_status(status: Mapping[str, Any] | None) -> bool:
    """Whether a status shows the resource as the owner of its sieId (reconciled, not a duplicate)."""
    for c in (status or {}).get("conditions") or ():
        if isinstance(c, Mapping) and c.get("type") == "Ready":
            return c.get("reason") != DUPLICATE_REASON
    return False


def decide_owner(claimants: Iterable[Claimant], current: str | None) -> str | None:
    """The uid that owns one sieId among the live resources declaring it (None: nobody)."""
    items = list(claimants)
    if current is not None and any(c.uid == current for c in items):
        return current
    if not items:
        return None
    best = min(items, key=lambda c: (c.created, not c.held, c.namespace, c.name, c.uid))
    return best.uid
