"""Typed view of SIE model and bundle configs (pydantic v2).

Documents travel as plain dicts so that nothing is lost or re-ordered (extra keys,
explicit nulls, comments aside); these models *validate* them and give typed access.
Validation is stricter than SIE's config service (which checks almost nothing and lets
workers reject configs later) but accepts every file of the SIE catalog.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .ids import InvalidModelId, validate_model_id

U32_MAX = 2**32 - 1
MAX_PROFILES = 64
MAX_PROFILE_NAME = 63
PROFILE_NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
ADAPTER_PATH_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
MAX_DOC_DEPTH = 32
MAX_DOC_VALUES = 100_000
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson and serde_json can represent
ComputePrecision = Literal["float16", "bfloat16", "float32"]
PositiveU32 = Annotated[StrictInt, Field(ge=1, le=U32_MAX)]


class _Open(BaseModel):
    """Unknown keys are kept (SIE's config service keeps them), known ones are typed."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class AdapterOptions(_Open):
    loadtime: dict[str, Any] | None = None
    runtime: dict[str, Any] | None = None


class AdaptiveBatching(_Open):
    enabled: StrictBool | None = None
    target_p50_ms: StrictFloat | StrictInt | None = None


class ProfileConfig(_Open):
    extends: StrictStr | None = None
    adapter_path: StrictStr | None = None
    max_batch_tokens: PositiveU32 | None = None
    compute_precision: ComputePrecision | None = None
    adapter_options: AdapterOptions | None = None
    adaptive_batching: AdaptiveBatching | None = None

    @field_validator("adapter_path")
    @classmethod
    def _adapter_path_shape(cls, v: str | None) -> str | None:
        if v is not None and v != "" and not ADAPTER_PATH_RE.fullmatch(v):
            raise ValueError("adapter_path must look like 'package.module:ClassName'")
        return v

    @model_validator(mode="after")
    def _routable_or_extends(self) -> ProfileConfig:
        if not self.adapter_path and not self.extends:
            raise ValueError("profile needs an adapter_path or extends another profile")
        return self

    @property
    def adapter_module(self) -> str | None:
        return self.adapter_path.split(":", 1)[0] if self.adapter_path else None


class Inputs(_Open):
    text: StrictBool | None = None
    image: StrictBool | None = None
    audio: StrictBool | None = None
    video: StrictBool | None = None
    document: StrictBool | None = None


class EmbeddingDim(_Open):
    dim: Annotated[StrictInt, Field(ge=1)]


class EncodeTask(_Open):
    dense: EmbeddingDim | None = None
    sparse: EmbeddingDim | None = None
    multivector: EmbeddingDim | None = None


class Tasks(_Open):
    encode: EncodeTask | None = None
    score: dict[str, Any] | None = None
    extract: dict[str, Any] | None = None


class ModelConfig(_Open):
    """One SIE model config (``models/*.yaml``, the POST body, the NATS ``model_config``)."""

    sie_id: StrictStr | None = None
    name: StrictStr | None = None  # legacy spelling of sie_id
    hf_id: StrictStr | None = None
    hf_revision: StrictStr | None = None
    weights_path: StrictStr | None = None
    package_backed: StrictBool | None = None
    inputs: Inputs | None = None
    tasks: Tasks | None = None
    max_sequence_length: Annotated[StrictInt, Field(ge=1)] | None = None
    profiles: dict[StrictStr, ProfileConfig]

    @field_validator("profiles")
    @classmethod
    def _profiles_shape(cls, v: dict[str, ProfileConfig]) -> dict[str, ProfileConfig]:
        if not v:
            raise ValueError("at least one profile is required")
        if len(v) > MAX_PROFILES:
            raise ValueError(f"at most {MAX_PROFILES} profiles are allowed")
        for name in v:
            if len(name) > MAX_PROFILE_NAME or not PROFILE_NAME_RE.fullmatch(name):
                raise ValueError(
                    f"profile name {name!r} must be 1-{MAX_PROFILE_NAME} characters of "
                    "letters, digits, '.', '_' or '-', starting and ending alphanumeric"
                )
        return v

    @model_validator(mode="after")
    def _id_and_extends(self) -> ModelConfig:
        if self.sie_id and self.name and self.sie_id != self.name:
            raise ValueError("sie_id and name (its legacy spelling) disagree")
        if not self.model_id:
            raise ValueError("Missing required field: sie_id")
        try:
            validate_model_id(self.model_id)
        except InvalidModelId as exc:
            raise ValueError(str(exc)) from exc
        return self

    @property
    def model_id(self) -> str:
        return self.sie_id or self.name or ""


class BundleConfig(_Open):
    """A bundle file: which adapter modules one worker image ships."""

    name: StrictStr | None = None
    priority: StrictInt = 100
    default: StrictBool = False
    adapters: list[StrictStr] = Field(default_factory=list)


def check_extends(profiles: dict[str, Any]) -> list[str]:
    """Problems with ``extends`` links over a model's full (merged) profile map.

    SIE workers resolve ``extends`` one level deep against an existing profile; a link
    to nowhere, or a chain, is accepted by SIE's config service and then breaks the
    worker. We refuse it at write time.
    """
    problems = []
    for name, raw in profiles.items():
        target = raw.get("extends") if isinstance(raw, dict) else None
        if not target:
            continue
        if target == name:
            problems.append(f"Profile '{name}' extends itself")
        elif target not in profiles:
            problems.append(f"Profile '{name}' extends unknown profile '{target}'")
        elif isinstance(profiles[target], dict) and profiles[target].get("extends"):
            problems.append(
                f"Profile '{name}' extends '{target}', which itself extends another profile "
                "(only one level is supported)"
            )
    return problems


def json_data_problem(
    value: Any, *, max_depth: int = MAX_DOC_DEPTH, max_values: int = MAX_DOC_VALUES
) -> str | None:
    """Why ``value`` is not plain JSON data, or None if it is.

    A model document is hashed with orjson, returned as JSON, published as YAML and read by
    the Rust gateway, so only JSON's data model is accepted: string keys, finite floats,
    64-bit integers, bounded nesting and size. YAML can produce more (``!!set``,
    ``!!binary``, ``.nan``, alias bombs, deep nesting), which would otherwise pass
    validation and then fail when the accepted write is hashed, copied or served (or, for
    ``.nan``, never compare equal to its own replay).
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    seen = 0
    while stack:
        v, path, depth = stack.pop()
        seen += 1
        if seen > max_values:
            return f"document has more than {max_values} values"
        where = path or "document"
        if isinstance(v, dict | list):
            if depth >= max_depth:
                return f"{where}: nested deeper than {max_depth} levels"
            if isinstance(v, dict):
                for k, item in v.items():
                    if not isinstance(k, str):
                        return f"{where}: mapping key {k!r} is not a string"
                    stack.append((item, f"{path}.{k}" if path else k, depth + 1))
            else:
                stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(v))
        elif v is None or isinstance(v, str | bool):
            continue
        elif isinstance(v, int):
            if not _INT_MIN <= v <= _INT_MAX:
                return f"{where}: integer {v} is outside the 64-bit range"
        elif isinstance(v, float):
            if not math.isfinite(v):
                return f"{where}: {v!r} is not a finite number"
        else:
            return (
                f"{where}: a value of type {type(v).__name__} is not allowed (only mappings with "
                "string keys, lists, strings, numbers, booleans and null)"
            )
    return None


def format_validation_error(exc: ValidationError) -> list[str]:
    """Turn pydantic's error list into short 'field.path: message' lines."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return lines
