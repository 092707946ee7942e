"""One coordination.k8s.io/v1 Lease over ``KubeClient``: GET, POST, PUT — nothing else.

These three verbs are exactly the RBAC the election needs (get/create/update on leases in
one namespace). A PUT carries the resourceVersion that was read, so the API server applies
it only if nobody wrote the Lease since (compare-and-set); a lost race is a
``LeaseConflict``, not an error worth logging loudly.
"""

from __future__ import annotations

from ..kube.client import KubeClient, KubeError
from .decide import LeaseRecord, from_lease, to_lease


class LeaseConflict(Exception):
    """Someone wrote the Lease since we read it (409), or created it first."""


class LeaseApi:
    def __init__(self, kube: KubeClient, namespace: str, name: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.path = f"{self.collection}/{name}"

    async def get(self) -> LeaseRecord | None:
        """The Lease, or None when it does not exist."""
        try:
            obj = await self.kube.request("GET", self.path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return from_lease(obj or {})

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        return await self._write("POST", self.collection, record)

    async def update(self, record: LeaseRecord) -> LeaseRecord:
        return await self._write("PUT", self.path, record)

    async def _write(self, method: str, path: str, record: LeaseRecord) -> LeaseRecord:
        body = to_lease(record, name=self.name, namespace=self.namespace)
        try:
            obj = await self.kube.request(method, path, body=body)
        except KubeError as exc:
            if exc.status == 409:
                raise LeaseConflict(exc.message) from None
            raise
        return from_lease(obj or {})
