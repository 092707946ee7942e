"""Credentials that expire or are revoked, on the real control plane (issue 11).

The operator and the gateway's worker discovery run with a kubeconfig whose user is an
``exec`` credential plugin (how EKS, GKE and AKS authenticate): a small script that prints
an ``ExecCredential`` holding a ServiceAccount token from the TokenRequest API, bound to a
Secret. Deleting that Secret revokes the token; the plugin then hands out a new one. New
and changed resources must still reach Ready and get Events, with no restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from sie_operator.devcluster.controlplane import ControlPlane
from sie_operator.devcluster.kubetest import Kube, model_manifest
from sie_operator.devcluster.stack import Stack, StackConfig
from sie_operator.gateway.discovery import EndpointSliceWatcher
from sie_operator.kube.auth import KubeAuth
from sie_operator.kube.client import KubeClient

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

PLUGIN = """\
import datetime, json, pathlib, sys
token_file, count_file = sys.argv[1], sys.argv[2]
with open(count_file, "a") as f:
    f.write("x")
expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
print(json.dumps({
    "apiVersion": "client.authentication.k8s.io/v1",
    "kind": "ExecCredential",
    "status": {"token": pathlib.Path(token_file).read_text().strip(),
               "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")},
}))
"""

OPERATOR_ROLE = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: NAME}
rules:
- apiGroups: [sie.dev]
  resources: [modelconfigs]
  verbs: [list, watch]
- apiGroups: [sie.dev]
  resources: [modelconfigs/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
"""


class ExecIdentity:
    """A ServiceAccount whose tokens are bound to a Secret, served by an exec plugin."""

    def __init__(self, cp: ControlPlane, ns: str, name: str, workdir: Path) -> None:
        self.cp, self.ns, self.name = cp, ns, name
        workdir.mkdir(parents=True, exist_ok=True)
        self.token_file = workdir / f"{name}.token"
        self.count_file = workdir / f"{name}.calls"
        self.count_file.write_text("")
        plugin = workdir / "plugin.py"
        plugin.write_text(PLUGIN)
        self.generation = 0
        cp.kubectl("-n", ns, "create", "serviceaccount", name)
        cp.kubectl("-n", ns, "apply", "-f", "-", input=OPERATOR_ROLE.replace("NAME", name))
        cp.kubectl("-n", ns, "create", "rolebinding", name, f"--role={name}", f"--serviceaccount={ns}:{name}")
        self.rotate()
        raw = json.loads(cp.kubectl("config", "view", "--raw", "-o", "json").stdout)
        cluster = raw["clusters"][0]["cluster"]
        self.kubeconfig = workdir / f"{name}.kubeconfig"
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": cluster}],
                    "users": [
                        {
                            "name": name,
                            "user": {
                                "exec": {
                                    "apiVersion": "client.authentication.k8s.io/v1",
                                    "command": sys.executable,
                                    "args": [str(plugin), str(self.token_file), str(self.count_file)],
                                    "interactiveMode": "Never",
                                }
                            },
                        }
                    ],
                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": name, "namespace": ns}}],
                    "current-context": "c",
                }
            )
        )
        os.chmod(self.kubeconfig, 0o600)

    @property
    def secret(self) -> str:
        return f"{self.name}-bind-{self.generation}"

    def rotate(self) -> str:
        """Revoke the current token (delete the Secret it is bound to) and mint a new one."""
        if self.generation:
            self.cp.kubectl("-n", self.ns, "delete", "secret", self.secret)
        self.generation += 1
        self.cp.kubectl("-n", self.ns, "create", "secret", "generic", self.secret)
        uid = json.loads(self.cp.kubectl("-n", self.ns, "get", "secret", self.secret, "-o", "json").stdout)[
            "metadata"
        ]["uid"]
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 3600,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Secret", "name": self.secret, "uid": uid},
            },
        }
        res = self.cp.kubectl(
            "create",
            "--raw",
            f"/api/v1/namespaces/{self.ns}/serviceaccounts/{self.name}/token",
            "-f",
            "-",
            input=json.dumps(body),
        )
        old = self.token_file.read_text() if self.token_file.exists() else None
        self.token_file.write_text(json.loads(res.stdout)["status"]["token"])
        return old or ""

    @property
    def plugin_calls(self) -> int:
        return len(self.count_file.read_text())

    def wait_revoked(self, token: str, timeout: float = 30.0) -> None:
        """Until the API server refuses the token (it caches a good answer for ~10 s)."""
        raw = json.loads(self.cp.kubectl("config", "view", "--raw", "-o", "json").stdout)
        probe = self.token_file.parent / "probe.kubeconfig"  # the token alone, no client cert
        probe.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": raw["clusters"][0]["cluster"]}],
                    "users": [{"name": "t", "user": {"token": token}}],
                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "t"}}],
                    "current-context": "c",
                }
            )
        )
        deadline = time.monotonic() + timeout
        while True:
            r = self.cp.kubectl("--kubeconfig", str(probe), "-n", self.ns, "get", "modelconfigs", check=False)
            refused = ("Unauthorized", "provide credentials", "must be logged in")
            if r.returncode != 0 and any(word in r.stderr for word in refused):
                probe.unlink()
                return
            assert time.monotonic() < deadline, f"token still accepted: {r.stdout} {r.stderr}"
            time.sleep(0.5)


def events(kube: Kube, name: str) -> set[str]:
    return {e["reason"] for e in kube.events(name)}


def test_operator_survives_a_revoked_exec_token(
    control_plane: ControlPlane, k8s_namespace: str, crd_installed: None, tmp_path: Path
) -> None:
    ident = ExecIdentity(control_plane, k8s_namespace, "op", tmp_path / "id")
    cfg = StackConfig(kubeconfig=str(ident.kubeconfig), namespaces=[k8s_namespace], heartbeat_timeout=6.0)
    kube = Kube(control_plane, k8s_namespace)
    with Stack(cfg, tmp_path / "stack") as stack:
        assert stack.control is not None and stack.control.proc is not None
        pid = stack.control.proc.pid
        m = model_manifest("before", "acme/before")
        kube.apply(m)
        kube.wait_ready("before")
        calls = ident.plugin_calls
        assert calls >= 1  # the plugin is what authenticates the operator

        revoked = ident.rotate()
        ident.wait_revoked(revoked)  # the old token is really dead
        started = time.monotonic()
        kube.apply(model_manifest("after", "acme/after"))
        kube.wait_ready("after", timeout=60)
        recovered = time.monotonic() - started
        m["spec"]["profiles"]["more"] = {"extends": "default"}
        kube.apply(m)
        changed = kube.wait_ready("before", timeout=60)
        assert sorted(changed["status"]["profiles"]) == ["default", "more"]

        assert {"Published", "Ready"} <= events(kube, "after")
        assert ident.plugin_calls > calls  # it asked the plugin again instead of failing
        assert stack.control.proc.pid == pid and stack.control.proc.poll() is None  # no restart
        print(f"token revoked -> next resource Ready (status patched) in {recovered:.2f} s")


async def test_gateway_worker_discovery_survives_a_revoked_exec_token(
    control_plane: ControlPlane, k8s_namespace: str, tmp_path: Path
) -> None:
    ns = k8s_namespace
    ident = await asyncio.to_thread(ExecIdentity, control_plane, ns, "gw", tmp_path / "id")

    def endpoint_slice(name: str, ip: str) -> str:
        return json.dumps(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "sie-worker"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
            }
        )

    def apply(text: str) -> Any:
        return control_plane.kubectl("-n", ns, "apply", "-f", "-", input=text)

    await asyncio.to_thread(apply, endpoint_slice("w-a", "10.2.0.1"))
    auth = await KubeAuth.load(str(ident.kubeconfig))
    kube = KubeClient(auth)
    seen: asyncio.Queue[frozenset[str]] = asyncio.Queue()
    # short watches, so the revoked token meets a new request soon
    watcher = EndpointSliceWatcher(
        kube, ns, "sie-worker", 8080, seen.put_nowait, backoff_max=1.0, watch_timeout=2
    )
    task = asyncio.create_task(watcher.run())

    async def until(want: set[str]) -> None:
        async with asyncio.timeout(30):
            while await seen.get() != want:
                pass

    try:
        await until({"http://10.2.0.1:8080"})
        revoked = await asyncio.to_thread(ident.rotate)
        await asyncio.to_thread(ident.wait_revoked, revoked)
        await asyncio.sleep(3)  # the watch ends and is re-opened with the revoked token
        await asyncio.to_thread(apply, endpoint_slice("w-b", "10.2.0.2"))
        await until({"http://10.2.0.1:8080", "http://10.2.0.2:8080"})
        assert kube.reauthentications >= 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await kube.close()
        auth.close()
    assert not await asyncio.to_thread(os.path.exists, auth._tmp)  # no credential files left behind
