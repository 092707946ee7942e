"""The leadership gate of the config service's write path.

Why a protocol here and not the elector itself: the service must not depend on how
leadership is decided (a Kubernetes Lease in ``sie-operator run --leader-election``, nothing
at all in ``config-api``). Anything with these three methods can gate writes; ``None``
as ``ConfigService.leadership`` means always writable.

When :meth:`Leadership.may_write` is False the service writes nothing: the HTTP API proxies
a write to :meth:`Leadership.leader_url` (or answers ``503 not_leader``), and an in-process
``ConfigService.apply`` (the Kubernetes reconciler) raises :class:`NotLeader`. The gate is
checked again immediately before every store append, so a leader that lost its lease
while a batch was queued does not write it.
"""

from __future__ import annotations

from typing import Protocol


class Leadership(Protocol):
    def may_write(self) -> bool:
        """False => this replica must not write now."""

    def leader_identity(self) -> str | None:
        """Identity of the current leader, if known (shown in ``not_leader`` answers)."""

    def leader_url(self) -> str | None:
        """Config API base URL of the current leader, if known (writes are proxied there)."""


class NotLeader(Exception):
    """This replica may not write now; nothing was written."""

    status = 503
    error = "not_leader"

    def __init__(self, leader: str | None = None) -> None:
        self.leader = leader
        where = f" (leader: {leader})" if leader else " (no leader known)"
        super().__init__(f"this config service replica is not the leader{where}; retry shortly")


class StaticLeadership:
    """A fixed answer: for tests and for wiring a replica that must never write."""

    def __init__(self, writable: bool, identity: str | None = None, url: str | None = None) -> None:
        self.writable = writable
        self.identity = identity
        self.url = url

    def may_write(self) -> bool:
        return self.writable

    def leader_identity(self) -> str | None:
        return self.identity

    def leader_url(self) -> str | None:
        return self.url
