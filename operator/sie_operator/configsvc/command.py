"""``sie-operator config-api``: the config service without Kubernetes (drop-in for SIE's).

Reads SIE's environment variables; flags override them. Any configuration problem
(unreadable bundles, bad port, corrupt store, port in use...) is a one-line error and
exit code 2; SIGTERM/SIGINT stop it cleanly (in-flight writes finish, the store is
checkpointed) with exit code 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from sie_operator import natsconn
from sie_operator.cli import UsageError
from sie_operator.natsconn import NatsAuth

from .http import build_app
from .service import ConfigError, ConfigService
from .settings import Settings, SettingsError

log = logging.getLogger("sie_operator.configsvc")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_service_arguments(parser)


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """The config service's flags; also used by ``sie-operator run``, which embeds it."""
    parser.add_argument("--host", help="listen address (default 0.0.0.0)")
    parser.add_argument("--port", help="listen port (default 8080)")
    parser.add_argument(
        "--bundles-dir", help="bundle YAML directory [SIE_BUNDLES_DIR] (default: shipped bundles)"
    )
    parser.add_argument("--models-dir", help="baseline model YAML directory [SIE_MODELS_DIR] (default: none)")
    parser.add_argument(
        "--store-dir",
        help="durable store: a directory, or jetstream://NAME for a replicated JetStream stream NAME on "
        "--nats-url shared by several replicas [SIE_CONFIG_STORE_DIR] "
        "(default: $XDG_STATE_HOME/sie-operator/config-store)",
    )
    parser.add_argument(
        "--store-replicas",
        help="replicas of a jetstream:// store's stream, 1-5 (3 survives one NATS node down) "
        "[SIE_CONFIG_STORE_REPLICAS] (default: 1)",
    )
    parser.add_argument(
        "--restore",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replay stored models at startup [SIE_CONFIG_RESTORE] (default: on)",
    )
    parser.add_argument(
        "--store-durability",
        help="journal (default: fdatasync'd write-ahead journal) or sync (fsync every file) "
        "[SIE_CONFIG_STORE_DURABILITY]",
    )
    parser.add_argument(
        "--nats-url",
        help="NATS server URL, or a comma list of a cluster's [SIE_NATS_URL] (default: no publishing)",
    )
    natsconn.add_arguments(parser)
    parser.add_argument(
        "--producer-id",
        help="router_id put in NATS deltas [SIE_PRODUCER_ID] (default: sie-config-<POD_NAME or hostname>)",
    )


def settings_from_args(args: argparse.Namespace, env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ) if env is None else env
    overrides: dict[str, Any] = {
        "host": args.host,
        "bundles_dir": Path(args.bundles_dir).expanduser() if args.bundles_dir else None,
        "models_dir": Path(args.models_dir).expanduser() if args.models_dir else None,
        "store_replicas": args.store_replicas,
        "restore": args.restore,
        "store_durability": args.store_durability,
        "nats_url": args.nats_url,
        "nats_auth": NatsAuth.from_args(args, env),
        "producer_id": args.producer_id,
    }
    if args.port is not None:
        try:
            overrides["port"] = int(args.port)
        except ValueError:
            raise UsageError(f"--port {args.port!r} is not a port number") from None
    try:
        return Settings.from_env(env, store_location=args.store_dir, **overrides)
    except SettingsError as exc:
        raise UsageError(str(exc)) from exc


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed (about twice the HTTP throughput), else asyncio's loop."""
    if os.environ.get("SIE_NO_UVLOOP"):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
        default_store = not (os.environ.get("SIE_CONFIG_STORE_DIR") or args.store_dir)
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(serve(settings, default_store=default_store))
    except UsageError as exc:
        # Printed here as well as in cli.main: under ``python -m sie_operator.cli`` that module
        # runs as __main__ and its UsageError is a different class from the one raised here.
        print(f"sie-operator config-api: error: {exc}", file=sys.stderr)
        return 2


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket before anything else starts, so a busy port is a one-line
    error and no request can arrive before the service is ready."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


async def start_service(settings: Settings) -> tuple[ConfigService, web.AppRunner]:
    """Start the service and its HTTP API on settings.host:port; UsageError on bad config."""
    sock = bind(settings.host, settings.port)
    try:
        service = ConfigService.from_settings(settings)
        await service.start()
    except ConfigError as exc:
        sock.close()
        raise UsageError(str(exc)) from exc
    except BaseException:
        sock.close()
        raise
    runner = web.AppRunner(build_app(service, settings), access_log=None, shutdown_timeout=10.0)
    await runner.setup()
    site = web.SockSite(runner, sock)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await service.stop()
        raise UsageError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from exc
    addresses = ", ".join(f"{a[0]}:{a[1]}" for a in runner.addresses)
    log.info("config API listening on %s (%s)", addresses, settings.describe())
    return service, runner


async def stop_service(service: ConfigService, runner: web.AppRunner) -> None:
    """Stop accepting requests, let in-flight ones finish, then stop the service."""
    try:
        await runner.cleanup()
    finally:
        await service.stop()


async def serve(settings: Settings, stop: asyncio.Event | None = None, *, default_store: bool = False) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set); raise UsageError on bad configuration.

    The signal handlers go in first, so a signal during a long restore still ends in a
    clean stop (exit 0) once startup is done, rather than killing the process mid-way.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        service, runner = await start_service(settings)
        if default_store:
            log.info("no SIE_CONFIG_STORE_DIR given: using the local default store %s", settings.store_dir)
        try:
            await stop.wait()
            log.info("shutting down")
        finally:
            await stop_service(service, runner)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0
