"""The rendered chart against a real kube-apiserver: server-side dry runs, PodSecurity
`restricted` enforcement, and a real `helm install`.

Why: `helm template` only proves the YAML is what we meant; the API server decides whether
it is valid (schemas, RBAC objects, the CRD itself) and PodSecurity admission decides
whether the pods may run. Pods never start here (no kubelet); that is not the point.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml
from chartlib import CHART, FULLNAME, RELEASE, Obj, find, helm_bin, load_yaml, pod_templates, render

pytestmark = pytest.mark.k8s

ALL_VALUES = load_yaml(CHART / "ci" / "all-values.yaml")


def _manifest(objs: list[Obj]) -> str:
    return "\n---\n".join(yaml.safe_dump(o, sort_keys=False) for o in objs)


def _restricted(cp: Any, ns: str) -> None:
    for mode in ("enforce", "warn"):
        cp.kubectl("label", "--overwrite", "namespace", ns, f"pod-security.kubernetes.io/{mode}=restricted")


def _extra_namespaces(cp: Any, base: str, n: int) -> list[str]:
    out = []
    for i in range(n):
        name = f"{base[:50]}-w{i}"
        cp.kubectl("create", "namespace", name)
        out.append(name)
    return out


CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "cluster-wide": {"rbac.clusterWide": True},
    "watch-namespaces": {},  # filled with real namespaces in the test
    "external-nats": {"nats.external.url": "nats://nats.nats-system.svc:4222"},
    "workers": {"workers.enabled": True, "workers.bundles": {"default": 2, "sglang": 1}},
    "tokens": {"auth.adminToken.existingSecret": "a", "auth.authToken.existingSecret": "b"},
    "no-persistence": {"store.persistence.enabled": False},
    "all": dict(ALL_VALUES),
    "ha": {"ha.enabled": True, "workers.enabled": True, "networkPolicy.enabled": True},
    "ha-external-creds": {
        "ha.enabled": True,
        "ha.antiAffinity": "hard",
        "nats.external.url": "nats://nats.nats-system.svc:4222",
        "nats.external.credsSecret.name": "nats-creds",
    },
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_server_side_dry_run_of_everything_rendered(
    control_plane: Any, k8s_namespace: str, config: str
) -> None:
    values = dict(CONFIGS[config])
    if config in ("watch-namespaces", "all"):
        values["watchNamespaces"] = _extra_namespaces(control_plane, k8s_namespace, 2)
    _restricted(control_plane, k8s_namespace)
    objs = render(values, namespace=k8s_namespace, include_crds=True)
    # No prometheus-operator in this control plane; the ServiceMonitor's shape is checked in
    # test_chart_render.py.
    objs = [o for o in objs if o["kind"] != "ServiceMonitor"]
    assert find(objs, "CustomResourceDefinition", "modelconfigs.sie.dev")
    res = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=_manifest(objs), check=False)
    assert res.returncode == 0, res.stderr
    assert "would violate PodSecurity" not in res.stderr, res.stderr
    created = [ln for ln in res.stdout.splitlines() if "(server dry run)" in ln]
    assert len(created) == len(objs), res.stdout


def test_pods_pass_pod_security_restricted_enforcement(control_plane: Any, k8s_namespace: str) -> None:
    """Each pod template, as a Pod, is admitted by a namespace enforcing `restricted`; a pod
    that drops one of the fields is not (so the enforcement really is on)."""
    _restricted(control_plane, k8s_namespace)
    objs = render(ALL_VALUES, namespace=k8s_namespace)
    pods = []
    for workload, tpl in pod_templates(objs):
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": workload["metadata"]["name"], "namespace": k8s_namespace},
                "spec": tpl["spec"],
            }
        )
    assert len(pods) == 5  # operator, gateway, nats, 2 worker bundles
    res = control_plane.kubectl("create", "--dry-run=server", "-f", "-", input=_manifest(pods), check=False)
    assert res.returncode == 0, res.stderr
    bad = json.loads(json.dumps(pods[0]))
    del bad["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"]
    res = control_plane.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
    assert res.returncode != 0 and "violates PodSecurity" in res.stderr, res.stderr


def test_helm_install_and_uninstall(control_plane: Any, k8s_namespace: str) -> None:
    """A real install: CRDs first, then every object; NOTES point at `kubectl get mcfg`."""
    env = control_plane.env()

    def helm(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [helm_bin(), "--kubeconfig", str(control_plane.kubeconfig), "--namespace", k8s_namespace, *a],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )

    res = helm("install", RELEASE, str(CHART), "--set", "store.persistence.enabled=false")
    assert res.returncode == 0, res.stderr
    assert "STATUS: deployed" in res.stdout
    assert f"kubectl get mcfg -n {k8s_namespace}" in res.stdout
    assert "WARNING: store.persistence.enabled=false" in res.stdout
    assert "Auth is on" in res.stdout and "WARNING: auth is off" not in res.stdout

    def secret(name: str) -> dict[str, str]:
        out = control_plane.kubectl("get", "secret", name, "-n", k8s_namespace, "-o", "json").stdout
        data: dict[str, str] = json.loads(out)["data"]
        return data

    tokens, nats_login = secret(f"{FULLNAME}-auth"), secret(f"{FULLNAME}-nats")
    assert sorted(tokens) == ["SIE_ADMIN_TOKEN", "SIE_AUTH_TOKEN", "SIE_EXPORT_TOKEN"]
    # `helm upgrade` keeps the generated credentials (lookup), so nothing is locked out
    res = helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "--set",
        "store.persistence.enabled=false",
        "--set",
        "gateway.replicas=3",
    )
    assert res.returncode == 0, res.stderr
    assert secret(f"{FULLNAME}-auth") == tokens and secret(f"{FULLNAME}-nats") == nats_login
    # opting out is explicit, and said so
    res = helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "--set",
        "store.persistence.enabled=false",
        "--set",
        "auth.enabled=false",
    )
    assert res.returncode == 0, res.stderr
    assert "WARNING: auth is off" in res.stdout
    got = control_plane.kubectl(
        "get", "deploy,svc,sa,role,rolebinding", "-n", k8s_namespace, "-o", "name"
    ).stdout
    for want in (
        f"deployment.apps/{FULLNAME}",
        f"deployment.apps/{FULLNAME}-gateway",
        f"service/{FULLNAME}-gateway-headless",
        f"serviceaccount/{FULLNAME}",
        f"role.rbac.authorization.k8s.io/{FULLNAME}",
    ):
        assert want in got.splitlines(), got
    control_plane.kubectl("get", "crd", "modelconfigs.sie.dev")
    res = helm("uninstall", RELEASE, "--wait=false")
    assert res.returncode == 0, res.stderr
    left = control_plane.kubectl("get", "deploy", "-n", k8s_namespace, "-o", "name").stdout
    assert f"deployment.apps/{FULLNAME}" not in left.splitlines()


def test_helm_install_ha_and_its_lease_rights(control_plane: Any, k8s_namespace: str) -> None:
    """ha.enabled installs; NOTES say who leads; the operator's ServiceAccount may create a
    Lease and get/update its own, and nothing else on leases (the API server's RBAC says so)."""
    env = control_plane.env()
    res = subprocess.run(
        [helm_bin(), "--kubeconfig", str(control_plane.kubeconfig), "--namespace", k8s_namespace,
         "install", RELEASE, str(CHART), "--set", "ha.enabled=true"],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "High availability: 2 operator replicas" in res.stdout
    assert f"kubectl -n {k8s_namespace} get lease {FULLNAME}" in res.stdout
    assert "single point of failure" in res.stdout  # the built-in NATS holds the store
    got = control_plane.kubectl("get", "pdb,role,pvc", "-n", k8s_namespace, "-o", "name").stdout.split()
    assert f"poddisruptionbudget.policy/{FULLNAME}" in got
    assert f"role.rbac.authorization.k8s.io/{FULLNAME}-leader-election" in got
    assert f"persistentvolumeclaim/{FULLNAME}-nats-jetstream" in got
    assert f"persistentvolumeclaim/{FULLNAME}-store" not in got
    sa = f"system:serviceaccount:{k8s_namespace}:{FULLNAME}"

    def can(verb: str, resource: str) -> bool:
        out = control_plane.kubectl(
            "auth", "can-i", verb, resource, "-n", k8s_namespace, "--as", sa, check=False
        ).stdout.strip()
        return out == "yes"

    assert can("create", "leases.coordination.k8s.io")
    assert can("get", f"leases.coordination.k8s.io/{FULLNAME}")
    assert can("update", f"leases.coordination.k8s.io/{FULLNAME}")
    assert not can("update", "leases.coordination.k8s.io/someone-else")
    assert not can("delete", f"leases.coordination.k8s.io/{FULLNAME}")
    assert not can("list", "leases.coordination.k8s.io")
