"""Run a service until SIGTERM/SIGINT, then stop it cleanly (shared by gateway and worker)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable


async def serve_until_signalled(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    """``start()``, wait for a stop signal, then ``stop()`` (also when start fails half-way)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    sigs = (signal.SIGTERM, signal.SIGINT)
    for sig in sigs:
        loop.add_signal_handler(sig, stopping.set)
    try:
        await start()
        await stopping.wait()
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)
        await stop()
