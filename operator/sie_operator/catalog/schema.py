"""Typed view of SIE model and bundle configs (pydantic v2).

Documents travel as plain dicts so that nothing is lost or re-ordered (extra keys,
explicit nulls, comments aside); these models *validate* them and give typed access.
Validation is stricter than SIE's config service (which checks almost nothing and lets
workers reject configs later) but accepts every file of the SIE catalog.
"""

from __future__ import annotations

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


def format_validation_error(exc: ValidationError) -> list[str]:
    """Turn pydantic's error list into short 'field.path: message' lines."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return lines
