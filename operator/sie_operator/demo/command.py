"""`sie-operator demo`: control plane, NATS, operator, gateway and 3 workers, then the
example ModelConfigs applied and shown reaching Ready in a live table.

Everything runs as real local processes; Ctrl-C stops them all. The KUBECONFIG printed at
the start stays valid while the demo runs, so `kubectl get mcfg` works in another shell.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ..cli import UsageError
from ..devcluster.controlplane import ControlPlane
from ..devcluster.stack import Stack, StackConfig
from ..kube.auth import KubeAuth
from ..kube.client import KubeClient

NAMESPACE = "sie-demo"
COLUMNS = ("NAME", "SIE-ID", "READY", "REASON", "ACKED", "PENDING", "EPOCH")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manifests",
        default="examples/modelconfigs",
        help="directory of ModelConfig manifests to apply (default: examples/modelconfigs)",
    )
    parser.add_argument("--workdir", default=".demo", help="where logs, the store and the kubeconfig go")
    parser.add_argument(
        "--exit-when-ready", action="store_true", help="stop everything once all resources are Ready (exit 0)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for Ready with --exit-when-ready"
    )


def _row(obj: dict[str, Any]) -> tuple[str, ...]:
    st = obj.get("status") or {}
    ready: dict[str, Any] = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
    return (
        obj["metadata"]["name"],
        str(obj.get("spec", {}).get("sieId", "")),
        str(ready.get("status", "-")),
        str(ready.get("reason", "-")),
        str(st.get("ackedWorkers", "-")),
        str(st.get("pendingWorkers", "-")),
        str(st.get("configEpoch", "-")),
    )


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [COLUMNS, *rows])


async def _watch(kubeconfig: str, exit_when_ready: bool, wait_seconds: float) -> bool:
    auth = await KubeAuth.load(kubeconfig)
    kube = KubeClient(auth)
    tty = sys.stdout.isatty()
    last = ""
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            data = await kube.request("GET", f"/apis/sie.dev/v1alpha1/namespaces/{NAMESPACE}/modelconfigs")
            items = sorted(data.get("items") or [], key=lambda o: o["metadata"]["name"])
            rows = [_row(o) for o in items]
            table = _table(rows)
            if table != last:
                if tty:
                    sys.stdout.write("\x1b[2J\x1b[H")
                stamp = time.strftime("%H:%M:%S")
                print(f"[{stamp}] kubectl get modelconfigs -n {NAMESPACE}\n{table}\n", flush=True)
                last = table
            all_ready = bool(rows) and all(r[2] == "True" for r in rows)
            if exit_when_ready and all_ready:
                return True
            if exit_when_ready and time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.5)
    finally:
        await kube.close()
        auth.close()


def run(args: argparse.Namespace) -> int:
    manifests = Path(args.manifests)
    if not manifests.is_dir() or not any(manifests.glob("*.yaml")):
        raise UsageError(
            f"no ModelConfig manifests in {manifests} (run from the repository root or pass --manifests)"
        )
    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # Ctrl-C and SIGTERM both unwind through the finally blocks below
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print("starting the local control plane (kube-apiserver + etcd)...", flush=True)
    with ControlPlane() as cp:
        kubeconfig = work / "kubeconfig"
        shutil.copy(cp.kubeconfig, kubeconfig)
        os.chmod(kubeconfig, 0o600)
        repo_crd = Path("crds/modelconfig.yaml")
        if repo_crd.is_file():
            cp.kubectl("apply", "--server-side", "-f", str(repo_crd))
        else:
            from ..controller.crd import render_crd_yaml

            cp.kubectl("apply", "--server-side", "-f", "-", input=render_crd_yaml())
        cp.kubectl("wait", "--for=condition=Established", "crd/modelconfigs.sie.dev", "--timeout=30s")
        cp.kubectl("create", "namespace", NAMESPACE)
        print(
            "starting nats-server, the operator, a gateway and 3 reference workers (one per bundle)...",
            flush=True,
        )
        cfg = StackConfig(
            kubeconfig=str(kubeconfig),
            namespaces=[NAMESPACE],
            workers=(
                ("worker-default", "default"),
                ("worker-sglang", "sglang"),
                ("worker-transformers5", "transformers5"),
            ),
        )
        try:
            from ..devcluster.natsserver import nats_server_binary

            nats_server_binary()
        except FileNotFoundError as exc:
            raise UsageError(str(exc)) from exc
        with Stack(cfg, work) as stack:
            print(
                f"\n  export KUBECONFIG={kubeconfig}\n  Config API: {stack.config_url}   "
                f"gateway: {stack.gateway_urls[0]}   logs: {stack.logs}\n",
                flush=True,
            )
            cp.kubectl("apply", "-n", NAMESPACE, "-f", str(manifests))
            try:
                ok = asyncio.run(_watch(str(kubeconfig), args.exit_when_ready, args.timeout))
            except KeyboardInterrupt:
                print("\nstopping...", flush=True)
                return 0
            if args.exit_when_ready:
                print("all ModelConfigs are Ready" if ok else "timed out before all ModelConfigs were Ready")
                return 0 if ok else 1
    return 0
