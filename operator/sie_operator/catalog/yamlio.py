"""YAML parsing and dumping with the rules our wire formats need.

- Only ``true``/``false`` are booleans (YAML 1.2, as the Rust gateway reads it), so a
  profile named ``on`` or a value ``yes`` stays a string everywhere instead of turning
  into ``True`` in Python and ``"yes"`` in Rust.
- Duplicate keys are refused instead of "last one wins".
- libyaml (C) is used when present: it is ~8x faster on the write path.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_CLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class YamlError(ValueError):
    """Text that is not acceptable YAML; ``str(exc)`` is user-facing."""


class _Loader(_CLoader):  # type: ignore[misc,valid-type]
    pass


# Drop YAML 1.1's yes/no/on/off booleans: keep only true/false.
_Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in _CLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _construct_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError as exc:
            raise YamlError(f"line {key_node.start_mark.line + 1}: unhashable mapping key") from exc
        if key in result:
            raise YamlError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        result[key] = loader.construct_object(value_node, deep=deep)
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load(text: str | bytes) -> Any:
    """Parse one YAML document; raise YamlError with a one-line reason."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise YamlError(f"body is not valid UTF-8 (byte {exc.start})") from exc
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - our loader is a SafeLoader
    except YamlError:
        raise
    except yaml.YAMLError as exc:
        raise YamlError(" ".join(str(exc).split())) from exc
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. bad timestamps, deep nesting
        raise YamlError(" ".join(str(exc).split()) or type(exc).__name__) from exc


def dump(data: Any, *, sort_keys: bool = False) -> str:
    """Block-style YAML, keys in insertion order (SIE's persisted form)."""
    return yaml.dump(data, Dumper=_CDumper, sort_keys=sort_keys, default_flow_style=False)
