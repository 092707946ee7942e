"""The ``modelconfigs.sie.dev`` CustomResourceDefinition, generated from the pydantic models.

Why generated: the spec schema is derived from ``spec.ModelConfigSpec`` (the same models
the SIE mapping uses) and the status schema from the models below (which the status
tests validate ``status.compute_status`` output against), so the CRD, the mapping and the
status writer cannot disagree. ``crds/modelconfig.yaml`` is this function's output,
committed; a test fails when it drifts.

What the API server enforces (see README "ModelConfig reference"):
- a structural schema; ``nullable: true`` on optional fields so explicit nulls of SIE
  files survive; ``x-kubernetes-preserve-unknown-fields`` only on the free-form maps;
- bounds (maxLength/maxProperties/maxItems) so CEL rules fit the cost budget;
- CEL: ``sieId`` immutable and a valid SIE id; profile names valid; profiles append-only
  (a profile cannot be removed or changed: CEL equality on a profile also compares the
  preserve-unknown ``adapterOptions``/``extra`` contents, verified on a real API server);
  other top-level fields cannot be changed or removed once set (the store's rule).
Known gaps (CEL cannot see them; the store's content check reports ``ContentConflict``
instead): a field that was explicitly ``null`` counts as unset for CEL (``has()`` is false),
so ``null`` -> value passes admission; and CEL cannot enumerate the keys of a
preserve-unknown map, so the top-level ``extra`` has no admission rule (adding a key is
fine for the store, changing one is a conflict, removing one leaves it stored). Inside a
profile there is no gap: whole-object equality does compare preserve-unknown contents.
"""

from __future__ import annotations

import copy
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..catalog import schema as sie_schema
from . import spec as spec_mod
from .spec import (
    API_GROUP,
    API_VERSION,
    CATEGORIES,
    CRD_NAME,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    ModelConfigSpec,
    dump_yaml,
)
from .status import MAX_BUNDLES, MAX_CONDITIONS, MAX_WORKER_NAME, MAX_WORKER_NAMES

CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

SIE_ID_IMMUTABLE = "sieId is immutable"
PROFILE_REMOVED = "profiles are append-only: an existing profile cannot be removed"
PROFILE_CHANGED = (
    "profiles are append-only: an existing profile cannot be changed; add a profile under a new name instead"
)
ONCE_SET = "{field} cannot be changed or removed once set (the config store is append-only)"


# --------------------------------------------------------------------------- status models


WorkerName = Annotated[str, Field(max_length=MAX_WORKER_NAME)]
ProfileName = Annotated[str, Field(max_length=sie_schema.MAX_PROFILE_NAME)]


class _StatusModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=False)


class ConditionStatus(_StatusModel):
    type: str = Field(max_length=316, pattern=CONDITION_TYPE_PATTERN, description="Condition type.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    observed_generation: int = Field(
        0,
        alias="observedGeneration",
        ge=0,
        json_schema_extra={"format": "int64"},
        description="metadata.generation this condition was computed for.",
    )
    last_transition_time: str = Field(
        alias="lastTransitionTime",
        json_schema_extra={"format": "date-time"},
        description="When the status last changed.",
    )
    reason: str = Field(
        min_length=1, max_length=1024, pattern=REASON_PATTERN, description="CamelCase reason for the status."
    )
    message: str = Field(max_length=32768, description="Human-readable detail.")


class BundleStatus(_StatusModel):
    bundle_id: str = Field(alias="bundleId", min_length=1, max_length=253, description="Bundle name.")
    # Written as null (a merge patch deletes it; the API server prunes nulls of non-nullable
    # fields) while the bundle is acked: it moves with every write to the bundle.
    expected_config_hash: str = Field(
        "",
        alias="expectedConfigHash",
        max_length=128,
        description="Bundle config hash the gateway expects (set only while the bundle is not acked).",
    )
    eligible_workers: int = Field(
        0, alias="eligibleWorkers", ge=0, description="Healthy workers of the bundle."
    )
    acked_workers: list[WorkerName] = Field(
        default_factory=list,
        alias="ackedWorkers",
        max_length=MAX_WORKER_NAMES,
        description=f"Workers reporting the expected hash (sorted, at most {MAX_WORKER_NAMES}).",
    )
    pending_workers: list[WorkerName] = Field(
        default_factory=list,
        alias="pendingWorkers",
        max_length=MAX_WORKER_NAMES,
        description=f"Workers not yet reporting it (sorted, at most {MAX_WORKER_NAMES}).",
    )
    acked: bool = Field(False, description="At least one eligible worker and none pending.")


class GatewaysStatus(_StatusModel):
    seen: int = Field(0, ge=0, description="Gateway replicas observed.")
    agreeing: int = Field(
        0, ge=0, description="Replicas that agree with the first and are at the write's epoch."
    )


class ModelConfigStatus(_StatusModel):
    observed_generation: int = Field(
        0,
        alias="observedGeneration",
        ge=0,
        json_schema_extra={"format": "int64"},
        description="metadata.generation the status was computed for.",
    )
    conditions: list[ConditionStatus] = Field(
        default_factory=list,
        max_length=MAX_CONDITIONS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Ready, Reconciling and Stalled (metav1.Condition).",
    )
    config_epoch: int = Field(
        0,
        alias="configEpoch",
        ge=0,
        json_schema_extra={"format": "int64"},
        description="Config store epoch of the write that made the current content durable.",
    )
    profiles: list[ProfileName] = Field(
        default_factory=list,
        max_length=sie_schema.MAX_PROFILES,
        description="Profiles stored for this model (sorted).",
    )
    bundles: list[BundleStatus] = Field(
        default_factory=list,
        max_length=MAX_BUNDLES,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["bundleId"]},
        description="Per-bundle readiness as the first gateway replica reports it.",
    )
    acked_workers: int = Field(
        0, alias="ackedWorkers", ge=0, description="Acked workers summed over bundles."
    )
    pending_workers: int = Field(
        0, alias="pendingWorkers", ge=0, description="Pending workers summed over bundles."
    )
    gateways: GatewaysStatus = Field(
        default_factory=GatewaysStatus, description="Gateway replicas seen and agreeing."
    )


# --------------------------------------------------------------------------- JSON schema -> structural


_KEY_ORDER = (
    "description",
    "type",
    "nullable",
    "format",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "properties",
    "additionalProperties",
    "items",
)
_PASS = frozenset(
    {
        "format",
        "enum",
        "pattern",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "required",
    }
)


def _structural(
    node: dict[str, Any], defs: dict[str, Any], *, keep_description: bool = True
) -> dict[str, Any]:
    """One pydantic JSON-schema node as a Kubernetes structural-schema node.

    ``X | None`` becomes ``X`` + ``nullable``; ``$ref`` is inlined; ``dict[str, Any]``
    becomes a preserve-unknown object; titles and defaults are dropped (a CRD default
    would make the API server invent values the SIE document does not have).
    """
    node = dict(node)
    description = node.pop("description", None)
    node.pop("title", None)
    node.pop("default", None)
    nullable = False
    while "anyOf" in node or "$ref" in node:
        if "anyOf" in node:
            options = node.pop("anyOf")
            non_null = [o for o in options if o != {"type": "null"}]
            if len(non_null) != 1:
                raise TypeError(f"unsupported union in CRD schema: {options}")
            nullable = nullable or len(non_null) < len(options)
            node = {**non_null[0], **node}
        if "$ref" in node:
            target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
            target.pop("description", None)  # a model's docstring is not the field's meaning
            target.pop("title", None)
            node = {**target, **node}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    out: dict[str, Any] = {}
    if description and keep_description:
        out["description"] = description
    kind = node.pop("type", None)
    if kind is None:
        raise TypeError(f"untyped node in CRD schema: {node}")
    out["type"] = kind
    extensions = {k: node.pop(k) for k in list(node) if k.startswith("x-kubernetes-")}
    if nullable:
        out["nullable"] = True
        if "enum" in node:
            # The API server refuses an explicit null against an enum even when the node is
            # nullable (and even when null is listed), so check the values with CEL instead,
            # which is not evaluated for null.
            values = node.pop("enum")
            listed = ", ".join(json.dumps(v) for v in values)
            extensions["x-kubernetes-validations"] = [
                {"rule": f"self in [{listed}]", "message": f"must be one of {listed} or null"}
            ]
    for key in list(node):
        if key in _PASS:
            out[key] = node.pop(key)
    if "properties" in node:
        out["properties"] = {k: _structural(v, defs) for k, v in node.pop("properties").items()}
    additional = node.pop("additionalProperties", None)
    if isinstance(additional, dict):
        out["additionalProperties"] = _structural(additional, defs, keep_description=False)
    elif additional is True and "properties" not in out:
        extensions["x-kubernetes-preserve-unknown-fields"] = True
    if "items" in node:
        out["items"] = _structural(node.pop("items"), defs, keep_description=False)
    if node:
        raise TypeError(f"unsupported JSON schema keys in CRD schema: {sorted(node)}")
    ordered = {k: out[k] for k in _KEY_ORDER if k in out}
    ordered.update(sorted(extensions.items()))
    return ordered


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural openAPIV3Schema of a pydantic model (by alias)."""
    raw = copy.deepcopy(model.model_json_schema(by_alias=True, mode="validation"))
    defs = raw.pop("$defs", {})
    return _structural(raw, defs)


# --------------------------------------------------------------------------- CEL rules


def _rule(rule: str, message: str, **more: str) -> dict[str, str]:
    return {"rule": rule, "message": message, **more}


def once_set_fields() -> list[str]:
    """Top-level typed spec fields the store treats as append-only (all but id and profiles)."""
    return [k.spec for k in spec_mod.field_keys(ModelConfigSpec) if k.sie not in ("sie_id", "profiles")]


def spec_schema() -> dict[str, Any]:
    schema = {
        "description": "The SIE model config in Kubernetes style (see `sie-operator convert`).",
        **openapi_schema(ModelConfigSpec),
    }
    props = schema["properties"]
    props["sieId"]["x-kubernetes-validations"] = [
        _rule("self == oldSelf", SIE_ID_IMMUTABLE),
        _rule(
            "!self.contains('..') && !self.contains('//') && !self.contains('__') && !self.contains('_/')"
            " && !self.contains('/_') && !self.endsWith('/') && !self.endsWith('_')"
            " && self != 'status' && !self.endsWith('/status')",
            "sieId must not contain '..', '//', '__', '_/' or '/_', end with '/' or '_', "
            "or end with '/status' (the store and the gateway could not address it)",
        ),
    ]
    profiles = props["profiles"]
    profiles["x-kubernetes-validations"] = [
        _rule(
            f"self.all(k, size(k) <= {sie_schema.MAX_PROFILE_NAME} && "
            f"k.matches('^{sie_schema.PROFILE_NAME_RE.pattern}$'))",
            f"profile names must be 1-{sie_schema.MAX_PROFILE_NAME} characters of letters, digits, "
            "'.', '_' or '-', starting and ending with a letter or digit",
        ),
        _rule("oldSelf.all(k, k in self)", PROFILE_REMOVED),
    ]
    profiles["additionalProperties"]["x-kubernetes-validations"] = [
        _rule("self == oldSelf", PROFILE_CHANGED),
        _rule(
            "has(self.adapterPath) && self.adapterPath != '' || has(self.extends) && self.extends != ''",
            "a profile needs an adapterPath or extends another profile",
        ),
    ]
    schema["x-kubernetes-validations"] = [
        _rule(
            f"!has(oldSelf.{f}) || has(self.{f}) && self.{f} == oldSelf.{f}",
            ONCE_SET.format(field=f),
            fieldPath=f".{f}",
        )
        for f in once_set_fields()
    ]
    return schema


def status_schema() -> dict[str, Any]:
    return {
        "description": "Written by the operator only: readiness of the model on the SIE workers.",
        **openapi_schema(ModelConfigStatus),
    }


# --------------------------------------------------------------------------- the CRD

_READY = '.status.conditions[?(@.type=="Ready")]'

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "SIE-ID", "type": "string", "jsonPath": ".spec.sieId", "description": "SIE model id."},
    {"name": "Ready", "type": "string", "jsonPath": f"{_READY}.status", "description": "Ready condition."},
    {"name": "Acked", "type": "integer", "jsonPath": ".status.ackedWorkers", "description": "Workers acked."},
    {
        "name": "Pending",
        "type": "integer",
        "jsonPath": ".status.pendingWorkers",
        "description": "Workers pending.",
    },
    {"name": "Epoch", "type": "integer", "jsonPath": ".status.configEpoch", "description": "Config epoch."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Bundles",
        "type": "string",
        "jsonPath": ".status.bundles[*].bundleId",
        "priority": 1,
        "description": "Bundles serving the model.",
    },
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": f"{_READY}.reason",
        "priority": 1,
        "description": "Reason of the Ready condition.",
    },
]


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition as a dict (what ``sie-operator crd`` prints)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in PRINTER_COLUMNS],
                    "schema": {
                        "openAPIV3Schema": {
                            "description": "An SIE model config, persisted and distributed by sie-operator.",
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


CRD_HEADER = (
    "# Generated by `sie-operator crd` from the pydantic models in sie_operator/controller; do not edit.\n"
    "# Regenerate: sie-operator crd > crds/modelconfig.yaml\n"
)


def render_crd_yaml() -> str:
    """The CRD as committed in ``crds/modelconfig.yaml``."""
    return CRD_HEADER + dump_yaml(build_crd())
