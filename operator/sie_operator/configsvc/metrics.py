"""Prometheus metrics of the config service, with the names SIE's dashboards use.

Each service gets its own CollectorRegistry (several apps can live in one process, e.g.
in tests, or the operator exposing kopf and config metrics side by side).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The contract's seven metrics, three of ours for replicated stores and leadership, and the
    standard process/python collectors."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process_metrics: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        if process_metrics and registry is None:
            process_collector.ProcessCollector(registry=self.registry)
            platform_collector.PlatformCollector(registry=self.registry)
            gc_collector.GCCollector(registry=self.registry)
        r = self.registry
        self.http_requests = Counter(
            "sie_config_http_requests_total",
            "HTTP requests by method, route template and status code.",
            ["method", "path", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "sie_config_http_request_duration_seconds",
            "HTTP request duration by method and route template.",
            ["method", "path"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.epoch = Gauge("sie_config_epoch", "Current config epoch.", registry=r)
        self.models = Gauge(
            "sie_config_models_total", "Models in the registry by source.", ["source"], registry=r
        )
        self.nats_connected = Gauge("sie_config_nats_connected", "1 if connected to NATS.", registry=r)
        self.nats_publishes = Counter(
            "sie_config_nats_publishes_total",
            "Config change publications by result (success, partial, failure).",
            ["result"],
            registry=r,
        )
        self.store_writes = Counter(
            "sie_config_store_writes_total",
            "Store writes by operation (write_model, increment_epoch) and result.",
            ["op", "result"],
            registry=r,
        )
        # ours, for replicated stores (zero with a directory store)
        self.store_conflicts = Counter(
            "sie_config_store_conflicts_total",
            "Writes refused by a shared store because another replica appended first "
            "(outcome: retried, refused).",
            ["outcome"],
            registry=r,
        )
        self.store_followed = Counter(
            "sie_config_store_followed_records_total",
            "Records applied here through the shared store's follower path (written by other "
            "replicas, or ours that landed in a batch another replica interleaved with).",
            registry=r,
        )
        self.not_leader = Counter(
            "sie_config_not_leader_total",
            "Writes that reached a replica that may not write (outcome: forwarded, refused).",
            ["outcome"],
            registry=r,
        )
        for source in ("api", "filesystem"):
            self.models.labels(source=source).set(0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
