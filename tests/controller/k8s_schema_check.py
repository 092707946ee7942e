"""A small checker of values against a Kubernetes structural schema (no CEL).

Why: the pure tests want to know, without an API server, that what the mapping and the
status writer produce fits the CRD (types, nullability, bounds, and above all no field the
API server would silently prune). The real-API tests then cover CEL and the server's own
validation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
}


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def check(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Problems of ``value`` against ``schema``; empty if the API server would store it unchanged."""
    return list(_check(value, schema, path or "<root>"))


def _check(value: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    if value is None:
        if not schema.get("nullable"):
            yield f"{path}: null is not allowed (not nullable)"
        return
    kind = schema.get("type")
    if kind is not None and not _type_ok(value, kind):
        yield f"{path}: expected {kind}, got {type(value).__name__}"
        return
    if "enum" in schema and value not in schema["enum"]:
        yield f"{path}: {value!r} not in {schema['enum']}"
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            yield f"{path}: longer than {schema['maxLength']}"
        if "minLength" in schema and len(value) < schema["minLength"]:
            yield f"{path}: shorter than {schema['minLength']}"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            yield f"{path}: does not match {schema['pattern']}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            yield f"{path}: below {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            yield f"{path}: above {schema['maximum']}"
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            yield f"{path}: more than {schema['maxItems']} items"
        keys = schema.get("x-kubernetes-list-map-keys")
        if keys:
            seen = [tuple(v.get(k) for k in keys) for v in value if isinstance(v, dict)]
            if len(seen) != len(set(seen)):
                yield f"{path}: duplicate list-map keys {keys}"
        for i, item in enumerate(value):
            yield from _check(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            yield f"{path}: more than {schema['maxProperties']} properties"
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            yield f"{path}: fewer than {schema['minProperties']} properties"
        for req in schema.get("required", []):
            if req not in value:
                yield f"{path}.{req}: required"
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if key in props:
                yield from _check(sub, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from _check(sub, extra, f"{path}.{key}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                yield f"{path}.{key}: unknown field (the API server would prune it)"
