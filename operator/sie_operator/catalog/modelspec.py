"""The ``[bundle:/]model`` spec of the resolve endpoint."""

from __future__ import annotations

from dataclasses import dataclass


class InvalidModelSpec(ValueError):
    pass


@dataclass(frozen=True)
class ModelSpec:
    bundle: str | None
    model: str


def parse_model_spec(spec: str) -> ModelSpec:
    """Split at the first ``:/``; the bundle part is lower-cased, the model kept verbatim."""
    if not spec or not spec.strip():
        raise InvalidModelSpec("model_spec must not be empty")
    if ":/" in spec:
        bundle, model = spec.split(":/", 1)
        if not bundle:
            raise InvalidModelSpec("Bundle part of model_spec must not be empty")
        if not model:
            raise InvalidModelSpec("Model part of model_spec must not be empty")
        return ModelSpec(bundle.lower(), model)
    return ModelSpec(None, spec)
