"""The gateway's HTTP API (aiohttp): the read side of contract §1 plus the bulk readiness view.

Handlers only read the mirror's current Registry (swapped atomically on re-bootstrap) and
the worker table; nothing here blocks or mutates state. Every error is JSON
``{"message": ...}``; no request can produce a traceback in a response. Every request is
counted by route template and status (``sie_gateway_http_requests_total``); the readiness
watch stream (``?watch=true``, see ``watch`` and ``protocol.readiness_stream``) is one
long request, counted when it ends and shown by the open-streams gauge while open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from sie_operator.catalog.registry import ModelEntry
from sie_operator.protocol import readiness_stream as rs

from ..protocol.mirror import ConfigMirror
from . import readiness
from .auth import AuthPolicy
from .health import WorkerTable
from .metrics import GatewayMetrics
from .watch import ReadinessFeed

log = logging.getLogger(__name__)

SOURCE = readiness.SOURCE
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class GatewayContext:
    """What the handlers read; the Gateway service owns and mutates it."""

    mirror: ConfigMirror
    table: WorkerTable
    metrics: GatewayMetrics
    auth: AuthPolicy
    gateway_id: str
    nats_connected: Callable[[], bool] = lambda: False
    feed: ReadinessFeed | None = None
    # readiness gates besides the bootstrap: the first worker dial round, and a drain
    workers_dialled: Callable[[], bool] = lambda: True
    draining: bool = False


CTX = web.AppKey("ctx", GatewayContext)


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj, option=orjson.OPT_SORT_KEYS),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _yaml(obj: Any) -> web.Response:
    text = yaml.safe_dump(obj, sort_keys=True, default_flow_style=False, allow_unicode=True)
    return web.Response(text=text, content_type="application/x-yaml")


def _message(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"message": message, **extra}, status)


# -- middlewares ---------------------------------------------------------------------------
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


@web.middleware
async def _count(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: counts what the client got, including auth refusals and errors."""
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        request.app[CTX].metrics.http_requests.labels(method=method, path=path, status=str(status)).inc()


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = exc.headers.get("Allow")
        return _json({"message": exc.reason}, exc.status, {"Allow": allow} if allow else None)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _message(500, "Internal error")


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    refused = request.app[CTX].auth.check(request.method, request.path, request.headers.get("Authorization"))
    if refused is not None:
        return _message(*refused)
    return await handler(request)


# -- config read side ----------------------------------------------------------------------
def _snapshot(ctx: GatewayContext, entry: ModelEntry) -> dict[str, Any]:
    """SIE's snapshot plus the model-granular fields (see ``readiness``)."""
    mirror = ctx.mirror
    return readiness.snapshot_for(
        entry.model_id,
        entry.bundles,
        mirror.epoch,
        mirror.registry.bundle_hash,
        ctx.table.group,
        mirror.model_seq(entry.model_id),
        mirror.hash_seq,
    )


async def list_models(request: web.Request) -> web.Response:
    reg = request.app[CTX].mirror.registry
    return _json(
        {"models": [{"model_id": e.model_id, "profiles": sorted(e.profiles), "source": SOURCE} for e in reg]}
    )


async def get_model(request: web.Request) -> web.Response:
    """Model view, or the readiness snapshot when the path ends in ``/status`` (§1.4 rule)."""
    ctx = request.app[CTX]
    reg = ctx.mirror.registry
    model_id = request.match_info["model_id"]
    if model_id.endswith("/status"):
        entry = reg.lookup(model_id[: -len("/status")])
        if entry is not None:
            return _json(_snapshot(ctx, entry))
    entry = reg.lookup(model_id)
    if entry is None:
        return _message(404, f"Model '{model_id}' not found")
    return _yaml({"bundles": list(entry.bundles), "sie_id": entry.model_id, "source": SOURCE})


async def list_bundles(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return _json(
        {
            "bundles": [
                {
                    "bundle_id": b.name,
                    "priority": b.priority,
                    "adapter_count": len(b.adapters),
                    "source": SOURCE,
                    "connected_workers": len(ctx.table.group(b.name)),
                }
                for b in ctx.mirror.registry.bundles.bundles
            ]
        }
    )


async def get_bundle(request: web.Request) -> web.Response:
    bundle_id = request.match_info["bundle_id"]
    b = request.app[CTX].mirror.registry.bundles.get(bundle_id)
    if b is None:
        return _message(404, f"Bundle '{bundle_id}' not found")
    return _yaml({"adapters": list(b.adapters), "name": b.name, "priority": b.priority, "source": SOURCE})


async def resolve(request: web.Request) -> web.Response:
    ctx_type = request.content_type
    if ctx_type != "application/json" and not ctx_type.endswith("+json"):
        return _message(415, "Expected request with `Content-Type: application/json`")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return _message(400, f"Failed to parse the request body as JSON: {exc}")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return _message(422, "Request body must be an object with a string field `model`")
    bundle = body.get("bundle")
    if bundle is not None and not isinstance(bundle, str):
        return _message(422, "Field `bundle` must be a string or null")
    name: str = body["model"]
    if ":/" in name:
        prefix, name = name.split(":/", 1)
        if prefix:
            bundle = prefix
    entry = request.app[CTX].mirror.registry.lookup(name)
    if entry is None or not entry.bundles:
        return _message(404, f"Model not found: {name}", model=name)
    compatible = list(entry.bundles)
    if bundle is not None and bundle not in compatible:
        return _message(
            409,
            f"Bundle '{bundle}' does not support model '{name}'. "
            f"Compatible bundles: {json.dumps(compatible)}",
            model=name,
            bundle=bundle,
            compatible_bundles=compatible,
        )
    return _json(
        {
            "model": name,
            "resolved_bundle": bundle if bundle is not None else compatible[0],
            "compatible_bundles": compatible,
            "profiles": sorted(entry.profiles),
        }
    )


_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no", ""})


async def bulk_status(request: web.Request) -> web.StreamResponse:
    """Addition: every model's readiness (or ``?model=`` ones) in one response; with
    ``?watch=true`` a stream of it (see :func:`watch_status`)."""
    ctx = request.app[CTX]
    watch = request.query.get("watch")
    if watch is not None:
        flag = watch.strip().lower()
        if flag in _TRUE:
            return await watch_status(request)
        if flag not in _FALSE:
            return _message(400, f"watch={watch!r}: expected true or false")
    mirror = ctx.mirror
    reg = mirror.registry
    wanted = request.query.getall("model", [])
    if wanted:
        found = {e.model_id: e for e in (reg.lookup(m) for m in wanted) if e is not None}
        entries: Any = (found[k] for k in sorted(found))
    else:
        entries = iter(reg)
    body = readiness.bulk_snapshot_json(
        ctx.gateway_id,
        mirror.epoch,
        ((e.model_id, e.bundles) for e in entries),
        reg.bundle_hash,
        ctx.table.group,
        mirror.model_seq,
        mirror.hash_seq,
    )
    return web.Response(body=body, content_type="application/json")


async def watch_status(request: web.Request) -> web.StreamResponse:
    """``GET /v1/configs/status?watch=true[&resume=<token>][&model=...]``: NDJSON records.

    A snapshot (or, with a resume token still in the change history, only the models
    changed since), then one record per readiness change and a heartbeat whenever nothing
    was written for ``heartbeat`` seconds. Before the first bootstrap only heartbeats
    without a token are sent: a snapshot of an empty registry would be a lie.
    """
    ctx = request.app[CTX]
    feed = ctx.feed
    if feed is None:
        return _message(404, "This gateway does not offer the readiness watch stream")
    token = None
    resume = request.query.get("resume")
    if resume is not None:
        token = rs.parse_token(resume)
        if token is None:
            return _message(400, f"resume={resume[:80]!r} is not a resume token of this protocol")
    models = request.query.getall("model", [])
    resp = web.StreamResponse(headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    resp.content_type = rs.CONTENT_TYPE
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp  # headers only: a HEAD must not hold a stream open
    metrics = ctx.metrics
    transport = request.transport
    sub = None
    metrics.watch_streams.inc()
    try:
        while not ctx.mirror.bootstrapped and not feed.closed:
            await resp.write(rs.encode_heartbeat(None, ctx.mirror.epoch))
            metrics.watch_heartbeats.inc()
            for _ in range(max(1, int(feed.heartbeat / 0.1))):
                if ctx.mirror.bootstrapped or feed.closed:
                    break
                await asyncio.sleep(0.1)
        sub = feed.subscribe(models, on_overflow=transport.abort if transport is not None else None)
        if not sub.closed:  # closed: the gateway is stopping; just end the stream
            opening = feed.open(sub, token)
            metrics.watch_opened.labels(start=opening.kind, reason=opening.reason or "").inc()
            for chunk in opening.chunks:
                await resp.write(chunk)
                metrics.watch_bytes.inc(len(chunk))
            metrics.watch_records.inc(opening.records)
        while True:
            data = await sub.next(feed.heartbeat)
            if data is None:
                data = feed.heartbeat_line()
                metrics.watch_heartbeats.inc()
            elif not data:
                break  # closed: the gateway is stopping, or the client fell too far behind
            else:
                metrics.watch_records.inc(data.count(b"\n"))
            await resp.write(data)
            metrics.watch_bytes.inc(len(data))
    except (ConnectionError, RuntimeError) as exc:  # the client went away
        log.debug("watch stream ended: %s", exc)
        return resp
    finally:
        if sub is not None:
            feed.unsubscribe(sub)
            if sub.overflowed:
                metrics.watch_dropped.inc()
        metrics.watch_streams.dec()
    with contextlib.suppress(ConnectionError, RuntimeError):
        await resp.write_eof()
    return resp


async def read_only(request: web.Request) -> web.Response:
    return _json(
        {"message": "Method Not Allowed: the gateway is read-only; write models to the config service"},
        405,
        {"Allow": "GET, HEAD"},
    )


# -- operational ---------------------------------------------------------------------------
def _healthy_workers(ctx: GatewayContext) -> int:
    return sum(1 for w in ctx.table if w.healthy)


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """The readiness probe: 503 until the first bootstrap and the first worker dial round
    are done (SIE answers 200 with an empty registry, W12), and again from the moment a
    SIGTERM starts the drain (the replica keeps serving until the drain delay is over)."""
    ctx = request.app[CTX]
    body = {
        "healthy_workers": _healthy_workers(ctx),
        "config_epoch": ctx.mirror.epoch,
        "gateway_id": ctx.gateway_id,
        "nats_connected": ctx.nats_connected(),
    }
    reason = None
    if ctx.draining:
        reason = "draining: shutting down"
    elif not ctx.mirror.bootstrapped:
        reason = "config not bootstrapped yet"
    elif not ctx.workers_dialled():
        reason = "workers not dialled yet"
    if reason is not None:
        return _json({"status": "not_ready", "reason": reason, **body}, 503)
    return _json({"status": "ready", **body})


async def health(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    workers = [
        {
            "name": w.display_name,
            "url": w.url,
            "healthy": w.healthy,
            "state": w.health.value,
            "connected": w.connected,
            "bundle": w.bundle,
            "bundle_config_hash": w.config_hash,
            "gpu_count": w.gpu_count,
            "machine_profile": w.machine_profile,
            "pool_name": w.pool_name,
            "loaded_models": list(w.loaded_models),
        }
        for w in ctx.table
    ]
    healthy = sum(1 for w in workers if w["healthy"])
    return _json(
        {
            "status": "healthy" if healthy else "degraded",
            "type": "gateway",
            "gateway_id": ctx.gateway_id,
            "config_epoch": ctx.mirror.epoch,
            "config_bootstrapped": ctx.mirror.bootstrapped,
            "nats_connected": ctx.nats_connected(),
            "cluster": {"worker_count": healthy, "models": len(ctx.mirror.registry)},
            "workers": workers,
        }
    )


async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = ctx.metrics.render(ctx.table.counts(), len(ctx.mirror.registry), ctx.nats_connected())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(ctx: GatewayContext) -> web.Application:
    app = web.Application(middlewares=[_count, _errors, _auth])
    app[CTX] = ctx
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/health", health)
    r.add_get("/metrics", metrics)
    r.add_get("/v1/configs/models", list_models)
    r.add_get("/v1/configs/models/{model_id:.+}", get_model)
    r.add_get("/v1/configs/bundles", list_bundles)
    r.add_get("/v1/configs/bundles/{bundle_id}", get_bundle)
    r.add_post("/v1/configs/resolve", resolve)
    r.add_get("/v1/configs/status", bulk_status)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        r.add_route(method, "/v1/configs/models", read_only)
        r.add_route(method, "/v1/configs/models/{rest:.+}", read_only)
    return app
