"""Readiness watch stream benchmark: what a stream costs while models converge. Prints figures.

Real processes on loopback (nats-server, ``config-api``, reference workers, one gateway), as
in ``bench/gateway.py``. One client holds ``GET /v1/configs/status?watch=true`` while
``--models`` models are POSTed at once (32 concurrent); it decodes the stream with
``protocol.readiness_stream`` until every model is model-acked. Figures:

- bytes and records the stream carried while the models converged, against the size of one
  full snapshot of them at the end (the issue's budget: at most 3x);
- POST -> first record showing the model acked, one model at a time (push latency);
- heartbeat records and bytes with nothing changing, per minute (extrapolated from
  ``--idle`` seconds).

Usage: ``python bench/watch.py [--models 1000] [--workers 4] [--samples 50] [--idle 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from sie_operator.protocol import readiness_stream as rs

_spec = importlib.util.spec_from_file_location("gateway_bench", Path(__file__).with_name("gateway.py"))
assert _spec is not None and _spec.loader is not None
gb: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gb)


class Reader:
    """One watch stream, decoded in the background; counts bytes and records."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.decoder = rs.ReadinessStreamDecoder()
        self.bytes = 0
        self.records = 0
        self.heartbeats = 0
        self.changed = asyncio.Event()
        self.synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
        headers = {"Authorization": f"Bearer {gb.ADMIN}"}
        async with (
            aiohttp.ClientSession(timeout=timeout) as s,
            s.get(f"{self.base}/v1/configs/status", params=self.decoder.query(), headers=headers) as r,
        ):
            async for chunk in r.content.iter_any():
                self.bytes += len(chunk)
                for u in self.decoder.feed(chunk):
                    self.records += 1
                    self.heartbeats += u.kind == rs.HEARTBEAT
                    if u.kind in (rs.SNAPSHOT_END, rs.RESUMED):
                        self.synced.set()
                    if u.changed:
                        self.changed.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def acked(self, model_id: str) -> bool:
        m = self.decoder.get(model_id)
        return m is not None and m["model_acked"] is True

    async def wait(self, pred: Any, limit: float) -> None:
        deadline = time.monotonic() + limit
        while True:
            self.changed.clear()  # before the check: a change after it wakes the wait
            if pred():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("timed out")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)


async def snapshot_bytes(base: str, prefix: str) -> int:
    """Bytes of a fresh stream's snapshot of the models under ``prefix`` (as the stream sends it)."""
    r = Reader(base)
    r.start()
    await asyncio.wait_for(r.synced.wait(), 60)
    size = r.bytes
    await r.stop()
    n = sum(1 for k in r.decoder.models if k.startswith(prefix))
    total = len(r.decoder.models)
    return size * n // max(total, 1)


async def converge(base: str, config_url: str, n: int) -> None:
    reader = Reader(base)
    reader.start()
    await asyncio.wait_for(reader.synced.wait(), 60)
    b0, r0 = reader.bytes, reader.records
    ids = [f"conv/m{i:05d}" for i in range(n)]
    t0 = time.perf_counter()
    await gb.post_models(config_url, ids)
    t_posted = time.perf_counter() - t0
    await reader.wait(lambda: all(reader.acked(m) for m in ids), 600)
    t_acked = time.perf_counter() - t0
    streamed, records = reader.bytes - b0, reader.records - r0
    await reader.stop()
    snap = await snapshot_bytes(base, "conv/")
    print(
        f"{n} models POSTed at once: written in {t_posted:.1f} s, "
        f"all model-acked on the stream at {t_acked:.1f} s"
    )
    print(
        f"  stream carried {streamed / 1024:,.0f} KiB in {records:,} records ({records / n:.2f} per model); "
        f"one snapshot of them is {snap / 1024:,.0f} KiB: {streamed / max(snap, 1):.2f}x"
    )


async def push_latency(base: str, config_url: str, samples: int) -> None:
    reader = Reader(base)
    reader.start()
    await asyncio.wait_for(reader.synced.wait(), 60)
    out = []
    headers = {"Authorization": f"Bearer {gb.ADMIN}", "Content-Type": "application/x-yaml"}
    async with aiohttp.ClientSession(headers=headers) as s:
        for i in range(samples):
            mid = f"push/m{i:04d}"
            t0 = time.perf_counter()
            async with s.post(f"{config_url}/v1/configs/models", data=gb.model_yaml(mid)) as r:
                assert r.status == 201, await r.text()
            await reader.wait(lambda mid=mid: reader.acked(mid), 10)
            out.append((time.perf_counter() - t0) * 1000)
    await reader.stop()
    print(
        f"POST -> model_acked record on the stream: p50 {gb.pct(out, 0.5):.1f} ms, "
        f"p99 {gb.pct(out, 0.99):.1f} ms (n={len(out)})"
    )


async def idle(base: str, seconds: float) -> None:
    reader = Reader(base)
    reader.start()
    await asyncio.wait_for(reader.synced.wait(), 60)
    b0, h0 = reader.bytes, reader.heartbeats
    await asyncio.sleep(seconds)
    per_min = 60 / seconds
    print(
        f"idle: {(reader.heartbeats - h0) * per_min:.0f} heartbeats/min, "
        f"{(reader.bytes - b0) * per_min:,.0f} B/min on the stream, no requests"
    )
    await reader.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    print(f"watch stream benchmark: {os.cpu_count()} CPU(s), {args.workers} workers (one process each)")
    with gb.workdir(args.keep) as root:
        b = gb.Bench(root)
        try:
            b.start_base()
            ports = b.start_workers(args.workers, 1, "w")
            _, port = b.start_gateway(ports)
            base = f"http://127.0.0.1:{port}"
            asyncio.run(converge(base, b.config_url, args.models))
            asyncio.run(push_latency(base, b.config_url, args.samples))
            asyncio.run(idle(base, args.idle))
        finally:
            b.stop()
            b.nats.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
