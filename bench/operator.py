"""Benchmark: ModelConfig apply -> Ready latency, and 1,000 resources applied at once.

Runs the real thing on this machine: kube-apiserver + etcd (local control plane), a real
nats-server, the operator, one gateway and three reference workers as processes.

    python bench/operator.py [--single 40] [--bulk 1000]

Prints p50/p99 of apply -> Ready for one resource at a time (create to the first GET that
shows Ready=True at the current generation), the time until all of N resources created at
once are Ready, and the operator's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from sie_operator.devcluster.controlplane import ControlPlane
from sie_operator.devcluster.stack import Stack, StackConfig
from sie_operator.kube.auth import KubeAuth
from sie_operator.kube.client import KubeClient

REPO = Path(__file__).resolve().parents[1]
NS = "bench"
BASE = f"/apis/sie.dev/v1alpha1/namespaces/{NS}/modelconfigs"


def manifest(i: int, prefix: str) -> dict[str, Any]:
    return {
        "apiVersion": "sie.dev/v1alpha1",
        "kind": "ModelConfig",
        "metadata": {"name": f"{prefix}-{i:05d}"},
        "spec": {
            "sieId": f"bench/{prefix}-{i:05d}",
            "hfId": f"bench/{prefix}-{i:05d}",
            "profiles": {
                "default": {
                    "adapterPath": "sie_server.adapters.bert_flash:BertFlashAdapter",
                    "maxBatchTokens": 8192,
                }
            },
        },
    }


def is_ready(obj: dict[str, Any]) -> bool:
    st = obj.get("status") or {}
    if st.get("observedGeneration") != obj["metadata"].get("generation"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def single(kube: KubeClient, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await kube.request("POST", BASE, body=manifest(i, "one"))
        while True:
            obj = await kube.request("GET", f"{BASE}/one-{i:05d}")
            if is_ready(obj):
                break
            await asyncio.sleep(0.01)
        out.append(time.perf_counter() - t0)
    return out


async def bulk(kube: KubeClient, n: int) -> tuple[float, float]:
    sem = asyncio.Semaphore(32)

    async def create(i: int) -> None:
        async with sem:
            await kube.request("POST", BASE, body=manifest(i, "bulk"))

    t0 = time.perf_counter()
    await asyncio.gather(*(create(i) for i in range(n)))
    created = time.perf_counter() - t0
    while True:
        items = (await kube.request("GET", BASE, params={"labelSelector": ""}))["items"]
        ready = sum(1 for o in items if o["metadata"]["name"].startswith("bulk-") and is_ready(o))
        if ready >= n:
            return created, time.perf_counter() - t0
        if time.perf_counter() - t0 > 600:
            raise TimeoutError(f"only {ready}/{n} Ready after 600 s")
        await asyncio.sleep(0.5)


def reconcile_counters(config_url: str) -> list[str]:
    """The operator's own account of the run: patches, Events, writes by outcome."""
    with urllib.request.urlopen(f"{config_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    keep = ("sie_operator_status_patches_total", "sie_operator_events_total", "sie_operator_reconciles_total")
    return [line for line in text.splitlines() if line.startswith(keep)]


async def main_async(args: argparse.Namespace, cp: ControlPlane, stack: Stack) -> None:
    auth = await KubeAuth.load(str(cp.kubeconfig))
    kube = KubeClient(auth, timeout=60)
    try:
        if args.single:
            lat = await single(kube, args.single)
            print(
                f"apply -> Ready, one at a time (n={len(lat)}): p50 {statistics.median(lat) * 1000:.0f} ms, "
                f"p99 {pct(lat, 99) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms"
            )
        if args.bulk:
            created, done = await bulk(kube, args.bulk)
            print(
                f"{args.bulk} ModelConfigs created at once in {created:.1f} s; all Ready after {done:.1f} s"
            )
        assert stack.control is not None and stack.control.proc is not None
        print(f"operator peak RSS: {peak_rss_mib(stack.control.proc.pid):.0f} MiB")
        print("operator reconcile counters:")
        for line in reconcile_counters(stack.config_url):
            print(f"  {line}")
    finally:
        await kube.close()
        auth.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--single", type=int, default=40)
    ap.add_argument("--bulk", type=int, default=1000)
    args = ap.parse_args()
    with ControlPlane() as cp:
        cp.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "modelconfig.yaml"))
        cp.kubectl("wait", "--for=condition=Established", "crd/modelconfigs.sie.dev", "--timeout=30s")
        cp.kubectl("create", "namespace", NS)
        work = Path(tempfile.mkdtemp(prefix="sie-bench-op-"))
        cfg = StackConfig(kubeconfig=str(cp.kubeconfig), namespaces=[NS])
        with Stack(cfg, work) as stack:
            asyncio.run(main_async(args, cp, stack))
    return 0


if __name__ == "__main__":
    sys.exit(main())
