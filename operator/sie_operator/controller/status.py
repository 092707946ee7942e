"""ModelConfig status and conditions from what the store and the gateways said (pure, no I/O).

Why pure and deterministic: the same facts must give the same dict, byte for byte, so the
operator can patch status only when ``status_changed`` says so. That is what keeps Argo CD
and watchers quiet (no heartbeat timestamps; ``lastTransitionTime`` moves only when a
condition's status flips; lists are sorted and bounded; gateways are ordered by id).

Conditions (kstatus / Flux / ``kubectl wait`` conventions, see README "ModelConfig reference"):
- ``Ready`` is always present; ``Reconciling`` and ``Stalled`` too (abnormal-true polarity,
  ``False`` when not applicable), each with ``observedGeneration``.
- ``Stalled=True`` only when nothing but a spec change can help (``InvalidSpec``,
  ``Unroutable``, ``DuplicateSieId``, ``ContentConflict``): kstatus reports Failed.
- ``Reconciling=True`` for everything that can resolve without a spec change, including
  ``NoBundles`` (a gateway's bundle view lagging or misconfigured) and ``NoWorkers``
  (workers not scheduled yet, or scaled to zero): kstatus reports InProgress, so
  ``kubectl wait``/Flux keep waiting until their timeout instead of failing at once.

Model-granular readiness: SIE acks per bundle, so with SIE's fields any write to a bundle
would flip every Ready model of it to pending and back (and rewrite every status of the
bundle for the new expected hash). When a gateway's bundle lines carry ``model_acked``
(our gateway, see ``gateway.readiness``), Ready, the reasons, the per-bundle worker lists,
the totals and the replica agreement use ``model_acked`` / ``model_acked_workers`` /
``model_pending_workers`` instead; a line without it (a real SIE gateway) falls back to
``acked`` / ``acked_workers`` / ``pending_workers``. ``bundles[].expectedConfigHash`` is
only shown while the bundle is not acked for the model (to compare with a pending
worker's hash) and is ``None`` otherwise: the status is written as a JSON merge patch,
where null deletes a key that an omission would leave behind (inside the ``bundles`` list,
which a merge patch replaces whole, the API server prunes the null of this non-nullable
field, verified on a real API server); ``status_changed`` counts null and absent as the
same. So a Ready model's status does not change when other models of its bundles are
written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"

MAX_WORKER_NAMES = 32  # per bundle and list, in status (counts stay exact)
MAX_WORKER_NAME = 512
MAX_BUNDLES = 64
MAX_CONDITIONS = 8
MAX_MESSAGE = 1024
_MAX_ERROR = 160
_MAX_LISTED = 5

# Ready reasons, most specific first (the order compute_status checks them in).
ALL_BUNDLES_ACKED = "AllBundlesAcked"
INVALID_SPEC = "InvalidSpec"
UNROUTABLE = "Unroutable"
DUPLICATE_SIE_ID = "DuplicateSieId"
CONTENT_CONFLICT = "ContentConflict"
STORE_ERROR = "StoreError"
NATS_UNAVAILABLE = "NatsUnavailable"
GATEWAY_UNREACHABLE = "GatewayUnreachable"
NO_GATEWAYS = "NoGateways"
GATEWAY_BEHIND = "GatewayBehind"
NO_BUNDLES = "NoBundles"
NO_WORKERS = "NoWorkers"
WORKERS_PENDING = "WorkersPending"
GATEWAYS_DISAGREE = "GatewaysDisagree"

REASONS = (
    INVALID_SPEC,
    UNROUTABLE,
    DUPLICATE_SIE_ID,
    CONTENT_CONFLICT,
    STORE_ERROR,
    NATS_UNAVAILABLE,
    GATEWAY_UNREACHABLE,
    NO_GATEWAYS,
    GATEWAY_BEHIND,
    NO_BUNDLES,
    NO_WORKERS,
    WORKERS_PENDING,
    GATEWAYS_DISAGREE,
)
STALLED_REASONS = frozenset({INVALID_SPEC, UNROUTABLE, DUPLICATE_SIE_ID, CONTENT_CONFLICT})
RECONCILED = "ReconciliationSucceeded"
NOT_STALLED = "NotStalled"

_OUTCOME_REASONS = {
    "invalid": INVALID_SPEC,
    "unroutable": UNROUTABLE,
    "duplicate": DUPLICATE_SIE_ID,
    "conflict": CONTENT_CONFLICT,
    "store_error": STORE_ERROR,
    "nats_unavailable": NATS_UNAVAILABLE,
}


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    kind: Literal[
        "accepted", "invalid", "unroutable", "conflict", "duplicate", "nats_unavailable", "store_error"
    ]
    message: str = ""
    epoch: int = 0  # configEpoch of the write that made the model's current content durable
    profiles: tuple[str, ...] = ()  # profiles stored for this model
    conflicting_profiles: tuple[str, ...] = ()
    conflicting_fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GatewayObservation:
    gateway_id: str
    reachable: bool
    error: str = ""
    config_epoch: int = 0
    # The per-model snapshot of the gateway bulk endpoint; None if the replica does not know the model.
    snapshot: Mapping[str, Any] | None = None


# --------------------------------------------------------------------------- snapshot access


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _names(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _bundles(snapshot: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    raw = snapshot.get("bundles")
    if not isinstance(raw, list):
        return []
    seen: set[str] = set()
    out = []
    for b in raw:
        if isinstance(b, Mapping) and isinstance(b.get("bundle_id"), str) and b["bundle_id"] not in seen:
            seen.add(b["bundle_id"])
            out.append(b)
    return out[:MAX_BUNDLES]


def _epoch(g: GatewayObservation) -> int:
    snap = _int(g.snapshot.get("config_epoch")) if g.snapshot is not None else 0
    return max(_int(g.config_epoch), snap)


def _granular(b: Mapping[str, Any]) -> bool:
    """Whether a bundle line carries the model-granular fields (our gateway, not SIE's)."""
    return isinstance(b.get("model_acked"), bool)


def _line_acked(b: Mapping[str, Any]) -> bool:
    """The bundle is acked *for this model*: model-granular when known, else SIE's verdict."""
    return (b.get("model_acked") if _granular(b) else b.get("acked")) is True


def _line_acked_names(b: Mapping[str, Any]) -> list[str]:
    return _names(b.get("model_acked_workers" if _granular(b) else "acked_workers"))


def _line_pending_names(b: Mapping[str, Any]) -> list[str]:
    return _names(b.get("model_pending_workers" if _granular(b) else "pending_workers"))


def _all_acked(snapshot: Mapping[str, Any]) -> bool:
    """Every bundle acked for this model, as the replica reports it.

    Model-granular (top-level ``model_acked``) when every bundle line is, else SIE's
    ``all_bundles_acked``.
    """
    bundles = _bundles(snapshot)
    if bundles and all(_granular(b) for b in bundles):
        top = snapshot.get("model_acked")
        if isinstance(top, bool):
            return top
        return all(_line_acked(b) for b in bundles)
    return snapshot.get("all_bundles_acked") is True


def _acked_state(snapshot: Mapping[str, Any]) -> tuple[Any, ...]:
    """What replicas must agree on: the acked verdicts (hashes differ legitimately by epoch)."""
    return (
        _all_acked(snapshot),
        tuple((b["bundle_id"], _line_acked(b)) for b in _bundles(snapshot)),
    )


def _worker_list(names: list[str]) -> list[str]:
    return sorted({n[:MAX_WORKER_NAME] for n in names})[:MAX_WORKER_NAMES]


def _bundle_status(b: Mapping[str, Any]) -> dict[str, Any]:
    acked = _line_acked(b)
    return {
        "bundleId": b["bundle_id"][:253],
        # Only while pending (compare with a pending worker's hash): it moves with every
        # write to the bundle, which must not rewrite the status of a Ready model.
        "expectedConfigHash": None if acked else str(b.get("expected_bundle_config_hash") or "")[:128],
        "eligibleWorkers": _int(b.get("total_eligible_workers")),
        "ackedWorkers": _worker_list(_line_acked_names(b)),
        "pendingWorkers": _worker_list(_line_pending_names(b)),
        "acked": acked,
    }


# --------------------------------------------------------------------------- messages


def _clip(text: str, limit: int = MAX_MESSAGE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def _outcome_message(outcome: StoreOutcome, reason: str) -> str:
    detail = outcome.message.strip()
    if reason == CONTENT_CONFLICT and (outcome.conflicting_profiles or outcome.conflicting_fields):
        parts = []
        if outcome.conflicting_profiles:
            parts.append(
                f"profile(s) {_listed(sorted(outcome.conflicting_profiles))} differ from the stored ones"
            )
        if outcome.conflicting_fields:
            parts.append(
                f"field(s) {_listed(sorted(outcome.conflicting_fields))} differ from the stored values"
            )
        return "; ".join(parts) + "; the config store is append-only (add a profile under a new name instead)"
    defaults = {
        INVALID_SPEC: "the spec is not a valid SIE model config",
        UNROUTABLE: "no bundle serves the model's adapters",
        DUPLICATE_SIE_ID: "an older ModelConfig in this namespace claims the same sieId",
        CONTENT_CONFLICT: "the stored model differs; the config store is append-only",
        STORE_ERROR: "the config store write failed; will retry",
        NATS_UNAVAILABLE: "NATS is unavailable; the write was not applied and will be retried",
    }
    if reason in (STORE_ERROR, NATS_UNAVAILABLE) and detail:
        return f"{defaults[reason]}: {detail}"
    return detail or defaults[reason]


def _pending_message(bundles: list[Mapping[str, Any]]) -> str:
    parts = []
    for b in bundles:
        acked = _line_acked_names(b)
        pending = sorted(set(_line_pending_names(b)))
        eligible = _int(b.get("total_eligible_workers")) or len(acked) + len(pending)
        text = f"{len(acked)}/{eligible} workers acked on bundle {b['bundle_id']}"
        if pending:
            text += f"; pending: {_listed(pending)}"
        parts.append(text)
    return ". ".join(parts)


# --------------------------------------------------------------------------- the verdict


def _gateway_verdict(outcome: StoreOutcome, gws: list[GatewayObservation]) -> tuple[str, str]:
    """Ready reason and message for an accepted write, from the gateway replicas."""
    if not gws:
        return NO_GATEWAYS, "no gateway replica is configured or discovered"
    unreachable = [g for g in gws if not g.reachable]
    if unreachable:
        detail = "; ".join(
            f"{g.gateway_id}: {_clip(g.error, _MAX_ERROR)}" if g.error else g.gateway_id for g in unreachable
        )
        if len(unreachable) == len(gws):
            return GATEWAY_UNREACHABLE, f"no gateway reachable ({len(gws)}): {detail}"
        return GATEWAY_UNREACHABLE, f"{len(unreachable)}/{len(gws)} gateways unreachable: {detail}"
    behind = [g for g in gws if g.snapshot is None or _epoch(g) < outcome.epoch]
    if behind:
        parts = [
            f"{g.gateway_id} does not know the model yet"
            if g.snapshot is None
            else f"{g.gateway_id} at epoch {_epoch(g)} < {outcome.epoch}"
            for g in behind
        ]
        return GATEWAY_BEHIND, "; ".join(parts)
    ref = gws[0]
    assert ref.snapshot is not None
    bundles = _bundles(ref.snapshot)
    if not bundles or ref.snapshot.get("no_bundles") is True:
        return NO_BUNDLES, f"gateway {ref.gateway_id} routes the model to no bundle"
    empty = [b["bundle_id"] for b in bundles if _int(b.get("total_eligible_workers")) == 0]
    if empty:
        return NO_WORKERS, f"no eligible workers for bundle(s) {_listed(empty)}"
    not_acked = [b for b in bundles if not _line_acked(b)]
    if not_acked:
        return WORKERS_PENDING, _pending_message(not_acked)
    if not _all_acked(ref.snapshot):
        return WORKERS_PENDING, f"gateway {ref.gateway_id} does not report all bundles acked"
    others = [g for g in gws[1:] if g.snapshot is not None and not _all_acked(g.snapshot)]
    if others:
        parts = []
        for g in others:
            assert g.snapshot is not None
            pending = [b for b in _bundles(g.snapshot) if not _line_acked(b)]
            parts.append(f"gateway {g.gateway_id}: " + (_pending_message(pending) or "not all bundles acked"))
        return GATEWAYS_DISAGREE, f"gateway {ref.gateway_id} reports all bundles acked but " + "; ".join(
            parts
        )
    acked = sum(len(_line_acked_names(b)) for b in bundles)
    ids = ", ".join(b["bundle_id"] for b in bundles)
    agree = f"{len(gws)}/{len(gws)} gateways agree"
    return ALL_BUNDLES_ACKED, f"{acked} worker(s) acked on bundle(s) {ids} at epoch {outcome.epoch}; {agree}"


def _condition(
    ctype: str, status: str, reason: str, message: str, generation: int, previous: Mapping[str, Any], now: str
) -> dict[str, Any]:
    since = now
    prev = previous.get(ctype)
    if isinstance(prev, Mapping) and prev.get("status") == status:
        kept = prev.get("lastTransitionTime")
        if isinstance(kept, str) and kept:
            since = kept
    return {
        "type": ctype,
        "status": status,
        "observedGeneration": generation,
        "lastTransitionTime": since,
        "reason": reason,
        "message": _clip(message),
    }


def compute_status(
    *,
    generation: int,
    outcome: StoreOutcome,
    gateways: Sequence[GatewayObservation],
    previous: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    """The full ``status`` of a ModelConfig (every key always present, so a merge patch
    replaces stale values instead of leaving them behind; ``bundles[].expectedConfigHash``
    is ``None`` while the bundle is acked, which deletes it)."""
    previous = previous if isinstance(previous, Mapping) else {}
    gws = sorted(gateways, key=lambda g: g.gateway_id)

    reason = _OUTCOME_REASONS.get(outcome.kind)
    if reason is not None:
        message = _outcome_message(outcome, reason)
    else:
        reason, message = _gateway_verdict(outcome, gws)
    ready = reason == ALL_BUNDLES_ACKED
    stalled = reason in STALLED_REASONS

    prev_conditions = {
        c["type"]: c for c in previous.get("conditions") or () if isinstance(c, Mapping) and "type" in c
    }
    conditions = [
        _condition(READY, "True" if ready else "False", reason, message, generation, prev_conditions, now),
        _condition(
            RECONCILING,
            "False" if ready or stalled else "True",
            RECONCILED if ready else (STALLED if stalled else reason),
            "" if ready else ("see the Stalled condition" if stalled else message),
            generation,
            prev_conditions,
            now,
        ),
        _condition(
            STALLED,
            "True" if stalled else "False",
            reason if stalled else NOT_STALLED,
            message if stalled else "",
            generation,
            prev_conditions,
            now,
        ),
    ]

    # Per-model facts: from the first reachable replica (by id) that knows the model, unless
    # the sieId belongs to another resource.
    ref = None
    if outcome.kind != "duplicate":
        ref = next((g for g in gws if g.reachable and g.snapshot is not None), None)
    bundles = _bundles(ref.snapshot) if ref is not None and ref.snapshot is not None else []
    agreeing = 0
    if ref is not None and ref.snapshot is not None:
        state = _acked_state(ref.snapshot)
        agreeing = sum(
            1
            for g in gws
            if g.reachable
            and g.snapshot is not None
            and _acked_state(g.snapshot) == state
            and _epoch(g) >= outcome.epoch
        )

    # configEpoch moves only with a durable write of this resource's content.
    epoch = _int(outcome.epoch) if outcome.kind == "accepted" else _int(previous.get("configEpoch"))
    if outcome.kind == "accepted" or outcome.profiles:
        profiles = sorted(set(outcome.profiles))
    else:
        profiles = sorted({p for p in _names(previous.get("profiles"))})

    return {
        "observedGeneration": generation,
        "conditions": conditions,
        "configEpoch": epoch,
        "profiles": profiles,
        "bundles": [_bundle_status(b) for b in bundles],
        "ackedWorkers": sum(len(_line_acked_names(b)) for b in bundles),
        "pendingWorkers": sum(len(_line_pending_names(b)) for b in bundles),
        "gateways": {"seen": len(gws), "agreeing": agreeing},
    }


def _same(a: Any, b: Any) -> bool:
    """Deep equality where ``True`` is not ``1`` (a typed status never mixes them) and a
    null member equals an absent one (a merge patch deletes a key with null)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        ka = {k for k, v in a.items() if v is not None}
        kb = {k for k, v in b.items() if v is not None}
        return ka == kb and all(_same(a[k], b[k]) for k in ka)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether patching ``new`` would change anything: compares the keys ``new`` sets.

    Keys only ``old`` has (written by someone else) are ignored; they are not ours to judge.
    A null in ``new`` (delete) matches an absent key in ``old``, at any depth.
    """
    if not isinstance(old, Mapping):
        return True
    return any(not _same(old.get(k), v) for k, v in new.items())
