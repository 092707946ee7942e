"""ModelConfig objects as GitOps tools see them, and what each tool should say about them.

Why two sources: objects built with the operator's own ``compute_status`` cover every
reason the operator can report (realistic by construction, and they follow the code when it
changes); JSON files in ``fixtures/`` are objects captured from a real run (kubectl get -o
json), so the checks also hold for what the API server actually stores and returns.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NOW = "2026-05-04T10:00:00Z"
LATER = "2026-05-04T10:00:07Z"
HASH_A = "5f" * 32
HASH_B = "a1" * 32

Obj = dict[str, Any]


@dataclass(frozen=True)
class Case:
    name: str
    obj: Obj
    argocd: str  # Healthy | Progressing | Degraded
    kstatus: str  # Current | InProgress | Failed | Terminating
    argocd_message: str = ""  # a substring the Argo CD message must contain
    notes: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


def manifest(
    name: str = "intfloat-e5-small-v2", sie_id: str = "intfloat/e5-small-v2", generation: int = 1
) -> Obj:
    """A ModelConfig as the API server returns it (metadata filled in, no status yet)."""
    return {
        "apiVersion": "sie.dev/v1alpha1",
        "kind": "ModelConfig",
        "metadata": {
            "name": name,
            "namespace": "sie-system",
            "uid": "6c1f7a52-1b8e-4c55-9f55-0d7f2b1c9a10",
            "resourceVersion": "4711",
            "generation": generation,
            "creationTimestamp": "2026-05-04T09:59:58Z",
        },
        "spec": {
            "sieId": sie_id,
            "hfId": sie_id,
            "profiles": {
                "default": {
                    "adapterPath": "sie_server.adapters.bert_flash:BertFlashAdapter",
                    "maxBatchTokens": 16384,
                }
            },
        },
    }


def snapshot(
    model_id: str,
    epoch: int,
    bundles: Sequence[tuple[str, str, list[str], list[str]]],
    *,
    no_bundles: bool = False,
) -> dict[str, Any]:
    """One gateway's per-model readiness (the shape of GET /v1/configs/models/{id}/status)."""
    out = []
    for bundle_id, digest, acked, pending in bundles:
        out.append(
            {
                "bundle_id": bundle_id,
                "expected_bundle_config_hash": digest,
                "total_eligible_workers": len(acked) + len(pending),
                "acked_workers": acked,
                "pending_workers": pending,
                "acked": bool(acked or pending) and not pending,
            }
        )
    return {
        "model_id": model_id,
        "config_epoch": epoch,
        "all_bundles_acked": bool(out) and all(b["acked"] for b in out),
        "no_bundles": no_bundles or not out,
        "bundles": out,
        "source": "api",
    }


def computed_cases() -> list[Case]:
    """Every situation the operator reports, with status from ``compute_status`` itself."""
    from sie_operator.controller.status import GatewayObservation, StoreOutcome, compute_status

    sid = "intfloat/e5-small-v2"
    accepted = StoreOutcome("accepted", epoch=3, profiles=("default",))

    def gw(gid: str, snap: dict[str, Any] | None, *, reachable: bool = True, error: str = "") -> Any:
        return GatewayObservation(
            gid, reachable, error, config_epoch=snap["config_epoch"] if snap else 0, snapshot=snap
        )

    def with_status(
        outcome: Any, gateways: Sequence[Any], *, generation: int = 1, previous: Any = None, now: str = NOW
    ) -> Obj:
        obj = manifest(generation=generation)
        obj["status"] = compute_status(
            generation=generation, outcome=outcome, gateways=gateways, previous=previous, now=now
        )
        return obj

    acked = snapshot(sid, 3, [("default", HASH_A, ["worker-0", "worker-1"], [])])
    pending = snapshot(sid, 3, [("default", HASH_A, ["worker-0"], ["worker-1"])])
    empty = snapshot(sid, 3, [("default", HASH_A, [], [])])
    ready = with_status(accepted, [gw("gateway-0", acked), gw("gateway-1", acked)])

    # A new generation the operator has not observed yet: the spec changed, status is old.
    stale = copy.deepcopy(ready)
    stale["metadata"]["generation"] = 2
    # ... and once observed, the first status of generation 2 (profiles added, pending again).
    added = StoreOutcome("accepted", epoch=4, profiles=("default", "fast"))
    pending4 = snapshot(sid, 4, [("default", HASH_B, ["worker-0"], ["worker-1"])])
    progressing2 = with_status(
        added, [gw("gateway-0", pending4)], generation=2, previous=ready["status"], now=LATER
    )

    deleting = copy.deepcopy(ready)
    deleting["metadata"]["deletionTimestamp"] = LATER

    conflict = StoreOutcome(
        "conflict",
        message="profile default differs from the stored one",
        conflicting_profiles=("default",),
        profiles=("default",),
    )
    down = gw("gateway-0", None, reachable=False, error="connection refused")
    nats = StoreOutcome("nats_unavailable", message="not connected")
    invalid = StoreOutcome("invalid", message="profiles.default.adapter_path: required")
    unroutable = StoreOutcome("unroutable", message="no bundle serves acme.adapters.x")
    duplicate = StoreOutcome("duplicate", message="ModelConfig e5 claims sieId first")
    ahead = StoreOutcome("accepted", epoch=5, profiles=("default",))
    no_bundles = snapshot(sid, 3, [])
    p, ip = "Progressing", "InProgress"
    return [
        Case("created-no-status", manifest(), p, "Current", "observe",
             notes="kstatus cannot tell before the first status write (its documented corner case)"),
        Case("ready", ready, "Healthy", "Current", "2 worker(s) acked"),
        Case("workers-pending", with_status(accepted, [gw("gateway-0", pending)]), p, ip,
             "WorkersPending: 1/2 workers acked on bundle default; pending: worker-1"),
        Case("no-workers", with_status(accepted, [gw("gateway-0", empty)]), p, ip, "NoWorkers"),
        Case("no-bundles", with_status(accepted, [gw("gateway-0", no_bundles)]), p, ip, "NoBundles"),
        Case("gateway-unreachable", with_status(accepted, [down]), p, ip, "GatewayUnreachable"),
        Case("gateway-behind", with_status(ahead, [gw("gateway-0", acked)]), p, ip, "GatewayBehind"),
        Case("gateways-disagree", with_status(accepted, [gw("gateway-0", acked), gw("gateway-1", pending)]),
             p, ip, "GatewaysDisagree"),
        Case("no-gateways", with_status(accepted, []), p, ip, "NoGateways"),
        Case("nats-unavailable", with_status(nats, [gw("gateway-0", None)]), p, ip, "NatsUnavailable"),
        Case("generation-not-observed", stale, p, ip, "generation 2"),
        Case("new-generation-pending", progressing2, p, ip, "WorkersPending"),
        Case("invalid-spec", with_status(invalid, []), "Degraded", "Failed",
             "InvalidSpec: profiles.default.adapter_path"),
        Case("unroutable", with_status(unroutable, []), "Degraded", "Failed", "Unroutable"),
        Case("duplicate-sie-id", with_status(duplicate, [gw("gateway-0", acked)]), "Degraded", "Failed",
             "DuplicateSieId"),
        Case("content-conflict", with_status(conflict, [gw("gateway-0", acked)]), "Degraded", "Failed",
             "ContentConflict: profile(s) default differ"),
        Case("deleting", deleting, p, "Terminating", "Pending deletion"),
    ]  # fmt: skip


def fixture_cases() -> list[Case]:
    """Objects captured from real runs: ``{"expect": {"argocd", "kstatus"}, "object": {...}}``."""
    cases = []
    for path in sorted(FIXTURES.glob("*.json")):
        data = json.loads(path.read_text())
        expect = data["expect"]
        cases.append(
            Case(
                f"fixture:{path.stem}",
                data["object"],
                expect["argocd"],
                expect["kstatus"],
                expect.get("argocdMessage", ""),
                notes=data.get("source", ""),
            )
        )
    return cases
