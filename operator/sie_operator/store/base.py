"""What the config service needs of a durable store, for every backend.

Why a protocol: the directory store (one process owns a directory) and the JetStream store
(several processes share one replicated stream) differ in everything below this line, but
the service's write path (plan, persist, apply, publish) must be one piece of code so the
two cannot drift. All methods are async: the directory store runs its blocking file I/O
in a worker thread, the JetStream store talks to NATS on the event loop.

A store that others can write to (``shared``) also hands the service the records it did not
write itself (:meth:`ConfigStore.drain`), in stream order, so every replica's registry
follows the stream; a store nobody else writes to returns none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sie_operator.store.fs import StoredModel, StoreError


class StoreConflict(StoreError):
    """Another writer appended first; nothing of the refused writes was stored.

    The store has caught up with the stream by the time this is raised, so an identical
    write retried now is planned against the current content and can succeed."""


class StoreUnconfirmed(StoreError):
    """The store neither confirmed nor refused a write: it may have been stored, or may
    still be (an append in flight lands later). Retrying it is safe: a write already stored
    is then answered unchanged."""


@dataclass(frozen=True)
class StoreRecord:
    """One stored model write as the stream holds it (follower path)."""

    seq: int  # the stream sequence (0 for a store without one)
    model_id: str
    text: str
    epoch: int
    writer: str  # tag of the write, so a writer recognises its own records


@dataclass(frozen=True)
class CommitResult:
    """Per write of a commit: the epoch it was stored with, or None if it was refused.

    ``in_order`` is True when every write landed exactly as submitted with nothing
    from another writer in between: the service may then apply its own writes directly.
    Otherwise it must apply :meth:`ConfigStore.drain` (its landed writes are among those
    records) and answer only the writes with an epoch.

    ``unconfirmed``: the indices of writes without an epoch whose append was neither
    acknowledged nor refused (no answer in time, connection lost): such an append may still
    land later, with the epoch it was planned with, until the store's epoch has reached that
    one (the stream only grows, and an append lands only where the stream ended when it was
    planned). The other writes without an epoch cannot land any more."""

    landed: list[int | None]
    in_order: bool
    unconfirmed: tuple[int, ...] = ()


class ConfigStore(Protocol):
    kind: str  # "directory" or "jetstream"
    shared: bool  # True: other processes may write; records arrive through drain()

    @property
    def epoch(self) -> int: ...

    @property
    def opened(self) -> bool: ...

    @property
    def broken(self) -> str | None:
        """Why writes cannot go through now (readiness fails), else None."""

    @property
    def fatal(self) -> str | None:
        """Why only a restart can repair the store (liveness fails), else None."""

    @property
    def max_record_bytes(self) -> int | None:
        """The largest record (one model's stored form) the store can take now; None: no limit."""

    def describe(self) -> str: ...

    async def open(self) -> int:
        """Open (create if missing) and return the store epoch; StoreError if unusable."""

    async def load_all(self) -> list[StoredModel]:
        """Every stored model (restore), O(models)."""

    async def list_ids(self) -> list[str]: ...

    async def commit(self, writes: Sequence[tuple[str, str]], epoch: int) -> CommitResult:
        """Store the writes; write ``i`` gets epoch ``epoch - len(writes) + 1 + i``.

        Raises StoreError when nothing is known to have been stored."""

    def drain(self) -> list[StoreRecord]:
        """Records written by others (or ours that landed out of order) not yet handed out."""

    async def wait_records(self) -> None:
        """Return when drain() may have something (never returns for a private store)."""

    async def catch_up(self, within: float) -> None:
        """Wait (at most ``within`` seconds) until every record up to the stream's end at call
        time can be drained; StoreError if it cannot."""

    async def maintain(self) -> None:
        """Periodic upkeep: checkpoint, heal a broken store, re-sync a lagging follower."""

    async def close(self) -> None: ...
