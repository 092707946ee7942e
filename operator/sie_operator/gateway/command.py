"""``sie-operator gateway``: the companion readiness gateway (see the package docstring)."""

from __future__ import annotations

import argparse
import asyncio

from sie_operator.cli import UsageError

from ..kube.auth import KubeAuth, KubeAuthError
from ..lifecycle import serve_until_signalled
from . import settings as settings_mod
from .service import Gateway


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_mod.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_mod.from_args(args)
    except settings_mod.ConfigError as exc:
        raise UsageError(str(exc)) from None
    auth: KubeAuth | None = None
    if settings.kubernetes:
        try:
            auth = asyncio.run(KubeAuth.load(settings.kubeconfig))  # fail fast, before serving
        except KubeAuthError as exc:
            raise UsageError(str(exc)) from None
    gateway = Gateway(settings, auth)

    async def stop() -> None:
        try:
            await gateway.drain()
        finally:
            await gateway.stop()

    try:
        asyncio.run(serve_until_signalled(gateway.start, stop))
    except OSError as exc:
        raise UsageError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    return 0
