"""The readiness snapshot of contract §2 (pure).

Per bundle of a model: the hash this replica expects, the Healthy workers of that bundle
(eligible), those reporting exactly that hash (acked) and the rest (pending). Lists come out
sorted by worker name (SIE leaves them in hash-map order), so the operator can compare
snapshots without churn. Never vacuously true: no workers or no bundles is not acked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import orjson

SOURCE = "gateway-registry"


class EligibleWorker(Protocol):
    @property
    def display_name(self) -> str: ...

    @property
    def config_hash(self) -> str: ...


BundleEntry = dict[str, Any]
ModelSnapshot = dict[str, Any]


def bundle_entry(bundle_id: str, expected: str, workers: Sequence[EligibleWorker]) -> BundleEntry:
    """One bundle's line; ``workers`` are the eligible ones, already in name order."""
    acked: list[str] = []
    pending: list[str] = []
    for w in workers:
        (acked if expected and w.config_hash == expected else pending).append(w.display_name)
    return {
        "bundle_id": bundle_id,
        "expected_bundle_config_hash": expected,
        "total_eligible_workers": len(workers),
        "acked_workers": acked,
        "pending_workers": pending,
        "acked": bool(workers) and not pending,
    }


def model_snapshot(model_id: str, entries: Sequence[BundleEntry], config_epoch: int) -> ModelSnapshot:
    """The per-model body of ``GET /v1/configs/models/{id}/status``."""
    return {
        "model_id": model_id,
        "config_epoch": config_epoch,
        "all_bundles_acked": bool(entries) and all(e["acked"] for e in entries),
        "no_bundles": not entries,
        "bundles": list(entries),
        "source": SOURCE,
    }


def snapshot_for(
    model_id: str,
    bundles: Iterable[str],
    config_epoch: int,
    expected: Callable[[str], str],
    eligible: Callable[[str], Sequence[EligibleWorker]],
) -> ModelSnapshot:
    entries = [bundle_entry(b, expected(b), eligible(b)) for b in bundles]
    return model_snapshot(model_id, entries, config_epoch)


class BundleEntryCache:
    """Per-request memo so a bulk read computes each bundle once, not once per model."""

    def __init__(self, expected: Callable[[str], str], eligible: Callable[[str], Sequence[EligibleWorker]]):
        self._expected = expected
        self._eligible = eligible
        self._entries: dict[str, BundleEntry] = {}

    def __call__(self, bundle_id: str) -> BundleEntry:
        entry = self._entries.get(bundle_id)
        if entry is None:
            entry = self._entries[bundle_id] = bundle_entry(
                bundle_id, self._expected(bundle_id), self._eligible(bundle_id)
            )
        return entry


def bulk_snapshot_json(
    gateway_id: str,
    config_epoch: int,
    models: Iterable[tuple[str, Sequence[str]]],
    expected: Callable[[str], str],
    eligible: Callable[[str], Sequence[EligibleWorker]],
) -> bytes:
    """Same document as :func:`bulk_snapshot`, serialised directly (keys sorted).

    Each bundle line is encoded once and spliced into every model that has it: with 10k
    models and 50 workers per bundle this is ~20x cheaper than building and dumping dicts.
    """
    entry = BundleEntryCache(expected, eligible)
    encoded: dict[str, tuple[bytes, bool]] = {}
    epoch = str(int(config_epoch)).encode()
    tail = b',"config_epoch":' + epoch + b',"model_id":'
    parts = []
    for model_id, bundles in models:
        lines = []
        all_acked = bool(bundles)
        for b in bundles:
            enc = encoded.get(b)
            if enc is None:
                e = entry(b)
                enc = encoded[b] = (orjson.dumps(e, option=orjson.OPT_SORT_KEYS), bool(e["acked"]))
            lines.append(enc[0])
            all_acked = all_acked and enc[1]
        parts.append(
            b'{"all_bundles_acked":'
            + (b"true" if all_acked else b"false")
            + b',"bundles":['
            + b",".join(lines)
            + b"]"
            + tail
            + orjson.dumps(model_id)
            + b',"no_bundles":'
            + (b"false" if bundles else b"true")
            + b',"source":"'
            + SOURCE.encode()
            + b'"}'
        )
    return (
        b'{"config_epoch":'
        + epoch
        + b',"gateway_id":'
        + orjson.dumps(gateway_id)
        + b',"models":['
        + b",".join(parts)
        + b"]}"
    )


def bulk_snapshot(
    gateway_id: str,
    config_epoch: int,
    models: Iterable[tuple[str, Sequence[str]]],
    expected: Callable[[str], str],
    eligible: Callable[[str], Sequence[EligibleWorker]],
) -> dict[str, Any]:
    """``GET /v1/configs/status``: every model's snapshot, bundle lines computed once each."""
    entry = BundleEntryCache(expected, eligible)
    return {
        "gateway_id": gateway_id,
        "config_epoch": config_epoch,
        "models": [
            model_snapshot(model_id, [entry(b) for b in bundles], config_epoch)
            for model_id, bundles in models
        ],
    }
