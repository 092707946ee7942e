"""Benchmark of the config API write and read paths against a real ``sie-operator config-api``.

Run: ``python bench/config_api.py`` (options: ``--sizes 1000 10000``, ``--posts N``,
``--durability journal|sync``, ``--body small|catalog``, ``--nats``). Prints figures; not
part of the test run.

For each catalog size the store is preloaded by writing model files and the epoch
directly, then a real server subprocess restores them at startup (SIE_CONFIG_RESTORE
default on). Then, against that server with a real store directory and full durability:
- creating POSTs/s, one client sequentially and 16 concurrent clients;
- export latency (GET /v1/configs/export);
- GET /v1/configs/epoch requests/s.

With ``--replicated`` (a 3-node JetStream cluster on loopback, every server publishing its
deltas to it): creating POSTs/s sequentially and with 16 clients on the directory store vs
a ``jetstream://`` store with 1 and 3 replicas; then the memory (RSS) and startup time of a
standby (a second, follower-only process on the stream) at 10k models, and how long a write
takes to show on the standby.

Reference (SIE's Python service): ~250 creating POSTs/s at 700 models, ~115/s at 1,300,
export of 1,300 models in 690 ms. Target here: >= 1,000 POSTs/s sequentially, flat from 1k
to 10k models, export of 10k models under 300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from sie_operator.catalog import yamlio
from sie_operator.catalog.ids import id_to_filename
from sie_operator.configsvc import yamlemit
from sie_operator.devcluster.ports import free_port
from sie_operator.devcluster.procs import ServerProcess, sie_operator_argv

ADAPTER = "sie_server.adapters.bert_flash:BertFlashAdapter"
ADMIN = "bench-admin-token"


def small_doc(model_id: str) -> dict[str, object]:
    """A typical small model config (~420 bytes as YAML)."""
    return {
        "sie_id": model_id,
        "hf_id": model_id,
        "inputs": {"text": True},
        "tasks": {"encode": {"dense": {"dim": 768}}},
        "max_sequence_length": 512,
        "profiles": {
            "default": {
                "adapter_path": ADAPTER,
                "max_batch_tokens": 8192,
                "compute_precision": "float16",
                "adapter_options": {"runtime": {"pooling": "mean", "normalize": True}},
            }
        },
    }


def catalog_doc(model_id: str) -> dict[str, object]:
    """A catalog-sized config (~1.6 KB as YAML), like the bigger SIE model files."""
    doc = small_doc(model_id)
    profiles = {}
    for i, name in enumerate(["default", "fast", "long", "bf16", "q8"]):
        profiles[name] = {
            "adapter_path": ADAPTER,
            "max_batch_tokens": 4096 * (i + 1),
            "compute_precision": "bfloat16" if i % 2 else "float16",
            "adapter_options": {
                "loadtime": {"attn_implementation": "sdpa", "trust_remote_code": False},
                "runtime": {
                    "pooling": "mean",
                    "normalize": True,
                    "query_template": "Instruct: {instruction}\nQuery: {text}",
                    "default_instruction": "Given a web search query, retrieve relevant passages",
                },
            },
        }
    doc["profiles"] = profiles
    return doc


def model_id(kind: str, size: int, i: int) -> str:
    """Ids spread over 100 organisations, so new models land all over the sorted catalog (as
    real ids do) rather than always at its end."""
    return f"org-{(i * 37) % 100:02d}/{kind}-{size}-{i:06d}"


def bodies(make_doc: Any, kind: str, size: int, n: int) -> list[bytes]:
    return [yamlio.dump(make_doc(model_id(kind, size, i))).encode() for i in range(n)]


def preload(store: Path, count: int, make_doc: Any) -> None:
    models = store / "models"
    models.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        mid = model_id("preload", count, i)
        text = yamlemit.dump(make_doc(mid))
        (models / f"{id_to_filename(mid)}.yaml").write_text(text)
    (store / "epoch").write_text(str(count))
    os.sync()  # setup, not measured: keep the preload's writeback out of the measurement


async def post_many(
    base: str, bodies: list[bytes], concurrency: int, headers: dict[str, str]
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    it = iter(bodies)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for body in it:
                t0 = time.perf_counter()
                async with session.post(f"{base}/v1/configs/models", data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 201:
                        raise RuntimeError(f"POST gave {resp.status}: {await resp.text()}")
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return elapsed, latencies


async def post_raw(base: str, bodies: list[bytes], headers: dict[str, str]) -> tuple[float, list[float]]:
    """Sequential POSTs over one keep-alive connection with a minimal HTTP/1.1 client, so the
    figure shows the server's latency rather than the client library's overhead."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    latencies: list[float] = []
    t_start = time.perf_counter()
    for body in bodies:
        t0 = time.perf_counter()
        head_out = (
            f"POST /v1/configs/models HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head_out.encode() + body)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 201"):
            raise RuntimeError(f"POST gave {head[:40]!r}")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - t_start
    writer.close()
    return elapsed, latencies


async def get_many(base: str, path: str, n: int, concurrency: int, headers: dict[str, str]) -> float:
    remaining = [n]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                async with session.get(f"{base}{path}", headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - t0)


async def export_latency(base: str, headers: dict[str, str], runs: int = 7) -> tuple[float, int, int]:
    times = []
    size = count = 0
    async with aiohttp.ClientSession() as session:
        for _ in range(runs):
            t0 = time.perf_counter()
            async with session.get(f"{base}/v1/configs/export", headers=headers) as resp:
                body = await resp.read()
            times.append(time.perf_counter() - t0)
            size = len(body)
        import orjson

        count = len(orjson.loads(body)["models"])
    return statistics.median(times), size, count


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_api(workdir: Path, name: str, env: dict[str, str]) -> tuple[ServerProcess, str, float]:
    port = free_port()
    proc = ServerProcess(
        sie_operator_argv("--log-level", "warning", "config-api", "--host", "127.0.0.1", "--port", str(port)),
        name=name,
        log_dir=workdir,
        env={"SIE_ADMIN_TOKEN": ADMIN, **env},
    )
    t0 = time.perf_counter()
    proc.start()
    base = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{base}/readyz", timeout=300)
    return proc, base, time.perf_counter() - t0


async def bench_replicated(args: argparse.Namespace, workdir: Path) -> None:
    """Directory vs JetStream R1/R3 write rates; a standby's memory at 10k models."""
    from sie_operator.devcluster.natsserver import NatsCluster
    from sie_operator.store.jetstream import JetStreamStore

    headers = {"Authorization": f"Bearer {ADMIN}"}
    n = args.posts
    with NatsCluster(3, workdir / "nats") as cluster:
        print(f"\n== replicated store: 3-node JetStream cluster on loopback, small bodies, n={n}")
        stores = [
            ("directory (journal)", "dir", str(workdir / "ha-dir"), "1"),
            ("jetstream R1", "js-r1", "jetstream://bench-r1", "1"),
            ("jetstream R3", "js-r3", "jetstream://bench-r3", "3"),
        ]
        for label, name, location, replicas in stores:
            env = {"SIE_CONFIG_STORE_DIR": location, "SIE_CONFIG_STORE_REPLICAS": replicas}
            proc, base, _ = start_api(workdir, name, {**env, "SIE_NATS_URL": cluster.urls})
            try:
                await post_many(base, bodies(small_doc, "warm", 0, 200), 1, headers)
                elapsed, lat = await post_many(base, bodies(small_doc, "seq", 0, n), 1, headers)
                e16, lat16 = await post_many(base, bodies(small_doc, "con", 0, 2 * n), 16, headers)
                print(
                    f"  {label:20s} sequential {n / elapsed:6.0f} /s (p50 {pct(lat, 0.5):.2f} ms, "
                    f"p99 {pct(lat, 0.99):.2f} ms); 16 clients {2 * n / e16:6.0f} /s "
                    f"(p50 {pct(lat16, 0.5):.2f} ms, p99 {pct(lat16, 0.99):.2f} ms)"
                )
            finally:
                proc.stop()

        size = 10_000
        store = JetStreamStore(cluster.urls, "bench-standby", replicas=3)
        await store.open()
        t0 = time.perf_counter()
        epoch = 0
        for start in range(0, size, 64):
            batch = [
                (mid, yamlemit.dump(small_doc(mid)))
                for mid in (model_id("standby", size, i) for i in range(start, min(size, start + 64)))
            ]
            epoch += len(batch)
            result = await store.commit(batch, epoch)
            assert result.in_order
        t_load = time.perf_counter() - t0
        await store.close()
        env = {"SIE_CONFIG_STORE_DIR": "jetstream://bench-standby", "SIE_CONFIG_STORE_REPLICAS": "3"}
        env["SIE_NATS_URL"] = cluster.urls
        writer, wbase, t_writer = start_api(workdir, "writer", env)
        standby, sbase, t_standby = start_api(workdir, "standby", env)
        dir_store = workdir / "standby-dir"
        preload(dir_store, size, small_doc)
        single, _, t_single = start_api(workdir, "dir-10k", {"SIE_CONFIG_STORE_DIR": str(dir_store)})
        try:
            lags = []
            async with aiohttp.ClientSession() as session:
                for i in range(50):
                    body = yamlemit.dump(small_doc(f"lag/m{i}")).encode()
                    async with session.post(f"{wbase}/v1/configs/models", data=body, headers=headers) as r:
                        assert r.status == 201, await r.text()
                        t_acked = time.perf_counter()
                    while True:
                        async with session.get(f"{sbase}/v1/configs/epoch", headers=headers) as r:
                            if (await r.json())["epoch"] >= size + i + 1:
                                break
                    lags.append(time.perf_counter() - t_acked)
            print(
                f"  10k models in the stream (loaded in {t_load:.1f}s by 64-write batches): writer ready "
                f"in {t_writer:.1f}s, standby ready in {t_standby:.1f}s; directory store: ready in "
                f"{t_single:.1f}s"
            )
            print(
                f"  RSS at 10k models: standby {rss_mb(standby.proc.pid):.0f} MB, writer "  # type: ignore[union-attr]
                f"{rss_mb(writer.proc.pid):.0f} MB, directory-store process "  # type: ignore[union-attr]
                f"{rss_mb(single.proc.pid):.0f} MB"  # type: ignore[union-attr]
            )
            print(
                f"  write acknowledged on the writer -> visible on the standby: p50 {pct(lags, 0.5):.2f} ms, "
                f"max {max(lags) * 1000:.2f} ms (n={len(lags)}, includes one HTTP poll)"
            )
        finally:
            for p in (writer, standby, single):
                p.stop()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


async def bench_size(args: argparse.Namespace, size: int, workdir: Path) -> None:
    make_doc = catalog_doc if args.body == "catalog" else small_doc
    store = Path(tempfile.mkdtemp(prefix=f"store-{size}-", dir=workdir))
    t0 = time.perf_counter()
    preload(store, size, make_doc)
    t_preload = time.perf_counter() - t0
    port = free_port()
    env = {
        "SIE_CONFIG_STORE_DIR": str(store),
        "SIE_ADMIN_TOKEN": ADMIN,
        "SIE_CONFIG_STORE_DURABILITY": args.durability,
    }
    env.pop("SIE_MODELS_DIR", None)
    if args.nats_url:
        env["SIE_NATS_URL"] = args.nats_url
    proc = ServerProcess(
        sie_operator_argv("--log-level", "warning", "config-api", "--host", "127.0.0.1", "--port", str(port)),
        name=f"config-api-{size}",
        log_dir=workdir,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {ADMIN}"}
    t0 = time.perf_counter()
    proc.start()
    try:
        proc.wait_http(f"{base}/readyz", timeout=300)
        t_start = time.perf_counter() - t0
        body_len = len(yamlio.dump(make_doc("bench/x")))
        print(
            f"\n== {size} stored models (preload {t_preload:.1f}s, startup+restore {t_start:.1f}s), "
            f"body {body_len} B, durability={args.durability}{', NATS' if args.nats_url else ''}"
        )
        med, nbytes, count = await export_latency(base, headers)
        print(
            f"  export:                        {med * 1000:8.1f} ms  ({count} models, {nbytes / 1e6:.1f} MB)"
        )
        n = args.posts
        await post_many(base, bodies(make_doc, "warmup", size, 200), 1, headers)  # not measured
        seq_bodies = bodies(make_doc, "seq", size, n)
        elapsed, lat = await post_many(base, seq_bodies, 1, headers)
        print(
            f"  creating POSTs, sequential:    {n / elapsed:8.0f} /s   "
            f"(p50 {pct(lat, 0.5):.2f} ms, p99 {pct(lat, 0.99):.2f} ms, n={n})"
        )
        elapsed, lat = await post_raw(base, bodies(make_doc, "raw", size, n), headers)
        print(
            f"  creating POSTs, sequential, minimal client: {n / elapsed:5.0f} /s   "
            f"(p50 {pct(lat, 0.5):.2f} ms, p99 {pct(lat, 0.99):.2f} ms)"
        )
        elapsed, lat = await post_many(base, bodies(make_doc, "con", size, 2 * n), 16, headers)
        print(
            f"  creating POSTs, 16 clients:    {2 * n / elapsed:8.0f} /s   "
            f"(p50 {pct(lat, 0.5):.2f} ms, p99 {pct(lat, 0.99):.2f} ms, n={2 * n})"
        )
        med, nbytes, count = await export_latency(base, headers)
        print(
            f"  export after the POSTs:        {med * 1000:8.1f} ms  ({count} models, {nbytes / 1e6:.1f} MB)"
        )
        rps1 = await get_many(base, "/v1/configs/epoch", 3000, 1, headers)
        rps16 = await get_many(base, "/v1/configs/epoch", 10000, 16, headers)
        print(f"  GET /epoch:                    {rps1:8.0f} /s sequential, {rps16:.0f} /s with 16 clients")
    finally:
        code = proc.stop()
        if code not in (0, None):
            print(f"  (server exited with {code}; log {proc.log_path})", file=sys.stderr)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--posts", type=int, default=2000, help="sequential POSTs per size (2x that concurrent)")
    ap.add_argument("--durability", choices=["journal", "sync"], default="journal")
    ap.add_argument("--body", choices=["small", "catalog"], default="small")
    ap.add_argument("--nats", action="store_true", help="also publish to a real nats-server")
    ap.add_argument("--workdir", type=Path, default=None, help="where stores go (default: a temp dir)")
    ap.add_argument(
        "--replicated",
        action="store_true",
        help="only the replicated-store figures (directory vs JetStream R1/R3, standby memory)",
    )
    args = ap.parse_args()
    own_workdir = args.workdir is None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sie-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, workdir {workdir}")
    args.nats_url = None
    nats = None
    if args.nats:
        from sie_operator.devcluster.natsserver import NatsServer

        nats = NatsServer(log_dir=workdir).start()
        args.nats_url = nats.url
    try:
        if args.replicated:
            await bench_replicated(args, workdir)
            return
        for size in args.sizes:
            await bench_size(args, size, workdir)
    finally:
        if nats is not None:
            nats.stop()
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
