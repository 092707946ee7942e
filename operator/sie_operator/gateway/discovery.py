"""Worker discovery: a static list, or the EndpointSlices of a Kubernetes Service.

Static: ``--worker`` (repeatable) and ``SIE_GATEWAY_WORKERS`` (comma or whitespace
separated; SIE's gateway takes a comma list in that variable as one bogus URL). Each entry
is ``host:port`` or an ``http(s)://`` URL.

Kubernetes: EndpointSlices (discovery.k8s.io/v1, not the legacy Endpoints) labelled
``kubernetes.io/service-name=<service>``; which endpoints count is ``kube.endpointslices``'
rule (ready, not terminating), one URL per address with the configured port. The watch
runs on the shared Kubernetes client (``kube.client``: the official asyncio client's
credentials, renewed on expiry and after a 401), resumes from the last resourceVersion
(bookmarks on), relists on 410 Gone, and reconnects with jittered backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ..kube.client import KubeClient, KubeError, endpoint_slices_path
from ..kube.endpointslices import SERVICE_LABEL, endpoint_urls

log = logging.getLogger(__name__)


class WorkerUrlError(ValueError):
    pass


def normalize_worker_url(text: str) -> str:
    """``host:port`` -> ``http://host:port``; validated, trailing slash dropped."""
    raw = text.strip()
    url = raw if "://" in raw else "http://" + raw
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WorkerUrlError(f"invalid worker URL {raw!r}: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WorkerUrlError(f"invalid worker URL {raw!r}: expected host:port or http(s)://host:port")
    if parts.query or parts.fragment:
        raise WorkerUrlError(f"invalid worker URL {raw!r}: no query or fragment allowed")
    if port == 0:
        raise WorkerUrlError(f"invalid worker URL {raw!r}: port 0")
    return url.rstrip("/")


def parse_worker_urls(values: Iterable[str]) -> list[str]:
    """Split, normalise and de-duplicate (first occurrence wins) static worker entries."""
    out: dict[str, None] = {}
    for value in values:
        for part in re.split(r"[,\s]+", value):
            if part:
                out[normalize_worker_url(part)] = None
    return list(out)


class WatchExpired(Exception):
    """410 Gone: the resourceVersion is too old, list again."""


class EndpointSliceWatcher:
    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        service: str,
        port: int,
        on_urls: Callable[[frozenset[str]], None],
        *,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        watch_timeout: int = 300,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.service = service
        self.port = port
        self.on_urls = on_urls
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.watch_timeout = watch_timeout
        self._slices: dict[str, frozenset[str]] = {}
        self._emitted: frozenset[str] | None = None

    def _emit(self) -> None:
        urls = frozenset().union(*self._slices.values()) if self._slices else frozenset()
        if urls != self._emitted:
            self._emitted = urls
            log.info("service %s/%s: %d ready worker endpoint(s)", self.namespace, self.service, len(urls))
            self.on_urls(urls)

    def _urls(self, obj: Any) -> frozenset[str]:
        return endpoint_urls(obj, port=self.port)

    async def run(self) -> None:
        delay = self.backoff_initial
        while True:
            try:
                rv = await self._list()
                delay = self.backoff_initial
                while True:
                    rv = await self._watch(rv)
            except WatchExpired:
                log.info("EndpointSlice watch expired; listing again")
                continue
            except (TimeoutError, aiohttp.ClientError, OSError, KubeError, ValueError) as exc:
                sleep = delay * random.uniform(0.8, 1.2)
                log.warning("EndpointSlice discovery failed (retry in %.1fs): %s", sleep, exc)
                await asyncio.sleep(sleep)
                delay = min(delay * 1.5, self.backoff_max)

    async def _list(self) -> str:
        try:
            items, rv = await self.kube.list_endpoint_slices(self.namespace, self.service)
        except KubeError as exc:
            raise ValueError(f"list EndpointSlices: HTTP {exc.status} {exc.message}") from None
        self._slices = {
            item["metadata"]["name"]: self._urls(item)
            for item in items
            if isinstance(item, dict) and isinstance(item.get("metadata"), dict)
        }
        self._emit()
        return rv

    async def _watch(self, rv: str) -> str:
        """Follow one watch stream; returns the last resourceVersion when it ends normally."""
        params = {
            "labelSelector": f"{SERVICE_LABEL}={self.service}",
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.watch_timeout),
            "resourceVersion": rv,
        }
        try:
            async for event in self.kube.stream(
                endpoint_slices_path(self.namespace), params, read_timeout=self.watch_timeout + 30
            ):
                rv = self._handle(event, rv)
        except KubeError as exc:
            if exc.status == 410:
                raise WatchExpired from None
            raise ValueError(f"watch EndpointSlices: HTTP {exc.status} {exc.message}") from None
        return rv

    def _handle(self, event: Any, rv: str) -> str:
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            return rv
        kind, obj = event.get("type"), event["object"]
        meta = obj["metadata"] if isinstance(obj.get("metadata"), dict) else {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise WatchExpired
            raise ValueError(f"watch error: {obj.get('message')}")
        new_rv = str(meta.get("resourceVersion") or rv)
        name = meta.get("name")
        if kind in ("ADDED", "MODIFIED") and isinstance(name, str):
            self._slices[name] = self._urls(obj)
            self._emit()
        elif kind == "DELETED" and isinstance(name, str):
            self._slices.pop(name, None)
            self._emit()
        return new_rv
