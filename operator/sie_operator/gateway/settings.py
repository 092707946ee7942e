"""Gateway configuration: flags over environment (contract §7 names) over defaults.

Everything is validated up front so a bad value is a one-line error at startup
(``ConfigError``, turned into ``UsageError`` by the command), never a crash later.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from sie_operator import natsconn
from sie_operator.natsconn import NatsAuth

from ..protocol.deltas import parse_producer_list
from ..settingsparse import ConfigError as ConfigError  # re-exported: what from_args raises
from ..settingsparse import check_http_urls, check_nats, default_instance_id, env_bool, parse_number
from .auth import AuthConfigError, AuthPolicy, parse_tokens
from .discovery import WorkerUrlError, parse_worker_urls


@dataclass(frozen=True)
class GatewaySettings:
    config_url: str
    host: str = "0.0.0.0"
    port: int = 8080
    admin_token: str | None = field(default=None, repr=False)
    export_token: str | None = field(default=None, repr=False)
    nats_url: str | None = field(default=None, repr=False)
    nats_auth: NatsAuth = field(default_factory=NatsAuth)
    trusted_producers: tuple[str, ...] | None = ("sie-config",)
    workers: tuple[str, ...] = ()
    kubernetes: bool = False
    k8s_namespace: str | None = None
    k8s_service: str = "sie-worker"
    k8s_port: int = 8080
    kubeconfig: str | None = None
    poll_interval: float = 30.0
    heartbeat_timeout: float = 15.0
    sweep_interval: float = 5.0
    reconnect_interval: float = 5.0
    backoff_max: float = 60.0
    connect_timeout: float = 5.0
    watch_heartbeat: float = 5.0
    watch_coalesce: float = 0.05
    watch_settle: float = 1.0
    watch_history: int = 65536
    drain_delay: float = 0.0
    gateway_id: str = "gateway"
    auth: AuthPolicy = field(default_factory=AuthPolicy, repr=False)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="listen address (SIE_GATEWAY_HOST, default 0.0.0.0)")
    p.add_argument("--port", "-p", help="listen port (SIE_GATEWAY_PORT, default 8080)")
    p.add_argument(
        "--config-service-url",
        help="config service base URL, or a comma list of replicas to fail over between "
        "(SIE_CONFIG_SERVICE_URL, required)",
    )
    p.add_argument(
        "--admin-token",
        help="admin routes, and the config service bearer when no export token is given "
        "(SIE_ADMIN_TOKEN; prefer the variable)",
    )
    p.add_argument(
        "--export-token",
        help="bearer for the config service instead of the admin token: reads and /export only "
        "(SIE_EXPORT_TOKEN; prefer the variable, argv is visible to other users)",
    )
    p.add_argument(
        "--nats-url", help="NATS URL for live deltas (SIE_NATS_URL); without it only the poller syncs"
    )
    natsconn.add_arguments(p)
    p.add_argument(
        "--trusted-producers",
        help="comma list of trusted delta producers, exact or '<name>-' prefix "
        "(SIE_NATS_CONFIG_TRUSTED_PRODUCERS, default sie-config)",
    )
    p.add_argument(
        "--trust-any-producer",
        action="store_true",
        default=None,
        help="accept deltas from any producer (SIE_NATS_CONFIG_TRUST_ANY_PRODUCER)",
    )
    p.add_argument(
        "--worker", "-w", action="append", default=None, metavar="URL",
        help="static worker URL or host:port, repeatable (SIE_GATEWAY_WORKERS, comma list)",
    )  # fmt: skip
    p.add_argument(
        "--kubernetes", action="store_true", default=None,
        help="discover workers from EndpointSlices (SIE_GATEWAY_KUBERNETES)",
    )  # fmt: skip
    p.add_argument("--k8s-namespace", help="namespace (SIE_GATEWAY_K8S_NAMESPACE, default: own namespace)")
    p.add_argument("--k8s-service", help="worker Service name (SIE_GATEWAY_K8S_SERVICE, default sie-worker)")
    p.add_argument("--k8s-port", help="worker port (SIE_GATEWAY_K8S_PORT, default 8080)")
    p.add_argument(
        "--kubeconfig", help="kubeconfig file (KUBECONFIG; default in-cluster, then ~/.kube/config)"
    )
    p.add_argument(
        "--poll-interval", help="seconds between /epoch checks (SIE_GATEWAY_POLL_INTERVAL, default 30)"
    )
    p.add_argument(
        "--heartbeat-timeout",
        help="seconds of worker silence before unhealthy (SIE_GATEWAY_HEARTBEAT_TIMEOUT, 15)",
    )
    p.add_argument(
        "--sweep-interval", help="seconds between heartbeat sweeps (SIE_GATEWAY_SWEEP_INTERVAL, 5)"
    )
    p.add_argument(
        "--reconnect-interval", help="seconds before redialling a worker (SIE_GATEWAY_RECONNECT_INTERVAL, 5)"
    )
    p.add_argument(
        "--worker-connect-timeout",
        help="seconds for a worker's status socket to open (SIE_GATEWAY_WORKER_CONNECT_TIMEOUT, 5)",
    )
    p.add_argument("--bootstrap-backoff-max", help="max seconds between bootstrap retries (default 60)")
    p.add_argument(
        "--watch-heartbeat",
        help="seconds of silence before a watch stream gets a heartbeat (SIE_GATEWAY_WATCH_HEARTBEAT, 5)",
    )
    p.add_argument(
        "--watch-coalesce",
        help="seconds a written model's record waits for its acks (SIE_GATEWAY_WATCH_COALESCE, 0.05)",
    )
    p.add_argument(
        "--watch-settle",
        help="seconds a model's worker lists may wait while its verdict stays (SIE_GATEWAY_WATCH_SETTLE, 1)",
    )
    p.add_argument(
        "--watch-history",
        help="readiness changes remembered for resuming streams (SIE_GATEWAY_WATCH_HISTORY, 65536)",
    )
    p.add_argument(
        "--drain-delay",
        help="seconds to keep serving after SIGTERM with /readyz failing (SIE_GATEWAY_DRAIN_DELAY, 0)",
    )
    p.add_argument(
        "--gateway-id", help="id reported by /v1/configs/status (SIE_GATEWAY_ID, POD_NAME, hostname)"
    )


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> GatewaySettings:
    """Resolve flags, then environment, then defaults; raise ConfigError on bad values."""
    env = os.environ if env is None else env

    def pick(flag: object, var: str, default: str | None = None) -> str | None:
        if flag is not None:
            return str(flag)
        value = env.get(var)
        return value if value not in (None, "") else default

    config_url = pick(args.config_service_url, "SIE_CONFIG_SERVICE_URL")
    if not config_url:
        raise ConfigError(
            "the config service URL is required (--config-service-url or SIE_CONFIG_SERVICE_URL)"
        )
    trust_any = args.trust_any_producer or env_bool(env, "SIE_NATS_CONFIG_TRUST_ANY_PRODUCER")
    trusted = parse_producer_list(pick(args.trusted_producers, "SIE_NATS_CONFIG_TRUSTED_PRODUCERS"))
    if not trusted and not trust_any:
        raise ConfigError(
            "SIE_NATS_CONFIG_TRUSTED_PRODUCERS is empty; "
            "list producers or set SIE_NATS_CONFIG_TRUST_ANY_PRODUCER=true"
        )
    try:
        workers = parse_worker_urls(args.worker if args.worker else [env.get("SIE_GATEWAY_WORKERS", "")])
    except WorkerUrlError as exc:
        raise ConfigError(str(exc)) from None
    kubernetes = bool(args.kubernetes) or env_bool(env, "SIE_GATEWAY_KUBERNETES")
    admin = pick(args.admin_token, "SIE_ADMIN_TOKEN")
    export = pick(getattr(args, "export_token", None), "SIE_EXPORT_TOKEN")
    try:
        auth = AuthPolicy.from_settings(
            env.get("SIE_AUTH_MODE"),
            parse_tokens(env.get("SIE_AUTH_TOKENS"), env.get("SIE_AUTH_TOKEN")),
            admin,
            env_bool(env, "SIE_AUTH_EXEMPT_OPERATIONAL"),
            export,
        )
    except AuthConfigError as exc:
        raise ConfigError(str(exc)) from None
    nats_url = pick(args.nats_url, "SIE_NATS_URL")
    nats_auth = NatsAuth.from_args(args, env)
    if nats_url:
        nats_url, nats_auth = check_nats(nats_url, nats_auth)
    timers = {
        name: parse_number(pick(flag, var, default), f"--{name.replace('_', '-')}", minimum=0.01)
        for name, flag, var, default in (
            ("poll_interval", args.poll_interval, "SIE_GATEWAY_POLL_INTERVAL", "30"),
            ("heartbeat_timeout", args.heartbeat_timeout, "SIE_GATEWAY_HEARTBEAT_TIMEOUT", "15"),
            ("sweep_interval", args.sweep_interval, "SIE_GATEWAY_SWEEP_INTERVAL", "5"),
            ("reconnect_interval", args.reconnect_interval, "SIE_GATEWAY_RECONNECT_INTERVAL", "5"),
            ("backoff_max", args.bootstrap_backoff_max, "SIE_GATEWAY_BOOTSTRAP_BACKOFF_MAX", "60"),
            ("connect_timeout", args.worker_connect_timeout, "SIE_GATEWAY_WORKER_CONNECT_TIMEOUT", "5"),
            ("watch_heartbeat", args.watch_heartbeat, "SIE_GATEWAY_WATCH_HEARTBEAT", "5"),
            ("watch_coalesce", args.watch_coalesce, "SIE_GATEWAY_WATCH_COALESCE", "0.05"),
        )
    }
    timers["watch_settle"] = parse_number(
        pick(args.watch_settle, "SIE_GATEWAY_WATCH_SETTLE", "1"), "--watch-settle", minimum=0
    )
    timers["drain_delay"] = parse_number(
        pick(args.drain_delay, "SIE_GATEWAY_DRAIN_DELAY", "0"), "--drain-delay", minimum=0
    )
    history = int(
        parse_number(
            pick(args.watch_history, "SIE_GATEWAY_WATCH_HISTORY", "65536"),
            "--watch-history",
            integer=True,
            minimum=1,
        )
    )
    return GatewaySettings(
        config_url=check_http_urls(config_url, "SIE_CONFIG_SERVICE_URL"),
        host=pick(args.host, "SIE_GATEWAY_HOST", "0.0.0.0") or "0.0.0.0",
        port=int(parse_number(pick(args.port, "SIE_GATEWAY_PORT", "8080"), "--port", integer=True)),
        admin_token=admin,
        export_token=export,
        nats_url=nats_url,
        nats_auth=nats_auth,
        trusted_producers=None if trust_any else trusted,
        workers=tuple(workers),
        kubernetes=kubernetes,
        k8s_namespace=pick(args.k8s_namespace, "SIE_GATEWAY_K8S_NAMESPACE"),
        k8s_service=pick(args.k8s_service, "SIE_GATEWAY_K8S_SERVICE", "sie-worker") or "sie-worker",
        k8s_port=int(
            parse_number(
                pick(args.k8s_port, "SIE_GATEWAY_K8S_PORT", "8080"), "--k8s-port", integer=True, minimum=1
            )
        ),
        kubeconfig=pick(args.kubeconfig, "KUBECONFIG"),
        gateway_id=pick(args.gateway_id, "SIE_GATEWAY_ID") or default_instance_id(env),
        auth=auth,
        watch_history=history,
        **timers,
    )
