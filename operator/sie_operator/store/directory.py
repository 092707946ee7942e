"""The directory store (:class:`~sie_operator.store.fs.FileStore`) behind the async
:class:`~sie_operator.store.base.ConfigStore` interface.

Why a wrapper and not async methods on FileStore: FileStore's methods block on disk I/O
and are used directly by tools and tests; the service must never run them on the event
loop, so every call goes through ``asyncio.to_thread`` here, in one place. One process owns
the directory (flock), so there is nothing to follow: ``drain`` is always empty.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sie_operator.store.base import CommitResult, StoreRecord
from sie_operator.store.fs import FileStore, StoredModel


class DirectoryStore:
    kind = "directory"
    shared = False

    def __init__(self, file: FileStore) -> None:
        self.file = file

    @property
    def epoch(self) -> int:
        return self.file.epoch

    @property
    def opened(self) -> bool:
        return self.file.opened

    @property
    def broken(self) -> str | None:
        return self.file.broken

    @property
    def max_record_bytes(self) -> int | None:
        return None  # a file of any size

    @property
    def fatal(self) -> str | None:
        return self.file.fatal

    @property
    def durability(self) -> str:
        return self.file.durability

    def describe(self) -> str:
        return str(self.file.base)

    async def open(self) -> int:
        return await asyncio.to_thread(self.file.open)

    async def load_all(self) -> list[StoredModel]:
        return await asyncio.to_thread(self.file.load_all)

    async def list_ids(self) -> list[str]:
        return await asyncio.to_thread(self.file.list_ids)

    async def commit(self, writes: Sequence[tuple[str, str]], epoch: int) -> CommitResult:
        await asyncio.to_thread(self.file.commit, writes, epoch)
        first = epoch - len(writes) + 1
        return CommitResult([first + i for i in range(len(writes))], True)

    def drain(self) -> list[StoreRecord]:
        return []

    async def wait_records(self) -> None:
        await asyncio.Event().wait()  # nobody else writes this directory

    async def catch_up(self, within: float) -> None:
        return None

    async def maintain(self) -> None:
        """Heal a broken store (the cause, e.g. a full disk, may be gone), else checkpoint."""
        f = self.file
        if f.broken:
            if not f.fatal:
                await asyncio.to_thread(f.heal)
        elif f.needs_checkpoint:
            await asyncio.to_thread(f.checkpoint)

    async def close(self) -> None:
        if self.file.opened:
            await asyncio.to_thread(self.file.close)
