"""Durable model store (local filesystem, SIE layout) used by the config service."""

from sie_operator.store.fs import Durability, FileStore, StoreCorrupt, StoredModel, StoreError

__all__ = ["Durability", "FileStore", "StoreCorrupt", "StoreError", "StoredModel"]
