"""The Config API over HTTP (aiohttp), wire-compatible with SIE's config service.

Handlers are thin: check auth, read and parse the request, call the ConfigService, shape
the response with the contract's exact JSON (compact, keys in contract order) or YAML.
Bad input always gets a 4xx with a ``detail.error`` code; an unexpected exception gets a
JSON 500 and a traceback in the server log, never in the response.

``build_app`` returns a plain ``web.Application`` so the operator process can serve the
same API from its own event loop.

Replicas: every replica serves reads from its own registry. A write reaching a replica
that may not write (``service.leadership.may_write()`` is False) is forwarded once to the
leader's URL, marked ``X-Sie-Forwarded: 1`` (a marked request is never forwarded again, so
two replicas that both believe the other leads cannot bounce it), and the leader's answer
is passed back as is. Without a usable leader URL, or when the leader cannot be reached,
the answer is ``503 not_leader`` with ``Retry-After: 2``: clients retry, and nothing was
written.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from sie_operator.catalog import yamlio
from sie_operator.catalog.ids import InvalidModelId, validate_model_id
from sie_operator.catalog.modelspec import InvalidModelSpec, parse_model_spec
from sie_operator.catalog.registry import CaseConflict, ContentConflict, ValidationFailed, WriteRejected
from sie_operator.store import StoreConflict, StoreError, StoreUnconfirmed

from .auth import Authenticator, AuthFailure, token_of
from .idempotency import CachedResponse, IdempotencyCache, IdempotencyInFlight, IdempotencyMismatch
from .leadership import NotLeader
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .service import ConfigService, NatsUnavailable, RegistryUnavailable
from .settings import Settings

log = logging.getLogger(__name__)
audit_log = logging.getLogger("sie.audit")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SERVICE_KEY = web.AppKey("sie_config_service", ConfigService)
YAML_CONTENT_TYPE = "application/x-yaml"
OFFLOAD_PARSE_BYTES = 64 * 1024  # parse bigger bodies in a thread, off the event loop

_STATIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/configs/models",
        "/v1/configs/resolve",
        "/v1/configs/bundles",
        "/v1/configs/epoch",
        "/v1/configs/export",
    }
)
_TEMPLATES = (
    (re.compile(r"/v1/configs/models/.*", re.S), "/v1/configs/models/{model_id:path}"),
    (re.compile(r"/v1/configs/bundles/[^/]+"), "/v1/configs/bundles/{bundle_id}"),
)
UNMATCHED_PATH = "<unmatched>"
FORWARDED_HEADER = "X-Sie-Forwarded"
FORWARD_HEADERS = ("Authorization", "Idempotency-Key", "Content-Type")
NOT_LEADER_RETRY_AFTER = "2"
PROXY_TIMEOUT = 30.0  # seconds for a forwarded write (the leader's own write path is bounded)


def path_label(path: str) -> str:
    """Route template for metrics (SIE's spelling); unknown paths share one label so a
    scanner cannot create unbounded label values."""
    if path in _STATIC_PATHS:
        return path
    for rx, label in _TEMPLATES:
        if rx.fullmatch(path):
            return label
    return UNMATCHED_PATH


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS, default=str),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(status: int, error: str, message: str | None = None, **extra: Any) -> web.Response:
    detail: dict[str, Any] = {"error": error, **extra}
    if message is not None:
        detail["message"] = message
    return json_response({"detail": detail}, status)


def not_leader_response(leader: str | None, why: str = "") -> web.Response:
    """503 for a write this replica may not do and could not hand to the leader."""
    message = "This config service replica is not the leader and cannot write" + (f" ({why})" if why else "")
    resp = error_response(503, NotLeader.error, message + "; retry shortly.", leader=leader)
    resp.headers["Retry-After"] = NOT_LEADER_RETRY_AFTER
    return resp


def _auth_response(fail: AuthFailure) -> web.Response:
    return json_response({"detail": fail.detail}, fail.status)


def _too_large(limit: int) -> web.Response:
    resp = error_response(413, "payload_too_large", f"Config body exceeds {limit} bytes limit.")
    resp.force_close()  # the rest of the body is never read
    return resp


def rejection_response(exc: WriteRejected) -> web.Response:
    """409/422 shapes of the registry's refusals."""
    if isinstance(exc, ContentConflict):
        detail: dict[str, Any] = {"error": exc.error, "model_id": exc.model_id}
        if exc.profiles:
            detail["conflicting_profiles"] = exc.profiles
        if exc.fields:
            detail["conflicting_fields"] = exc.fields
        detail["message"] = str(exc)
        return json_response({"detail": detail}, exc.status)
    if isinstance(exc, CaseConflict):
        return error_response(
            exc.status, exc.error, str(exc), model_id=exc.model_id, existing_model_id=exc.existing
        )
    if isinstance(exc, ValidationFailed):
        details = [{"message": m} for m in exc.messages] or [{"message": str(exc)}]
        return json_response({"detail": {"error": exc.error, "details": details}}, exc.status)
    return error_response(exc.status, exc.error, str(exc))


class ConfigApi:
    def __init__(self, service: ConfigService, settings: Settings) -> None:
        self.service = service
        self.limit = settings.max_body_bytes
        self.auth = Authenticator(settings.auth_token, settings.admin_token, settings.export_token)
        self._metric_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.idempotency = IdempotencyCache(
            capacity=settings.idempotency_capacity,
            ttl=settings.idempotency_ttl,
            wait_timeout=settings.idempotency_wait,
        )
        self._proxy_session: aiohttp.ClientSession | None = None

    async def close(self, app: web.Application | None = None) -> None:
        session, self._proxy_session = self._proxy_session, None
        if session is not None:
            await session.close()

    # -- middlewares ---------------------------------------------------------------------
    @web.middleware
    async def metrics_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/metrics":
            return await handler(request)
        start = time.perf_counter()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        finally:
            elapsed = time.perf_counter() - start
            key = (request.method, request.path, status)
            children = self._metric_children.get(key)
            if children is None:
                label = path_label(request.path)
                m = self.service.metrics
                children = (
                    m.http_requests.labels(method=request.method, path=label, status=str(status)),
                    m.http_duration.labels(method=request.method, path=label),
                )
                if len(self._metric_children) < 4096:  # raw paths are unbounded; labels are not
                    self._metric_children[key] = children
            children[0].inc()
            children[1].observe(elapsed)

    @web.middleware
    async def error_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status == 404:
                return json_response({"detail": "Not Found"}, 404)
            if exc.status == 405:
                allow = exc.headers.get("Allow")
                return json_response(
                    {"detail": "Method Not Allowed"}, 405, {"Allow": allow} if allow else None
                )
            return json_response({"detail": exc.reason}, exc.status)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, request.path)
            return error_response(
                500, "internal_error", "Internal server error; see the config service logs."
            )

    # -- helpers -------------------------------------------------------------------------
    async def _read_body(self, request: web.Request) -> bytes | web.Response:
        """The body, or a 413 once more than the limit arrived (never buffers more)."""
        limit = self.limit
        length = request.content_length
        if length is not None and length > limit:
            return _too_large(limit)
        buf = bytearray()
        while True:
            # never ask for more than one byte past the limit
            chunk = await request.content.read(min(64 * 1024, limit + 1 - len(buf)))
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) > limit:
                return _too_large(limit)

    def _registry_missing(self) -> web.Response | None:
        if self.service.registry is None:
            return error_response(503, RegistryUnavailable.error, RegistryUnavailable.message)
        return None

    # -- probes --------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: 200 unless only a restart can repair the process (a fatal store fault).
        SIE's is always 200, which let a wedged store live on forever."""
        if problem := self.service.liveness():
            return json_response({"status": "error", "detail": problem}, 503)
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready, checks = self.service.readiness()
        if ready:
            return json_response({"status": "ready", "checks": checks})
        if checks["registry"] != "ok":
            reason = "Model registry not loaded"
        elif checks["store"] not in ("ok", "disabled"):
            reason = f"Config store unavailable ({checks['store']})"
        else:
            reason = "NATS not connected"
        return json_response({"detail": reason, "checks": checks}, 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(self.service.metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    # -- reads ---------------------------------------------------------------------------
    async def list_models(self, request: web.Request) -> web.Response:
        if fail := self.auth.check_read(request.headers.get("Authorization")):
            return _auth_response(fail)
        if missing := self._registry_missing():
            return missing
        registry = self.service.registry
        assert registry is not None
        models = [
            {"model_id": e.model_id, "profiles": sorted(e.profiles), "source": e.source} for e in registry
        ]
        return json_response({"models": models})

    async def get_model(self, request: web.Request) -> web.Response:
        if fail := self.auth.check_read(request.headers.get("Authorization")):
            return _auth_response(fail)
        model_id = request.match_info["model_id"]
        try:
            validate_model_id(model_id)
        except InvalidModelId as exc:
            return error_response(400, "invalid_model_id", str(exc))
        if missing := self._registry_missing():
            return missing
        registry = self.service.registry
        assert registry is not None
        entry = registry.lookup(model_id)
        if entry is None:
            return error_response(
                404,
                "model_not_found",
                f"Model '{model_id}' does not exist in the catalog.",
                model_id=model_id,
            )
        return web.Response(body=entry.yaml_text.encode("utf-8"), content_type=YAML_CONTENT_TYPE)

    async def resolve(self, request: web.Request) -> web.Response:
        if fail := self.auth.check_read(request.headers.get("Authorization")):
            return _auth_response(fail)
        if missing := self._registry_missing():
            return missing
        raw = await self._read_body(request)
        if isinstance(raw, web.Response):
            return raw
        try:
            data = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            return error_response(400, "parse_error", f"Invalid JSON: {exc}")
        if not isinstance(data, dict):
            return error_response(400, "parse_error", "Expected a JSON object at top level")
        model = data.get("model")
        if not model:
            return error_response(400, "missing_field", "'model' field is required")
        if not isinstance(model, str):
            return error_response(400, "invalid_model_spec", "'model' must be a string")
        try:
            spec = parse_model_spec(model)
        except InvalidModelSpec as exc:
            return error_response(400, "invalid_model_spec", str(exc))
        override = spec.bundle if spec.bundle is not None else data.get("bundle")
        if override is not None and not isinstance(override, str):
            return error_response(400, "invalid_model_spec", "'bundle' must be a string or null")
        registry = self.service.registry
        assert registry is not None
        entry = registry.lookup(spec.model)
        if entry is None or not entry.bundles:
            return error_response(404, "model_not_found", f"Model not found: {spec.model}", model=spec.model)
        compatible = list(entry.bundles)
        if override is not None and override not in compatible:
            return error_response(
                409,
                "bundle_conflict",
                f"Bundle '{override}' does not support model '{spec.model}'. "
                f"Compatible bundles: {compatible!r}",
                model=spec.model,
                bundle=override,
                compatible_bundles=compatible,
            )
        return json_response(
            {
                "model": spec.model,
                "resolved_bundle": override if override is not None else compatible[0],
                "compatible_bundles": compatible,
                "profiles": sorted(entry.profiles),
            }
        )

    async def list_bundles(self, request: web.Request) -> web.Response:
        if fail := self.auth.check_read(request.headers.get("Authorization")):
            return _auth_response(fail)
        if missing := self._registry_missing():
            return missing
        bundles = [
            {
                "bundle_id": b.name,
                "priority": b.priority,
                "adapter_count": len(b.adapters),
                "source": "filesystem",
            }
            for b in self.service.bundles.bundles
        ]
        return json_response({"bundles": bundles})

    async def get_bundle(self, request: web.Request) -> web.Response:
        if fail := self.auth.check_read(request.headers.get("Authorization")):
            return _auth_response(fail)
        if missing := self._registry_missing():
            return missing
        bundle_id = request.match_info["bundle_id"]
        b = self.service.bundles.get(bundle_id)
        if b is None:
            return error_response(404, "bundle_not_found", None, bundle_id=bundle_id)
        doc = {"adapters": list(b.adapters), "name": b.name, "priority": b.priority, "source": "filesystem"}
        return web.Response(
            body=yamlio.dump(doc, sort_keys=True).encode("utf-8"), content_type=YAML_CONTENT_TYPE
        )

    async def epoch(self, request: web.Request) -> web.Response:
        if fail := self.auth.check_read(request.headers.get("Authorization")):
            return _auth_response(fail)
        svc = self.service
        bundles_hash = svc.bundles.hash if svc.registry is not None else ""
        return json_response({"epoch": svc.epoch, "bundles_hash": bundles_hash})

    async def export(self, request: web.Request) -> web.Response:
        if fail := self.auth.check_export(request.headers.get("Authorization")):
            return _auth_response(fail)
        if missing := self._registry_missing():
            return missing
        snap = self.service.export_snapshot()
        body = {
            "snapshot_version": 1,
            "epoch": snap.epoch,
            "generated_at": dt.datetime.now(dt.UTC).isoformat(),
            "models": [
                {
                    "model_id": e.model_id,
                    "model_config": e.doc,
                    "raw_yaml": e.yaml_text,
                    "affected_bundles": list(e.bundles),
                }
                for e in snap.entries
            ],
        }
        return json_response(body)

    # -- leader forwarding ------------------------------------------------------------
    async def _forward(self, request: web.Request, raw: bytes) -> web.Response:
        """This replica may not write: hand the request to the leader once, or 503."""
        lead = self.service.leadership
        assert lead is not None
        identity = lead.leader_identity()
        if request.headers.get(FORWARDED_HEADER):
            return not_leader_response(identity, "the request was already forwarded once")
        url = lead.leader_url()
        if not url or not url.startswith(("http://", "https://")):
            return not_leader_response(identity, "no leader URL known")
        headers = {h: request.headers[h] for h in FORWARD_HEADERS if h in request.headers}
        headers[FORWARDED_HEADER] = "1"
        if self._proxy_session is None:
            self._proxy_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROXY_TIMEOUT))
        target = url.rstrip("/") + request.rel_url.path_qs
        try:
            async with self._proxy_session.request(
                request.method, target, data=raw, headers=headers, allow_redirects=False
            ) as resp:
                body = await resp.read()
                out = web.Response(body=body, status=resp.status, headers={FORWARDED_HEADER: "1"})
                for h in ("Content-Type", "Retry-After"):
                    if h in resp.headers:
                        out.headers[h] = resp.headers[h]
                return out
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "forwarding %s %s to the leader at %s failed: %s", request.method, request.path, url, exc
            )
            return not_leader_response(identity, f"the leader at {url} could not be reached")

    # -- the write -----------------------------------------------------------------------
    async def add_model(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        header = request.headers.get("Authorization")
        if fail := self.auth.check_write(header):
            return _auth_response(fail)
        if missing := self._registry_missing():
            return missing
        raw = await self._read_body(request)
        if isinstance(raw, web.Response):
            return raw
        lead = self.service.leadership
        if lead is not None and not lead.may_write():
            resp = await self._forward(request, raw)
            forwarded = resp.headers.get(FORWARDED_HEADER) == "1"
            self.service.metrics.not_leader.labels(outcome="forwarded" if forwarded else "refused").inc()
            return resp
        key = request.headers.get("Idempotency-Key") or ""
        if not key:
            resp, model_id = await self._execute_add(raw)
        else:
            try:
                outcome = await self.idempotency.begin(key, hashlib.sha256(raw).hexdigest())
            except IdempotencyMismatch:
                return error_response(
                    422, "idempotency_mismatch", "Idempotency-Key reused with different payload."
                )
            except IdempotencyInFlight:
                return error_response(
                    409,
                    "idempotency_key_in_flight",
                    "A request with this Idempotency-Key is still being processed; retry later.",
                    idempotency_key=key,
                )
            if isinstance(outcome, CachedResponse):
                return web.Response(body=outcome.body, status=outcome.status, content_type="application/json")
            try:
                resp, model_id = await self._execute_add(raw)
                if resp.status in (200, 201) and isinstance(resp.body, bytes):
                    outcome.complete(resp.status, resp.body)
            finally:
                outcome.release()
        if resp.status in (200, 201):
            self._audit(header, resp.status, model_id, started, len(raw))
        return resp

    async def _execute_add(self, raw: bytes) -> tuple[web.Response, str | None]:
        """Parse and apply one body: (response, model id when the write succeeded)."""
        try:
            if len(raw) > OFFLOAD_PARSE_BYTES:
                doc = await asyncio.to_thread(yamlio.load, raw)
            else:
                doc = yamlio.load(raw)
        except yamlio.YamlError as exc:
            return error_response(400, "parse_error", f"Invalid YAML: {exc}"), None
        if not isinstance(doc, dict):
            return error_response(400, "parse_error", "Expected YAML mapping at top level"), None
        for id_key in ("sie_id", "name"):
            value = doc.get(id_key)
            if value is not None and value != "":
                try:
                    validate_model_id(value)
                except InvalidModelId as exc:
                    return error_response(400, "invalid_model_id", str(exc)), None
        try:
            result = await self.service.apply(doc)
        except WriteRejected as exc:
            return rejection_response(exc), None
        except (NatsUnavailable, RegistryUnavailable) as exc:
            return error_response(exc.status, exc.error, exc.message), None
        except NotLeader as exc:
            return not_leader_response(exc.leader, "leadership was lost before the write"), None
        except StoreConflict as exc:
            msg = f"Config store write refused; nothing was changed: {exc}"
            resp = error_response(503, "store_conflict", msg)
            resp.headers["Retry-After"] = "1"
            return resp, None
        except StoreUnconfirmed as exc:
            msg = f"Config store write not confirmed; it may have been stored: {exc}"
            return error_response(503, "store_unavailable", msg), None
        except StoreError as exc:
            msg = f"Config store write failed; nothing was changed: {exc}"
            return error_response(503, "store_unavailable", msg), None
        status = 201 if result.created else 200
        resp = json_response(
            {
                "model_id": result.model_id,
                "created_profiles": result.created,
                "existing_profiles_skipped": result.skipped,
                "warnings": result.warnings,
                "routable_bundles_by_profile": result.bundles_by_profile,
                "router_id": self.service.router_id,
            },
            status,
        )
        return resp, result.model_id

    def _audit(
        self, header: str | None, status: int, model_id: str | None, started: float, size: int
    ) -> None:
        if not audit_log.isEnabledFor(logging.INFO):
            return
        event: dict[str, Any] = {
            "event": "config.add_model",
            "method": "POST",
            "endpoint": "/v1/configs/models",
            "status": status,
        }
        token = token_of(header)
        if token:
            event["token_id"] = hashlib.sha256(token).hexdigest()[:12]
        if model_id is not None:
            event["model"] = model_id
        event["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
        event["body_bytes"] = size
        audit_log.info(orjson.dumps(event).decode())


def build_app(service: ConfigService, settings: Settings) -> web.Application:
    """The Config API as an aiohttp application (the service is started by the caller)."""
    api = ConfigApi(service, settings)
    app = web.Application(middlewares=[api.metrics_middleware, api.error_middleware])
    app[SERVICE_KEY] = service
    app.on_cleanup.append(api.close)
    r = app.router
    r.add_get("/healthz", api.healthz)
    r.add_get("/readyz", api.readyz)
    r.add_get("/metrics", api.metrics)
    r.add_get("/v1/configs/models", api.list_models)
    r.add_post("/v1/configs/models", api.add_model)
    r.add_get("/v1/configs/models/{model_id:.*}", api.get_model)
    r.add_post("/v1/configs/resolve", api.resolve)
    r.add_get("/v1/configs/bundles", api.list_bundles)
    r.add_get("/v1/configs/bundles/{bundle_id}", api.get_bundle)
    r.add_get("/v1/configs/epoch", api.epoch)
    r.add_get("/v1/configs/export", api.export)
    return app
