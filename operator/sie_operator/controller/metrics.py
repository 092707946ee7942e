"""Prometheus metrics of the reconcile path, served with the Config API's on its /metrics.

Names are prefixed ``sie_operator_`` (the config service's own are ``sie_config_``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ReconcileMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.reconciles = Counter(
            "sie_operator_reconciles_total",
            "Decided store writes of ModelConfigs by outcome (accepted, conflict, invalid, "
            "unroutable, duplicate, nats_unavailable, store_error).",
            ["outcome"],
            registry=r,
        )
        self.status_patches = Counter(
            "sie_operator_status_patches_total",
            "Status patches by result (ok, gone, rejected, failed).",
            ["result"],
            registry=r,
        )
        self.events = Counter(
            "sie_operator_events_total",
            "Kubernetes Events posted, by reason and type (Normal, Warning).",
            ["reason", "type"],
            registry=r,
        )
        self.event_failures = Counter(
            "sie_operator_event_failures_total", "Events that could not be posted.", registry=r
        )
        self.write_seconds = Histogram(
            "sie_operator_store_write_duration_seconds",
            "Time of one ModelConfig store write (validate, persist, publish).",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.tracked = Gauge(
            "sie_operator_tracked_resources", "ModelConfigs the operator tracks.", registry=r
        )
        self.converging = Gauge(
            "sie_operator_converging_resources",
            "Tracked ModelConfigs that are neither Ready nor Stalled at their generation.",
            registry=r,
        )
        self.owner_conflicts = Gauge(
            "sie_operator_owner_conflicts",
            "ModelConfigs stalled because an older resource owns their sieId (DuplicateSieId).",
            registry=r,
        )
        self.relists = Counter(
            "sie_operator_relists_total",
            "Complete listings of the watched namespaces (startup, watch restarts, periodic).",
            ["result"],
            registry=r,
        )
        self.confirmed_gone = Counter(
            "sie_operator_confirmed_gone_total",
            "Resources found deleted by a listing or lookup rather than a DELETED event.",
            registry=r,
        )
        self.gateway_replicas = Gauge(
            "sie_operator_gateway_replicas",
            "Gateway replicas in the last fleet snapshot, by state (reachable, unreachable).",
            ["state"],
            registry=r,
        )
        self.leading = Gauge(
            "sie_operator_leading",
            "1 while this replica runs the controller (always without --leader-election; "
            "with it, while it holds the Lease), else 0.",
            registry=r,
        )
        self.terms = Counter(
            "sie_operator_leader_terms_total",
            "Terms of control this process started (each won Lease, or the one term without election).",
            registry=r,
        )
