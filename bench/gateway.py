"""Gateway benchmark: write-to-ack latency, readiness throughput, memory. Prints figures.

Runs real processes on loopback: nats-server, ``sie-operator config-api`` (journal store in
a temp dir), ``sie-operator gateway`` and reference workers.

- 3 workers: 3 ``sie-operator worker`` processes.
- 50 workers: 5 ``sie-operator worker --instances 10`` processes (each instance has its own
  config mirror, NATS subscriptions, port and status socket; they share a process and a
  NATS connection), to fit on a 2-core machine.

Figures:
- POST -> ``all_bundles_acked`` latency (p50/p99): from sending the POST to the first
  ``/status`` answer with ``all_bundles_acked: true`` (polled back to back on a keep-alive
  connection). Targets: p50 < 100 ms, p99 < 500 ms.
- readiness throughput: ``GET /v1/configs/models/{id}/status`` (target >= 2,000/s) and the
  bulk ``GET /v1/configs/status``, from a lean keep-alive HTTP/1.1 load generator.
- gateway RSS with ``--memory-models`` models (default 10,000) and the 50 workers; then the
  POST -> acked latency at that catalog size with the 50 workers and, on a fresh gateway and 3
  fresh workers that bootstrap the whole catalog, with 3 workers.

Usage: ``python bench/gateway.py [--samples 200] [--duration 5] [--memory-models 10000]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from sie_operator.devcluster.natsserver import NatsServer
from sie_operator.devcluster.ports import free_port
from sie_operator.devcluster.procs import ServerProcess, sie_operator_argv

ADMIN = "bench-admin"
ADAPTER = "sie_server.adapters.sentence_transformer:SentenceTransformerAdapter"
_CL = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


def model_yaml(model_id: str) -> str:
    return (
        f"sie_id: {model_id}\nhf_id: org/x\ntasks:\n  encode:\n    dense:\n      dim: 8\n"
        f"profiles:\n  default:\n    adapter_path: {ADAPTER}\n    max_batch_tokens: 1024\n"
    )


def port_block(n: int) -> int:
    """A base port with ``n`` consecutive free ports, below the kernel's ephemeral range.

    Blocks inside the ephemeral range (where ``free_port`` draws from) were taken by outgoing
    connections of other processes between the check and the bind often enough to break runs.
    """
    rnd = random.Random()
    for _ in range(500):
        base = rnd.randrange(20000, 32000 - n)
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no block of free ports")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class RawHttp:
    """One keep-alive HTTP/1.1 connection, minimal parsing (keeps the load generator cheap)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        m = _CL.search(head)
        body = await self.reader.readexactly(int(m.group(1))) if m else b""
        return int(head[9:12]), body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.nats = NatsServer(log_dir=self.logs)
        self.config_port = free_port()
        self.procs: list[ServerProcess] = []

    @property
    def config_url(self) -> str:
        return f"http://127.0.0.1:{self.config_port}"

    def start(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> ServerProcess:
        p = ServerProcess(argv, name=name, log_dir=self.logs, env=env).start()
        self.procs.append(p)
        return p

    def start_base(self) -> None:
        self.nats.start()
        env = {
            "SIE_CONFIG_STORE_DIR": str(self.root / "store"),
            "SIE_NATS_URL": self.nats.url,
            "SIE_ADMIN_TOKEN": ADMIN,
        }
        argv = sie_operator_argv("config-api", "--host", "127.0.0.1", "--port", str(self.config_port))
        self.start(argv, "config-api", env).wait_http(f"{self.config_url}/healthz", 30)

    def start_workers(self, processes: int, per_process: int, tag: str) -> list[int]:
        ports: list[int] = []
        started = []
        for i in range(processes):
            base = port_block(per_process)
            extra = ["--instances", str(per_process)] if per_process > 1 else []
            argv = sie_operator_argv(
                "worker", "--name", f"{tag}{i}", "--bundle", "default", "--host", "127.0.0.1",
                "--port", str(base), "--nats-url", self.nats.url, "--config-url", self.config_url,
                "--admin-token", ADMIN, *extra,
            )  # fmt: skip
            started.append((self.start(argv, f"worker-{tag}{i}"), base))
            ports.extend(range(base, base + per_process))
        for proc, base in started:
            for p in range(base, base + per_process):
                proc.wait_http(f"http://127.0.0.1:{p}/readyz", 120)
        return ports

    def start_gateway(self, worker_ports: list[int]) -> tuple[ServerProcess, int]:
        port = free_port()
        argv = sie_operator_argv(
            "gateway", "--host", "127.0.0.1", "--port", str(port), "--config-service-url", self.config_url,
            "--nats-url", self.nats.url, "--gateway-id", "bench",
            *[a for p in worker_ports for a in ("-w", f"127.0.0.1:{p}")],
        )  # fmt: skip
        gw = self.start(argv, "gateway", {"SIE_ADMIN_TOKEN": ADMIN})
        gw.wait_http(f"http://127.0.0.1:{port}/readyz", 60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as r:
                if json.loads(r.read())["healthy_workers"] == len(worker_ports):
                    return gw, port
            time.sleep(0.1)
        raise RuntimeError("workers did not all become healthy on the gateway")

    def stop(self, procs: list[ServerProcess] | None = None) -> None:
        for p in reversed(procs if procs is not None else self.procs):
            p.stop(timeout=10)
            if p in self.procs:
                self.procs.remove(p)


async def post_models(config_url: str, ids: list[str], concurrency: int = 32) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/x-yaml"}
    queue = list(reversed(ids))
    async with aiohttp.ClientSession(headers=headers) as s:

        async def worker() -> None:
            while queue:
                mid = queue.pop()
                async with s.post(f"{config_url}/v1/configs/models", data=model_yaml(mid)) as r:
                    if r.status not in (200, 201):
                        raise RuntimeError(f"POST {mid}: {r.status} {await r.text()}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def latency(config_url: str, gw_port: int, prefix: str, samples: int) -> list[float]:
    out = []
    poll = RawHttp(gw_port)
    headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/x-yaml"}
    async with aiohttp.ClientSession(headers=headers) as s:
        for i in range(samples):
            mid = f"{prefix}/lat{i:05d}"
            t0 = time.perf_counter()
            async with s.post(f"{config_url}/v1/configs/models", data=model_yaml(mid)) as r:
                assert r.status == 201, await r.text()
            while True:
                status, body = await poll.get(f"/v1/configs/models/{mid}/status")
                if status == 200 and b'"all_bundles_acked":true' in body:
                    break
                if time.perf_counter() - t0 > 10:
                    raise RuntimeError(f"{mid} not acked after 10 s: {body[:300]!r}")
            out.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.005)
    poll.close()
    return out


async def throughput(
    gw_port: int, paths: list[str], concurrency: int, duration: float
) -> tuple[float, float]:
    """Requests per second and mean response size."""
    end = time.perf_counter() + duration
    counts: list[int] = []
    sizes: list[int] = []

    async def conn(k: int) -> None:
        c = RawHttp(gw_port)
        n = 0
        while time.perf_counter() < end:
            status, body = await c.get(paths[(k + n) % len(paths)])
            if status != 200:
                raise RuntimeError(f"status {status}: {body[:200]!r}")
            if n % 50 == 0:
                sizes.append(len(body))
            n += 1
        counts.append(n)
        c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(conn(k) for k in range(concurrency)))
    return sum(counts) / (time.perf_counter() - t0), statistics.mean(sizes)


def report_latency(label: str, values: list[float]) -> None:
    print(
        f"  POST -> all_bundles_acked, {label}: p50 {pct(values, 0.5):.1f} ms, "
        f"p99 {pct(values, 0.99):.1f} ms, max {max(values):.1f} ms (n={len(values)})"
    )


@contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="sie-bench-gateway-"))
    try:
        yield root
    finally:
        if keep:
            print(f"logs kept in {root / 'logs'}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def get_json(url: str) -> dict[str, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def wait_acked(gw_port: int, model_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = asyncio.run(RawHttp(gw_port).get(f"/v1/configs/models/{model_id}/status"))
        if status == 200 and b'"all_bundles_acked":true' in body:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{model_id} not acked after {timeout}s")


def fleet_run(
    b: Bench, args: argparse.Namespace, label: str, processes: int, per: int
) -> tuple[ServerProcess, int]:
    """Latency and throughput with one fleet; returns the gateway (still running)."""
    print(f"{label}:")
    tag = "w" if per == 1 else "fleet"
    ports = b.start_workers(processes, per, tag)
    gw, gw_port = b.start_gateway(ports)
    report_latency(label.split(" (")[0], asyncio.run(latency(b.config_url, gw_port, tag, args.samples)))
    single = [f"/v1/configs/models/{tag}/lat00000/status"]
    rps, size = asyncio.run(throughput(gw_port, single, args.concurrency, args.duration))
    print(f"  readiness, single model: {rps:,.0f} req/s ({size:,.0f} B/response)")
    n_models = len(get_json(f"http://127.0.0.1:{gw_port}/v1/configs/models")["models"])
    rps, size = asyncio.run(throughput(gw_port, ["/v1/configs/status"], 4, args.duration))
    print(f"  readiness, bulk ({n_models} models): {rps:,.1f} req/s ({size / 1024:,.0f} KiB/response)")
    print(f"  gateway RSS: {rss_mb(pid_of(gw)):.0f} MB")
    return gw, gw_port


def pid_of(p: ServerProcess) -> int:
    assert p.proc is not None
    return p.proc.pid


def memory_run(b: Bench, args: argparse.Namespace, gw: ServerProcess, gw_port: int) -> None:
    total = args.memory_models
    missing = max(0, total - int(get_json(f"{b.config_url}/v1/configs/epoch")["epoch"]))
    print(f"{total} models, 50 workers: writing {missing} more models (one POST each, 32 concurrent)")
    t0 = time.perf_counter()
    asyncio.run(post_models(b.config_url, [f"mem/m{i:05d}" for i in range(missing)]))
    print(f"  {missing} writes in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    wait_acked(gw_port, f"mem/m{missing - 1:05d}" if missing else "fleet/lat00000", 600)
    print(f"  every worker acked the last write {time.perf_counter() - t0:.1f} s after it was accepted")
    time.sleep(2)  # let the workers go idle before measuring the gateway
    print(f"  gateway RSS: {rss_mb(pid_of(gw)):.0f} MB")
    paths = [f"/v1/configs/models/mem/m{i:05d}/status" for i in range(0, missing, 7)] or ["/healthz"]
    rps, _ = asyncio.run(throughput(gw_port, paths, args.concurrency, args.duration))
    print(f"  readiness, single model: {rps:,.0f} req/s")
    rps, size = asyncio.run(throughput(gw_port, ["/v1/configs/status"], 2, args.duration))
    print(f"  readiness, bulk: {rps:,.2f} req/s ({size / 2**20:,.1f} MiB/response)")
    print(f"  gateway RSS after bulk reads: {rss_mb(pid_of(gw)):.0f} MB")
    lat = asyncio.run(latency(b.config_url, gw_port, "mem-lat", max(20, args.samples // 4)))
    report_latency(f"50 workers, {total} models", lat)


def small_fleet_at_size(b: Bench, args: argparse.Namespace, keep: list[ServerProcess]) -> None:
    """The same catalog with 3 fresh workers and a fresh gateway (they bootstrap everything)."""
    b.stop([p for p in b.procs if p not in keep])
    total = int(get_json(f"{b.config_url}/v1/configs/epoch")["epoch"])
    ports = b.start_workers(3, 1, "w10k-")
    gw, gw_port = b.start_gateway(ports)
    lat = asyncio.run(latency(b.config_url, gw_port, "mem-lat3", max(20, args.samples // 4)))
    report_latency(f"3 workers, {total} models", lat)
    print(f"  gateway RSS: {rss_mb(pid_of(gw)):.0f} MB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200, help="POSTs per latency run")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per throughput run")
    ap.add_argument("--concurrency", type=int, default=16, help="connections of the load generator")
    ap.add_argument(
        "--memory-models", type=int, default=10_000, help="models for the memory figure (0: skip)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the logs")
    args = ap.parse_args()
    print(f"gateway benchmark: {os.cpu_count()} CPU(s), Python {sys.version.split()[0]}")
    with workdir(args.keep) as root:
        b = Bench(root)
        try:
            b.start_base()
            before = list(b.procs)
            fleet_run(b, args, "3 workers (3 processes)", 3, 1)
            b.stop([p for p in b.procs if p not in before])
            gw, gw_port = fleet_run(b, args, "50 workers (5 processes x 10 instances)", 5, 10)
            if args.memory_models:
                memory_run(b, args, gw, gw_port)
                small_fleet_at_size(b, args, before)
        finally:
            b.stop()
            b.nats.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
