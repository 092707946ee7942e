"""Helpers for the config service on a JetStream store (a uniquely named module, like
cfgsvc_helpers)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cfgsvc_helpers import Api, MakeApi

_names = itertools.count()


def stream_name() -> str:
    """A fresh stream per test: tests share one (module-scoped) cluster."""
    return f"cfg{next(_names)}-{int(time.time() * 1000) % 10**8}"


async def until(cond: Callable[[], Awaitable[bool]], limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def js_api(make_api: MakeApi, urls: str, stream: str, **kw: Any) -> Api:
    """A started service + HTTP API on ``jetstream://stream`` at NATS ``urls``, ready (NATS up)."""
    values: dict[str, Any] = {
        "store_dir": None,
        "store_stream": stream,
        "nats_url": urls,
        "producer_id": "sie-config-test",
    }
    values.update(kw)
    api = await make_api(**values)

    async def ready() -> bool:
        return (await api.client.get("/readyz")).status == 200

    await until(ready)
    return api
