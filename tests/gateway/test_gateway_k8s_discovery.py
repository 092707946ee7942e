"""EndpointSlice discovery on the shared Kubernetes client against a real kube-apiserver."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from sie_operator.devcluster.controlplane import ControlPlane
from sie_operator.gateway.discovery import EndpointSliceWatcher
from sie_operator.kube.auth import KubeAuth
from sie_operator.kube.client import KubeClient

pytestmark = pytest.mark.k8s


def _slice(name: str, service: str, endpoints: list[tuple[str, bool]]) -> str:
    return json.dumps(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip, ready in endpoints],
        }
    )


async def _next(q: asyncio.Queue[frozenset[str]], want: set[str], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while True:
            got = await q.get()
            if got == want:
                return


async def test_endpointslice_watch_follows_ready_endpoints(
    control_plane: ControlPlane, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    cp = control_plane

    def kubectl(*args: str, stdin: str | None = None) -> Any:
        return cp.kubectl(*args, "-n", ns, input=stdin)

    # A least-privilege client: a ServiceAccount allowed to list/watch EndpointSlices only.
    kubectl("create", "serviceaccount", "gw")
    kubectl("create", "role", "gw", "--verb=get,list,watch", "--resource=endpointslices.discovery.k8s.io")
    kubectl("create", "rolebinding", "gw", "--role=gw", f"--serviceaccount={ns}:gw")
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=_slice("sie-worker-a", "sie-worker", [("10.1.0.1", True), ("10.1.0.2", False)]),
    )
    kubectl("apply", "-f", "-", stdin=_slice("other-svc-a", "other", [("10.9.9.9", True)]))

    for kubeconfig in (cp.kubeconfig, cp.service_account_kubeconfig(ns, "gw")):  # client cert, then token
        auth = await KubeAuth.load(str(kubeconfig))
        kube = KubeClient(auth)
        q: asyncio.Queue[frozenset[str]] = asyncio.Queue()
        watcher = EndpointSliceWatcher(kube, ns, "sie-worker", 8080, q.put_nowait, backoff_max=1.0)
        task = asyncio.create_task(watcher.run())
        try:
            await _next(q, {"http://10.1.0.1:8080"})
            slice_b = _slice("sie-worker-b", "sie-worker", [("10.1.0.3", True)])
            await asyncio.to_thread(kubectl, "apply", "-f", "-", stdin=slice_b)
            await _next(q, {"http://10.1.0.1:8080", "http://10.1.0.3:8080"})
            await asyncio.to_thread(kubectl, "delete", "endpointslice", "sie-worker-b")
            await _next(q, {"http://10.1.0.1:8080"})
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await kube.close()
            auth.close()
