"""Copy every model of one store into an empty one, keeping each model's epoch.

Why: switching a release to HA (a JetStream store) starts from an empty stream, and the
operator writes back only the ModelConfigs; models POSTed to the Config API would be lost.
Copying the old directory into the stream first (or a stream into a directory, as a backup)
keeps them. The texts are copied as stored, so every bundle hash stays the same, and each
model keeps the epoch of the write that stored it: status, gateways and workers see the same
epochs as before, and the store's epoch does not go back.

The plan is pure (:func:`plan_copy`); :func:`copy_store` performs it on two open stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sie_operator.store.base import ConfigStore
from sie_operator.store.fs import StoredModel, StoreError

BATCH = 256  # writes per commit (a JetStream store pipelines a batch's appends)


@dataclass(frozen=True)
class CopyItem:
    model_id: str
    text: str
    epoch: int


def final_epochs(models: Sequence[StoredModel], source_epoch: int) -> dict[str, int]:
    """The epoch each model is left at: its recorded one (a later model wins a clash). A model
    without one (an older directory layout) takes the lowest epoch no model holds. The
    highest is at least ``source_epoch``, so the copy's epoch is never below the source's."""
    out: dict[str, int] = {}
    used: set[int] = set()
    for m in sorted((m for m in models if m.epoch), key=lambda m: (m.epoch or 0, m.model_id)):
        e = m.epoch or 0
        while e in used:
            e += 1
        out[m.model_id] = e
        used.add(e)
    free = 1
    for m in sorted((m for m in models if not m.epoch), key=lambda m: m.model_id):
        while free in used:
            free += 1
        out[m.model_id] = free
        used.add(free)
    if out:
        top = max(out, key=lambda k: out[k])
        out[top] = max(out[top], source_epoch)
    return out


def plan_copy(models: Sequence[StoredModel], source_epoch: int) -> list[CopyItem]:
    """The writes, at epochs 1, 2, ... (a store takes only the next epoch), that leave every
    model at its epoch from :func:`final_epochs` with its text.

    An epoch no model is left at (the model written then was written again later) is filled
    by writing the next model due, early: its own write at its epoch comes later and is the
    one kept. Cost: one write per epoch of the source, not per model."""
    final = final_epochs(models, source_epoch)
    text = {m.model_id: m.text for m in models}
    due = sorted(final, key=lambda k: final[k])  # models by their final epoch
    at = {e: k for k, e in final.items()}
    out: list[CopyItem] = []
    nxt = 0  # index in ``due`` of the next model not yet written at its final epoch
    for e in range(1, (max(final.values()) if final else 0) + 1):
        mid = at.get(e)
        if mid is None:
            mid = due[nxt]  # a filler: rewritten at its own epoch later
        else:
            nxt += 1
        out.append(CopyItem(mid, text[mid], e))
    return out


def batches(items: Sequence[CopyItem], size: int = BATCH) -> list[list[CopyItem]]:
    """Commits of consecutive writes, at most ``size`` each and never two writes of one model
    in a commit (a batch's appends are planned against the model's state before it)."""
    out: list[list[CopyItem]] = []
    seen: set[str] = set()
    for item in items:
        run = out[-1] if out else None
        if run is not None and len(run) < size and item.model_id not in seen:
            run.append(item)
        else:
            out.append([item])
            seen = set()
        seen.add(item.model_id)
    return out


async def copy_store(source: ConfigStore, target: ConfigStore) -> tuple[StoredModel, ...]:
    """Copy ``source`` (open) into ``target`` (open, empty); the source's models as read.
    StoreError (one line) if the target is not empty or another writer appends meanwhile."""
    if target.epoch or await target.list_ids():
        raise StoreError(
            f"{target.describe()} already holds models (epoch {target.epoch}); "
            "a store is copied only into an empty one"
        )
    models = tuple(await source.load_all())
    for run in batches(plan_copy(models, source.epoch)):
        result = await target.commit([(i.model_id, i.text) for i in run], run[-1].epoch)
        if not result.in_order or any(e is None for e in result.landed):
            raise StoreError(
                f"{target.describe()}: another writer appended during the copy; "
                "stop every config service using it and copy into an empty store again"
            )
    return models


def check_copy(wanted: Sequence[StoredModel], copied: Sequence[StoredModel]) -> None:
    """The target, read back by a fresh open, holds exactly the source's texts (StoreError)."""
    want = {m.model_id: m.text for m in wanted}
    got = {m.model_id: m.text for m in copied}
    if got != want:
        differ = sorted(k for k in got.keys() | want.keys() if got.get(k) != want.get(k))
        raise StoreError(f"the copy read back differs for {len(differ)} model(s), e.g. {differ[0]!r}")
