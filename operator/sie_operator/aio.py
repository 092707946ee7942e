"""asyncio helpers every floor may use.

Why ``wait_event`` rather than ``wait_event(event, t)``: on Python 3.11,
``wait_for`` swallows a cancellation that arrives while the awaited thing completes (it
returns the result instead of raising, gh-86296, fixed in 3.12), so a loop that waits on an
event that is set often can miss its task's cancellation and never stop. A test hung that
way for 300 s once. ``asyncio.timeout`` counts cancellations and does not lose one.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float | None) -> None:
    """Wait until ``event`` is set; TimeoutError after ``seconds`` (None: no limit)."""
    async with asyncio.timeout(seconds):
        await event.wait()
