"""Idempotency-Key handling for ``POST /v1/configs/models``.

A retried request with the same key and the same bytes gets the first success's status
and body back, byte for byte. Differences from SIE, all on purpose:
- a real LRU with a TTL (SIE's is FIFO and never expires);
- a request whose key is in flight with a *different* body is refused at once;
- waiting for an in-flight twin is bounded; if the twin fails, the waiter runs the write
  itself (getting the same error, or a success) instead of being told it succeeded;
- the in-flight marker is released on any exit, cancellation included.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from sie_operator.aio import wait_event


@dataclass(frozen=True)
class CachedResponse:
    status: int
    body: bytes
    body_hash: str


class IdempotencyMismatch(Exception):
    """The key was used with a different body."""


class IdempotencyInFlight(Exception):
    """The key is still being processed by another request after the wait timeout."""


@dataclass
class Claim:
    """Ownership of a key while its request executes; ``release()`` in a finally block."""

    cache: IdempotencyCache
    key: str
    body_hash: str
    done: asyncio.Event = field(default_factory=asyncio.Event)
    released: bool = False

    def complete(self, status: int, body: bytes) -> None:
        """Record a success (only 2xx responses are replayable)."""
        self.cache._store(self.key, CachedResponse(status, body, self.body_hash))

    def release(self) -> None:
        if not self.released:
            self.released = True
            if self.cache._inflight.get(self.key) is self:
                del self.cache._inflight[self.key]
            self.done.set()


class IdempotencyCache:
    def __init__(
        self,
        capacity: int = 1000,
        ttl: float = 24 * 3600.0,
        wait_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self.wait_timeout = wait_timeout
        self._clock = clock
        self._done: OrderedDict[str, tuple[float, CachedResponse]] = OrderedDict()
        self._inflight: dict[str, Claim] = {}

    def __len__(self) -> int:
        return len(self._done)

    def _store(self, key: str, resp: CachedResponse) -> None:
        self._done[key] = (self._clock(), resp)
        self._done.move_to_end(key)
        while len(self._done) > self.capacity:
            self._done.popitem(last=False)

    def _get(self, key: str) -> CachedResponse | None:
        item = self._done.get(key)
        if item is None:
            return None
        stored_at, resp = item
        if self._clock() - stored_at > self.ttl:
            del self._done[key]
            return None
        self._done.move_to_end(key)
        return resp

    async def begin(self, key: str, body_hash: str) -> Claim | CachedResponse:
        """A cached success to replay, or a claim to execute the request under this key.

        Raises IdempotencyMismatch (other body) or IdempotencyInFlight (wait timed out).
        """
        deadline = self._clock() + self.wait_timeout
        while True:
            cached = self._get(key)
            if cached is not None:
                if cached.body_hash != body_hash:
                    raise IdempotencyMismatch(key)
                return cached
            twin = self._inflight.get(key)
            if twin is None:
                claim = Claim(self, key, body_hash)
                self._inflight[key] = claim
                return claim
            if twin.body_hash != body_hash:
                raise IdempotencyMismatch(key)
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise IdempotencyInFlight(key)
            try:
                await wait_event(twin.done, remaining)
            except TimeoutError:
                raise IdempotencyInFlight(key) from None
            # Loop: a success is now cached; a failure left no entry, so this request runs.
