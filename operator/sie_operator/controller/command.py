"""`sie-operator run`: the embedded config service, its HTTP API and the controller.

The HTTP API, the kopf handlers and the status writer share one ConfigService (one store,
one registry, one epoch), so a model POSTed with curl and one applied as a ModelConfig are
the same thing. The controller (kopf watch, reconcile driver, fleet reader) is a
``Session``: held for the whole life of the process, or, with ``--leader-election``, only
while this replica holds the Lease. The Config API serves every replica's reads either way.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Any

from ..cli import UsageError
from ..configsvc import command as configsvc_command
from ..kube.auth import KubeAuth, KubeAuthError
from ..kube.client import KubeClient
from ..leader import ElectionConfigError, Elector, Timing, default_identity
from ..settingsparse import ConfigError, check_http_url
from .health import HealthServer
from .metrics import ReconcileMetrics
from .session import Session

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
    le = parser.add_argument_group("high availability")
    le.add_argument(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run several replicas: only the holder of a Lease watches, writes and publishes; the "
        "others serve Config API reads and forward writes (env SIE_LEADER_ELECTION, default off)",
    )
    le.add_argument("--leader-election-id", default=None, help="Lease name (default sie-operator)")
    le.add_argument(
        "--leader-election-namespace",
        default=None,
        help="Lease namespace (default: POD_NAMESPACE, else the first watched namespace)",
    )
    le.add_argument("--leader-election-lease-seconds", type=float, default=15.0, help="lease duration (15)")
    le.add_argument(
        "--leader-election-renew-deadline-seconds",
        type=float,
        default=10.0,
        help="a leader that could not renew for this long stops writing (10)",
    )
    le.add_argument(
        "--leader-election-retry-seconds", type=float, default=2.0, help="renew/acquire attempt interval (2)"
    )
    le.add_argument(
        "--advertise-url",
        default=None,
        help="this replica's Config API URL, published on the Lease so standbys forward writes to the "
        "leader (env SIE_ADVERTISE_URL; default http://POD_IP:PORT, else http://127.0.0.1:PORT)",
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
        **_leader_election(args, env, namespaces),
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


def _leader_election(
    args: argparse.Namespace, env: Mapping[str, str], namespaces: Sequence[str]
) -> dict[str, Any]:
    enabled = args.leader_election
    if enabled is None:
        raw = env.get("SIE_LEADER_ELECTION", "").strip().lower()
        if raw in ("", "0", "false", "no", "off"):
            enabled = False
        elif raw in ("1", "true", "yes", "on"):
            enabled = True
        else:
            raise UsageError(f"SIE_LEADER_ELECTION={raw!r} is not a boolean (use true or false)")
    lease, renew, retry = (
        args.leader_election_lease_seconds,
        args.leader_election_renew_deadline_seconds,
        args.leader_election_retry_seconds,
    )
    try:
        timing = Timing(lease_duration=lease, renew_deadline=renew, retry_period=retry)
    except ElectionConfigError as exc:
        raise UsageError(str(exc)) from None
    namespace = (
        args.leader_election_namespace or env.get("POD_NAMESPACE") or (namespaces[0] if namespaces else None)
    )
    if enabled and not namespace:
        raise UsageError("leader election needs a namespace for its Lease: pass --leader-election-namespace")
    return {
        "leader_election": bool(enabled),
        "lease_name": args.leader_election_id or "sie-operator",
        "lease_namespace": namespace,
        "lease_identity": default_identity(),
        "lease_timing": timing,
        "advertise_url": _advertise_flag(args.advertise_url or env.get("SIE_ADVERTISE_URL") or None),
    }


def _advertise_flag(value: str | None) -> str | None:
    """Standbys send writes there: a URL they cannot use is refused at startup, in one line."""
    if value is None:
        return None
    try:
        return check_http_url(value.strip(), "--advertise-url")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def advertise_url(explicit: str | None, env: Mapping[str, str], port: int) -> str:
    """Where standbys send writes: the explicit URL, else the pod IP, else loopback (one machine)."""
    if explicit:
        return explicit.rstrip("/")
    host = env.get("POD_IP") or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


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
    if opts["leader_election"] and settings.store_stream is None:
        raise UsageError(
            "--leader-election needs a store every replica shares: --store-dir jetstream://NAME "
            "(a local directory belongs to one replica, a standby would serve none of its models)"
        )
    try:
        return asyncio.run(_main(args, opts, settings))
    except KubeAuthError as exc:
        raise UsageError(str(exc)) from None


async def _main(args: argparse.Namespace, opts: dict[str, Any], settings: Any) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    auth = await KubeAuth.load(args.kubeconfig)
    log.info("Kubernetes credentials: %s", auth.source)
    service, runner = await configsvc_command.start_service(settings)
    kube = KubeClient(auth)
    metrics = ReconcileMetrics(service.metrics.registry)
    holder = _Holder()
    health = HealthServer(lambda: service.liveness() or holder.liveness())
    try:
        await health.start("0.0.0.0", args.health_port)
    except OSError as exc:
        await kube.close()
        auth.close()
        await configsvc_command.stop_service(service, runner)
        raise UsageError(f"cannot listen on health port {args.health_port}: {exc.strerror or exc}") from None

    def new_session(may_write: Any = None) -> Session:
        return Session(
            service=service,
            kube=kube,
            auth=auth,
            opts=opts,
            metrics=metrics,
            gateway_port=args.gateway_port,
            resync_seconds=args.resync_seconds,
            publishes=settings.nats_url is not None,
            may_write=may_write,
        )

    log.info(
        "operator watching %s; gateways %s",
        "all namespaces" if opts["all_namespaces"] else ", ".join(opts["namespaces"]),
        opts["gateway_urls"] or f"service {opts['gateway_service']}",
    )
    failed = False
    try:
        if opts["leader_election"]:
            failed = await _run_elected(opts, settings, service, kube, holder, new_session, stop)
        else:
            holder.session = new_session()
            await holder.session.start()
            await _first(stop.wait(), holder.session.finished.wait())
            failed = holder.session.error is not None
    finally:
        if holder.session is not None:
            await holder.session.stop()
        await health.stop()
        await kube.close()
        auth.close()
        await configsvc_command.stop_service(service, runner)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 1 if failed else 0


class _Holder:
    """The current session, if any (the health endpoint and the election share it)."""

    def __init__(self) -> None:
        self.session: Session | None = None
        self.watcher: asyncio.Task[None] | None = None

    def liveness(self) -> str | None:
        s = self.session
        if s is not None and s.error is not None:
            return f"the Kubernetes watch stopped: {s.error}"
        return None


async def _run_elected(
    opts: dict[str, Any],
    settings: Any,
    service: Any,
    kube: KubeClient,
    holder: _Holder,
    new_session: Any,
    stop: asyncio.Event,
) -> bool:
    """Hold a session exactly while this replica leads; True if a term ended in failure."""
    failure = asyncio.Event()

    async def started_leading() -> None:
        log.info("leading: starting the controller (identity %s)", opts["lease_identity"])
        session = new_session(elector.may_write)
        holder.session = session
        await session.start()

        async def watch_failure() -> None:
            await session.finished.wait()
            if session.error is not None and holder.session is session:
                failure.set()

        holder.watcher = asyncio.get_running_loop().create_task(watch_failure())

    async def stopped_leading() -> None:
        session, holder.session = holder.session, None
        if session is not None:
            log.warning("lost the Lease: the controller stops, this replica is now a standby")
            await session.stop()

    timing = opts["lease_timing"]
    elector = Elector(
        kube,
        namespace=opts["lease_namespace"],
        identity=opts["lease_identity"],
        name=opts["lease_name"],
        advertise_url=advertise_url(opts["advertise_url"], os.environ, settings.port),
        timing=timing,
        on_started_leading=started_leading,
        on_stopped_leading=stopped_leading,
    )
    service.leadership = elector
    campaign = asyncio.Event()
    task = asyncio.create_task(elector.run(campaign), name="leader-election")
    try:
        await _first(stop.wait(), failure.wait(), asyncio.wait([task]))
    finally:
        campaign.set()  # run() releases the Lease (a standby takes over at once) and returns
        try:
            await asyncio.wait_for(task, timeout=timing.renew_deadline + 5)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
        await stopped_leading()
    return failure.is_set()


async def _first(*coros: Any) -> None:
    """Wait until the first of ``coros`` finishes, cancel the rest."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
