"""Minimal async Kubernetes API client built on kopf's own login helpers.

Credentials come from the same places kopf looks (in-cluster service account, then
KUBECONFIG / ~/.kube/config), so the operator's status writer and kopf's watcher always
act as the same identity, and RBAC tests exercise exactly what the chart grants.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Credentials:
    server: str
    ssl: ssl.SSLContext | bool
    headers: Mapping[str, str]
    default_namespace: str | None


def _write_secret(data: str | bytes, suffix: str) -> str:
    """Inline kubeconfig material must be a file for the ssl module; keep it 0600."""
    raw = data.encode() if isinstance(data, str) else data
    import base64
    import binascii

    try:
        decoded = base64.b64decode(raw, validate=True)
        if decoded.startswith(b"-----BEGIN"):
            raw = decoded
    except binascii.Error:
        pass
    fd, path = tempfile.mkstemp(prefix="sie-kube-", suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    return path


def load_credentials(kubeconfig: str | None = None) -> Credentials:
    """In-cluster service account first, else the kubeconfig (explicit path, $KUBECONFIG, ~/.kube/config)."""
    settings = kopf.OperatorSettings()
    info = None
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
    else:
        info = kopf.login_with_service_account(settings=settings)
    if info is None:
        info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no Kubernetes credentials: not in a cluster and no KUBECONFIG")
    ctx: ssl.SSLContext | bool
    if info.insecure:
        ctx = False
    else:
        cafile = str(info.ca_path) if info.ca_path else None
        if info.ca_data:
            cafile = _write_secret(info.ca_data, ".crt")
        ctx = ssl.create_default_context(cafile=cafile)
        cert = str(info.certificate_path) if info.certificate_path else None
        key = str(info.private_key_path) if info.private_key_path else None
        if info.certificate_data:
            cert = _write_secret(info.certificate_data, ".crt")
        if info.private_key_data:
            key = _write_secret(info.private_key_data, ".key")
        if cert:
            ctx.load_cert_chain(cert, key)
    headers = dict(info.as_http_headers())
    return Credentials(
        server=info.server.rstrip("/"), ssl=ctx, headers=headers, default_namespace=info.default_namespace
    )


class KubeClient:
    """A few REST calls against the API server with one pooled aiohttp session."""

    def __init__(self, creds: Credentials, *, timeout: float = 15.0) -> None:
        self.creds = creds
        self._session = aiohttp.ClientSession(
            headers={**creds.headers, "User-Agent": "sie-operator"},
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(ssl=creds.ssl, limit=32),
        )

    async def close(self) -> None:
        await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self._session.request(
            method, self.creds.server + path, data=data, params=params, headers=headers
        ) as resp:
            text = await resp.text()
            if resp.status >= 400:
                try:
                    message = json.loads(text).get("message", text)
                except (ValueError, AttributeError):
                    message = text
                raise KubeError(resp.status, str(message)[:500])
            return json.loads(text) if text else None

    async def patch_status(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        status: Mapping[str, Any],
        *,
        uid: str | None = None,
    ) -> Any:
        """Write the status subresource only (never spec or metadata); returns the object.

        With ``uid`` the patch is a JSON patch whose first operation tests
        ``/metadata/uid``: a re-created object of the same name (another uid) refuses it
        with 422 instead of receiving its predecessor's status. The status is replaced
        whole (members that are None are left out). Without ``uid``: a JSON merge patch.
        """
        path = f"/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}/status"
        if uid is None:
            return await self.request(
                "PATCH", path, body={"status": status}, content_type="application/merge-patch+json"
            )
        ops = [
            {"op": "test", "path": "/metadata/uid", "value": uid},
            {"op": "add", "path": "/status", "value": _without_nulls(status)},
        ]
        return await self.request("PATCH", path, body=ops, content_type="application/json-patch+json")

    async def list_objects(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str | None,
        *,
        field_selector: str | None = None,
        page_size: int = 500,
    ) -> tuple[list[dict[str, Any]], str]:
        """Every object of a namespace (None: the whole cluster), paged; and the list's
        resourceVersion."""
        prefix = f"/apis/{group}/{version}" + (f"/namespaces/{namespace}" if namespace else "")
        items: list[dict[str, Any]] = []
        params: dict[str, str] = {"limit": str(page_size)}
        if field_selector:
            params["fieldSelector"] = field_selector
        rv = ""
        while True:
            data = await self.request("GET", f"{prefix}/{plural}", params=params) or {}
            items.extend(data.get("items") or [])
            meta = data.get("metadata") or {}
            rv = rv or str(meta.get("resourceVersion") or "")
            token = meta.get("continue")
            if not token:
                return items, rv
            params["continue"] = str(token)

    async def list_endpoint_slices(self, namespace: str, service: str) -> list[dict[str, Any]]:
        data = await self.request(
            "GET",
            f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
            params={"labelSelector": f"kubernetes.io/service-name={service}"},
        )
        return list((data or {}).get("items") or [])

    async def post_event(
        self,
        *,
        namespace: str,
        involved: Mapping[str, Any],
        reason: str,
        message: str,
        type_: str = "Normal",
        now: str,
    ) -> None:
        """A core/v1 Event, as kopf and kubectl describe expect them."""
        name = f"{involved.get('name', 'obj')}.{os.urandom(6).hex()}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": dict(involved),
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": "sie-operator"},
            "reportingComponent": "sie-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.request("POST", f"/api/v1/namespaces/{namespace}/events", body=body)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_nulls(v) for v in value]
    return value
