"""pytest fixtures for the real control plane: ``control_plane`` and ``k8s_namespace``.

Why a plugin: one etcd + kube-apiserver per session (ready in a few seconds) is shared by
every test that needs Kubernetes semantics; tests isolate themselves with a fresh namespace.

Environment:
- ``E2E_CLUSTER=existing``: use the cluster in $KUBECONFIG (e.g. kind) instead of starting one.
- ``SIE_REQUIRE_K8S=1``: missing binaries fail the tests instead of skipping them (CI).
- ``KUBEBUILDER_ASSETS`` / ``TEST_ASSET_*``: reuse envtest binaries instead of ensure-bins.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from sie_operator.devcluster.controlplane import (
    BinaryNotFoundError,
    ControlPlane,
    find_binary,
)

_TRUTHY = {"1", "true", "yes", "on"}


def _require_k8s() -> bool:
    return os.environ.get("SIE_REQUIRE_K8S", "").strip().lower() in _TRUTHY


def _use_existing() -> bool:
    return os.environ.get("E2E_CLUSTER", "").strip().lower() == "existing"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Obtain the binaries before any test runs, if a selected test needs them.

    A cold ensure-bins build takes minutes; doing it here keeps it outside the per-test
    timeout. Failures are only remembered here; the fixture turns them into skip or error.
    """
    if _use_existing() or session.config.option.collectonly:
        return
    if not any("control_plane" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            "sie-operator: resolving kube-apiserver/etcd/kubectl (a machine's first run builds them, ~5 min)"
        )
    for name in ("kube-apiserver", "etcd", "kubectl"):
        try:
            find_binary(name)
        except BinaryNotFoundError:
            return  # cached by find_binary/ensure_bins_dir; reported by the fixture


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """A running control plane (or the $KUBECONFIG cluster with E2E_CLUSTER=existing)."""
    if _use_existing():
        yield ControlPlane.existing()
        return
    cp = ControlPlane()
    try:
        cp.start()
    except BinaryNotFoundError as exc:
        cp.stop()
        if _require_k8s():
            pytest.fail(f"SIE_REQUIRE_K8S is set but the control-plane binaries are missing: {exc}")
        pytest.skip(
            f"no Kubernetes test binaries ({exc}). Set KUBEBUILDER_ASSETS, install Go for "
            "e2e/controlplane/ensure-bins, or use E2E_CLUSTER=existing with a KUBECONFIG."
        )
    try:
        yield cp
    finally:
        cp.stop()


def _namespace_name(nodename: str) -> str:
    """A DNS-1123 label unique per call: test name (truncated) + random suffix."""
    base = re.sub(r"[^a-z0-9-]+", "-", nodename.lower()).strip("-")[:40].strip("-") or "test"
    return f"t-{base}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def k8s_namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test.

    Without kube-controller-manager a deleted namespace stays Terminating forever, so
    isolation comes from unique names; deletion at the end is best-effort (it does clean up
    on a real cluster such as kind).
    """
    name = _namespace_name(request.node.name)
    control_plane.kubectl("create", "namespace", name)
    control_plane.kubectl("label", "namespace", name, "sie.dev/test-namespace=true")
    try:
        yield name
    finally:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            control_plane.kubectl(
                "delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False
            )
