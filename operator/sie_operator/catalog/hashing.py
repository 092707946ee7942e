"""Hashes shared with SIE's config service, gateway and workers, byte for byte.

``bundles_hash`` is Python ``json.dumps(sort_keys=True, separators=(",", ":"))`` (ASCII
escaped) over the bundle list; ``bundle_config_hash`` is sha256 over orjson's sorted-key
compact dump of per-model entries. Both reproduce the contract's test vectors.

``BundleHasher`` keeps one serialised fragment per model and SHA-256 checkpoints along
the sorted fragment list, so after a change only the bytes *after* the changed model are
re-hashed (in C) instead of re-serialising the whole catalog as SIE does on every write.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

_CHECKPOINT_EVERY = 32


def bundles_hash(bundles: Iterable[tuple[str, int, list[str]]]) -> str:
    items = [
        {"name": name, "priority": priority, "adapters": sorted(adapters)}
        for name, priority, adapters in sorted(bundles, key=lambda b: b[0])
    ]
    if not items:
        return ""
    text = json.dumps(items, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _falsy(v: Any) -> bool:
    return not v


def canonical_options(options: Any) -> Any:
    """``adapter_options`` as hashed: a map of only falsy values counts as null."""
    if isinstance(options, Mapping) and all(_falsy(v) for v in options.values()):
        return None
    return options


def canonical_profile(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The four fields that define a profile for hashing and append-only equality."""
    return {
        "adapter_path": raw.get("adapter_path"),
        "max_batch_tokens": raw.get("max_batch_tokens"),
        "compute_precision": raw.get("compute_precision"),
        "adapter_options": canonical_options(raw.get("adapter_options")),
    }


def adapter_module(raw: Mapping[str, Any]) -> str | None:
    path = raw.get("adapter_path")
    return path.split(":", 1)[0] if isinstance(path, str) and path else None


def model_fragment(
    model_id: str, profiles: Mapping[str, Mapping[str, Any]], adapters: frozenset[str]
) -> bytes | None:
    """One model's entry in a bundle's hash input, or None if the bundle skips it.

    A model counts for a bundle when any of its adapter modules is the bundle's; a profile
    whose module belongs elsewhere is left out, ``extends``-only profiles stay in.
    """
    kept = []
    for name in sorted(profiles):
        raw = profiles[name]
        module = adapter_module(raw)
        if module is not None and module not in adapters:
            continue
        kept.append({"name": name, "config": canonical_profile(raw)})
    return orjson.dumps({"sie_id": model_id, "profiles": kept}, option=orjson.OPT_SORT_KEYS)


def bundle_config_hash_of(fragments: Iterable[bytes]) -> str:
    """Reference (non-incremental) hash of already sorted fragments."""
    parts = list(fragments)
    if not parts:
        return ""
    return hashlib.sha256(b"[" + b",".join(parts) + b"]").hexdigest()


class BundleHasher:
    """Incremental ``bundle_config_hash`` of one bundle."""

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._frags: dict[str, bytes] = {}
        # _checkpoints[j] = sha256 state after "[" and the first j*_CHECKPOINT_EVERY fragments
        self._checkpoints: list[Any] = []
        self._hash: str | None = ""

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._frags

    def set(self, model_id: str, fragment: bytes | None) -> None:
        """Insert, replace (fragment) or remove (None) one model's fragment."""
        old = self._frags.get(model_id)
        if old == fragment:
            return
        pos = bisect.bisect_left(self._ids, model_id)
        if fragment is None:
            del self._frags[model_id]
            del self._ids[pos]
        else:
            if old is None:
                self._ids.insert(pos, model_id)
            self._frags[model_id] = fragment
        del self._checkpoints[pos // _CHECKPOINT_EVERY + 1 :]
        self._hash = None

    def digest(self) -> str:
        if self._hash is not None:
            return self._hash
        if not self._ids:
            self._hash = ""
            return ""
        if not self._checkpoints:
            h = hashlib.sha256(b"[")
            self._checkpoints.append(h.copy())
        cps = self._checkpoints
        i = (len(cps) - 1) * _CHECKPOINT_EVERY
        h = cps[-1].copy()
        ids, frags, n = self._ids, self._frags, len(self._ids)
        # one C-level join and update per checkpoint span, not two Python calls per fragment
        while i < n:
            j = min(i + _CHECKPOINT_EVERY, n)
            if i:
                h.update(b",")
            h.update(b",".join([frags[k] for k in ids[i:j]]))
            i = j
            if i < n and i // _CHECKPOINT_EVERY == len(cps):
                cps.append(h.copy())
        h.update(b"]")
        self._hash = h.hexdigest()
        return self._hash

    def fragments(self) -> list[bytes]:
        return [self._frags[i] for i in self._ids]
