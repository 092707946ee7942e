"""Model ids, YAML loading, the [bundle:/]model spec, bundle files and the pydantic schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sie_operator.catalog import yamlio
from sie_operator.catalog.bundles import (
    Bundle,
    BundleError,
    BundleSet,
    load_bundle_dir,
    parse_bundle,
    shipped_bundles,
    shipped_bundles_dir,
)
from sie_operator.catalog.ids import (
    MAX_ID_LENGTH,
    InvalidModelId,
    filename_to_id,
    id_to_filename,
    validate_model_id,
)
from sie_operator.catalog.modelspec import InvalidModelSpec, ModelSpec, parse_model_spec
from sie_operator.catalog.schema import ModelConfig, ProfileConfig, json_data_problem

# -------------------------------------------------------------------------------- ids


@pytest.mark.parametrize(
    "good", ["BAAI/bge-m3", "a", "intfloat/multilingual-e5-base", "org/m.v1", "x/y/z", "A_b/c-d", "9"]
)
def test_valid_ids(good: str) -> None:
    assert validate_model_id(good) == good
    assert filename_to_id(id_to_filename(good)) == good


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("..", "invalid characters"),
        ("a/../b", "invalid characters"),
        ("a\\b", "invalid characters"),
        ("a\n", "invalid characters"),
        ("a/b\n", "invalid characters"),
        ("", "1 to 253"),
        ("x" * (MAX_ID_LENGTH + 1), "1 to 253"),
        ("x/" * 80 + "y", "too long"),  # 161 characters, but 241 as a file name
        ("-a", "invalid characters"),
        ("/a", "invalid characters"),
        ("a b", "invalid characters"),
        ("a:b", "invalid characters"),
        ("é", "invalid characters"),
        ("status", "/status"),
        ("x/status", "/status"),
        ("a__b", "'__'"),
        ("a_/b", "'__'"),
        ("a/_b", "'__'"),
        ("a/", "'__'"),
        ("a_", "'__'"),
        ("a//b", "empty path segments"),
        (5, "must be a string"),
        (None, "must be a string"),
        (b"a", "must be a string"),
    ],
)
def test_invalid_ids(bad: Any, needle: str) -> None:
    with pytest.raises(InvalidModelId) as info:
        validate_model_id(bad)
    assert needle in str(info.value)


def test_status_suffix_is_case_sensitive() -> None:
    assert validate_model_id("x/Status") == "x/Status"
    assert validate_model_id("statuses") == "statuses"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="aZ09._/-\\\n :", max_size=30) | st.text(max_size=10))
def test_id_rule_total_and_store_mapping_bijective(candidate: str) -> None:
    """Every string is either refused with a message or maps to one store file name and back."""
    try:
        validate_model_id(candidate)
    except InvalidModelId as exc:
        assert str(exc)
        return
    stem = id_to_filename(candidate)
    assert "/" not in stem and filename_to_id(stem) == candidate
    # the store writes <stem>.yaml through .<stem>.yaml.<random>.tmp: must fit NAME_MAX (255)
    assert len(f".{stem}.yaml.{'r' * 16}.tmp".encode()) <= 255


def test_longest_valid_ids_fit_a_file_name() -> None:
    for candidate in ("x" * 200, "x/" * 66 + "y"):
        validate_model_id(candidate)
        assert len(id_to_filename(candidate) + ".yaml") <= 255


# ------------------------------------------------------------------------------ yamlio


def test_yaml_12_booleans() -> None:
    doc = yamlio.load("on: 1\noff: 2\nyes: yes\nno: n\ny: Y\nt: true\nf: False\nu: TRUE\n")
    assert doc == {"on": 1, "off": 2, "yes": "yes", "no": "n", "y": "Y", "t": True, "f": False, "u": True}
    profiles = yamlio.load("profiles:\n  on:\n    extends: off\n")["profiles"]
    assert profiles == {"on": {"extends": "off"}}


def test_yaml_timestamps_stay_strings() -> None:
    assert yamlio.load("d: 2024-01-01\nt: 2001-12-14t21:59:43.10-05:00\n") == {
        "d": "2024-01-01",
        "t": "2001-12-14t21:59:43.10-05:00",
    }
    # and survive a dump/load round trip (the dumper quotes them)
    assert yamlio.load(yamlio.dump({"d": "2024-01-01"})) == {"d": "2024-01-01"}


def test_yaml_scalars() -> None:
    assert yamlio.load("a: 1\nb: 1.5\nc: ~\nd: null\ne: '1'\nf: 8192.0\n") == {
        "a": 1,
        "b": 1.5,
        "c": None,
        "d": None,
        "e": "1",
        "f": 8192.0,
    }
    assert yamlio.load("") is None
    assert yamlio.load(b"a: \xc3\xa9\n") == {"a": "é"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a: 1\na: 2\n", "duplicate key 'a'"),
        ("p:\n  x: 1\n  y: 2\n  x: 3\n", "line 4: duplicate key 'x'"),
        ("{a: 1, a: 1}", "duplicate key"),
        ("on: 1\non: 2\n", "duplicate key 'on'"),
        ("? [a]\n: b\n", "unhashable"),
        ("a: [1\n", ""),
        ("a: b: c\n", ""),
        ("a: *nope\n", "alias"),
        ("a: !!python/object:os.system x\n", ""),
        ("a: !!int x\n", ""),
        ("a: !!timestamp 2024-99-01\n", ""),
        ("<<: 1\n", ""),
        ("a: &x [*x]\n", "nested deeper"),
        ("- " * 3000 + "x\n", "nested deeper"),
        ("[" * 3000 + "]" * 3000, ""),
        ("{a: " * 3000 + "1" + "}" * 3000, ""),
        ("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 200)), ""),
    ],
)
def test_yaml_errors(text: str, needle: str) -> None:
    with pytest.raises(yamlio.YamlError) as info:
        yamlio.load(text)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)  # one line


def test_yaml_alias_bomb_refused() -> None:
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    with pytest.raises(yamlio.YamlError, match="more than"):
        yamlio.load("\n".join(lines))


def test_yaml_invalid_utf8() -> None:
    with pytest.raises(yamlio.YamlError, match="UTF-8"):
        yamlio.load(b"a: \xff\xfe\n")
    with pytest.raises(yamlio.YamlError, match="UTF-8"):
        yamlio.load(b"a: \xc3\n")


_YAMLISH = st.text(alphabet="ab01 :-,[]{}&*!|>'\"%@`#?<.\n\t\\~=", max_size=60)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=80), _YAMLISH))
def test_yaml_load_text_only_raises_yaml_error(text: str) -> None:
    try:
        yamlio.load(text)
    except yamlio.YamlError as exc:
        assert str(exc) and "\n" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80) | _YAMLISH.map(lambda s: s.encode()))
def test_yaml_load_bytes_only_raises_yaml_error(data: bytes) -> None:
    try:
        yamlio.load(data)
    except yamlio.YamlError as exc:
        assert str(exc)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _json, max_size=5))
def test_yaml_dump_load_round_trip(doc: dict[str, Any]) -> None:
    """Whatever the registry stores comes back identical from its YAML form (profiles named `on` etc.)."""
    assert json_data_problem(doc) is None
    text = yamlio.dump(doc)
    assert yamlio.load(text) == doc
    assert text.isascii()


def test_dump_keeps_insertion_order() -> None:
    text = yamlio.dump({"sie_id": "m", "b": 1, "a": {"z": 1, "y": 2}})
    assert text == "sie_id: m\nb: 1\na:\n  z: 1\n  y: 2\n"


# ---------------------------------------------------------------------------- modelspec


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("BAAI/bge-m3", ModelSpec(None, "BAAI/bge-m3")),
        ("BAAI/bge-m3:FlagEmbedding", ModelSpec(None, "BAAI/bge-m3:FlagEmbedding")),
        ("sglang:/BAAI/bge-m3", ModelSpec("sglang", "BAAI/bge-m3")),
        ("SGLANG:/BAAI/bge-m3", ModelSpec("sglang", "BAAI/bge-m3")),
        ("sglang:/X:variant", ModelSpec("sglang", "X:variant")),
        ("simple-model", ModelSpec(None, "simple-model")),
        ("b:/a:/c", ModelSpec("b", "a:/c")),  # split at the first ':/'
        ("Default:/Org/Model", ModelSpec("default", "Org/Model")),  # model kept verbatim
    ],
)
def test_model_spec(spec: str, expected: ModelSpec) -> None:
    assert parse_model_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "model_spec must not be empty"),
        ("   ", "model_spec must not be empty"),
        ("\t\n", "model_spec must not be empty"),
        (":/x", "Bundle part of model_spec must not be empty"),
        ("b:/", "Model part of model_spec must not be empty"),
        (":/", "Bundle part of model_spec must not be empty"),
    ],
)
def test_model_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(InvalidModelSpec) as info:
        parse_model_spec(spec)
    assert str(info.value) == message


# ------------------------------------------------------------------------------ bundles


def _write(d: Path, name: str, text: str) -> None:
    (d / name).write_text(text)


def test_load_bundle_dir_orders_by_priority_then_name(tmp_path: Path) -> None:
    _write(tmp_path, "zeta.yaml", "priority: 10\nadapters: [m.a]\n")
    _write(tmp_path, "alpha.yaml", "priority: 10\nadapters: [m.a, m.b]\n")
    _write(tmp_path, "first.yaml", "name: early\npriority: 1\ndefault: true\nadapters: [m.b]\ndeps: {x: 1}\n")
    _write(tmp_path, "notes.txt", "not a bundle")
    bundles = load_bundle_dir(tmp_path)
    assert bundles.names() == ["early", "alpha", "zeta"]
    assert bundles.route(["m.a"]) == ("alpha", "zeta")
    assert bundles.route(["m.b", "m.a"]) == ("early", "alpha", "zeta")
    assert bundles.route(["m.zzz"]) == ()
    assert bundles.get("early") == Bundle("early", 1, ("m.b",), default=True)
    assert bundles.knows_module("m.a") and not bundles.knows_module("m")
    assert bundles.hash == BundleSet(tuple(reversed(bundles.bundles))).hash


def test_bundle_defaults(tmp_path: Path) -> None:
    _write(tmp_path, "plain.yaml", "adapters: []\n")
    b = load_bundle_dir(tmp_path).get("plain")
    assert b == Bundle("plain", 100, (), default=False)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("adapters: null\n", "adapters"),
        ("adapters: m.a\n", "adapters"),
        ("adapters: [1]\n", "adapters"),
        ("priority: '10'\nadapters: []\n", "priority"),
        ("priority: true\nadapters: []\n", "priority"),
        ("- a\n", "mapping"),
        ("", "mapping"),
        ("name: a.b\nadapters: []\n", "NATS"),
        ("name: 'a b'\nadapters: []\n", "NATS"),
        ('name: "a\\tb"\nadapters: []\n', "NATS"),
        ("name: '*'\nadapters: []\n", "NATS"),
        ("name: _all\nadapters: []\n", "reserved"),
        ("adapters: [a\n", "bad.yaml"),
        ("a: 1\na: 2\n", "duplicate"),
    ],
)
def test_bad_bundle_file_is_an_error_naming_it(tmp_path: Path, text: str, needle: str) -> None:
    _write(tmp_path, "good.yaml", "adapters: [m.a]\n")
    _write(tmp_path, "bad.yaml", text)
    with pytest.raises(BundleError) as info:
        load_bundle_dir(tmp_path)
    assert "bad" in str(info.value) and needle in str(info.value)


def test_bundle_invalid_utf8_names_file(tmp_path: Path) -> None:
    (tmp_path / "bin.yaml").write_bytes(b"adapters: [\xff]\n")
    with pytest.raises(BundleError, match=r"bin\.yaml.*UTF-8"):
        load_bundle_dir(tmp_path)


def test_bundle_name_defined_twice(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", "name: same\nadapters: []\n")
    _write(tmp_path, "b.yaml", "name: same\nadapters: []\n")
    with pytest.raises(BundleError, match=r"b\.yaml.*'same'.*twice"):
        load_bundle_dir(tmp_path)


def test_missing_bundle_dir(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle_dir(tmp_path / "nope")
    assert load_bundle_dir(tmp_path).bundles == ()  # an empty directory is no bundles


def test_parse_bundle_non_mapping() -> None:
    with pytest.raises(BundleError, match="mapping"):
        parse_bundle(None, "x")


def test_shipped_bundles_dir_matches_shipped_bundles() -> None:
    assert load_bundle_dir(shipped_bundles_dir()) == shipped_bundles()


def test_shipped_bundles_match_catalog(catalog_dir: Path) -> None:
    if not (catalog_dir / "bundles").is_dir():
        pytest.skip("catalog has no bundles/")
    assert load_bundle_dir(catalog_dir / "bundles").hash == shipped_bundles().hash


def test_route_dedups_and_orders() -> None:
    bundles = BundleSet((Bundle("b", 1, ("m", "m")), Bundle("a", 1, ("m",))))
    assert bundles.route(["m", "m"]) == ("a", "b")


# ------------------------------------------------------------------------------- schema


def test_model_config_keeps_extra_keys_and_reads_legacy_name() -> None:
    cfg = ModelConfig.model_validate(
        {
            "name": "legacy/id",
            "description": "x",
            "profiles": {"default": {"adapter_path": "a.b:C", "max_batch_tokens": 1, "note": 1}},
            "tasks": {"encode": {"dense": {"dim": 768}}, "score": {}},
            "inputs": {"text": True, "image": False},
        }
    )
    assert cfg.model_id == "legacy/id"
    assert cfg.model_extra == {"description": "x"}
    assert cfg.profiles["default"].adapter_module == "a.b"
    assert cfg.profiles["default"].model_extra == {"note": 1}
    assert cfg.tasks is not None and cfg.tasks.encode is not None and cfg.tasks.encode.dense is not None
    assert cfg.tasks.encode.dense.dim == 768


def test_profile_config_fields() -> None:
    p = ProfileConfig.model_validate(
        {
            "adapter_path": "sie_server.adapters.x:Y",
            "max_batch_tokens": 2**32 - 1,
            "compute_precision": "bfloat16",
            "adapter_options": {"loadtime": {"a": 1}, "runtime": {}},
            "adaptive_batching": {"enabled": True, "target_p50_ms": 12.5, "max_wait_ms": 3},
        }
    )
    assert p.adapter_options is not None and p.adapter_options.loadtime == {"a": 1}
    assert p.adaptive_batching is not None and p.adaptive_batching.model_extra == {"max_wait_ms": 3}
    assert ProfileConfig.model_validate({"extends": "default"}).adapter_module is None


@pytest.mark.parametrize(
    "value",
    [
        {"sie_id": 1, "profiles": {"a": {"c": 1}}},
        {"sie_id": "a", "profiles": {"-x": {"adapter_path": "a:B"}}},
        {"sie_id": "a", "profiles": {"x" * 64: {"adapter_path": "a:B"}}},
        {"sie_id": "a", "profiles": {"a": {"adapter_path": "a:B", "adaptive_batching": {"enabled": "yes"}}}},
        {"sie_id": "a", "inputs": {"text": 1}, "profiles": {"a": {"adapter_path": "a:B"}}},
    ],
)
def test_model_config_refusals(value: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # pydantic.ValidationError is a ValueError
        ModelConfig.model_validate(value)


def test_json_data_problem_paths() -> None:
    assert json_data_problem({"a": [1, {"b": 2}]}) is None
    assert json_data_problem({"a": [1, {"b": {3}}]}) == (
        "a[1].b: a value of type set is not allowed (only mappings with string keys, lists, "
        "strings, numbers, booleans and null)"
    )
    assert json_data_problem({"a": {2: 1}}) == "a: mapping key 2 is not a string"
    assert json_data_problem(float("nan")) == "document: nan is not a finite number"
