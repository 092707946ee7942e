"""The asyncio runner of Lease leader election: the thin adapter around ``decide``.

Each round (every retry period; jittered for candidates) it GETs the Lease, folds the
answer into its immutable ``State`` and, as ``decide`` says, creates, takes or renews the
Lease with a compare-and-set PUT — the loop the seeded simulation in ``tests/leader``
replays step for step. ``may_write()`` is a clock comparison against the send time of the
last successful acquire/renew, so it turns false on time even if this loop is starved
or the process was SIGSTOPped; the callbacks follow on the loop's next turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable

import aiohttp

from sie_operator.aio import wait_event

from ..kube.client import KubeClient, KubeError
from . import decide as D
from .lease import LeaseApi, LeaseConflict

log = logging.getLogger("sie_operator.leader")

Callback = Callable[[], Awaitable[None]]
_API_ERRORS = (KubeError, TimeoutError, aiohttp.ClientError, OSError)


def default_identity() -> str:
    """``POD_NAME`` in a pod, else ``hostname-pid`` (unique per process on one machine)."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def steady_clock() -> float:
    """Seconds on a clock that never jumps and keeps counting while the machine sleeps.

    CLOCK_MONOTONIC stops during a system suspend (a laptop lid, a paused VM): a leader
    frozen that way would wake up believing less time had passed than its observers did.
    CLOCK_BOOTTIME counts the suspension too; elsewhere monotonic is the best there is."""
    return time.clock_gettime(_CLOCK)


_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def micro_time() -> str:
    """A MicroTime for acquireTime/renewTime (informational: nobody judges expiry by it)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Elector:
    """Campaigns for one Lease; implements the config service's ``Leadership`` protocol."""

    def __init__(
        self,
        kube: KubeClient,
        *,
        namespace: str,
        identity: str,
        name: str = "sie-operator",
        advertise_url: str | None = None,
        timing: D.Timing | None = None,
        on_started_leading: Callback | None = None,
        on_stopped_leading: Callback | None = None,
        request_timeout: float | None = None,
        clock: Callable[[], float] = steady_clock,
    ) -> None:
        if not identity:
            raise D.ElectionConfigError("leader election needs a non-empty identity")
        self.timing = timing or D.Timing()
        self.identity = identity
        self.advertise_url = advertise_url or None
        self.api = LeaseApi(kube, namespace, name)
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.request_timeout = request_timeout or self.timing.renew_deadline / 2
        self.clock = clock
        self._state = D.State(identity)
        self._leading = False
        self._leader_seen: str | None = None
        self._callbacks: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self.leading_changed = asyncio.Condition()

    # -- the Leadership protocol -------------------------------------------------------------
    def may_write(self) -> bool:
        """True only before (send time of the last successful acquire/renew) + renew deadline."""
        return D.may_write(self._state, self.clock(), self.timing)

    def leader_identity(self) -> str | None:
        return D.leader_identity(self._state, self.clock(), self.timing)

    def leader_url(self) -> str | None:
        return D.leader_url(self._state, self.clock(), self.timing, self.advertise_url)

    @property
    def state(self) -> D.State:
        """The immutable snapshot of what this candidate knows (for status and logs)."""
        return self._state

    # -- the loop ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Campaign until ``stop`` is set; then release the Lease if held and return."""
        try:
            while not stop.is_set():
                await self.attempt()
                self._notice()
                now = self.clock()
                wake = D.next_wake(self._state, now, self.timing, self._rng.random())
                with contextlib.suppress(TimeoutError):
                    await wait_event(stop, max(0.0, wake - now))
                self._notice()
        finally:
            await self.release()
            if self._callbacks is not None:
                with contextlib.suppress(Exception):
                    await self._callbacks

    async def attempt(self) -> None:
        """One round: GET, decide, maybe create/take/renew. API failures just end the round."""
        try:
            record = await asyncio.wait_for(self.api.get(), self.request_timeout)
        except _API_ERRORS as exc:
            log.warning("leader election: cannot read Lease %s: %s", self.api.path, _one_line(exc))
            return
        self._state = D.observe(self._state, record, self.clock())
        decision = D.decide(self._state, self.clock(), self.timing)
        self._log_holder()
        if decision.act is D.Act.WAIT:
            return
        body = D.next_record(
            self._state, decision, wall_now=micro_time(), timing=self.timing, url=self.advertise_url
        )
        write = self.api.create if decision.act is D.Act.CREATE else self.api.update
        sent = self.clock()  # before the request leaves: the server applies it no earlier
        try:
            new = await asyncio.wait_for(write(body), self.request_timeout)
        except LeaseConflict:
            log.debug("leader election: lost the race to %s the Lease", decision.act.value)
            return
        except _API_ERRORS as exc:
            log.warning("leader election: cannot %s Lease: %s", decision.act.value, _one_line(exc))
            return
        self._state = D.wrote(self._state, new, sent=sent, now=self.clock())

    async def release(self) -> bool:
        """Stop leading now and clear the holder (client-go's ReleaseOnCancel), so a standby
        takes over at its next retry instead of after a whole lease. True if cleared."""
        record = D.release_record(self._state)
        self._state = D.released(self._state)
        self._notice()
        if self._callbacks is not None:  # let on_stopped_leading finish before a successor starts
            with contextlib.suppress(Exception, TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._callbacks), self.timing.renew_deadline)
        if record is None:
            return False
        try:
            new = await asyncio.wait_for(self.api.update(record), self.request_timeout)
        except (LeaseConflict, *_API_ERRORS) as exc:
            log.warning("leader election: could not release Lease: %s", _one_line(exc))
            return False
        self._state = D.observe(self._state, new, self.clock())
        log.info("leader election: %s released Lease %s", self.identity, self.api.path)
        return True

    async def wait_leading(self, leading: bool = True) -> None:
        """Until the loop has noticed that this candidate leads (or, with False, does not)."""
        async with self.leading_changed:
            await self.leading_changed.wait_for(lambda: self._leading is leading)

    # -- transitions --------------------------------------------------------------------------
    def _notice(self) -> None:
        leading = self.may_write()
        if leading == self._leading:
            return
        self._leading = leading
        if leading:
            log.info("leader election: %s leads (Lease %s)", self.identity, self.api.path)
        else:
            log.warning("leader election: %s stopped leading (Lease %s)", self.identity, self.api.path)
        self._chain(self.on_started_leading if leading else self.on_stopped_leading)
        asyncio.get_running_loop().create_task(self._wake_waiters())

    async def _wake_waiters(self) -> None:
        async with self.leading_changed:
            self.leading_changed.notify_all()

    def _chain(self, callback: Callback | None) -> None:
        """Callbacks run in order, each in the task after the previous one, never blocking
        the renewals (a long leader job should be a task the callbacks start and cancel)."""
        if callback is None:
            return
        previous = self._callbacks

        async def run() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            try:
                await callback()
            except Exception:
                log.exception("leader election: callback %s failed", getattr(callback, "__name__", callback))

        self._callbacks = asyncio.get_running_loop().create_task(run())

    def _log_holder(self) -> None:
        rec = self._state.observed
        holder = rec.holder if rec is not None else None
        if holder != self._leader_seen:
            self._leader_seen = holder
            if holder and holder != self.identity:
                log.info("leader election: Lease %s is held by %s", self.api.path, holder)


def _one_line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0][:300]
