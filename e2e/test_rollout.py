"""A rolling restart of the gateway Deployment flips nothing (issue 12), on the real control plane.

The operator finds its gateway replicas through the EndpointSlices of their Service. The
test plays the EndpointSlice controller and the kubelet of a rolling update: the old pod is
marked terminating and gets SIGTERM (it drains), the new pod appears not ready and turns
ready once its /readyz says so. Ready resources keep their status byte for byte: no patch,
no Ready flip, no Event.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sie_operator.devcluster.kubetest import Kube, model_manifest
from sie_operator.devcluster.ports import free_port
from sie_operator.devcluster.procs import ServerProcess, sie_operator_argv
from sie_operator.devcluster.stack import Stack, StackConfig
from test_chart_rbac import host_ip

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

SERVICE = "sie-gateway"


def endpoint_slice(ns: str, name: str, ip: str, port: int, *, ready: bool, terminating: bool = False) -> str:
    return json.dumps(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": SERVICE}},
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": [ip],
                    "conditions": {"ready": ready, "serving": ready, "terminating": terminating},
                }
            ],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        }
    )


def ready_since(obj: dict[str, Any]) -> str:
    """The Ready condition's lastTransitionTime, asserting that it is True."""
    ready = {c["type"]: c for c in obj["status"]["conditions"]}["Ready"]
    assert ready["status"] == "True", ready
    return str(ready["lastTransitionTime"])


def readyz(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class Pod:
    """One gateway replica on this machine's address (EndpointSlices refuse loopback)."""

    def __init__(self, stack: Stack, ip: str, name: str) -> None:
        self.name, self.ip, self.port = name, ip, free_port()
        env = {
            "PYTHONUNBUFFERED": "1",
            "SIE_CONFIG_SERVICE_URL": stack.config_url,
            "SIE_NATS_URL": stack.nats.url,
            "SIE_GATEWAY_WORKERS": ",".join(f"http://127.0.0.1:{p}" for p in stack.worker_ports.values()),
        }
        argv = sie_operator_argv(
            "gateway", "--host", ip, "--port", str(self.port), "--gateway-id", name,
            "--heartbeat-timeout", "6", "--poll-interval", "2", "--drain-delay", "2",
        )  # fmt: skip
        self.proc = ServerProcess(argv, name=name, log_dir=stack.logs, env=env).start()

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"


def test_a_rolling_restart_of_the_gateways_flips_no_status(
    control_plane: Any, k8s_namespace: str, crd_installed: None, tmp_path: Path
) -> None:
    ns, ip = k8s_namespace, host_ip()
    kube = Kube(control_plane, ns)

    def apply_slice(name: str, pod: Pod, *, ready: bool, terminating: bool = False) -> None:
        control_plane.kubectl(
            "-n",
            ns,
            "apply",
            "-f",
            "-",
            input=endpoint_slice(ns, name, ip, pod.port, ready=ready, terminating=terminating),
        )

    cfg = StackConfig(
        kubeconfig=str(control_plane.kubeconfig),
        namespaces=[ns],
        gateways=0,
        heartbeat_timeout=6.0,
        operator_args=("--gateway-service", SERVICE, "--gateway-namespace", ns, "--resync-seconds", "2"),
    )
    with Stack(cfg, tmp_path / "stack") as stack:
        pods = {n: Pod(stack, ip, n) for n in ("gw-a", "gw-b")}
        for n, p in pods.items():
            p.proc.wait_http(f"{p.url}/readyz", 30)
            apply_slice(n, p, ready=True)
        names = [f"roll-{i}" for i in range(3)]
        for name in names:
            kube.apply(model_manifest(name, f"acme/{name}"))
        before = {}
        for name in names:
            obj = kube.wait_for(
                name,
                lambda o: (
                    (o.get("status") or {}).get("gateways") == {"seen": 2, "agreeing": 2}
                    and any(c["type"] == "Ready" and c["status"] == "True" for c in o["status"]["conditions"])
                ),
                timeout=60,
                what="Ready on both replicas",
            )
            before[name] = ready_since(obj)
        ready_events = {n: sum(e["reason"] == "Ready" for e in kube.events(n)) for n in names}

        for old in ("gw-a", "gw-b"):
            pod = pods[old]
            apply_slice(old, pod, ready=False, terminating=True)  # the pod is terminating
            time.sleep(0.5)
            pod.proc.stop(timeout=15)  # SIGTERM: /readyz fails at once, it drains, exits
            new = Pod(stack, ip, f"{old}-2")
            apply_slice(f"{old}-2", new, ready=False)  # scheduled, not ready yet
            deadline = time.monotonic() + 60
            while readyz(new.url) != 200:  # the kubelet's readiness probe
                assert time.monotonic() < deadline, "the new gateway never turned ready"
                time.sleep(0.2)
            apply_slice(f"{old}-2", new, ready=True)
            control_plane.kubectl("-n", ns, "delete", "endpointslice", old)
            pods[f"{old}-2"] = new
            time.sleep(3)  # more than one resync of the operator

        for name in names:
            obj = kube.get(name)
            assert obj is not None
            assert ready_since(obj) == before[name], json.dumps(obj["status"])
            assert sum(e["reason"] == "Ready" for e in kube.events(name)) == ready_events[name]
        for p in pods.values():
            p.proc.stop(timeout=10)
