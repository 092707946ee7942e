"""How the write path answers a write a shared store keeps refusing (tests/store/ finds the
schedules; here the service's side of them, against a scripted store): StoreConflict only
when nothing of it can land any more, StoreUnconfirmed while an unanswered append still
could, and unchanged when an earlier attempt did land meanwhile."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from cfgsvc_helpers import BERT, MakeApi, model_yaml

from sie_operator.configsvc.service import CONFLICT_RETRIES, ConfigService
from sie_operator.store import CommitResult, StoreConflict, StoreRecord, StoreUnconfirmed

BODY = {"sie_id": "g/m", "profiles": {"default": {"adapter_path": BERT, "max_batch_tokens": 8192}}}


class RefusingStore:
    """A shared store whose appends never land in order; ``script(n, writes, epoch)`` says
    what commit ``n`` (from 1) returns and may add records for the follower."""

    kind = "jetstream"
    shared = True
    opened = True
    broken = None
    fatal = None
    max_record_bytes = None

    def __init__(self, epoch: int, script: Any) -> None:
        self._epoch = epoch
        self.script = script
        self.commits = 0
        self.records: list[StoreRecord] = []

    @property
    def epoch(self) -> int:
        return self._epoch

    def describe(self) -> str:
        return "scripted"

    async def commit(self, writes: Sequence[tuple[str, str]], epoch: int) -> CommitResult:
        self.commits += 1
        result: CommitResult = self.script(self, self.commits, writes, epoch)
        return result

    def record(self, model_id: str, text: str) -> None:
        self._epoch += 1
        self.records.append(StoreRecord(self._epoch, model_id, text, self._epoch, "other"))

    def drain(self) -> list[StoreRecord]:
        out, self.records = self.records, []
        return out

    async def catch_up(self, within: float) -> None:
        return None

    async def maintain(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def scripted(make_api: MakeApi, script: Any) -> tuple[Any, ConfigService, RefusingStore]:
    api = await make_api()
    service = api.service
    store = RefusingStore(service.epoch, script)
    await service.store.close()  # type: ignore[union-attr]
    service.store = store  # type: ignore[assignment]
    return api, service, store


async def test_a_write_never_answered_is_unconfirmed_not_a_conflict(make_api: MakeApi) -> None:
    def unanswered(store: RefusingStore, n: int, writes: Any, epoch: int) -> CommitResult:
        return CommitResult([None] * len(writes), False, tuple(range(len(writes))))

    api, service, store = await scripted(make_api, unanswered)
    with pytest.raises(StoreUnconfirmed, match="may still be stored"):
        await service.apply(dict(BODY))
    assert store.commits == CONFLICT_RETRIES + 1
    r = await api.post(model_yaml("g/m2"))
    assert r.status == 503
    detail = (await r.json())["detail"]
    assert detail["error"] == "store_unavailable" and "may have been stored" in detail["message"]
    assert "nothing was changed" not in detail["message"]


async def test_a_refused_write_is_a_conflict_once_its_appends_cannot_land(make_api: MakeApi) -> None:
    def unanswered_then_passed(store: RefusingStore, n: int, writes: Any, epoch: int) -> CommitResult:
        if n == 1:  # unanswered; then another model's writes take its sequence and beyond
            store.record("g/other", "sie_id: g/other\n")
            store.record("g/other", "sie_id: g/other\n")
            return CommitResult([None] * len(writes), False, (0,))
        return CommitResult([None] * len(writes), False)  # refused

    _, service, store = await scripted(make_api, unanswered_then_passed)
    with pytest.raises(StoreConflict):
        await service.apply(dict(BODY))
    assert store.commits == CONFLICT_RETRIES + 1


async def test_an_earlier_attempt_that_landed_is_answered_unchanged(make_api: MakeApi) -> None:
    def lands_late(store: RefusingStore, n: int, writes: Any, epoch: int) -> CommitResult:
        if n == CONFLICT_RETRIES + 1:  # the first attempt shows up in the stream only now
            mid, text = writes[0]
            store.record(mid, text)
        return CommitResult([None] * len(writes), False, (0,))

    _, service, store = await scripted(make_api, lands_late)
    result = await service.apply(dict(BODY))
    assert not result.changed and result.epoch == store.epoch
    assert store.commits == CONFLICT_RETRIES + 1
