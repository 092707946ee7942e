"""Prometheus metrics of the gateway, with SIE's ``sie_gateway_*`` names where they exist.

A registry per gateway instance (not the process-global one), so several gateways can
live in one test process. Worker and model gauges are filled at scrape time from the live
state instead of being maintained on every frame.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from ..protocol.mirror import ExportOutcome, MirrorObserver


class GatewayMetrics(MirrorObserver):
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.config_epoch = Gauge(
            "sie_gateway_config_epoch", "Config epoch of this replica's registry", registry=r
        )
        self.bootstrap_failures = Counter(
            "sie_gateway_config_bootstrap_failures", "Failed bootstrap attempts", registry=r
        )
        self.bootstrap_degraded = Gauge(
            "sie_gateway_config_bootstrap_degraded", "1 after 10 failed attempts or 5 minutes", registry=r
        )
        self.deltas = Counter(
            "sie_gateway_config_deltas",
            "NATS config deltas by kind and result",
            ["kind", "result"],
            registry=r,
        )
        self.nats_connected = Gauge("sie_gateway_nats_connected", "1 while connected to NATS", registry=r)
        self.workers = Gauge("sie_gateway_workers", "Known workers by health state", ["status"], registry=r)
        # additions
        self.bootstrapped_gauge = Gauge(
            "sie_gateway_config_bootstrapped",
            "1 once the first bootstrap succeeded (gates /readyz)",
            registry=r,
        )
        self.bootstraps = Counter("sie_gateway_config_bootstraps", "Successful bootstraps", registry=r)
        self.catchups = Counter(
            "sie_gateway_config_catchups",
            "Catch-ups (re-bootstraps) requested, by reason",
            ["reason"],
            registry=r,
        )
        self.failed_models = Gauge(
            "sie_gateway_config_bootstrap_failed_models",
            "Exported models the last bootstrap could not mirror",
            registry=r,
        )
        self.models = Gauge("sie_gateway_config_models", "Models in this replica's registry", registry=r)
        # requests and the readiness watch stream
        self.http_requests = Counter(
            "sie_gateway_http_requests",
            "HTTP requests by method, route template and status (a watch stream counts when it ends)",
            ["method", "path", "status"],
            registry=r,
        )
        self.watch_streams = Gauge(
            "sie_gateway_watch_streams", "Open readiness watch streams (?watch=true)", registry=r
        )
        self.watch_opened = Counter(
            "sie_gateway_watch_streams_opened",
            "Watch streams started, by how (snapshot or resumed) and why a snapshot was sent",
            ["start", "reason"],
            registry=r,
        )
        self.watch_records = Counter(
            "sie_gateway_watch_records", "Records written to watch streams, heartbeats excluded", registry=r
        )
        self.watch_heartbeats = Counter(
            "sie_gateway_watch_heartbeats", "Heartbeat records written to watch streams", registry=r
        )
        self.watch_bytes = Counter("sie_gateway_watch_bytes", "Bytes written to watch streams", registry=r)
        self.watch_dropped = Counter(
            "sie_gateway_watch_streams_dropped",
            "Watch streams closed because the client did not read fast enough",
            registry=r,
        )
        self.readiness_changes = Counter(
            "sie_gateway_readiness_changes",
            "Model readiness changes detected (one per change record, written or not)",
            registry=r,
        )

    # MirrorObserver
    def delta(self, kind: str, result: str) -> None:
        self.deltas.labels(kind=kind, result=result).inc()

    def catchup(self, reason: str) -> None:
        self.catchups.labels(reason=reason).inc()

    def bootstrap_failed(self, degraded: bool) -> None:
        self.bootstrap_failures.inc()
        self.bootstrap_degraded.set(1 if degraded else 0)

    def bootstrapped(self, outcome: ExportOutcome) -> None:
        self.bootstraps.inc()
        self.bootstrapped_gauge.set(1)
        self.bootstrap_degraded.set(0)
        self.failed_models.set(len(outcome.failed))

    def epoch(self, value: int) -> None:
        self.config_epoch.set(value)

    def render(self, worker_counts: dict[str, int], models: int, nats_connected: bool) -> bytes:
        for status, n in worker_counts.items():
            self.workers.labels(status=status).set(n)
        self.models.set(models)
        self.nats_connected.set(1 if nats_connected else 0)
        return generate_latest(self.registry)
