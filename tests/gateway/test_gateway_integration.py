"""End to end with real processes: nats-server, ``config-api``, ``gateway``, 3 ``worker``s.

Timers are shortened through flags (heartbeat 3 s, sweep 0.2 s, redial 0.2 s); the main
gateway keeps the default 30 s epoch poll so that recovery after a NATS restart has to come
from the reconnect check and gap detection, not from the poller.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from gw_cluster import ADMIN, Cluster, acked, http_json, http_status, metric_value, model_yaml, wait_for

from sie_operator.devcluster.ports import free_port
from sie_operator.devcluster.procs import ServerProcess, sie_operator_argv

WORKERS = ["w0", "w1", "w2"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("gateway-cluster"))
    c.nats.start()
    try:
        c.start_config().wait_http(f"{c.config_url}/healthz", 20)
        for w in WORKERS:
            c.start_worker(w)
        c.start_gateway("main", WORKERS)
        c.wait_ready()
        wait_for(
            lambda: http_json(f"{c.gw()}/readyz")["healthy_workers"] == 3,
            15,
            "3 healthy workers on the gateway",
        )
        yield c
    finally:
        c.stop_all()


def test_post_reaches_all_bundles_acked(cluster: Cluster) -> None:
    cluster.post(model_yaml("it/first"))
    s = cluster.wait_status("it/first", acked, "all bundles acked")
    (b,) = s["bundles"]
    assert b["bundle_id"] == "default" and b["acked_workers"] == WORKERS and b["pending_workers"] == []
    assert s["config_epoch"] == cluster.config_epoch()
    bulk = http_json(f"{cluster.gw()}/v1/configs/status?model=it/first")
    assert bulk["gateway_id"] == "main" and bulk["models"] == [s]
    # the expected hash is the config service's own: a delta's bundle_config_hash equals it
    assert len(b["expected_bundle_config_hash"]) == 64


async def test_untrusted_producer_is_ignored(cluster: Cluster) -> None:
    cluster.post(model_yaml("it/trusted"))
    cluster.wait_status("it/trusted", acked, "acked before the forgery")
    epoch = cluster.config_epoch()
    before = metric_value(cluster.metrics(), "sie_gateway_config_deltas_total", result="rejected_untrusted")
    payload = orjson.dumps(
        {
            "router_id": "evil-config",
            "bundle_id": "default",
            "epoch": epoch + 1,
            "bundle_config_hash": "0" * 64,
            "model_id": "it/forged",
            "profiles_added": ["default"],
            "model_config": model_yaml("it/forged"),
            "affected_bundles": ["default"],
        }
    )
    nc = await nats.connect(cluster.nats.url)
    try:
        await nc.publish("sie.config.models.default", payload)
        await nc.publish("sie.config.models._all", payload)
        await nc.flush()
    finally:
        await nc.close()
    wait_for(
        lambda: (
            metric_value(cluster.metrics(), "sie_gateway_config_deltas_total", result="rejected_untrusted")
            > before
        ),
        5,
        "the gateway to count the rejected delta",
    )
    assert http_status(f"{cluster.gw()}/v1/configs/models/it/forged") == 404
    s = cluster.status("it/trusted")
    assert acked(s) and s["config_epoch"] == epoch  # workers ignored it too: hashes unchanged


def test_silent_worker_turns_pending_then_leaves(cluster: Cluster) -> None:
    w2 = cluster.workers["w2"][0]
    w2.signal(signal.SIGSTOP)
    try:
        cluster.post(model_yaml("it/while-silent"))
        s = cluster.wait_status(
            "it/while-silent",
            lambda s: s["bundles"][0]["acked_workers"] == ["w0", "w1"],
            "two acks",
            timeout=2.5,
        )
        assert s["bundles"][0]["pending_workers"] == ["w2"] and not acked(s)
        s = cluster.wait_status("it/while-silent", acked, "w2 to leave the eligible set", timeout=8)
        assert s["bundles"][0]["total_eligible_workers"] == 2
    finally:
        w2.signal(signal.SIGCONT)
    s = cluster.wait_status(
        "it/while-silent", lambda s: acked(s) and s["bundles"][0]["total_eligible_workers"] == 3, "w2 back"
    )
    assert s["bundles"][0]["acked_workers"] == WORKERS


def test_a_lagging_worker_still_counts_for_models_it_has(cluster: Cluster) -> None:
    """W4 localised: a write of B leaves A model-acked on a worker that has not caught up."""
    cluster.post(model_yaml("it/model-a"))
    cluster.wait_status("it/model-a", acked, "A acked by every worker")
    w2 = cluster.workers["w2"][0]
    w2.signal(signal.SIGSTOP)
    try:
        cluster.post(model_yaml("it/model-b"))
        url = f"{cluster.gw()}/v1/configs/status?model=it/model-a&model=it/model-b"

        def both() -> dict[str, dict[str, Any]] | None:
            models = {m["model_id"]: m for m in http_json(url)["models"]}
            line = models["it/model-b"]["bundles"][0]
            # w2 is silent but still Healthy (heartbeat timeout 3 s): one snapshot shows both
            ready = line["model_acked_workers"] == ["w0", "w1"] and line["total_eligible_workers"] == 3
            return models if ready else None

        models = wait_for(both, 2.5, "B model-acked by w0 and w1 while w2 is stopped")
        a, b = models["it/model-a"], models["it/model-b"]
        (a_line,), (b_line,) = a["bundles"], b["bundles"]
        # SIE's bundle-granular view: w2's bundle hash is stale, so A looks pending too ...
        assert a["all_bundles_acked"] is False and a_line["pending_workers"] == ["w2"]
        # ... but w2's hash is a bundle state this gateway had after A's write: it has A
        assert a["model_acked"] is True and a_line["model_acked"] is True
        assert a_line["model_acked_workers"] == WORKERS and a_line["model_pending_workers"] == []
        assert b["model_acked"] is False and b_line["model_pending_workers"] == ["w2"]
    finally:
        w2.signal(signal.SIGCONT)
    s = cluster.wait_status(
        "it/model-b", lambda s: acked(s) and s["bundles"][0]["total_eligible_workers"] == 3, "w2 back"
    )
    assert s["model_acked"] is True and s["bundles"][0]["model_acked_workers"] == WORKERS


def test_stale_hash_stays_pending(cluster: Cluster) -> None:
    cluster.start_worker("slow", "--ack-delay", "1000")
    cluster.workers["slow"][0].wait_http(f"http://127.0.0.1:{cluster.workers['slow'][1]}/readyz")
    gw = cluster.start_gateway("stale", ["w0", "slow"], "--poll-interval", "0.5")
    try:
        gw.wait_http(f"{cluster.gw('stale')}/readyz")
        cluster.post(model_yaml("it/slow"))
        s = cluster.wait_status(
            "it/slow", lambda s: s["bundles"][0]["acked_workers"] == ["w0"], "w0 acked", gateway="stale"
        )
        time.sleep(1.0)
        s = cluster.status("it/slow", "stale")
        b = s["bundles"][0]
        assert not acked(s) and b["pending_workers"] == ["slow"] and b["total_eligible_workers"] == 2
    finally:
        assert gw.stop() == 0
        assert cluster.workers.pop("slow")[0].stop() == 0  # SIGTERM: clean exit
        cluster.gateways.pop("stale")


def test_gateway_restart_recovers_by_bootstrap(cluster: Cluster) -> None:
    proc, port = cluster.gateways["main"]
    assert proc.stop() == 0  # clean exit on SIGTERM
    cluster.post(model_yaml("it/while-gateway-down"))
    cluster.start_gateway("main", WORKERS, port=port)
    s = cluster.wait_status("it/while-gateway-down", acked, "acked after restart", timeout=15)
    assert s["config_epoch"] == cluster.config_epoch()
    assert acked(cluster.status("it/first"))


def test_nats_restart_loses_nothing(cluster: Cluster) -> None:
    """Deltas published while the subscribers are away are lost for good; they must catch up.

    Gateway and workers are frozen across the NATS restart, so the config service (which
    reconnects first) publishes the writes to nobody. The gateway's poller is 30 s, so
    convergence within seconds comes from the reconnect check and catch-up.
    """
    frozen = [cluster.gateways["main"][0], *(cluster.workers[w][0] for w in WORKERS)]
    before = metric_value(cluster.metrics(), "sie_gateway_config_catchups_total")
    for p in frozen:
        p.signal(signal.SIGSTOP)
    try:
        cluster.nats.restart()
        ids = [f"it/after-nats-{i}" for i in range(3)]
        for model_id in ids:
            cluster.post(model_yaml(model_id))  # retried while the config service reconnects
    finally:
        for p in frozen:
            p.signal(signal.SIGCONT)
    for model_id in ids:
        s = cluster.wait_status(model_id, acked, "acked after NATS restart", timeout=15)
        assert s["bundles"][0]["acked_workers"] == WORKERS
    assert cluster.status(ids[-1])["config_epoch"] == cluster.config_epoch()
    assert metric_value(cluster.metrics(), "sie_gateway_config_catchups_total") > before
    # and the live path works again
    cluster.post(model_yaml("it/after-nats-live"))
    cluster.wait_status("it/after-nats-live", acked, "acked over NATS", timeout=5)


def test_model_without_bundle_reports_no_bundles(cluster: Cluster) -> None:
    """A bundle disappears upstream: the poller sees the bundles hash drift and re-bootstraps."""
    cluster.post(model_yaml("it/extra-only", adapter="acme.adapters.custom"))
    gw = cluster.start_gateway("poller", WORKERS, "--poll-interval", "0.3")
    try:
        gw.wait_http(f"{cluster.gw('poller')}/readyz")
        s = cluster.status("it/extra-only", "poller")
        assert s["bundles"][0]["bundle_id"] == "extra" and s["no_bundles"] is False
        assert s["bundles"][0]["total_eligible_workers"] == 0 and not acked(s)
        assert cluster.config is not None
        cluster.config.stop()
        (cluster.bundles_dir / "extra.yaml").unlink()
        cluster.start_config().wait_http(f"{cluster.config_url}/healthz", 20)
        s = cluster.wait_status("it/extra-only", lambda s: s["no_bundles"], "no_bundles", gateway="poller")
        assert s["bundles"] == [] and s["all_bundles_acked"] is False
        bundles = http_json(f"{cluster.gw('poller')}/v1/configs/bundles")["bundles"]
        assert "extra" not in [b["bundle_id"] for b in bundles]
    finally:
        gw.stop()
        cluster.gateways.pop("poller")


def test_gateway_not_ready_until_bootstrap(tmp_path: Path) -> None:
    """/readyz is 503 while the config service is unreachable; /healthz is 200; SIGTERM exits 0."""
    port = free_port()
    argv = sie_operator_argv(
        "gateway", "--host", "127.0.0.1", "--port", str(port),
        "--config-service-url", f"http://127.0.0.1:{free_port()}", "--bootstrap-backoff-max", "0.2",
    )  # fmt: skip
    with ServerProcess(argv, name="gateway-orphan", log_dir=tmp_path, env={"SIE_ADMIN_TOKEN": ADMIN}) as proc:
        proc.wait_http(f"http://127.0.0.1:{port}/healthz")
        time.sleep(0.5)
        assert http_status(f"http://127.0.0.1:{port}/readyz") == 503
        text = urllib_text(f"http://127.0.0.1:{port}/metrics")
        assert metric_value(text, "sie_gateway_config_bootstrap_failures_total") >= 1
        assert proc.stop() == 0


def test_bad_configuration_is_one_line(tmp_path: Path) -> None:
    # The console-script entry point (``python -m sie_operator.cli`` imports cli twice, so
    # its UsageError would not be the one the subcommand raises).
    entry = "import sys; from sie_operator.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [
        sys.executable,
        "-c",
        entry,
        "gateway",
        "--config-service-url",
        "http://x:1",
        "--worker",
        "ftp://bad",
    ]
    proc = ServerProcess(argv, name="gateway-bad", log_dir=tmp_path).start()
    assert proc.proc is not None and proc.proc.wait(timeout=20) == 2
    lines = proc.log_path.read_text().strip().splitlines()
    assert len(lines) == 1 and "invalid worker URL" in lines[0], lines


def urllib_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())
