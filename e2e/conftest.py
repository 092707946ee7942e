"""End-to-end fixtures: the real control plane (or E2E_CLUSTER=existing), the CRD, and a
full stack of real processes (nats-server, operator, gateway, 3 reference workers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sie_operator.devcluster.kubetest import Kube, model_manifest
from sie_operator.devcluster.stack import Stack, StackConfig

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "modelconfig.yaml"


@pytest.fixture(scope="session")
def crd_installed(control_plane: Any) -> None:
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    control_plane.kubectl("wait", "--for=condition=Established", "crd/modelconfigs.sie.dev", "--timeout=30s")


@pytest.fixture
def kube(control_plane: Any, k8s_namespace: str, crd_installed: None) -> Kube:
    return Kube(control_plane, k8s_namespace)


@pytest.fixture
def stack(control_plane: Any, k8s_namespace: str, crd_installed: None, tmp_path: Path) -> Iterator[Stack]:
    cfg = StackConfig(
        kubeconfig=str(control_plane.kubeconfig), namespaces=[k8s_namespace], heartbeat_timeout=6.0
    )
    s = Stack(cfg, tmp_path / "stack")
    try:
        s.start()
    except Exception:
        print(s.logs_tail())
        s.stop()
        raise
    yield s
    s.stop()


__all__ = ["Kube", "model_manifest"]
