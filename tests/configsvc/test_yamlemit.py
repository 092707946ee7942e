"""The write path's YAML emitter must read back identically in YAML 1.1 (PyYAML, SIE
workers) and in our YAML 1.2 loader (as the Rust gateway reads it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sie_operator.catalog import yamlio
from sie_operator.configsvc import yamlemit

CATALOG = (
    Path(os.environ["SIE_CATALOG_DIR"])
    if os.environ.get("SIE_CATALOG_DIR")
    else Path(__file__).parents[3] / "shared" / "catalog"
) / "models"

tricky_strings = st.sampled_from(
    [
        "yes",
        "No",
        "ON",
        "off",
        "y",
        "n",
        "true",
        "False",
        "null",
        "~",
        "",
        " ",
        "-",
        "- a",
        "a: b",
        "a:",
        "#x",
        "x #y",
        "017",
        "0x1F",
        "1_000",
        "1:30",
        "1e5",
        ".5",
        ".inf",
        ".NaN",
        "2024-01-01",
        "2024-01-01T10:00:00Z",
        "<<",
        "=",
        "!tag",
        "&a",
        "*a",
        "@x",
        "`x",
        "|",
        ">",
        "%x",
        "{a}",
        "[a]",
        "a\nb",
        "tab\there",
        "quote'\"",
        "caf\u00e9",
        "\u2603",
        "\x00",
        "\x85",
        "\u2028",
        "long " * 40,
        "sie_server.adapters.bert_flash:BertFlashAdapter",
        "BAAI/bge-m3",
        "a::b",
        "a:b:",
        "_x",
        "x_",
    ]
)
text = st.one_of(tricky_strings, st.text(max_size=30))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=25,
)


def _same(a: Any, b: Any) -> bool:
    """Equality that also checks types (True is not 1, 1 is not 1.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(text, documents, min_size=1, max_size=6))
def test_round_trip_in_both_yaml_versions(doc: dict[str, Any]) -> None:
    out = yamlemit.dump(doc)
    assert out.isascii()
    assert _same(yamlio.load(out), doc), out
    assert _same(yaml.safe_load(out), doc), out


@pytest.mark.skipif(not CATALOG.is_dir(), reason="SIE catalog not available")
def test_catalog_models_round_trip() -> None:
    files = sorted(CATALOG.glob("*.yaml"))
    assert files
    for f in files:
        doc = yamlio.load(f.read_text())
        out = yamlemit.dump(doc)
        assert _same(yamlio.load(out), doc) and _same(yaml.safe_load(out), doc), f.name


def test_shapes() -> None:
    doc = {"a": [], "b": {}, "c": [{"x": 1, "y": [1, [2, 3]]}, [], "s"], "d": {"e": None}}
    assert yamlemit.dump(doc) == (
        'a: []\nb: {}\nc:\n- x: 1\n  "y":\n  - 1\n  - - 2\n    - 3\n- []\n- s\nd:\n  e: null\n'
    )
    assert yamlemit.dump({"on": "yes", "m": 1e20}) == '"on": "yes"\nm: 1.0e+20\n'
    assert yamlemit.dump({"k": "\U0001f600\x7f\u00e9"}) == 'k: "\\U0001f600\\u007f\\u00e9"\n'
