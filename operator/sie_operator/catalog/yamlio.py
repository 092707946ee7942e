"""YAML parsing and dumping with the rules our wire formats need.

- Only ``true``/``false`` are booleans (YAML 1.2, as the Rust gateway reads it), so a
  profile named ``on`` or a value ``yes`` stays a string everywhere instead of turning
  into ``True`` in Python and ``"yes"`` in Rust.
- Duplicate keys are refused instead of "last one wins".
- Dates/times stay strings (YAML 1.2 has no implicit timestamps); nesting depth and alias
  expansion are bounded so no consumer recurses or walks without limit.
- libyaml (C) is used when present: it is ~8x faster on the write path.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_CLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


MAX_DEPTH = 64
MAX_VALUES = 1_000_000


class YamlError(ValueError):
    """Text that is not acceptable YAML; ``str(exc)`` is user-facing."""


class _Loader(_CLoader):  # type: ignore[misc,valid-type]
    pass


# Drop YAML 1.1's yes/no/on/off booleans (keep only true/false), its implicit timestamps
# and its octal/binary/sexagesimal integers: in YAML 1.2, as the Rust gateway reads it,
# `2024-01-01` and `1:30` are strings. Decimal and 0x integers stay integers; a leading
# zero (`017`, octal 15 in YAML 1.1) stays a string rather than silently changing value.
_DROPPED_IMPLICIT = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:int")
_Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED_IMPLICIT]
    for key, resolvers in _CLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
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
        data = yaml.load(text, Loader=_Loader)  # our loader is a SafeLoader
    except YamlError:
        raise
    except yaml.YAMLError as exc:
        raise YamlError(" ".join(str(exc).split())) from exc
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. bad timestamps, deep nesting
        raise YamlError(" ".join(str(exc).split()) or type(exc).__name__) from exc
    _check_shape(data)
    return data


def _check_shape(data: Any) -> None:
    """Refuse nesting that would break recursive consumers, and alias "bombs".

    Nested mappings already fail inside the loader (recursion), nested sequences do not;
    aliases make a small text expand into a huge tree for every consumer that walks it.
    """
    stack: list[tuple[Any, int]] = [(data, 0)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise YamlError(f"document expands to more than {MAX_VALUES} values (aliases?)")
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth >= MAX_DEPTH:
            raise YamlError(f"document is nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


def dump(data: Any, *, sort_keys: bool = False) -> str:
    """Block-style YAML, keys in insertion order (SIE's persisted form)."""
    return yaml.dump(data, Dumper=_CDumper, sort_keys=sort_keys, default_flow_style=False)
