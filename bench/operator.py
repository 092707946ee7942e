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


def metrics_text(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as resp:
        return str(resp.read().decode())


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def applied(cp: ControlPlane, n: int, work: Path) -> tuple[float, float]:
    """One server-side apply of one file with ``n`` ModelConfigs; then seconds from the end of
    the apply until the operator reports nothing converging (confirmed by one listing)."""
    import json

    path = work / "bulk.json"
    items = [manifest(i, "apply") for i in range(n)]
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    t0 = time.perf_counter()
    cp.kubectl("apply", "--server-side", "-n", NS, "-f", str(path), timeout=max(120.0, n / 10))
    return t0, time.perf_counter()


def all_ready_after(cp: ControlPlane, config_url: str, n: int, since: float) -> float:
    import json

    while True:
        text = metrics_text(config_url)
        if metric_sum(text, "sie_operator_tracked_resources") >= n and not metric_sum(
            text, "sie_operator_converging_resources"
        ):
            items = json.loads(cp.kubectl("get", "mcfg", "-n", NS, "-o", "json").stdout)["items"]
            if sum(1 for o in items if is_ready(o)) >= n:
                return time.perf_counter() - since
        if time.perf_counter() - since > 900:
            raise TimeoutError("not all Ready after 900 s")
        time.sleep(0.2)


def reconcile_counters(config_url: str) -> list[str]:
    """The operator's own account of the run: patches, Events, writes by outcome."""
    with urllib.request.urlopen(f"{config_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    keep = (
        "sie_operator_status_patches_total",
        "sie_operator_events_total",
        "sie_operator_event_failures_total",
        "sie_operator_reconciles_total",
    )
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
    ap.add_argument(
        "--apply", type=int, default=0, help="N ModelConfigs in one `kubectl apply --server-side` of one file"
    )
    ap.add_argument("--gateways", type=int, default=1)
    ap.add_argument("--workers", type=int, default=3, help="workers of bundle default (plus one sglang)")
    ap.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment of every process"
    )
    args = ap.parse_args()
    with ControlPlane() as cp:
        cp.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "modelconfig.yaml"))
        cp.kubectl("wait", "--for=condition=Established", "crd/modelconfigs.sie.dev", "--timeout=30s")
        cp.kubectl("create", "namespace", NS)
        work = Path(tempfile.mkdtemp(prefix="sie-bench-op-"))
        workers = [(f"worker-{i}", "default") for i in range(args.workers - 1)] + [("worker-s", "sglang")]
        cfg = StackConfig(
            kubeconfig=str(cp.kubeconfig),
            namespaces=[NS],
            gateways=args.gateways,
            workers=workers,
            extra_env=dict(e.split("=", 1) for e in args.env),
        )
        with Stack(cfg, work) as stack:
            if args.single or args.bulk:
                asyncio.run(main_async(args, cp, stack))
            if args.apply:
                apply_run(args.apply, cp, stack, work)
    return 0


def apply_run(n: int, cp: ControlPlane, stack: Stack, work: Path) -> None:
    before = [metric_sum(metrics_text(u), "sie_gateway_http_requests_total") for u in stack.gateway_urls]
    t0, t1 = applied(cp, n, work)
    ready = all_ready_after(cp, stack.config_url, n, t1)
    print(
        f"{n} ModelConfigs in one server-side apply: apply took {t1 - t0:.1f} s; "
        f"all Ready {ready:.1f} s after it"
    )
    assert stack.control is not None and stack.control.proc is not None
    print(f"  peak RSS: operator {peak_rss_mib(stack.control.proc.pid):.0f} MiB", end="")
    for g in stack.gateways:
        assert g.proc is not None
        print(f", gateway {peak_rss_mib(g.proc.pid):.0f} MiB", end="")
    print()
    for u, b in zip(stack.gateway_urls, before, strict=True):
        text = metrics_text(u)
        with urllib.request.urlopen(f"{u}/v1/configs/status", timeout=60) as resp:
            snapshot = len(resp.read())
        streamed = metric_sum(text, "sie_gateway_watch_bytes_total")
        print(
            f"  {u}: {metric_sum(text, 'sie_gateway_http_requests_total') - b:.0f} requests during the run, "
            f"stream bytes {streamed / 1e6:.1f} MB = {streamed / max(snapshot, 1):.2f}x one full snapshot "
            f"({snapshot / 1e6:.1f} MB)"
        )
    counts = [metric_sum(metrics_text(u), "sie_gateway_http_requests_total") for u in stack.gateway_urls]
    time.sleep(30)
    after = [metric_sum(metrics_text(u), "sie_gateway_http_requests_total") for u in stack.gateway_urls]
    # the first /metrics read is itself counted (once it has answered): subtract it
    steady = [(a - c - 1) / 30 for a, c in zip(after, counts, strict=True)]
    print(
        "  steady state (all Ready), requests/s from the operator per replica: "
        + ", ".join(f"{x:.2f}" for x in steady)
    )
    print("  operator reconcile counters:")
    for line in reconcile_counters(stack.config_url):
        print(f"    {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
