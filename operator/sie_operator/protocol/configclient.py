"""HTTP client for the config service endpoints a mirror consumes (config-api contract §1.8-1.11).

Every failure (network, timeout, non-2xx, bad body) becomes one ``ConfigServiceError`` with
a one-line reason, so the sync loop has a single thing to retry on. The admin token, when
set, is sent on every call (``/export`` needs it; SIE's gateway does the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import orjson

from sie_operator.catalog import yamlio
from sie_operator.catalog.bundles import Bundle, BundleError, parse_bundle
from sie_operator.natsconn import redact_url


class ConfigServiceError(Exception):
    """The config service could not be read; ``str(exc)`` is a one-line reason."""


@dataclass(frozen=True)
class EpochInfo:
    epoch: int
    bundles_hash: str


class ConfigServiceClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        admin_token: str | None = None,
        timeout: float = 10.0,
        export_timeout: float = 120.0,
    ) -> None:
        self._session = session
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._export_timeout = aiohttp.ClientTimeout(total=export_timeout)

    async def _get(self, path: str, limit: aiohttp.ClientTimeout | None = None) -> bytes:
        url = self.base_url + path
        try:
            async with self._session.get(url, headers=self._headers, timeout=limit or self._timeout) as resp:
                body = await resp.read()
                if resp.status != 200:
                    text = body[:200].decode("utf-8", "replace").strip()
                    raise ConfigServiceError(f"GET {path}: HTTP {resp.status} {text}")
                return body
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            # ValueError: aiohttp refuses e.g. URL userinfo together with a bearer token
            reason = redact_url(f"{type(exc).__name__}: {exc}")  # aiohttp errors quote the full URL
            raise ConfigServiceError(f"GET {path}: {reason}".rstrip(": ")) from exc

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
