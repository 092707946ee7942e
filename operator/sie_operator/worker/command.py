"""``sie-operator worker``: a reference worker that runs no models but speaks the protocol.

``--instances K`` serves K workers (own port P..P+K-1, names ``<name>-0``.., own status
socket and reported hash) from one process sharing one NATS connection and, unless
``--independent-mirrors``, one config mirror; benchmarks use it to simulate many workers
on few cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os

import aiohttp
from aiohttp import web

from sie_operator import natsconn
from sie_operator.cli import UsageError
from sie_operator.lifecycle import serve_until_signalled
from sie_operator.protocol.configclient import ConfigServiceClient
from sie_operator.protocol.deltas import parse_producer_list
from sie_operator.protocol.natsfeed import NatsFeed
from sie_operator.settingsparse import (
    ConfigError,
    check_http_urls,
    check_nats,
    default_instance_id,
    env_bool,
    parse_number,
)

from .app import SharedMirror, WorkerInstance
from .state import check_bundle_name

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="worker name in status frames (default HOSTNAME, POD_NAME)")
    p.add_argument("--bundle", help="bundle served (SIE_BUNDLE, default 'default')")
    p.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    p.add_argument("--port", "-p", default="8080", help="listen port (default 8080)")
    p.add_argument("--nats-url", help="NATS URL (SIE_NATS_URL); without it only the epoch poller syncs")
    natsconn.add_arguments(p)
    p.add_argument(
        "--config-url",
        help="config service base URL, or a comma list of replicas to fail over between "
        "(SIE_CONFIG_SERVICE_URL, required)",
    )
    p.add_argument(
        "--admin-token",
        help="bearer for the config service when no export token is given "
        "(SIE_ADMIN_TOKEN; prefer the variable)",
    )
    p.add_argument(
        "--export-token",
        help="bearer for the config service instead of the admin token: reads and /export only "
        "(SIE_EXPORT_TOKEN; prefer the variable, argv is visible to other users)",
    )
    p.add_argument("--ack-delay", default="0", help="seconds before a new config shows in the reported hash")
    p.add_argument("--poll-interval", default="30", help="seconds between /epoch checks (default 30)")
    p.add_argument("--status-interval", default="0.2", help="seconds between status frames (default 0.2)")
    p.add_argument(
        "--instances", default="1", help="serve this many workers on consecutive ports (default 1)"
    )
    p.add_argument(
        "--independent-mirrors",
        action="store_true",
        help="with --instances: give every instance its own config mirror (K times the hashing)",
    )
    p.add_argument(
        "--trusted-producers", help="comma list (SIE_NATS_CONFIG_TRUSTED_PRODUCERS, default sie-config)"
    )
    p.add_argument(
        "--trust-any-producer", action="store_true", default=None,
        help="accept deltas from any producer (SIE_NATS_CONFIG_TRUST_ANY_PRODUCER)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    env = os.environ
    try:
        config_url = args.config_url or env.get("SIE_CONFIG_SERVICE_URL") or env.get("SIE_CONFIG_URL")
        if not config_url:
            raise ConfigError("the config service URL is required (--config-url or SIE_CONFIG_SERVICE_URL)")
        config_url = check_http_urls(config_url, "--config-url")
        bundle = check_bundle_name(args.bundle or env.get("SIE_BUNDLE") or "default")
        port = int(parse_number(args.port, "--port", integer=True, minimum=0))
        instances = int(parse_number(args.instances, "--instances", integer=True, minimum=1))
        ack_delay = parse_number(args.ack_delay, "--ack-delay")
        poll = parse_number(args.poll_interval, "--poll-interval", minimum=0.01)
        status_interval = parse_number(args.status_interval, "--status-interval", minimum=0.01)
        trust_any = args.trust_any_producer or env_bool(env, "SIE_NATS_CONFIG_TRUST_ANY_PRODUCER")
        trusted = parse_producer_list(args.trusted_producers or env.get("SIE_NATS_CONFIG_TRUSTED_PRODUCERS"))
        if not trusted and not trust_any:
            raise ConfigError(
                "no trusted producers; list some or set SIE_NATS_CONFIG_TRUST_ANY_PRODUCER=true"
            )
        if instances > 1 and port == 0:
            raise ConfigError("--instances needs a fixed --port")
        nats_url = args.nats_url or env.get("SIE_NATS_URL") or None
        nats_auth = natsconn.NatsAuth.from_args(args, env)
        if nats_url:
            check_nats(nats_url, nats_auth)
    except (ConfigError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    name = args.name or env.get("HOSTNAME") or env.get("POD_NAME") or default_instance_id(env)
    # the export token is enough to bootstrap; the admin token only if no export token is given
    token = (
        args.export_token
        or env.get("SIE_EXPORT_TOKEN")
        or args.admin_token
        or env.get("SIE_ADMIN_TOKEN")
        or None
    )
    runners: list[web.AppRunner] = []
    workers: list[WorkerInstance] = []
    holder: dict[str, object] = {}

    async def start() -> None:
        session = aiohttp.ClientSession()
        holder["session"] = session
        client = ConfigServiceClient(session, config_url, admin_token=token)
        feed = NatsFeed(nats_url, name=f"sie-worker-{name}", auth=nats_auth) if nats_url else None
        holder["feed"] = feed
        shared = None
        if instances > 1 and not args.independent_mirrors:
            shared = SharedMirror(
                client, bundle=bundle, poll_interval=poll, trusted=None if trust_any else trusted
            )
            shared.attach(feed)
            holder["shared"] = shared
        for i in range(instances):
            w = WorkerInstance(
                name=name if instances == 1 else f"{name}-{i}",
                bundle=bundle,
                client=client,
                ack_delay=ack_delay,
                status_interval=status_interval,
                poll_interval=poll,
                trusted=None if trust_any else trusted,
                shared=shared,
            )
            w.attach(feed)
            runner = web.AppRunner(w.create_app(), access_log=None, handle_signals=False)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, args.host, port + i if port else 0, shutdown_timeout=1.0).start()
            workers.append(w)
        for w in workers:
            w.start()
        if shared is not None:
            shared.start()
        if feed is not None:
            feed.start()
        log.info(
            "worker %s (bundle %s) listening on %s:%s%s",
            name, bundle, args.host, port, f" (+{instances - 1} more)" if instances > 1 else "",
        )  # fmt: skip

    async def stop() -> None:
        for w in workers:
            await w.stop()
        shared = holder.get("shared")
        if isinstance(shared, SharedMirror):
            await shared.stop()
        feed = holder.get("feed")
        if isinstance(feed, NatsFeed):
            await feed.close()
        for r in runners:
            with contextlib.suppress(Exception):
                await r.cleanup()
        session = holder.get("session")
        if isinstance(session, aiohttp.ClientSession):
            await session.close()

    try:
        asyncio.run(serve_until_signalled(start, stop))
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{port}: {exc.strerror or exc}") from None
    return 0
