"""Pure parts of the reference worker: the delayed hash it reports and its status frame.

The worker's config state is a ``ConfigMirror`` restricted to its bundle (see
gateway/mirror.py), so the hash it reports is computed by the very code that computes the
gateway's expected hash. What the gateway sees is the *reported* hash, which follows the
loaded one after ``--ack-delay`` seconds to simulate a worker that is slow to load a config.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sie_operator import __version__ as VERSION

FORBIDDEN_BUNDLE_CHARS = frozenset("*> .")


def check_bundle_name(bundle: str) -> str:
    """Same rule as SIE's worker: the bundle is a NATS subject token."""
    if not bundle or any(c in FORBIDDEN_BUNDLE_CHARS for c in bundle):
        raise ValueError(f"bundle {bundle!r} must be non-empty and contain no '*', '>', '.' or spaces")
    return bundle


class ReportedHash:
    """The hash as reported: each loaded hash becomes visible ``delay`` seconds after loading."""

    def __init__(self, delay: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.delay = delay
        self.clock = clock
        self._current = ""
        self._pending: deque[tuple[float, str]] = deque()

    def load(self, loaded_hash: str, *, immediate: bool = False) -> None:
        last = self._pending[-1][1] if self._pending else self._current
        if loaded_hash == last:
            return
        if immediate or self.delay <= 0:
            self._pending.clear()
            self._current = loaded_hash
        else:
            self._pending.append((self.clock() + self.delay, loaded_hash))

    def current(self) -> str:
        now = self.clock()
        while self._pending and self._pending[0][0] <= now:
            self._current = self._pending.popleft()[1]
        return self._current

    def next_change_in(self) -> float | None:
        """Seconds until the next pending hash becomes visible, None if nothing is pending."""
        if not self._pending:
            return None
        return max(0.0, self._pending[0][0] - self.clock())


def status_frame(
    *,
    name: str,
    bundle: str,
    ready: bool,
    config_hash: str,
    config_epoch: int,
    started: float,
    pid: int,
) -> dict[str, Any]:
    """The contract's minimal frame (§6.2) with real types, plus a few harmless extras."""
    now = time.time()
    return {
        "timestamp": now,
        "ready": ready,
        "name": name,
        "machine_profile": "cpu",
        "pool_name": "",
        "gpu_count": 1,
        "bundle": bundle,
        "bundle_config_hash": config_hash,
        "config_epoch": config_epoch,
        "loaded_models": [],
        "max_batch_requests": 0,
        "models": [],
        "gpus": [],
        "server": {"version": VERSION, "uptime_seconds": round(now - started, 3), "pid": pid},
    }
