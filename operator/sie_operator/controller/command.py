"""`sie-operator run`: kopf, the embedded config service and its HTTP API in one asyncio loop.

The HTTP API, the kopf handlers and the status writer share one ConfigService (one store,
one registry, one epoch), so a model POSTed with curl and one applied as a ModelConfig are
the same thing. Everything that must survive kopf's shutdown sweep (it cancels tasks
created after it starts) is created before kopf starts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any

import kopf

from ..cli import UsageError
from ..configsvc import command as configsvc_command
from ..kube.auth import KubeAuth, KubeAuthError
from ..kube.client import KubeClient
from .driver import Driver
from .fleet import FleetReader, GatewayDiscovery
from .handlers import build_registry, configure
from .metrics import ReconcileMetrics

log = logging.getLogger("sie_operator.operator")


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    configsvc_command.add_service_arguments(parser)
    k = parser.add_argument_group("kubernetes")
    k.add_argument(
        "--namespace",
        action="append",
        default=None,
        help="namespace to watch (repeatable; env SIE_WATCH_NAMESPACES, comma list; default: POD_NAMESPACE)",
    )
    k.add_argument("--all-namespaces", action="store_true", help="watch ModelConfigs in every namespace")
    k.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then $KUBECONFIG)"
    )
    k.add_argument("--health-port", type=int, default=8081, help="liveness endpoint port (/healthz)")
    k.add_argument(
        "--resync-seconds", type=float, default=15.0, help="status re-check interval when all is Ready"
    )
    k.add_argument(
        "--relist-seconds",
        type=float,
        default=None,
        help="complete re-listing of the watched namespaces, a safety net for missed deletions "
        "(env SIE_RELIST_SECONDS, default 300)",
    )
    g = parser.add_argument_group("gateway readiness")
    g.add_argument(
        "--gateway-url",
        action="append",
        default=None,
        help="gateway replica URL (repeatable; env SIE_GATEWAY_URLS)",
    )
    g.add_argument("--gateway-service", default=None, help="find replicas via this Service's EndpointSlices")
    g.add_argument(
        "--gateway-namespace", default=None, help="namespace of --gateway-service (default: POD_NAMESPACE)"
    )
    g.add_argument("--gateway-port", type=int, default=8080, help="gateway HTTP port when discovered")
    g.add_argument(
        "--gateway-token", default=None, help="inference token for the gateway (env SIE_GATEWAY_TOKEN)"
    )
    g.add_argument(
        "--gateway-grace-seconds",
        type=float,
        default=None,
        help="a replica counts as unreachable only after failing this long; until then its last "
        "good view stands (env SIE_GATEWAY_GRACE_SECONDS, default 15: one gateway heartbeat timeout)",
    )


def _resolve(args: argparse.Namespace) -> dict[str, Any]:
    env = os.environ
    namespaces: Sequence[str] = args.namespace or _csv(env.get("SIE_WATCH_NAMESPACES"))
    if not namespaces and not args.all_namespaces:
        own = env.get("POD_NAMESPACE")
        if not own:
            raise UsageError("no namespace to watch: pass --namespace NS (or --all-namespaces)")
        namespaces = [own]
    if namespaces and args.all_namespaces:
        raise UsageError("--namespace and --all-namespaces are mutually exclusive")
    urls = args.gateway_url or _csv(env.get("SIE_GATEWAY_URLS"))
    service = args.gateway_service or env.get("SIE_GATEWAY_SERVICE")
    if not urls and not service:
        log.warning("no gateway configured: ModelConfigs will report Ready=False (NoGateways)")
    for port in (args.health_port, args.gateway_port):
        if not 0 < port < 65536:
            raise UsageError(f"invalid port {port}")
    grace = _seconds(args.gateway_grace_seconds, env.get("SIE_GATEWAY_GRACE_SECONDS"), 15.0, "gateway grace")
    relist = _seconds(args.relist_seconds, env.get("SIE_RELIST_SECONDS"), 300.0, "relist interval")
    if relist <= 0:
        raise UsageError("the relist interval must be positive")
    return {
        "namespaces": list(namespaces),
        "all_namespaces": bool(args.all_namespaces),
        "gateway_urls": urls,
        "gateway_service": service,
        "gateway_namespace": args.gateway_namespace
        or env.get("POD_NAMESPACE")
        or (namespaces[0] if namespaces else "default"),
        "gateway_token": args.gateway_token or env.get("SIE_GATEWAY_TOKEN"),
        "gateway_grace": grace,
        "relist_seconds": relist,
    }


def _seconds(flag: float | None, env_value: str | None, default: float, what: str) -> float:
    if flag is not None:
        value = flag
    elif env_value:
        try:
            value = float(env_value)
        except ValueError:
            raise UsageError(f"invalid {what}: {env_value!r} is not a number of seconds") from None
    else:
        value = default
    if not value >= 0 or value == float("inf"):
        raise UsageError(f"invalid {what}: {value}")
    return value


def run(args: argparse.Namespace) -> int:
    opts = _resolve(args)
    settings = configsvc_command.settings_from_args(args)
    try:
        asyncio.run(_main(args, opts, settings))
    except KubeAuthError as exc:
        raise UsageError(str(exc)) from None
    return 0


async def _main(args: argparse.Namespace, opts: dict[str, Any], settings: Any) -> None:
    auth = await KubeAuth.load(args.kubeconfig)
    log.info("Kubernetes credentials: %s", auth.source)
    service, runner = await configsvc_command.start_service(settings)
    kube = KubeClient(auth)
    discovery = GatewayDiscovery(
        opts["gateway_urls"],
        kube=kube,
        service=opts["gateway_service"],
        namespace=opts["gateway_namespace"],
        port=args.gateway_port,
    )
    fleet = FleetReader(discovery, token=opts["gateway_token"], grace=opts["gateway_grace"])
    driver = Driver(
        service,
        fleet,
        kube,
        namespaces=None if opts["all_namespaces"] else opts["namespaces"],
        metrics=ReconcileMetrics(service.metrics.registry),
        slow_interval=args.resync_seconds,
        relist_interval=opts["relist_seconds"],
        publishes=settings.nats_url is not None,
    )
    stop = asyncio.Event()
    writer = asyncio.create_task(driver.run(stop), name="reconcile-driver")
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one INFO line per event is noise
    kopf_settings = kopf.OperatorSettings()
    configure(kopf_settings)
    kopf_settings.scanning.disabled = True
    log.info(
        "operator watching %s; gateways %s",
        "all namespaces" if opts["all_namespaces"] else ", ".join(opts["namespaces"]),
        opts["gateway_urls"] or f"service {opts['gateway_service']}",
    )
    try:
        await kopf.operator(
            registry=build_registry(driver, auth),
            settings=kopf_settings,
            standalone=True,
            clusterwide=opts["all_namespaces"],
            namespaces=opts["namespaces"],
            liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz",
        )
    finally:
        stop.set()
        try:
            await asyncio.wait_for(writer, timeout=5)
        except (TimeoutError, asyncio.CancelledError):
            writer.cancel()
        await fleet.close()
        await kube.close()
        auth.close()
        await configsvc_command.stop_service(service, runner)
