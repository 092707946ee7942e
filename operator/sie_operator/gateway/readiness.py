"""The readiness snapshot of contract §2 (pure), plus model-granular fields.

Per bundle of a model: the hash this replica expects, the Healthy workers of that bundle
(eligible), those reporting exactly that hash (acked) and the rest (pending). Lists come out
sorted by worker name (SIE leaves them in hash-map order), so the operator can compare
snapshots without churn. Never vacuously true: no workers or no bundles is not acked.

Additions (every SIE field keeps its SIE meaning, so SIE tooling reads these documents
unchanged): SIE's ``acked`` is bundle-granular -- a worker counts only if its *whole
bundle* hash is the current one, so writing any model makes every other model of the
bundle pending until every worker catches up (contract W4), and an operator mirroring that
into each model's status rewrites the status of every Ready model on every write. So each
bundle line also says which workers are known to hold *this model's* current content:

- ``model_acked_workers``: eligible workers whose reported hash this replica's bundle had
  at or after the model's last change (the registry is append-only, so any such bundle
  state holds the model exactly as it is now; see ``mirror.AckHistory``). A worker on the
  expected hash always counts; a hash the replica never had (or forgot) never does;
- ``model_pending_workers``: the other eligible workers;
- ``model_acked``: at least one eligible worker and none model-pending;

and each model says ``model_acked``: at least one bundle and every bundle ``model_acked``.
Without history (``seq_of`` None) the model fields equal the SIE ones.
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import orjson

SOURCE = "gateway-registry"

# Effective "level" of a worker: the newest mutation whose bundle state it is known to hold.
_ALWAYS = sys.maxsize  # on the expected hash: holds every model's current content
_NEVER = -1  # on a hash this replica never had (or forgot): holds nothing for sure


class EligibleWorker(Protocol):
    @property
    def display_name(self) -> str: ...

    @property
    def config_hash(self) -> str: ...

    @property
    def previous_hashes(self) -> tuple[str, ...]: ...


BundleEntry = dict[str, Any]
ModelSnapshot = dict[str, Any]
# (bundle, reported hash) -> the newest mutation after which this replica's bundle had it
SeqOf = Callable[[str, str], "int | None"]
# model id -> the mutation that last changed it (None: unknown, only the expected hash counts)
ModelSeqOf = Callable[[str], "int | None"]


def worker_level(
    bundle_id: str, expected: str, reported: str, seq_of: SeqOf | None, previous: tuple[str, ...] = ()
) -> int:
    """The newest mutation whose bundle state a worker reporting ``reported`` is known to hold.

    A model whose last change is at or below the level is model-acked on that worker.
    """
    if expected and reported == expected:
        return _ALWAYS
    level = seq_of(bundle_id, reported) if seq_of is not None and reported else None
    if level is None and seq_of is not None:
        # A hash this replica does not know yet is usually one it has not caught up to (the
        # worker applied a delta first). Workers only move forward (the registry is
        # append-only), so the newest state it is known to have held still stands: a burst
        # of writes must not make every acked model of the bundle look pending.
        known = [seq for h in previous if h and (seq := seq_of(bundle_id, h)) is not None]
        level = max(known) if known else None
    return level if level is not None else _NEVER


def model_level(model_seq: int | None) -> int:
    """A model's sequence number on the level scale (unknown: only the expected hash counts)."""
    return _ALWAYS if model_seq is None else model_seq


class BundleView:
    """One bundle as a readiness read sees it, computed once per read.

    The SIE part is shared by every model of the bundle. The model-granular part depends
    only on which workers sit below the model's sequence number; workers are grouped by
    their distinct levels, so the model-pending set of a model is identified by how many
    levels lie below its number (:meth:`variant`): in steady state every worker is on the
    expected hash and every model gets variant 0 (nobody pending), built once.
    """

    __slots__ = ("_keys", "_levels", "_seqs", "_sie", "_variants", "bundle_id", "names")

    def __init__(
        self,
        bundle_id: str,
        expected: str,
        workers: Sequence[EligibleWorker],
        seq_of: SeqOf | None = None,
    ) -> None:
        self.bundle_id = bundle_id
        names: list[str] = []
        seqs: list[int] = []
        acked: list[str] = []
        pending: list[str] = []
        for w in workers:
            name = w.display_name
            level = worker_level(bundle_id, expected, w.config_hash, seq_of, w.previous_hashes)
            names.append(name)
            (acked if level == _ALWAYS else pending).append(name)
            seqs.append(level)
        self.names = names
        self._seqs = seqs
        self._levels = sorted(set(seqs))
        self._sie: BundleEntry = {
            "bundle_id": bundle_id,
            "expected_bundle_config_hash": expected,
            "total_eligible_workers": len(names),
            "acked_workers": acked,
            "pending_workers": pending,
            "acked": bool(names) and not pending,
        }
        self._variants: dict[int, BundleEntry] = {}
        self._keys: dict[int, tuple[bytes, bytes]] = {}

    def variant(self, model_seq: int | None) -> int:
        """Which model-pending set a model with this sequence number gets (0 = nobody)."""
        return bisect.bisect_left(self._levels, _ALWAYS if model_seq is None else model_seq)

    def entry(self, variant: int) -> BundleEntry:
        """The bundle line for models of this ``variant`` (memoised; do not mutate)."""
        found = self._variants.get(variant)
        if found is not None:
            return found
        model_acked: list[str]
        model_pending: list[str] = []
        if variant == 0:
            model_acked = list(self.names)
        else:
            cut = self._levels[variant - 1]  # pending: at or below the cut
            model_acked = []
            for name, level in zip(self.names, self._seqs, strict=True):
                (model_pending if level <= cut else model_acked).append(name)
        found = self._variants[variant] = {
            **self._sie,
            "model_acked_workers": model_acked,
            "model_pending_workers": model_pending,
            "model_acked": bool(self.names) and not model_pending,
        }
        return found

    def for_model(self, model_seq: int | None) -> BundleEntry:
        return self.entry(self.variant(model_seq))

    def keys(self, variant: int) -> tuple[bytes, bytes]:
        """What a watch stream compares for models of this ``variant`` (memoised).

        ``full``: the model-granular facts (who holds the model, who does not);
        ``verdict``: only the eligible set and whether the bundle is acked for the model.
        Neither has the expected hash or SIE's bundle-granular lists: those move with
        every write to the bundle and would make every model of it "change" (README).
        """
        found = self._keys.get(variant)
        if found is None:
            e = self.entry(variant)
            found = self._keys[variant] = (
                orjson.dumps([self.bundle_id, e["model_acked_workers"], e["model_pending_workers"]]),
                orjson.dumps([self.bundle_id, self.names, e["model_acked"]]),
            )
        return found


def bundle_entry(
    bundle_id: str,
    expected: str,
    workers: Sequence[EligibleWorker],
    model_seq: int | None = None,
    seq_of: SeqOf | None = None,
) -> BundleEntry:
    """One bundle's line; ``workers`` are the eligible ones, already in name order."""
    return dict(BundleView(bundle_id, expected, workers, seq_of).for_model(model_seq))


def model_snapshot(model_id: str, entries: Sequence[BundleEntry], config_epoch: int) -> ModelSnapshot:
    """The per-model body of ``GET /v1/configs/models/{id}/status``."""
    return {
        "model_id": model_id,
        "config_epoch": config_epoch,
        "all_bundles_acked": bool(entries) and all(e["acked"] for e in entries),
        "model_acked": bool(entries) and all(e["model_acked"] for e in entries),
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
    model_seq: int | None = None,
    seq_of: SeqOf | None = None,
) -> ModelSnapshot:
    entries = [bundle_entry(b, expected(b), eligible(b), model_seq, seq_of) for b in bundles]
    return model_snapshot(model_id, entries, config_epoch)


class BundleViews:
    """Per-read memo so a bulk read builds each bundle's view once, not once per model."""

    def __init__(
        self,
        expected: Callable[[str], str],
        eligible: Callable[[str], Sequence[EligibleWorker]],
        seq_of: SeqOf | None = None,
    ):
        self._expected = expected
        self._eligible = eligible
        self._seq_of = seq_of
        self._views: dict[str, BundleView] = {}

    def __call__(self, bundle_id: str) -> BundleView:
        view = self._views.get(bundle_id)
        if view is None:
            view = self._views[bundle_id] = BundleView(
                bundle_id, self._expected(bundle_id), self._eligible(bundle_id), self._seq_of
            )
        return view


def _no_seq(model_id: str) -> int | None:
    return None


class ModelEncoder:
    """Per-model objects of a readiness read, encoded directly (keys sorted).

    Each distinct bundle line -- one per (bundle, model-pending set), in steady state one
    per bundle -- is encoded once and spliced into every model that has it: with 10k
    models and 50 workers per bundle this is ~20x cheaper than building and dumping dicts,
    and per model it costs a bisect over the bundle's few distinct worker levels. The bulk
    body and the watch stream use the same bytes, so clients parse one shape.
    """

    def __init__(
        self,
        config_epoch: int,
        expected: Callable[[str], str],
        eligible: Callable[[str], Sequence[EligibleWorker]],
        model_seq: ModelSeqOf | None = None,
        seq_of: SeqOf | None = None,
    ) -> None:
        self.view = BundleViews(expected, eligible, seq_of)
        self.seq = model_seq or _no_seq
        self._encoded: dict[tuple[str, int], tuple[bytes, bool, bool]] = {}
        epoch = str(int(config_epoch)).encode()
        self._head = {
            True: b'{"all_bundles_acked":true,"bundles":[',
            False: b'{"all_bundles_acked":false,"bundles":[',
        }
        self._mid = {
            flag: b'],"config_epoch":'
            + epoch
            + b',"model_acked":'
            + (b"true" if flag else b"false")
            + b',"model_id":'
            for flag in (True, False)
        }
        self._tail = {  # by "has bundles"
            True: b',"no_bundles":false,"source":' + orjson.dumps(SOURCE) + b"}",
            False: b',"no_bundles":true,"source":' + orjson.dumps(SOURCE) + b"}",
        }

    def _line(self, bundle: str, variant: int) -> tuple[bytes, bool, bool]:
        key = (bundle, variant)
        enc = self._encoded.get(key)
        if enc is None:
            e = self.view(bundle).entry(variant)
            enc = self._encoded[key] = (
                orjson.dumps(e, option=orjson.OPT_SORT_KEYS),
                bool(e["acked"]),
                bool(e["model_acked"]),
            )
        return enc

    def pieces(self, model_id: str, bundles: Sequence[str], out: list[bytes]) -> None:
        """Append the pieces of one model's object to ``out`` (joined later, copied once)."""
        s = self.seq(model_id) if bundles else None
        all_acked = model_acked = bool(bundles)
        lines = []
        for b in bundles:
            enc = self._line(b, self.view(b).variant(s))
            lines.append(enc[0])
            all_acked = all_acked and enc[1]
            model_acked = model_acked and enc[2]
        out.append(self._head[all_acked])
        out.append(lines[0] if len(lines) == 1 else b",".join(lines))
        out.append(self._mid[model_acked])
        out.append(orjson.dumps(model_id))
        out.append(self._tail[bool(bundles)])

    def encode(self, model_id: str, bundles: Sequence[str]) -> bytes:
        out: list[bytes] = []
        self.pieces(model_id, bundles, out)
        return b"".join(out)

    def model_acked(self, model_id: str, bundles: Sequence[str]) -> bool:
        """The model's ``model_acked`` (every bundle acked for it by a non-empty set)."""
        s = self.seq(model_id)
        return bool(bundles) and all(self._line(b, self.view(b).variant(s))[2] for b in bundles)

    def keys(self, model_id: str, bundles: Sequence[str]) -> tuple[bytes, bytes]:
        """(full, verdict) comparison keys of one model (see :meth:`BundleView.keys`)."""
        if not bundles:
            return b"-", b"-"
        s = self.seq(model_id)
        full, verdict = [], []
        for b in bundles:
            v = self.view(b)
            f, d = v.keys(v.variant(s))
            full.append(f)
            verdict.append(d)
        return b"|".join(full), b"|".join(verdict)


def bulk_snapshot_json(
    gateway_id: str,
    config_epoch: int,
    models: Iterable[tuple[str, Sequence[str]]],
    expected: Callable[[str], str],
    eligible: Callable[[str], Sequence[EligibleWorker]],
    model_seq: ModelSeqOf | None = None,
    seq_of: SeqOf | None = None,
) -> bytes:
    """Same document as :func:`bulk_snapshot`, serialised directly (see :class:`ModelEncoder`)."""
    enc = ModelEncoder(config_epoch, expected, eligible, model_seq, seq_of)
    epoch = str(int(config_epoch)).encode()
    # One flat list of pieces joined once: every byte of the (large) body is copied once.
    out = [b'{"config_epoch":', epoch, b',"gateway_id":', orjson.dumps(gateway_id), b',"models":[']
    first = True
    for model_id, bundles in models:
        if not first:
            out.append(b",")
        first = False
        enc.pieces(model_id, bundles, out)
    out.append(b"]}")
    return b"".join(out)


def bulk_snapshot(
    gateway_id: str,
    config_epoch: int,
    models: Iterable[tuple[str, Sequence[str]]],
    expected: Callable[[str], str],
    eligible: Callable[[str], Sequence[EligibleWorker]],
    model_seq: ModelSeqOf | None = None,
    seq_of: SeqOf | None = None,
) -> dict[str, Any]:
    """``GET /v1/configs/status``: every model's snapshot, bundle lines computed once each."""
    view = BundleViews(expected, eligible, seq_of)
    seq = model_seq or _no_seq
    return {
        "gateway_id": gateway_id,
        "config_epoch": config_epoch,
        "models": [
            model_snapshot(model_id, [dict(view(b).for_model(seq(model_id))) for b in bundles], config_epoch)
            for model_id, bundles in models
        ],
    }
