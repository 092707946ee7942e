"""The few Kubernetes API calls this project makes, on the official asyncio client.

Every call goes through ``kubernetes_asyncio``'s ApiClient with the credentials of one
``KubeAuth`` (the identity kopf logs in with too). A 401 means the credentials went stale
(an exec token revoked, a bound service-account token rotated): the call re-authenticates
once and is retried, so callers never see a transient 401.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from .auth import KubeAuth

T = TypeVar("T")
_OBJECT = {200: "object", 201: "object"}


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _error(exc: ApiException) -> KubeError:
    text = exc.body if isinstance(exc.body, str) else str(exc.reason or "")
    try:
        message = json.loads(text).get("message", text)
    except (ValueError, AttributeError, TypeError):
        message = text
    return KubeError(int(exc.status or 0), str(message)[:500])


class KubeClient:
    """One pooled ApiClient; methods raise KubeError for HTTP errors."""

    def __init__(self, auth: KubeAuth, *, timeout: float = 15.0) -> None:
        self.auth = auth
        self.timeout = timeout
        self.api = ApiClient(auth.configuration)
        self.api.user_agent = "sie-operator"
        self._reauth_lock = asyncio.Lock()
        self.reauthentications = 0

    async def close(self) -> None:
        await self.api.close()

    async def _with_reauth(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except ApiException as exc:
            if exc.status != 401:
                raise _error(exc) from None
        async with self._reauth_lock:
            await self.auth.refresh(force=True)
            self.reauthentications += 1
        try:
            return await call()
        except ApiException as exc:
            raise _error(exc) from None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """Any JSON call by path (the typed APIs cover the rest of this module)."""

        async def call() -> Any:
            return await self.api.call_api(
                path,
                method,
                query_params=list((params or {}).items()),
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                response_types_map=_OBJECT,
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=self.timeout,
            )

        return await self._with_reauth(call)

    async def stream(
        self, path: str, params: Mapping[str, str], *, read_timeout: float
    ) -> AsyncIterator[Any]:
        """The JSON lines of a watch (re-authenticating once on 401 at connect)."""

        async def connect() -> Any:
            resp = await self.api.call_api(
                path,
                "GET",
                query_params=list(params.items()),
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(sock_connect=30, sock_read=read_timeout),
            )
            if resp.status >= 400:  # the library checks the status only of preloaded answers
                body = await resp.read()
                resp.release()
                exc = ApiException(status=resp.status, reason=resp.reason)
                exc.body = body.decode("utf-8", "replace")
                raise exc
            return resp

        resp = await self._with_reauth(connect)
        try:
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                while (nl := buf.find(b"\n")) >= 0:
                    line, buf = buf[:nl], buf[nl + 1 :]
                    if line.strip():
                        yield json.loads(line)
            if buf.strip():
                yield json.loads(buf)
        finally:
            resp.release()

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

    async def list_endpoint_slices(self, namespace: str, service: str) -> tuple[list[dict[str, Any]], str]:
        """The EndpointSlices of one Service, and the list's resourceVersion."""
        data = await self.request(
            "GET",
            endpoint_slices_path(namespace),
            params={"labelSelector": f"kubernetes.io/service-name={service}"},
        )
        data = data or {}
        return list(data.get("items") or []), str((data.get("metadata") or {}).get("resourceVersion") or "")

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


def endpoint_slices_path(namespace: str) -> str:
    return f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"


def _without_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_nulls(v) for v in value]
    return value
