"""The Helm release that e2e/kind/run.sh installed: real pods, real probes, real Services.

Why: everything else runs the processes on the host; only a cluster with a kubelet shows that
the image starts as uid 10001 on a read-only root, that the probes pass, that the gateways
find the workers and the operator finds the gateways through EndpointSlices, all with the
chart's RBAC. Skipped unless run.sh says which release to check.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from sie_operator.devcluster.kubetest import Kube

RELEASE = os.environ.get("SIE_E2E_RELEASE", "")
NAMESPACE = os.environ.get("SIE_E2E_RELEASE_NAMESPACE", "")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "modelconfigs"

pytestmark = [
    pytest.mark.k8s,
    pytest.mark.skipif(not (RELEASE and NAMESPACE), reason="no Helm release to check (run e2e/kind/run.sh)"),
]


@pytest.fixture
def release(control_plane: Any) -> Kube:
    return Kube(control_plane, NAMESPACE)


def test_pods_run_restricted_and_ready(release: Kube) -> None:
    pods = json.loads(
        release.run("get", "pods", "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json").stdout
    )
    components = set()
    for pod in pods["items"]:
        components.add(pod["metadata"]["labels"]["app.kubernetes.io/component"])
        ready = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
        assert ready.get("Ready") == "True", pod["metadata"]["name"]
        if pod["metadata"]["labels"]["app.kubernetes.io/component"] != "nats":
            uid = release.run(
                "exec", pod["metadata"]["name"], "--", "python", "-c", "import os; print(os.getuid())"
            )
            assert uid.stdout.strip() == "10001"
    assert components == {"operator", "gateway", "worker", "nats"}


@pytest.mark.parametrize("example", ["intfloat-e5-small-v2.yaml", "intfloat-e5-mistral-7b-instruct.yaml"])
def test_example_becomes_ready_on_every_gateway(release: Kube, example: str) -> None:
    manifest = yaml.safe_load((EXAMPLES / example).read_text())
    name = manifest["metadata"]["name"]
    release.apply(manifest)
    try:
        res = release.run(
            "wait", "--for=condition=Ready", f"modelconfig/{name}", "--timeout=180s", check=False
        )
        assert res.returncode == 0, (
            f"{res.stderr}\n{json.dumps((release.get(name) or {}).get('status'), indent=1)}"
        )
        status = (release.get(name) or {})["status"]
        gateways = json.loads(release.run("get", "deploy", f"{RELEASE}-gateway", "-o", "json").stdout)
        replicas = gateways["spec"]["replicas"]
        assert status["gateways"] == {"seen": replicas, "agreeing": replicas}
        bundle = status["bundles"][0]
        sts = json.loads(
            release.run("get", "sts", f"{RELEASE}-worker-{bundle['bundleId']}", "-o", "json").stdout
        )
        assert bundle["eligibleWorkers"] == sts["spec"]["replicas"] == len(bundle["ackedWorkers"])
    finally:
        release.run("delete", "modelconfig", name, "--ignore-not-found", check=False)
