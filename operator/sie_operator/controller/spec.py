"""The ModelConfig spec (camelCase) and its lossless mapping to and from SIE model YAML.

Why the models look like this: each pydantic field *name* is the SIE (snake_case) key and
its *alias* is the spec (camelCase) key. The mapping below, the spec validation and the CRD
schema (``crd.py`` derives ``openAPIV3Schema`` from these models) therefore come from one
table and cannot drift. SIE's own rules (``catalog.schema``) are applied to the mapped
document, so one set of rules decides what a valid model is.

Lossless both ways:
- keys the typed schema does not know go to ``extra`` at the level where they occur,
  verbatim and in snake_case (``description``, ``default_bundle``, a profile's ``note``...);
- explicit ``null`` stays ``null`` (fields are ``nullable`` in the CRD), absent stays absent;
- free-form maps (``adapterOptions.loadtime/runtime``, ``tasks.score/extract``, ``extra``)
  are copied verbatim, their keys are not camelCased;
- the legacy ``name`` key (and any non-canonical spelling of the id) is kept in ``extra``:
  ``sieId`` is always the effective id, ``extra.name``/``extra.sie_id`` record how the SIE
  document spelled it, and their presence means "emit these instead of ``sie_id``".

Key order: the API server stores JSON objects with sorted keys, so a resource cannot carry
the order of a YAML file. ``spec_to_sie`` therefore emits SIE's canonical order (the order
of the fields below: ``sie_id, hf_id, ..., max_sequence_length``, unknown keys, then
``profiles``; inside a profile ``extends, max_batch_tokens, compute_precision,
adapter_path, adapter_options, adaptive_batching``, unknown keys), which every file of the
SIE catalog already follows; profile names and free-form maps keep the order they arrive in.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..catalog import schema as sie_schema
from ..catalog.ids import _ID_RE, MAX_ID_LENGTH

API_GROUP = "sie.dev"
API_VERSION = "v1alpha1"
KIND = "ModelConfig"
PLURAL = "modelconfigs"
SINGULAR = "modelconfig"
SHORT_NAMES = ("mcfg",)
CATEGORIES = ("sie",)
CRD_NAME = f"{PLURAL}.{API_GROUP}"

# Bounds the CRD needs so CEL rules stay within the API server's cost budget. SIE itself has
# none for these strings; the limits are far above anything real.
MAX_HF_ID = 1024
MAX_REVISION = 256
MAX_PATH = 4096
MAX_ADAPTER_PATH = 1024
MAX_RESOURCE_NAME = 63
_INT64_MAX = 2**63 - 1

# Keys that name the model; allowed in the top-level ``extra`` to record their spelling.
IDENTITY_KEYS = ("sie_id", "name")

FreeForm = dict[str, Any]

_EXTRA_DOC = (
    "SIE keys this schema does not type, kept verbatim (snake_case keys) so the mapping "
    "to SIE YAML is lossless."
)


def _extra() -> Any:
    return Field(None, alias="extra", description=_EXTRA_DOC)


class SpecModel(BaseModel):
    """Base: validate by alias (camelCase), refuse unknown keys (the CRD would prune them)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=False)


class EmbeddingDimSpec(SpecModel):
    dim: int = Field(ge=1, description="Dimension of the embedding.")
    extra_: FreeForm | None = _extra()


class EncodeSpec(SpecModel):
    dense: EmbeddingDimSpec | None = Field(None, description="Dense embedding output.")
    sparse: EmbeddingDimSpec | None = Field(None, description="Sparse embedding output.")
    multivector: EmbeddingDimSpec | None = Field(None, description="Multi-vector embedding output.")
    extra_: FreeForm | None = _extra()


class TasksSpec(SpecModel):
    encode: EncodeSpec | None = Field(None, description="Embedding outputs the model produces.")
    score: FreeForm | None = Field(None, description="Scoring (reranking) task options, verbatim.")
    extract: FreeForm | None = Field(None, description="Extraction task options, verbatim.")
    extra_: FreeForm | None = _extra()


class InputsSpec(SpecModel):
    text: bool | None = Field(None, description="Accepts text input.")
    image: bool | None = Field(None, description="Accepts image input.")
    audio: bool | None = Field(None, description="Accepts audio input.")
    video: bool | None = Field(None, description="Accepts video input.")
    document: bool | None = Field(None, description="Accepts document input.")
    extra_: FreeForm | None = _extra()


class AdapterOptionsSpec(SpecModel):
    loadtime: FreeForm | None = Field(None, description="Options applied when the adapter loads, verbatim.")
    runtime: FreeForm | None = Field(None, description="Options applied per request, verbatim.")
    extra_: FreeForm | None = _extra()


class AdaptiveBatchingSpec(SpecModel):
    enabled: bool | None = Field(None, description="Turn adaptive batching on or off.")
    target_p50_ms: float | None = Field(None, alias="targetP50Ms", description="Target median latency (ms).")
    extra_: FreeForm | None = _extra()


class ProfileSpec(SpecModel):
    extends: str | None = Field(
        None,
        max_length=sie_schema.MAX_PROFILE_NAME,
        description="Name of the profile this one overrides (one level only).",
    )
    max_batch_tokens: int | None = Field(
        None, alias="maxBatchTokens", ge=1, le=sie_schema.U32_MAX, description="Token budget of one batch."
    )
    compute_precision: Literal["float16", "bfloat16", "float32"] | None = Field(
        None, alias="computePrecision", description="Numeric precision the worker computes in."
    )
    adapter_path: str | None = Field(
        None,
        alias="adapterPath",
        max_length=MAX_ADAPTER_PATH,
        pattern=f"^({sie_schema.ADAPTER_PATH_RE.pattern})?$",
        description="Adapter class as 'package.module:ClassName'; its module decides the bundles.",
    )
    adapter_options: AdapterOptionsSpec | None = Field(
        None, alias="adapterOptions", description="Adapter options (free-form maps, verbatim)."
    )
    adaptive_batching: AdaptiveBatchingSpec | None = Field(
        None, alias="adaptiveBatching", description="Adaptive batching settings."
    )
    extra_: FreeForm | None = _extra()


class ModelConfigSpec(SpecModel):
    sie_id: str = Field(
        alias="sieId",
        min_length=1,
        max_length=MAX_ID_LENGTH,
        pattern=f"^{_ID_RE.pattern}$",
        description="SIE model id (e.g. 'BAAI/bge-m3'); immutable.",
    )
    hf_id: str | None = Field(
        None, alias="hfId", max_length=MAX_HF_ID, description="Hugging Face repository id."
    )
    hf_revision: str | None = Field(
        None,
        alias="hfRevision",
        max_length=MAX_REVISION,
        description="Hugging Face revision (branch, tag or commit).",
    )
    weights_path: str | None = Field(
        None,
        alias="weightsPath",
        max_length=MAX_PATH,
        description="Local or object-store path of the weights.",
    )
    package_backed: bool | None = Field(
        None, alias="packageBacked", description="Weights ship inside the adapter's package."
    )
    inputs: InputsSpec | None = Field(None, description="Input modalities.")
    tasks: TasksSpec | None = Field(None, description="Tasks the model serves.")
    max_sequence_length: int | None = Field(
        None, alias="maxSequenceLength", ge=1, description="Longest input in tokens."
    )
    profiles: dict[str, ProfileSpec] = Field(
        min_length=1,
        max_length=sie_schema.MAX_PROFILES,
        description=(
            "Serving profiles by name; append-only: a profile, once present, cannot be removed or changed."
        ),
    )
    extra_: FreeForm | None = _extra()


# --------------------------------------------------------------------------- key table


@dataclass(frozen=True)
class FieldKey:
    """One typed field: SIE key, spec key, and the nested model if it is an object."""

    sie: str
    spec: str
    model: type[SpecModel] | None = None
    is_map: bool = False  # dict[str, model] (profiles)


def _nested(annotation: Any) -> tuple[type[SpecModel] | None, bool]:
    """The SpecModel inside ``X | None`` or ``dict[str, X]``, and whether it is a map."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                return _nested(arg)
        return None, False
    if origin is Annotated:
        return _nested(typing.get_args(annotation)[0])
    if origin is dict:
        inner, _ = _nested(typing.get_args(annotation)[1])
        return inner, inner is not None
    if isinstance(annotation, type) and issubclass(annotation, SpecModel):
        return annotation, False
    return None, False


@functools.cache
def field_keys(model: type[SpecModel]) -> tuple[FieldKey, ...]:
    """The typed fields of ``model`` in canonical (SIE) order, ``extra`` excluded."""
    out = []
    for name, info in model.model_fields.items():
        if name == "extra_":
            continue
        sub, is_map = _nested(info.annotation)
        out.append(FieldKey(sie=name, spec=info.alias or name, model=sub, is_map=is_map))
    return tuple(out)


# --------------------------------------------------------------------------- errors


class SpecError(ValueError):
    """A document that cannot be mapped; ``messages`` are 'path: reason' lines."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


def _format(exc: ValidationError, prefix: str, translate: bool = False) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        if translate:
            loc = _spec_path(loc)
        path = ".".join([prefix, *loc] if prefix else loc)
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {msg}" if path else msg)
    return lines


def _spec_path(sie_loc: list[str]) -> list[str]:
    """Translate a SIE key path (from catalog validation) into the spec's key path."""
    out: list[str] = []
    model: type[SpecModel] | None = ModelConfigSpec
    i = 0
    while i < len(sie_loc):
        part = sie_loc[i]
        if model is None:
            out.extend(sie_loc[i:])
            break
        key = next((k for k in field_keys(model) if k.sie == part), None)
        if key is None:
            if part in IDENTITY_KEYS and model is ModelConfigSpec:
                out.append("sieId")
            else:
                out.extend(["extra", *sie_loc[i:]])
            break
        out.append(key.spec)
        if key.is_map and i + 1 < len(sie_loc):
            out.append(sie_loc[i + 1])
            i += 1
        model = key.model
        i += 1
    return out


def _plain(value: Any) -> Any:
    """A deep copy with plain dicts/lists (kopf hands out read-only Mapping views)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


def _check_json(value: Any, path: str, problems: list[str]) -> None:
    """Kubernetes stores JSON: refuse values that would silently change on the way."""
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if abs(value) > _INT64_MAX:
            problems.append(f"{path}: integer {value} does not fit in 64 bits")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            problems.append(f"{path}: {value} is not representable in JSON")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                problems.append(f"{path}: key {k!r} is not a string (quote it)")
                continue
            _check_json(v, f"{path}.{k}" if path else k, problems)
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_json(v, f"{path}[{i}]", problems)
        return
    problems.append(f"{path}: a {type(value).__name__} value is not representable in JSON (quote it)")


# --------------------------------------------------------------------------- SIE -> spec


def _level_to_spec(
    doc: Mapping[str, Any], model: type[SpecModel], skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    keys = field_keys(model)
    known = {k.sie for k in keys}
    out: dict[str, Any] = {}
    for key in keys:
        if key.sie in doc and key.sie not in skip:
            out[key.spec] = _value_to_spec(doc[key.sie], key)
    extra = {k: copy.deepcopy(v) for k, v in doc.items() if k not in known}
    if extra:
        out["extra"] = extra
    return out


def _value_to_spec(value: Any, key: FieldKey) -> Any:
    if value is None or key.model is None or not isinstance(value, Mapping):
        return copy.deepcopy(value)
    if key.is_map:
        return {
            name: _level_to_spec(v, key.model) if isinstance(v, Mapping) else copy.deepcopy(v)
            for name, v in value.items()
        }
    return _level_to_spec(value, key.model)


def sie_to_spec(doc: Mapping[str, Any]) -> dict[str, Any]:
    """An SIE model document as a ModelConfig ``spec``; raises SpecError if it is invalid."""
    if not isinstance(doc, Mapping):
        raise SpecError(["expected a mapping at top level"])
    doc = _plain(doc)
    problems: list[str] = []
    _check_json(doc, "", problems)
    if problems:
        raise SpecError(problems)
    try:
        cfg = sie_schema.ModelConfig.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(sie_schema.format_validation_error(exc)) from exc
    canonical = isinstance(doc.get("sie_id"), str) and doc["sie_id"] == cfg.model_id and "name" not in doc
    body = _level_to_spec(doc, ModelConfigSpec, skip=("sie_id",))
    spec: dict[str, Any] = {"sieId": cfg.model_id, **body}
    if not canonical:
        # Record the id's spelling: raw identity keys first in extra, then the other extras.
        extra = {k: copy.deepcopy(doc[k]) for k in doc if k in IDENTITY_KEYS}
        extra.update(body.get("extra") or {})
        spec.pop("extra", None)
        spec["extra"] = extra
    try:
        ModelConfigSpec.model_validate(spec)
    except ValidationError as exc:
        raise SpecError(_format(exc, "spec")) from exc
    return spec


# --------------------------------------------------------------------------- spec -> SIE


def _extra_collisions(
    spec: Mapping[str, Any], model: type[SpecModel], path: str, problems: list[str]
) -> None:
    """``extra`` must not shadow a typed field: two places for one key would be ambiguous."""
    keys = field_keys(model)
    extra = spec.get("extra")
    if isinstance(extra, Mapping):
        typed = {k.sie: k.spec for k in keys}
        for k in extra:
            if k in typed and not (model is ModelConfigSpec and k in IDENTITY_KEYS):
                problems.append(
                    f"{path}.extra.{k}: set {path}.{typed[k]} instead (extra holds only untyped keys)"
                )
    for key in keys:
        value = spec.get(key.spec)
        if key.model is None or not isinstance(value, Mapping):
            continue
        if key.is_map:
            for name, sub in value.items():
                if isinstance(sub, Mapping):
                    _extra_collisions(sub, key.model, f"{path}.{key.spec}.{name}", problems)
        else:
            _extra_collisions(value, key.model, f"{path}.{key.spec}", problems)


def _level_to_sie(
    spec: Mapping[str, Any], model: type[SpecModel], skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in field_keys(model):
        if key.spec in spec and key.sie not in skip:
            out[key.sie] = _value_to_sie(spec[key.spec], key)
    for k, v in (spec.get("extra") or {}).items():
        out[k] = copy.deepcopy(v)
    return out


def _value_to_sie(value: Any, key: FieldKey) -> Any:
    if value is None or key.model is None or not isinstance(value, Mapping):
        return copy.deepcopy(value)
    if key.is_map:
        return {name: _level_to_sie(v, key.model) for name, v in value.items()}
    return _level_to_sie(value, key.model)


def spec_to_sie(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A ModelConfig ``spec`` as an SIE model document; raises SpecError if it is invalid."""
    if not isinstance(spec, Mapping):
        raise SpecError(["spec: expected a mapping"])
    spec = _plain(spec)
    try:
        ModelConfigSpec.model_validate(spec)
    except ValidationError as exc:
        raise SpecError(_format(exc, "spec")) from exc
    problems: list[str] = []
    _extra_collisions(spec, ModelConfigSpec, "spec", problems)
    _check_json(spec, "spec", problems)
    if problems:
        raise SpecError(problems)

    sie_id: str = spec["sieId"]
    extra = dict(spec.get("extra") or {})
    identity = {k: extra.pop(k) for k in list(extra) if k in IDENTITY_KEYS}
    doc: dict[str, Any] = dict(copy.deepcopy(identity)) if identity else {"sie_id": sie_id}
    body = _level_to_sie({**spec, "extra": extra}, ModelConfigSpec, skip=("sie_id", "profiles"))
    doc.update(body)
    doc["profiles"] = _value_to_sie(
        spec["profiles"], next(k for k in field_keys(ModelConfigSpec) if k.sie == "profiles")
    )
    try:
        cfg = sie_schema.ModelConfig.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(_format(exc, "spec", translate=True)) from exc
    if cfg.model_id != sie_id:
        raise SpecError([f"spec.sieId: {sie_id!r} disagrees with extra.name/extra.sie_id ({cfg.model_id!r})"])
    return doc


# --------------------------------------------------------------------------- manifests


def resource_name(sie_id: str) -> str:
    """A DNS-1123 label for ``metadata.name`` derived from an SIE id.

    Lower-cased, anything but ``[a-z0-9-]`` (``/``, ``_``, ``.``) becomes ``-``; ids longer
    than 63 characters are cut and get an 8-hex hash of the full id, so distinct long ids
    stay distinct. The full id is always in ``spec.sieId``.
    """
    name = re.sub(r"[^a-z0-9-]", "-", sie_id.lower()).strip("-") or "model"
    if len(name) > MAX_RESOURCE_NAME:
        digest = hashlib.sha256(sie_id.encode("utf-8")).hexdigest()[:8]
        name = name[: MAX_RESOURCE_NAME - 9].rstrip("-") + "-" + digest
    return name


def to_manifest(
    doc: Mapping[str, Any], *, namespace: str | None = None, name: str | None = None
) -> dict[str, Any]:
    """A ModelConfig resource for an SIE model document."""
    spec = sie_to_spec(doc)
    metadata: dict[str, Any] = {"name": name or resource_name(spec["sieId"])}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": metadata, "spec": spec}


def is_manifest(obj: Any) -> bool:
    """Whether ``obj`` looks like a ModelConfig resource (any version of our group)."""
    return (
        isinstance(obj, Mapping)
        and obj.get("kind") == KIND
        and isinstance(obj.get("apiVersion"), str)
        and obj["apiVersion"].split("/", 1)[0] == API_GROUP
    )


def from_manifest(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The SIE model document of a ModelConfig resource; raises SpecError if it is not one."""
    if not is_manifest(obj):
        raise SpecError([f"not a {KIND} (apiVersion {API_GROUP}/{API_VERSION})"])
    if obj["apiVersion"] != f"{API_GROUP}/{API_VERSION}":
        raise SpecError(
            [f"unsupported apiVersion {obj['apiVersion']!r} (expected {API_GROUP}/{API_VERSION})"]
        )
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise SpecError(["spec: missing"])
    return spec_to_sie(spec)


# --------------------------------------------------------------------------- YAML output


class _K8sDumper(yaml.SafeDumper):
    """Quote every string a YAML 1.1 reader (kubectl, go-yaml) would not read as a string.

    PyYAML already quotes what *it* would misread; go-yaml additionally reads ``y``/``n``
    as booleans and ``1e3`` as a number, which would silently change a profile name or an
    adapter option on ``kubectl apply``. Aliases (``&id001``) are never emitted.
    """

    def ignore_aliases(self, data: Any) -> bool:
        return True


_K8sDumper.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))
_K8sDumper.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"),
)


def dump_yaml(data: Any) -> str:
    """Block YAML in insertion order that kubectl, PyYAML and YAML 1.2 readers agree on."""
    return yaml.dump(
        data, Dumper=_K8sDumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=2**16
    )


def dump_yaml_all(docs: list[Any]) -> str:
    """Multi-document YAML (``---`` between documents)."""
    return "---\n".join(dump_yaml(d) for d in docs)
