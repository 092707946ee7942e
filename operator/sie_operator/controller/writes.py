"""The desired store write of one resource, and what its outcome means (pure).

A write is an immutable snapshot ``(uid, generation, role)`` taken before the store call;
its outcome is recorded for that snapshot only. Two snapshots are the same write when
uid, generation and role match: one uid and generation always carry one spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..catalog.registry import CaseConflict, ContentConflict, ValidationFailed, WriteRejected
from .status import StoreOutcome

TRANSIENT_KINDS = frozenset({"nats_unavailable", "store_error"})
STALLED_KINDS = frozenset({"invalid", "unroutable", "duplicate", "conflict"})

# Event reason of each refused or failed outcome (posted once per generation).
FAILURE_REASONS = {
    "conflict": "ContentConflict",
    "invalid": "InvalidSpec",
    "unroutable": "Unroutable",
    "duplicate": "DuplicateSieId",
    "nats_unavailable": "NatsUnavailable",
    "store_error": "StoreError",
}


@dataclass(frozen=True, slots=True)
class WriteSnapshot:
    uid: str
    generation: int
    sie_id: str
    # "namespace/name" of the owner when this resource is a duplicate: no store call then
    duplicate_of: str | None
    spec: Mapping[str, Any] = field(compare=False, hash=False, repr=False)


@dataclass(frozen=True, slots=True)
class Notice:
    """An Event to post about a resource."""

    reason: str
    message: str
    warning: bool = False


def duplicate_outcome(write: WriteSnapshot) -> StoreOutcome:
    return StoreOutcome(
        "duplicate",
        f"sieId {write.sie_id} is already claimed by ModelConfig {write.duplicate_of} "
        "(the older resource wins; the config store is one id space across namespaces)",
    )


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
    if isinstance(exc, WriteRejected):  # any other refusal of the content (too large): stalled
        return StoreOutcome("invalid", str(exc))
    name = type(exc).__name__
    if name == "NatsUnavailable":
        return StoreOutcome(
            "nats_unavailable", "NATS is not connected; the change will be published when it is"
        )
    if name == "NotLeader":
        return StoreOutcome("store_error", "this replica is not the leader; the leader writes it")
    if any(c.__name__ == "StoreError" for c in type(exc).__mro__):  # and its kinds (e.g. fenced)
        return StoreOutcome("store_error", f"the config store failed: {exc}")
    return None


def failure_notice(outcome: StoreOutcome) -> Notice | None:
    reason = FAILURE_REASONS.get(outcome.kind)
    return Notice(reason, outcome.message, warning=True) if reason else None


def accepted_notice(
    sie_id: str,
    *,
    changed: bool,
    epoch: int,
    created: tuple[str, ...],
    warnings: tuple[str, ...],
    bundles: tuple[str, ...],
    publishes: bool,
) -> Notice | None:
    """One Event per write that changed the store (none for a replay): at 1,000 resources
    applied at once every API call saved is time the API server gives to the user."""
    if not changed:
        return None
    stored = f"stored model {sie_id} at config epoch {epoch}" + (
        f" (new profiles: {', '.join(created)})" if created else ""
    )
    if warnings:
        return Notice("PublishFailed", f"{stored}; {'; '.join(warnings)}", warning=True)
    if publishes:
        return Notice("Published", f"{stored}; published to bundles {', '.join(bundles)} over NATS")
    return Notice("Accepted", stored)


def retained_notice(sie_id: str) -> Notice:
    return Notice(
        "Retained",
        f"ModelConfig deleted; model {sie_id} stays in the config store (append-only). "
        "Re-creating a ModelConfig with the same content adopts it.",
    )


def ready_notice(sie_id: str) -> Notice:
    return Notice("Ready", f"model {sie_id} is acked by every worker on every gateway replica")
