"""Worker discovery: a static list, or the EndpointSlices of a Kubernetes Service.

Static: ``--worker`` (repeatable) and ``SIE_GATEWAY_WORKERS`` (comma or whitespace
separated; SIE's gateway takes a comma list in that variable as one bogus URL). Each entry
is ``host:port`` or an ``http(s)://`` URL.

Kubernetes: EndpointSlices (discovery.k8s.io/v1, not the legacy Endpoints) labelled
``kubernetes.io/service-name=<service>``; an endpoint counts while its ``ready`` condition
is true or unset (the API's own rule), one URL per address with the configured port. The
watch resumes from the last resourceVersion (bookmarks on), relists on 410 Gone, and
reconnects with jittered backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import orjson

from .kubeconfig import KubeClientConfig, KubeConfigError

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


def slice_urls(obj: Any, port: int) -> frozenset[str]:
    """Worker URLs of the ready endpoints of one EndpointSlice object."""
    urls = set()
    endpoints = obj.get("endpoints") if isinstance(obj, dict) else None
    for ep in endpoints or []:
        if not isinstance(ep, dict):
            continue
        cond = ep.get("conditions") or {}
        if isinstance(cond, dict) and cond.get("ready") is False:
            continue
        for addr in ep.get("addresses") or []:
            if isinstance(addr, str) and addr:
                host = f"[{addr}]" if ":" in addr else addr
                urls.add(f"http://{host}:{port}")
    return frozenset(urls)


class WatchExpired(Exception):
    """410 Gone: the resourceVersion is too old, list again."""


class EndpointSliceWatcher:
    def __init__(
        self,
        config: KubeClientConfig,
        namespace: str,
        service: str,
        port: int,
        on_urls: Callable[[frozenset[str]], None],
        *,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        watch_timeout: int = 300,
    ) -> None:
        self.config = config
        self.namespace = namespace
        self.service = service
        self.port = port
        self.on_urls = on_urls
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.watch_timeout = watch_timeout
        self._slices: dict[str, frozenset[str]] = {}
        self._emitted: frozenset[str] | None = None
        selector = quote(f"kubernetes.io/service-name={service}", safe="")
        self._path = f"/apis/discovery.k8s.io/v1/namespaces/{quote(namespace, safe='')}/endpointslices"
        self._selector = selector

    def _emit(self) -> None:
        urls = frozenset().union(*self._slices.values()) if self._slices else frozenset()
        if urls != self._emitted:
            self._emitted = urls
            log.info("service %s/%s: %d ready worker endpoint(s)", self.namespace, self.service, len(urls))
            self.on_urls(urls)

    async def run(self) -> None:
        delay = self.backoff_initial
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.config.ssl_context)
        ) as session:
            while True:
                try:
                    headers = await asyncio.to_thread(self.config.auth_header)
                    rv = await self._list(session, headers)
                    delay = self.backoff_initial
                    while True:
                        rv = await self._watch(session, headers, rv)
                except WatchExpired:
                    log.info("EndpointSlice watch expired; listing again")
                    continue
                except (TimeoutError, aiohttp.ClientError, OSError, KubeConfigError, ValueError) as exc:
                    sleep = delay * random.uniform(0.8, 1.2)
                    log.warning("EndpointSlice discovery failed (retry in %.1fs): %s", sleep, exc)
                    await asyncio.sleep(sleep)
                    delay = min(delay * 1.5, self.backoff_max)

    async def _list(self, session: aiohttp.ClientSession, headers: dict[str, str]) -> str:
        url = f"{self.config.server}{self._path}?labelSelector={self._selector}"
        async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise ValueError(f"list EndpointSlices: HTTP {resp.status} {body[:200]!r}")
        data = orjson.loads(body)
        self._slices = {
            item["metadata"]["name"]: slice_urls(item, self.port)
            for item in data.get("items") or []
            if isinstance(item, dict) and isinstance(item.get("metadata"), dict)
        }
        self._emit()
        return str(data.get("metadata", {}).get("resourceVersion", ""))

    async def _watch(self, session: aiohttp.ClientSession, headers: dict[str, str], rv: str) -> str:
        """Follow one watch stream; returns the last resourceVersion when it ends normally."""
        url = (
            f"{self.config.server}{self._path}?labelSelector={self._selector}&watch=true"
            f"&allowWatchBookmarks=true&timeoutSeconds={self.watch_timeout}&resourceVersion={quote(rv)}"
        )
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=self.watch_timeout + 30)
        async with session.get(url, headers=headers, timeout=timeout) as resp:
            if resp.status == 410:
                raise WatchExpired
            if resp.status != 200:
                raise ValueError(f"watch EndpointSlices: HTTP {resp.status} {(await resp.read())[:200]!r}")
            async for event in _json_lines(resp):
                rv = self._handle(event, rv)
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
            self._slices[name] = slice_urls(obj, self.port)
            self._emit()
        elif kind == "DELETED" and isinstance(name, str):
            self._slices.pop(name, None)
            self._emit()
        return new_rv


async def _json_lines(resp: aiohttp.ClientResponse) -> AsyncIterator[Any]:
    """Newline-delimited JSON of a watch, without a line-length limit."""
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl], buf[nl + 1 :]
            if line.strip():
                yield orjson.loads(line)
    if buf.strip():
        yield orjson.loads(buf)
