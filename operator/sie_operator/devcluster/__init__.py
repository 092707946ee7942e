"""A real, throw-away Kubernetes control plane (etcd + kube-apiserver) for tests and dev.

It exists so that CRD schemas, CEL rules, RBAC and status subresources are checked by the
real apiserver rather than by mocks, without needing Docker. See ``controlplane.py``.
"""

from __future__ import annotations

from sie_operator.devcluster.controlplane import (
    BinaryNotFoundError,
    ControlPlane,
    ControlPlaneError,
    KubectlError,
    find_binary,
    parse_duration,
)

__all__ = [
    "BinaryNotFoundError",
    "ControlPlane",
    "ControlPlaneError",
    "KubectlError",
    "find_binary",
    "parse_duration",
]
