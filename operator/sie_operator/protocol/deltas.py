"""NATS config deltas: payload parsing, producer trust and the epoch rules (pure).

Shared by the gateway mirror and the reference worker so both read the wire the same way.
The config service publishes one message per affected bundle and write, all with the same
epoch, so equal epochs are normal; an epoch that skips one means a write was missed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

SUBJECT_PREFIX = "sie.config.models."
ALL_SUBJECT = SUBJECT_PREFIX + "_all"
DEFAULT_TRUSTED_PRODUCERS = ("sie-config",)


def bundle_subject(bundle: str) -> str:
    return SUBJECT_PREFIX + bundle


class DeltaError(ValueError):
    """A payload that is not a config delta; ``str(exc)`` says why."""


@dataclass(frozen=True)
class Delta:
    router_id: str
    bundle_id: str
    epoch: int
    bundle_config_hash: str
    model_id: str = ""
    model_config: str = ""
    profiles_added: tuple[str, ...] = ()
    affected_bundles: tuple[str, ...] = ()

    @property
    def is_epoch_bump(self) -> bool:
        """A message without a model: it only moves the epoch (contract §3.5 step 3)."""
        return not self.model_config.strip()

    @property
    def kind(self) -> str:
        return "epoch_bump" if self.is_epoch_bump else "model_added"


def _str(obj: dict[str, object], key: str, *, required: bool) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise DeltaError(f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise DeltaError(f"field {key!r} must be a string")
    return value


def _str_list(obj: dict[str, object], key: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DeltaError(f"field {key!r} must be a list of strings")
    return tuple(value)


def parse_delta(data: bytes | str) -> Delta:
    """Decode one message; the four keys the SIE gateway requires are required here too."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DeltaError(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise DeltaError("payload is not a JSON object")
    router_id = obj.get("router_id", obj.get("producer_id"))
    if not isinstance(router_id, str):
        raise DeltaError("missing field 'router_id'")
    epoch = obj.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise DeltaError("field 'epoch' must be a non-negative integer")
    return Delta(
        router_id=router_id,
        bundle_id=_str(obj, "bundle_id", required=True),
        epoch=epoch,
        bundle_config_hash=_str(obj, "bundle_config_hash", required=True),
        model_id=_str(obj, "model_id", required=False),
        model_config=_str(obj, "model_config", required=False),
        profiles_added=_str_list(obj, "profiles_added"),
        affected_bundles=_str_list(obj, "affected_bundles"),
    )


def parse_producer_list(csv: str | None) -> tuple[str, ...]:
    """``SIE_NATS_CONFIG_TRUSTED_PRODUCERS``: comma list, blanks dropped, default ``sie-config``."""
    if csv is None:
        return DEFAULT_TRUSTED_PRODUCERS
    return tuple(dict.fromkeys(p.strip() for p in csv.split(",") if p.strip()))


def is_trusted(router_id: str, allowlist: Iterable[str] | None) -> bool:
    """Exact match or ``<entry>-`` prefix (pod names); ``None`` means trust any producer.

    An empty allowlist trusts nobody, unlike SIE where it silently means "trust any":
    opening the door must be explicit (``SIE_NATS_CONFIG_TRUST_ANY_PRODUCER``).
    """
    if allowlist is None:
        return True
    return any(router_id == p or router_id.startswith(p + "-") for p in allowlist)


class EpochStep(enum.Enum):
    SEEN = "seen"  # epoch <= local: another copy of a known write, or an old one
    NEXT = "next"  # epoch == local + 1: the next write, in order
    GAP = "gap"  # epoch > local + 1: at least one write was missed


def classify_epoch(local: int, delta_epoch: int) -> EpochStep:
    """Where a tracked delta falls relative to the contiguous local watermark."""
    if delta_epoch <= local:
        return EpochStep.SEEN
    if delta_epoch == local + 1:
        return EpochStep.NEXT
    return EpochStep.GAP


class PollAction(enum.Enum):
    IN_SYNC = "in_sync"
    BEHIND = "behind"  # remote epoch ahead: writes we have not seen
    AHEAD = "ahead"  # remote epoch lower: the config service lost or reset its epoch
    BUNDLES_CHANGED = "bundles_changed"


def poll_action(
    local_epoch: int, local_bundles_hash: str, remote_epoch: int, remote_bundles_hash: str
) -> PollAction:
    """The poller's three-way branch (contract §3.4); an empty remote hash means "unknown"."""
    if remote_epoch < local_epoch:
        return PollAction.AHEAD
    if remote_epoch > local_epoch:
        return PollAction.BEHIND
    if remote_bundles_hash and remote_bundles_hash != local_bundles_hash:
        return PollAction.BUNDLES_CHANGED
    return PollAction.IN_SYNC
