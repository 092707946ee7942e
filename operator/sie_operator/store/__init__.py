"""Durable model stores used by the config service: a local directory (SIE layout) or a
replicated JetStream stream, both behind the async :class:`ConfigStore` interface."""

from sie_operator.store.base import CommitResult, ConfigStore, StoreConflict, StoreRecord, StoreUnconfirmed
from sie_operator.store.directory import DirectoryStore
from sie_operator.store.fs import Durability, FileStore, StoreCorrupt, StoredModel, StoreError

__all__ = [
    "CommitResult",
    "ConfigStore",
    "DirectoryStore",
    "Durability",
    "FileStore",
    "StoreConflict",
    "StoreCorrupt",
    "StoreError",
    "StoreRecord",
    "StoreUnconfirmed",
    "StoredModel",
]
