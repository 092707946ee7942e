"""Fast block-YAML emitter for model documents (plain JSON data), for the write path.

PyYAML's representer is pure Python and costs ~0.15 ms for a small model, a sizeable
share of a write. Model documents are plain JSON data (the registry refuses anything
else), so a small emitter suffices: block mappings, PyYAML-style indentless sequences,
and scalars written so that YAML 1.1 readers (PyYAML, SIE workers) and YAML 1.2 readers
(the Rust gateway, our loader) read back exactly the same values: a string is left plain
only when it cannot be taken for anything else, otherwise it is double-quoted with JSON
escapes (valid YAML). Output is ASCII, like PyYAML with ``allow_unicode`` off.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*(?::[A-Za-z0-9_./-]+)*")
# words some YAML version reads as booleans or null
_UNSAFE = re.compile(r"[^\x20-\x7e]")
_RESERVED = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\U{n:08x}" if n > 0xFFFF else f"\\u{n:04x}"


def _string(s: str) -> str:
    if _PLAIN.fullmatch(s) and s.lower() not in _RESERVED:
        return s
    # JSON string escapes are YAML double-quoted escapes; everything outside printable ASCII
    # is escaped (YAML needs \U for characters beyond the BMP, not surrogate pairs).
    quoted = json.dumps(s, ensure_ascii=False)
    return _UNSAFE.sub(lambda m: _escape(m.group()), quoted)


def _float(v: float) -> str:
    if math.isnan(v):
        return ".nan"
    if math.isinf(v):
        return ".inf" if v > 0 else "-.inf"
    text = repr(v).lower()
    if "." not in text and "e" in text:  # YAML 1.1 floats need a dot: 1e+20 -> 1.0e+20
        text = text.replace("e", ".0e", 1)
    return text


def scalar(v: Any) -> str:
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _float(v)
    if isinstance(v, str):
        return _string(v)
    raise TypeError(f"cannot emit a value of type {type(v).__name__}")


def _leaf(v: Any) -> str:
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    return scalar(v)


def _mapping(m: dict[str, Any], indent: int, out: list[str]) -> None:
    pad = " " * indent
    for k, v in m.items():
        key = scalar(k)
        if isinstance(v, dict) and v:
            out.append(f"{pad}{key}:\n")
            _mapping(v, indent + 2, out)
        elif isinstance(v, list) and v:
            out.append(f"{pad}{key}:\n")
            _sequence(v, indent, out)
        else:
            out.append(f"{pad}{key}: {_leaf(v)}\n")


def _sequence(seq: list[Any], indent: int, out: list[str]) -> None:
    pad = " " * indent
    for item in seq:
        if isinstance(item, dict | list) and item:
            sub: list[str] = []
            if isinstance(item, dict):
                _mapping(item, indent + 2, sub)
            else:
                _sequence(item, indent + 2, sub)
            sub[0] = f"{pad}- {sub[0][indent + 2 :]}"
            out.extend(sub)
        else:
            out.append(f"{pad}- {_leaf(item)}\n")


def dump(doc: Any) -> str:
    """Block YAML of a JSON-data document, keys in insertion order."""
    if isinstance(doc, dict) and doc:
        out: list[str] = []
        _mapping(doc, 0, out)
        return "".join(out)
    if isinstance(doc, list) and doc:
        out = []
        _sequence(doc, 0, out)
        return "".join(out)
    return _leaf(doc) + "\n"
