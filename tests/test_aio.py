"""``aio.wait_event`` keeps a cancellation that meets a set event (a named schedule).

The schedule: a task waits on an event with a timeout; in one turn of the loop the event
is set and the task is cancelled. ``asyncio.wait_for`` on Python 3.11 returns normally
then (gh-86296) and the task goes on as if never cancelled: a mirror's poll loop hung a
test for 300 s that way. ``wait_event`` must raise CancelledError.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

import pytest

from sie_operator.aio import wait_event


async def set_and_cancel_in_one_turn(wait: Callable[[asyncio.Event], Awaitable[object]]) -> str:
    event = asyncio.Event()

    async def waiter() -> str:
        await wait(event)
        return "returned"

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)  # the task is now parked on the event
    event.set()
    task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return "cancelled"


async def test_wait_event_keeps_a_cancellation_that_meets_the_event() -> None:
    assert await set_and_cancel_in_one_turn(lambda ev: wait_event(ev, 10)) == "cancelled"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for keeps the cancellation since 3.12")
async def test_the_schedule_reproduces_the_wait_for_bug() -> None:
    """The same schedule loses the cancellation under wait_for: the test above can fail."""
    assert await set_and_cancel_in_one_turn(lambda ev: asyncio.wait_for(ev.wait(), 10)) == "returned"


async def test_wait_event_times_out_and_returns_when_set() -> None:
    event = asyncio.Event()
    with pytest.raises(TimeoutError):
        await wait_event(event, 0.01)
    event.set()
    await wait_event(event, 0)  # already set: no wait, no timeout
