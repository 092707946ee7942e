"""The readiness watch stream, request metrics, readiness gate and drain with real processes.

nats-server, ``config-api``, two ``worker`` processes (one of them serving two instances
that share one config mirror), and ``gateway`` processes on 127.0.0.1; the stream is read
over real HTTP and decoded with ``protocol.readiness_stream``.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from gw_cluster import ADMIN, Cluster, http_json, http_status, metric_value, model_yaml, wait_for

from sie_operator.devcluster.ports import free_port
from sie_operator.devcluster.procs import ServerProcess, sie_operator_argv
from sie_operator.protocol import readiness_stream as rs

HEARTBEAT = 0.3
WATCH_FLAGS = ("--watch-heartbeat", str(HEARTBEAT))
ALL_WORKERS = ["w0", "wm-0", "wm-1"]


def two_free_ports() -> int:
    for _ in range(100):
        base = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("watch-cluster"))
    c.nats.start()
    try:
        c.start_config().wait_http(f"{c.config_url}/healthz", 20)
        c.start_worker("w0")
        base = two_free_ports()
        c.start_worker("wm", "--instances", "2", port=base)  # names wm-0, wm-1; one shared mirror
        c.start_gateway("main", ["w0", "wm"], "--worker", f"127.0.0.1:{base + 1}", *WATCH_FLAGS)
        c.wait_ready()
        c.workers["wm"][0].wait_http(f"http://127.0.0.1:{base + 1}/readyz", 20)
        wait_for(
            lambda: http_json(f"{c.gw()}/readyz")["healthy_workers"] == 3,
            20,
            "3 healthy workers on the gateway",
        )
        yield c
    finally:
        c.stop_all()


class Stream:
    """One watch connection, decoded as it arrives; keeps every record for inspection."""

    def __init__(self, resp: aiohttp.ClientResponse, decoder: rs.ReadinessStreamDecoder) -> None:
        self.resp = resp
        self.decoder = decoder
        self.records: list[dict[str, Any]] = []
        self._buf = b""

    async def next_record(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            chunk = await self.resp.content.readany()
            if not chunk:
                raise EOFError("stream ended")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        self.decoder.feed_line(line)
        rec = rs.decode_record(line)
        self.records.append(rec)
        return rec

    async def until(self, pred: Any, what: str, limit: float = 20.0) -> dict[str, Any]:
        async def loop() -> dict[str, Any]:
            while True:
                rec = await self.next_record()
                if pred(rec):
                    return rec

        try:
            return await asyncio.wait_for(loop(), limit)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; got {self.records[-5:]!r}") from None

    async def synced(self) -> None:
        await self.until(lambda r: r["type"] in (rs.SNAPSHOT_END, rs.RESUMED), "snapshot end or resumed")


@asynccontextmanager
async def watch(
    base: str,
    decoder: rs.ReadinessStreamDecoder | None = None,
    models: tuple[str, ...] = (),
    token: str | None = ADMIN,
) -> AsyncIterator[Stream]:
    decoder = decoder or rs.ReadinessStreamDecoder()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{base}/v1/configs/status", params=decoder.query(models), headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.content_type == rs.CONTENT_TYPE
        yield Stream(resp, decoder)
    decoder.connection_lost()


def model_acked(decoder: rs.ReadinessStreamDecoder, model_id: str) -> bool:
    m = decoder.get(model_id)
    return m is not None and m["model_acked"] is True


async def test_snapshot_first_then_a_change_after_a_post(cluster: Cluster) -> None:
    cluster.post(model_yaml("ws/first"))
    cluster.wait_status("ws/first", lambda s: s["model_acked"], "model acked")
    async with watch(cluster.gw()) as st:
        first = await st.next_record()
        assert first["type"] == rs.SNAPSHOT and first["reason"] == rs.REASON_INITIAL
        assert first["gateway_id"] == "main" and first["heartbeat_seconds"] == HEARTBEAT
        await st.synced()
        kinds = [r["type"] for r in st.records]
        assert kinds == [rs.SNAPSHOT, *[rs.MODEL] * first["count"], rs.SNAPSHOT_END]
        # the per-model objects are the bulk endpoint's
        bulk = http_json(f"{cluster.gw()}/v1/configs/status?model=ws/first", token=ADMIN)["models"]
        assert st.decoder.get("WS/First") == bulk[0]
        start = len(st.records)
        cluster.post(model_yaml("ws/second"))
        await st.until(lambda r: model_acked(st.decoder, "ws/second"), "ws/second acked on the stream")
        changes = [r for r in st.records[start:] if r["type"] == rs.CHANGE]
        assert changes and all(r["model"]["model_id"] == "ws/second" for r in changes)
        assert all(r["resume"].startswith(st.decoder.resume_token.split(".")[0]) for r in changes)
        acked = st.decoder.get("ws/second")
        assert acked is not None
        assert acked["bundles"][0]["model_acked_workers"] == ALL_WORKERS  # incl. both shared-mirror instances


async def test_resume_after_reconnect_sends_only_what_changed(cluster: Cluster) -> None:
    decoder = rs.ReadinessStreamDecoder()
    async with watch(cluster.gw(), decoder) as st:
        await st.synced()
    known = len(decoder.models)
    assert known >= 1 and decoder.resume_token is not None
    cluster.post(model_yaml("ws/while-away"))
    cluster.wait_status("ws/while-away", lambda s: s["model_acked"], "acked while the client was away")
    async with watch(cluster.gw(), decoder) as st:
        first = await st.next_record()
        assert first["type"] == rs.RESUMED
        await st.until(lambda r: model_acked(decoder, "ws/while-away"), "the missed model")
        kinds = {r["type"] for r in st.records}
        assert kinds <= {rs.RESUMED, rs.CHANGE, rs.HEARTBEAT}, kinds  # no snapshot, no re-send
        changed = {r["model"]["model_id"] for r in st.records if r["type"] == rs.CHANGE}
        assert changed == {"ws/while-away"}
    assert decoder.resumes == 1 and decoder.snapshots == 1 and len(decoder.models) == known + 1
    # a token of another gateway process gets a fresh snapshot, marked as such
    decoder.resume_token = "zzzz.1"
    async with watch(cluster.gw(), decoder) as st:
        first = await st.next_record()
        assert first["type"] == rs.SNAPSHOT and first["reason"] == rs.REASON_UNKNOWN_STREAM
        await st.synced()
    assert decoder.snapshots == 2 and decoder.get("ws/while-away") is not None


async def test_heartbeats_arrive_and_carry_the_current_token(cluster: Cluster) -> None:
    async with watch(cluster.gw()) as st:
        await st.synced()
        token = st.decoder.resume_token
        beats = []
        while len(beats) < 2:
            rec = await st.until(lambda r: r["type"] in (rs.HEARTBEAT, rs.CHANGE), "a heartbeat")
            if rec["type"] == rs.HEARTBEAT:
                beats.append(rec)
            token = st.decoder.resume_token
        assert beats[-1]["resume"] == token
        assert isinstance(beats[-1]["config_epoch"], int)


async def test_twenty_clients_all_get_the_change_and_are_counted(cluster: Cluster) -> None:
    streams: list[Stream] = []
    contexts = [watch(cluster.gw()) for _ in range(20)]
    try:
        for ctx in contexts:
            streams.append(await ctx.__aenter__())
        await asyncio.gather(*(s.synced() for s in streams))
        text = await asyncio.to_thread(cluster.metrics)
        assert metric_value(text, "sie_gateway_watch_streams") >= 20
        cluster.post(model_yaml("ws/fanout"))
        await asyncio.gather(
            *(s.until(lambda r, s=s: model_acked(s.decoder, "ws/fanout"), "fan-out") for s in streams)
        )
    finally:
        for ctx in contexts[: len(streams)]:
            await ctx.__aexit__(None, None, None)
    tokens = {s.decoder.resume_token for s in streams}
    assert all(t is not None for t in tokens)


async def test_model_filter_on_the_stream(cluster: Cluster) -> None:
    cluster.post(model_yaml("ws/filtered-a"))
    cluster.post(model_yaml("ws/filtered-b"))
    cluster.wait_status("ws/filtered-b", lambda s: s["model_acked"], "acked")
    async with watch(cluster.gw(), models=("WS/filtered-a", "ws/filtered-c")) as st:
        await st.synced()
        assert set(st.decoder.models) == {"ws/filtered-a"}
        cluster.post(model_yaml("ws/filtered-b", "default", "more"))
        cluster.post(model_yaml("ws/filtered-c"))
        await st.until(lambda r: model_acked(st.decoder, "ws/filtered-c"), "the filtered-in new model")
        assert set(st.decoder.models) == {"ws/filtered-a", "ws/filtered-c"}


def test_bad_watch_parameters_are_400(cluster: Cluster) -> None:
    for query in ("watch=maybe", "watch=true&resume=not-a-token"):
        try:
            http_json(f"{cluster.gw()}/v1/configs/status?{query}", token=ADMIN)
        except urllib.error.HTTPError as exc:
            assert exc.code == 400 and "message" in exc.read().decode()
        else:
            raise AssertionError(f"{query} was accepted")
    bulk = http_json(f"{cluster.gw()}/v1/configs/status?watch=false", token=ADMIN)
    assert "models" in bulk
    head = urllib.request.Request(f"{cluster.gw()}/v1/configs/status?watch=true", method="HEAD")
    with urllib.request.urlopen(head, timeout=5) as resp:  # answers and ends: no stream for HEAD
        assert resp.status == 200 and resp.headers["Content-Type"].startswith(rs.CONTENT_TYPE)
        assert resp.read() == b""


def test_requests_are_counted_by_route_template_and_status(cluster: Cluster) -> None:
    before = cluster.metrics()
    labels = {"method": "GET", "path": "/v1/configs/models/{model_id}"}
    ok0 = metric_value(before, "sie_gateway_http_requests_total", status="200", **labels)
    nf0 = metric_value(before, "sie_gateway_http_requests_total", status="404", **labels)
    for _ in range(3):
        cluster.status("ws/first")
    assert http_status(f"{cluster.gw()}/v1/configs/models/ws/nope/status") == 404
    assert http_status(f"{cluster.gw()}/no/such/route") == 404
    after = cluster.metrics()
    assert metric_value(after, "sie_gateway_http_requests_total", status="200", **labels) == ok0 + 3
    assert metric_value(after, "sie_gateway_http_requests_total", status="404", **labels) == nf0 + 1
    assert metric_value(after, "sie_gateway_http_requests_total", path="unmatched", status="404") >= 1
    assert metric_value(after, "sie_gateway_watch_streams_opened_total", start="snapshot") >= 1


async def test_stream_has_the_bulk_endpoints_auth(cluster: Cluster) -> None:
    port = free_port()
    proc = cluster.start_gateway("authed", ["w0"], *WATCH_FLAGS, port=port)
    proc.env.update({"SIE_AUTH_MODE": "token", "SIE_AUTH_TOKEN": "reader"})
    proc.stop(timeout=5)  # restart with the auth environment
    proc.start()
    try:
        proc.wait_http(f"{cluster.gw('authed')}/readyz", 20)
        url = f"{cluster.gw('authed')}/v1/configs/status?watch=true"
        for header in (None, "Bearer wrong"):
            req = urllib.request.Request(url)
            if header:
                req.add_header("Authorization", header)
            with pytest.raises(urllib.error.HTTPError) as exc:
                await asyncio.to_thread(urllib.request.urlopen, req, timeout=5)
            assert exc.value.code == 401
        async with watch(cluster.gw("authed"), token="reader") as st:
            await st.synced()
            assert st.decoder.get("ws/first") is not None
    finally:
        proc.stop(timeout=5)


def test_readyz_waits_for_the_first_worker_dial(cluster: Cluster) -> None:
    """A worker that does not answer its status socket keeps a fresh replica unready."""
    w0 = cluster.workers["w0"][0]
    w0.signal(signal.SIGSTOP)
    proc = None
    try:
        proc = cluster.start_gateway("slowdial", ["w0"], "--worker-connect-timeout", "60")
        wait_for(
            lambda: http_json(f"{cluster.gw('slowdial')}/health")["config_bootstrapped"],
            20,
            "the bootstrap",
        )
        with pytest.raises(urllib.error.HTTPError) as exc:
            http_json(f"{cluster.gw('slowdial')}/readyz")
        assert exc.value.code == 503 and "workers not dialled yet" in exc.value.read().decode()
    finally:
        w0.signal(signal.SIGCONT)
    wait_for(lambda: http_status(f"{cluster.gw('slowdial')}/readyz") == 200, 20, "ready after the dial")
    assert http_json(f"{cluster.gw('slowdial')}/readyz")["healthy_workers"] == 1
    proc.stop(timeout=5)


async def test_sigterm_fails_readiness_keeps_serving_then_exits(cluster: Cluster) -> None:
    proc = cluster.start_gateway("drain", ["w0"], "--drain-delay", "10", *WATCH_FLAGS)
    base = cluster.gw("drain")
    proc.wait_http(f"{base}/readyz", 20)
    async with watch(base) as st:
        await st.synced()
        proc.signal(signal.SIGTERM)
        wait_for(lambda: http_status(f"{base}/readyz") == 503, 5, "/readyz to fail while draining")
        # still serving: new requests, and the open stream keeps its heartbeats
        assert http_json(f"{base}/v1/configs/models/ws/first/status")["model_id"] == "ws/first"
        n = len(st.records)
        await st.until(lambda r: r["type"] == rs.HEARTBEAT, "a heartbeat during the drain")
        assert len(st.records) > n
        # after the drain delay the stream ends cleanly and the process exits 0
        with pytest.raises(EOFError):
            await st.until(lambda r: False, "the end of the stream", limit=30)
    code = await asyncio.to_thread(proc.proc.wait, 30) if proc.proc else None
    assert code == 0


async def test_no_snapshot_before_the_first_bootstrap(cluster: Cluster, tmp_path: Any) -> None:
    """Only token-less heartbeats until the replica has a registry; then the snapshot."""
    config_port = free_port()
    gw_port = free_port()
    gw = ServerProcess(
        sie_operator_argv(
            "gateway", "--host", "127.0.0.1", "--port", str(gw_port),
            "--config-service-url", f"http://127.0.0.1:{config_port}", "--gateway-id", "early",
            "--bootstrap-backoff-max", "0.3", *WATCH_FLAGS,
        ),
        name="gateway-early",
        log_dir=tmp_path,
    ).start()  # fmt: skip
    config = None
    try:
        gw.wait_http(f"http://127.0.0.1:{gw_port}/healthz", 20)
        assert http_status(f"http://127.0.0.1:{gw_port}/readyz") == 503
        async with watch(f"http://127.0.0.1:{gw_port}", token=None) as st:
            for _ in range(3):
                rec = await st.next_record()
                assert rec["type"] == rs.HEARTBEAT and rec["resume"] is None
            assert st.decoder.resume_token is None and not st.decoder.synced
            config = ServerProcess(
                sie_operator_argv("config-api", "--host", "127.0.0.1", "--port", str(config_port)),
                name="config-early",
                log_dir=tmp_path,
                env={"SIE_CONFIG_STORE_DIR": str(tmp_path / "store")},
            ).start()
            first = await st.until(lambda r: r["type"] != rs.HEARTBEAT, "the snapshot after the bootstrap")
            assert first["type"] == rs.SNAPSHOT and first["count"] == 0
            await st.synced()
            assert st.decoder.synced and st.decoder.resume_token is not None
    finally:
        gw.stop(timeout=5)
        if config is not None:
            config.stop(timeout=5)
