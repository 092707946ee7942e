"""HTTP client for the config service endpoints a mirror consumes (config-api contract §1.8-1.11).

Every failure (network, timeout, non-2xx, bad body) becomes one ``ConfigServiceError`` with
a one-line reason, so the sync loop has a single thing to retry on. The admin token, when
set, is sent on every call (``/export`` needs it; SIE's gateway does the same).

Failover: the client takes one base URL or several (a list, or a comma-separated string:
the operator replicas of an HA install, every one of which serves reads). It sticks to the
URL that last answered and, when that one cannot be reached, times out or answers 5xx,
tries the others in order within the same call; the first that answers becomes the sticky
one, with one log line. A 4xx is the service's answer, not an outage (a wrong token or a
missing bundle is the same on every replica), so it never moves the client. With one URL
nothing changes: same requests, same error messages. Gateways and workers both read through
this class, so the failover lives here once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import orjson

from sie_operator.catalog import yamlio
from sie_operator.catalog.bundles import Bundle, BundleError, parse_bundle
from sie_operator.natsconn import redact_url

log = logging.getLogger(__name__)


class ConfigServiceError(Exception):
    """The config service could not be read; ``str(exc)`` is a one-line reason."""


class _Unavailable(Exception):
    """This base URL failed in a way another replica may not (transport, timeout, 5xx)."""


def split_base_urls(base_url: str | Sequence[str]) -> tuple[str, ...]:
    """``"http://a,http://b"`` or a sequence -> stripped URLs without trailing slashes.

    Validation (scheme, host, port) is the settings layer's job (``settingsparse``); this
    only refuses an empty list, which would leave the client nothing to call."""
    items = base_url.split(",") if isinstance(base_url, str) else list(base_url)
    urls = tuple(u.strip().rstrip("/") for u in items if u.strip())
    if not urls:
        raise ValueError("no config service URL given")
    return urls


def failover_order(current: int, count: int) -> list[int]:
    """The indexes one call tries: the sticky URL first, then the others in list order."""
    return [(current + k) % count for k in range(count)]


@dataclass(frozen=True)
class EpochInfo:
    epoch: int
    bundles_hash: str


class ConfigServiceClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str | Sequence[str],
        *,
        admin_token: str | None = None,
        timeout: float = 10.0,
        export_timeout: float = 120.0,
    ) -> None:
        self._session = session
        self.base_urls = split_base_urls(base_url)
        self._current = 0
        self._headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._export_timeout = aiohttp.ClientTimeout(total=export_timeout)

    @property
    def base_url(self) -> str:
        """The URL the next call tries first (the one that answered last)."""
        return self.base_urls[self._current]

    async def _get(self, path: str, limit: aiohttp.ClientTimeout | None = None) -> bytes:
        if len(self.base_urls) == 1:
            try:
                return await self._get_from(self.base_urls[0], path, limit)
            except _Unavailable as exc:
                raise ConfigServiceError(f"GET {path}: {exc}".rstrip(": ")) from exc.__cause__
        start = self._current
        failed: list[str] = []
        for idx in failover_order(start, len(self.base_urls)):
            base = self.base_urls[idx]
            try:
                body = await self._get_from(base, path, limit)
            except _Unavailable as exc:
                failed.append(f"{redact_url(base)}: {exc}")
                continue
            if idx != self._current:
                log.warning(
                    "config service: switching to %s (%s)", redact_url(base), "; ".join(failed) or "rotated"
                )
                self._current = idx
            return body
        raise ConfigServiceError(
            f"GET {path}: all {len(self.base_urls)} config service URLs failed: " + "; ".join(failed)
        )

    async def _get_from(self, base: str, path: str, limit: aiohttp.ClientTimeout | None) -> bytes:
        """One GET on one base URL; ``_Unavailable`` when another replica might do better."""
        url = base + path
        try:
            async with self._session.get(url, headers=self._headers, timeout=limit or self._timeout) as resp:
                body = await resp.read()
                if resp.status != 200:
                    text = body[:200].decode("utf-8", "replace").strip()
                    if resp.status >= 500:
                        raise _Unavailable(f"HTTP {resp.status} {text}")
                    raise ConfigServiceError(f"GET {path}: HTTP {resp.status} {text}")
                return body
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            # ValueError: aiohttp refuses e.g. URL userinfo together with a bearer token
            reason = redact_url(f"{type(exc).__name__}: {exc}")  # aiohttp errors quote the full URL
            raise _Unavailable(reason) from exc

    async def epoch(self) -> EpochInfo:
        data = _json_object(await self._get("/v1/configs/epoch"), "/v1/configs/epoch")
        epoch = data.get("epoch", 0)
        bundles_hash = data.get("bundles_hash", "") or ""
        if (
            isinstance(epoch, bool)
            or not isinstance(epoch, int)
            or epoch < 0
            or not isinstance(bundles_hash, str)
        ):
            raise ConfigServiceError("GET /v1/configs/epoch: unexpected body")
        return EpochInfo(epoch, bundles_hash)

    async def bundle_ids(self) -> list[str]:
        data = _json_object(await self._get("/v1/configs/bundles"), "/v1/configs/bundles")
        items = data.get("bundles")
        if not isinstance(items, list):
            raise ConfigServiceError("GET /v1/configs/bundles: no 'bundles' list")
        out = []
        for item in items:
            bid = item.get("bundle_id") if isinstance(item, dict) else None
            if isinstance(bid, str) and bid:
                out.append(bid)
        return out

    async def bundle(self, bundle_id: str) -> Bundle:
        path = f"/v1/configs/bundles/{quote(bundle_id, safe='')}"
        body = await self._get(path)
        try:
            return parse_bundle(yamlio.load(body), bundle_id)
        except (yamlio.YamlError, BundleError) as exc:
            raise ConfigServiceError(f"GET {path}: {exc}") from exc

    async def export(self) -> bytes:
        """The raw ``/export`` body; parsing it is CPU work the caller does off the loop."""
        return await self._get("/v1/configs/export", self._export_timeout)


def _json_object(body: bytes, path: str) -> dict[str, object]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ConfigServiceError(f"GET {path}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigServiceError(f"GET {path}: not a JSON object")
    return data
