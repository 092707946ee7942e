"""The in-memory model registry and the append-only write rules (pure, no I/O).

A write is split in two: :meth:`Registry.plan` validates a document against the current
state and classifies its profiles (created / skipped / conflict) without changing
anything; :meth:`Registry.apply` commits a plan. The config service persists between
the two, so a failed disk write leaves the registry untouched.

Rules (stricter than SIE's config service, see README "Compatibility"):
- an existing profile may be re-sent only with the same content; any difference, in the
  four canonical fields or elsewhere, is a 409 ``content_conflict`` naming the profiles;
- an existing top-level field may be re-sent only with the same value (409 otherwise);
  new top-level fields are added;
- every adapter module must be owned by some bundle, and a new model must route;
- ``extends`` must name an existing, non-extending profile of the merged model;
- the document must be plain JSON data (string keys, finite numbers, bounded depth),
  so that what plan() accepts can always be hashed, copied and served;
- ids that differ only in case from a stored model are refused (lookups are
  case-insensitive, so two such models could never both be addressed).
Every cost here is O(size of the changed model) except the SHA-256 over the bytes after
the changed model in each affected bundle (see hashing.BundleHasher).
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from . import yamlio
from .bundles import BundleSet
from .hashing import BundleHasher, adapter_module, model_fragment
from .schema import ModelConfig, check_extends, format_validation_error, json_data_problem

Source = Literal["api", "filesystem"]
_IDENTITY_KEYS = ("sie_id", "name")


class WriteRejected(Exception):
    """Base of the refusals a write can get; carries the HTTP shape."""

    status = 422
    error = "validation_error"


class ValidationFailed(WriteRejected):
    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


class ContentConflict(WriteRejected):
    status = 409
    error = "content_conflict"

    def __init__(self, model_id: str, profiles: list[str], fields: list[str]) -> None:
        parts = []
        if profiles:
            parts.append(f"Profile(s) {profiles!r} exist with different content.")
        if fields:
            parts.append(f"Top-level field(s) {fields!r} already exist with different values.")
        parts.append("Config API is append-only: existing profiles and fields cannot be changed.")
        super().__init__(" ".join(parts))
        self.model_id = model_id
        self.profiles = profiles
        self.fields = fields


class CaseConflict(WriteRejected):
    status = 409
    error = "model_id_case_conflict"

    def __init__(self, model_id: str, existing: str) -> None:
        super().__init__(
            f"Model '{model_id}' differs only in letter case from the stored model '{existing}'; "
            "model lookups are case-insensitive, so both could not be addressed."
        )
        self.model_id = model_id
        self.existing = existing


class ModelTooLarge(WriteRejected):
    """The merged model would not fit in one record of the store (a JetStream message)."""

    status = 413
    error = "model_too_large"

    def __init__(self, model_id: str, size: int, limit: int) -> None:
        super().__init__(
            f"Model '{model_id}' would take {size} bytes as one store record (its merged YAML "
            f"as JSON); the NATS server carries at most {limit} bytes per message (max_payload), "
            "so the replicated store cannot hold it. Nothing was changed."
        )
        self.model_id = model_id
        self.size = size
        self.limit = limit


def same_value(a: Any, b: Any) -> bool:
    """Deep equality where ``true`` never equals ``1`` but ``8192`` equals ``8192.0``.

    Kubernetes (JSON) may turn ``1.0`` into ``1``; a bool/int mix-up is a real change.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        # an explicit null means the same as an absent key (SIE reads both as "unset");
        # Kubernetes may drop nulls on the way, which must not look like a change
        ka = {k for k, v in a.items() if v is not None}
        kb = {k for k, v in b.items() if v is not None}
        return ka == kb and all(same_value(a[k], b[k]) for k in ka)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and bool(a == b)


@dataclass(slots=True)
class ModelEntry:
    model_id: str
    doc: dict[str, Any]
    source: Source
    modules: frozenset[str]
    bundles: tuple[str, ...]
    epoch: int = 0  # store epoch of the write that last changed this model
    _yaml: str | None = field(default=None, repr=False)

    @property
    def profiles(self) -> dict[str, Any]:
        p = self.doc.get("profiles")
        return p if isinstance(p, dict) else {}

    @property
    def yaml_text(self) -> str:
        """The stored/exported/published form, computed once per version of the doc."""
        if self._yaml is None:
            self._yaml = yamlio.dump(self.doc)
        return self._yaml


@dataclass
class WritePlan:
    """What a write would do; produced by plan(), consumed by apply()."""

    model_id: str
    doc: dict[str, Any]
    created: list[str]
    skipped: list[str]
    added_fields: list[str]
    modules: frozenset[str]
    bundles: tuple[str, ...]
    bundles_by_profile: dict[str, list[str]]
    is_new: bool
    source: Source

    @property
    def changed(self) -> bool:
        return bool(self.created or self.added_fields or self.is_new)


def _modules_of(profiles: Mapping[str, Any]) -> set[str]:
    out = set()
    for raw in profiles.values():
        m = adapter_module(raw) if isinstance(raw, Mapping) else None
        if m:
            out.add(m)
    return out


class Registry:
    """Models by id, with case-insensitive lookup and per-bundle incremental hashes."""

    def __init__(self, bundles: BundleSet) -> None:
        self.bundles = bundles
        self._models: dict[str, ModelEntry] = {}
        self._lower: dict[str, str] = {}
        self._sorted_ids: list[str] = []
        self._hashers: dict[str, BundleHasher] = {b.name: BundleHasher() for b in bundles.bundles}
        self._adapters = {b.name: frozenset(b.adapters) for b in bundles.bundles}

    # -- reads -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._models)

    def __iter__(self) -> Iterator[ModelEntry]:
        """Entries in id (code point) order."""
        for mid in self._sorted_ids:
            yield self._models[mid]

    def get(self, model_id: str) -> ModelEntry | None:
        """Exact-case lookup."""
        return self._models.get(model_id)

    def lookup(self, model_id: str) -> ModelEntry | None:
        """Case-insensitive lookup with exact match first."""
        entry = self._models.get(model_id)
        if entry is None:
            canonical = self._lower.get(model_id.lower())
            entry = self._models.get(canonical) if canonical else None
        return entry

    def bundle_hash(self, bundle: str) -> str:
        h = self._hashers.get(bundle)
        return h.digest() if h is not None else ""

    def models_in_bundle(self, bundle: str) -> int:
        h = self._hashers.get(bundle)
        return len(h) if h is not None else 0

    # -- writes ------------------------------------------------------------------------
    def plan(self, body: Any, *, source: Source = "api", allow_unroutable: bool = False) -> WritePlan:
        """Validate and classify a write without changing anything."""
        if not isinstance(body, dict):
            raise ValidationFailed(["Expected a mapping at top level"])
        problem = json_data_problem(body)
        if problem is not None:
            raise ValidationFailed([problem])
        try:
            cfg = ModelConfig.model_validate(body)
        except ValidationError as exc:
            raise ValidationFailed(format_validation_error(exc)) from exc
        model_id = cfg.model_id
        body_profiles: dict[str, Any] = body["profiles"]

        unknown = sorted(m for m in _modules_of(body_profiles) if not self.bundles.knows_module(m))
        if unknown and not allow_unroutable:
            raise ValidationFailed([f"Adapter(s) not in any known bundle: {', '.join(unknown)}"])

        existing = self._models.get(model_id)
        if existing is None:
            other = self._lower.get(model_id.lower())
            if other is not None:
                raise CaseConflict(model_id, other)
            doc = copy.deepcopy(body)
            created, skipped, added = list(body_profiles), [], []
            merged_profiles = body_profiles
        else:
            stored = existing.doc
            stored_profiles = existing.profiles
            conflict_p = [
                p
                for p in body_profiles
                if p in stored_profiles and not same_value(body_profiles[p], stored_profiles[p])
            ]
            conflict_f = sorted(
                k
                for k in body
                if k != "profiles"
                and k not in _IDENTITY_KEYS
                and body[k] is not None
                and stored.get(k) is not None
                and not same_value(body[k], stored[k])
            )
            if conflict_p or conflict_f:
                raise ContentConflict(model_id, conflict_p, conflict_f)
            created = [p for p in body_profiles if p not in stored_profiles]
            skipped = [p for p in body_profiles if p in stored_profiles]
            added = [
                k
                for k in body
                if k != "profiles"
                and k not in _IDENTITY_KEYS
                and body[k] is not None
                and stored.get(k) is None
            ]
            doc = copy.deepcopy(stored)
            for k in added:
                doc[k] = copy.deepcopy(body[k])
            profiles = dict(doc.get("profiles") or {})
            for p in created:
                profiles[p] = copy.deepcopy(body_profiles[p])
            doc["profiles"] = profiles
            merged_profiles = profiles

        problems = [
            msg for msg in check_extends(merged_profiles) if any(f"Profile '{p}' " in msg for p in created)
        ]
        if problems:
            raise ValidationFailed(problems)

        modules = frozenset(_modules_of(merged_profiles))
        bundles = self.bundles.route(modules)
        if created and not bundles and not allow_unroutable:
            if existing is None:
                msg = (
                    f"Model '{model_id}' does not resolve to any known bundle. Every new model must "
                    "contribute at least one profile whose `adapter_path` module appears in a bundle's "
                    "adapters list. (Profiles that only `extends` another profile do not count.)"
                )
            else:
                msg = (
                    f"Appending profile(s) {created!r} to model '{model_id}' does not affect any bundle. "
                    "Ensure at least one new profile has an `adapter_path` that a known bundle owns."
                )
            raise ValidationFailed([msg])

        by_profile: dict[str, list[str]] = {}
        for p in created:
            raw = merged_profiles[p]
            module = adapter_module(raw)
            if module is None:  # extends-only: served wherever its parent is
                parent = merged_profiles.get(raw.get("extends") or "", {})
                module = adapter_module(parent) if isinstance(parent, Mapping) else None
            by_profile[p] = list(self.bundles.route([module])) if module else []

        return WritePlan(
            model_id=model_id,
            doc=doc,
            created=created,
            skipped=skipped,
            added_fields=added,
            modules=modules,
            bundles=bundles,
            bundles_by_profile=by_profile,
            is_new=existing is None,
            source="api" if (existing is not None and source == "api") else source,
        )

    def apply(self, plan: WritePlan, yaml_text: str | None = None, epoch: int = 0) -> ModelEntry:
        """Commit a plan made against the current state; O(changed model)."""
        entry = ModelEntry(
            model_id=plan.model_id,
            doc=plan.doc,
            source=plan.source,
            modules=plan.modules,
            bundles=plan.bundles,
            epoch=epoch,
            _yaml=yaml_text,
        )
        if plan.is_new:
            bisect.insort(self._sorted_ids, plan.model_id)
            self._lower.setdefault(plan.model_id.lower(), plan.model_id)
        self._models[plan.model_id] = entry
        for b in plan.bundles:
            fragment = model_fragment(plan.model_id, entry.profiles, self._adapters[b])
            self._hashers[b].set(plan.model_id, fragment)
        return entry

    def put(
        self, body: Any, *, source: Source = "api", allow_unroutable: bool = False, epoch: int = 0
    ) -> WritePlan:
        """plan + apply, for bootstrap paths that have nothing to persist in between."""
        plan = self.plan(body, source=source, allow_unroutable=allow_unroutable)
        if plan.changed:
            self.apply(plan, epoch=epoch)
        return plan
