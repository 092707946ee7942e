"""Benchmark: failover time of the operator with leader election on a JetStream store.

Runs on this machine: kube-apiserver + etcd (local control plane), a 3-node NATS
JetStream cluster on loopback, two operator replicas (``--leader-election``,
``--store-dir jetstream://sie-config --store-replicas 3``), a gateway and a worker.

    python bench/failover.py [--rounds 5] [--lease 15 --renew 10 --retry 2]

Each round: find the leader on the Lease, ``kill -9`` it, POST a model every 20 ms to the
surviving replica's Config API (it forwards writes to the leader, or answers 503
not_leader while there is none) and time the kill -> first acknowledged write; then start
the killed replica again (it comes back as a standby). Prints every round and the median.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from sie_operator.devcluster.controlplane import ControlPlane
from sie_operator.devcluster.kubetest import Kube
from sie_operator.devcluster.natsserver import NatsCluster
from sie_operator.devcluster.stack import Stack, StackConfig

REPO = Path(__file__).resolve().parents[1]
NS = "bench-ha"
BERT = "sie_server.adapters.bert_flash:BertFlashAdapter"


def post(url: str, n: int) -> int:
    body = json.dumps({"sie_id": f"bench/failover-{n}", "profiles": {"default": {"adapter_path": BERT}}})
    req = urllib.request.Request(
        url + "/v1/configs/models",
        data=body.encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lease", type=float, default=15.0)
    ap.add_argument("--renew", type=float, default=10.0)
    ap.add_argument("--retry", type=float, default=2.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sie-bench-failover-"))
    times: list[float] = []
    with ControlPlane() as cp, NatsCluster(3, workdir=work / "nats") as nats:
        cp.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "modelconfig.yaml"))
        cp.kubectl("create", "namespace", NS)
        cfg = StackConfig(
            kubeconfig=str(cp.kubeconfig),
            namespaces=[NS],
            operators=2,
            store="jetstream://sie-config",
            nats_url=nats.urls,
            workers=(("worker-0", "default"),),
            operator_args=[
                *("--leader-election", "--leader-election-namespace", NS, "--store-replicas", "3"),
                *("--leader-election-lease-seconds", str(args.lease)),
                *("--leader-election-renew-deadline-seconds", str(args.renew)),
                *("--leader-election-retry-seconds", str(args.retry)),
            ],
        )
        n = 0
        with Stack(cfg, work / "stack") as stack:
            for r in range(args.rounds):
                deadline = time.monotonic() + 60
                while (leader := Kube(cp, NS).lease_holder()) is None and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert leader is not None, "nobody leads"
                i = int(leader.rsplit("-", 1)[1])
                survivor = stack.config_urls[1 - i]
                while post(survivor, n) not in (200, 201):  # the standby forwards to the leader
                    n += 1
                    time.sleep(0.05)
                proc = stack.controls[i]
                assert proc is not None and proc.proc is not None
                os.kill(proc.proc.pid, signal.SIGKILL)
                killed = time.monotonic()
                while True:
                    n += 1
                    if post(survivor, n) in (200, 201):
                        break
                    time.sleep(0.02)
                took = time.monotonic() - killed
                times.append(took)
                print(
                    f"round {r + 1}: kill -9 of {leader} -> first acknowledged write {took:.2f} s", flush=True
                )
                proc.proc.wait()
                stack.start_control(i=i)
    print(
        f"failover (lease {args.lease:g} s, renew deadline {args.renew:g} s, retry {args.retry:g} s): "
        f"median {statistics.median(times):.2f} s, min {min(times):.2f} s, max {max(times):.2f} s "
        f"over {len(times)} rounds"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
