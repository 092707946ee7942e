"""The SIE <-> ModelConfig mapping is lossless (nulls, unknown keys, key order) and strict."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_schema_check import check
from pydantic import BaseModel

from sie_operator.catalog import schema as sie_schema
from sie_operator.catalog import yamlio
from sie_operator.controller import crd, spec
from sie_operator.controller.spec import (
    ModelConfigSpec,
    SpecError,
    dump_yaml,
    from_manifest,
    resource_name,
    sie_to_spec,
    spec_to_sie,
    to_manifest,
)

SPEC_SCHEMA = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def ordered(data: Any) -> str:
    """A rendering that differs whenever values, types (1 vs 1.0 vs true) or key order differ."""
    return json.dumps(data, sort_keys=False)


def api_server_view(spec_dict: dict[str, Any]) -> dict[str, Any]:
    """What the API server hands back: JSON with every object's keys sorted."""
    loaded: dict[str, Any] = json.loads(json.dumps(spec_dict, sort_keys=True))
    return loaded


def minimal(**more: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "sie_id": "acme/bert",
        "profiles": {"default": {"adapter_path": "sie_server.adapters.bert_flash:BertFlashAdapter"}},
    }
    doc.update(more)
    return doc


# --------------------------------------------------------------------------- the catalog


def test_catalog_model_round_trips_exactly(catalog_model_file: Path) -> None:
    doc = yamlio.load(catalog_model_file.read_text())
    converted = sie_to_spec(doc)
    back = spec_to_sie(converted)
    assert ordered(back) == ordered(doc)  # values, nulls, types and key order
    assert check(converted, SPEC_SCHEMA, "spec") == []


def test_catalog_model_round_trips_through_api_server_key_order(catalog_model_file: Path) -> None:
    """The API server sorts keys; the SIE document still comes back equal, in SIE order."""
    doc = yamlio.load(catalog_model_file.read_text())
    back = spec_to_sie(api_server_view(sie_to_spec(doc)))
    assert back == doc
    assert list(back) == list(doc)
    for name, profile in doc["profiles"].items():
        assert list(back["profiles"][name]) == list(profile)


def test_catalog_manifests_use_camel_case_and_valid_names(catalog_model_files: list[Path]) -> None:
    names = set()
    for path in catalog_model_files:
        manifest = to_manifest(yamlio.load(path.read_text()), namespace="sie")
        name = manifest["metadata"]["name"]
        assert DNS_LABEL.match(name) and len(name) <= 63, name
        names.add(name)
        assert manifest["apiVersion"] == "sie.dev/v1alpha1" and manifest["kind"] == "ModelConfig"
        assert manifest["metadata"]["namespace"] == "sie"
        assert "sie_id" not in json.dumps(manifest["spec"])  # no snake_case leaked from typed fields
    assert len(names) == len(catalog_model_files)


def test_catalog_explicit_nulls_are_kept_in_the_spec(catalog_dir: Path) -> None:
    doc = yamlio.load((catalog_dir / "models" / "BAAI__bge-m3.yaml").read_text())
    converted = sie_to_spec(doc)
    assert converted["tasks"]["extract"] is None
    assert "computePrecision" in converted["profiles"]["bge_m3_flag"]
    assert converted["profiles"]["bge_m3_flag"]["computePrecision"] is None


# --------------------------------------------------------------------------- lossless corners


def test_nulls_everywhere_survive_and_absent_stays_absent() -> None:
    doc = {
        "sie_id": "acme/nulls",
        "hf_id": None,
        "hf_revision": None,
        "weights_path": None,
        "package_backed": None,
        "inputs": {"text": True, "image": None},
        "tasks": {"encode": {"dense": None, "sparse": {"dim": 3}, "multivector": None}, "score": None},
        "max_sequence_length": None,
        "profiles": {
            "default": {
                "extends": None,
                "max_batch_tokens": None,
                "compute_precision": None,
                "adapter_path": "sie_server.adapters.bert_flash:B",
                "adapter_options": {"loadtime": None, "runtime": {"a": None, "b": [None, 1]}},
                "adaptive_batching": None,
            }
        },
    }
    converted = sie_to_spec(doc)
    assert converted["hfId"] is None and converted["profiles"]["default"]["maxBatchTokens"] is None
    assert "extract" not in converted["tasks"]
    assert ordered(spec_to_sie(converted)) == ordered(doc)
    assert spec_to_sie(api_server_view(converted)) == doc
    assert check(converted, SPEC_SCHEMA, "spec") == []


def test_unknown_keys_go_to_extra_at_every_level_verbatim() -> None:
    doc = {
        "sie_id": "acme/extra",
        "description": "keep-me-around",
        "default_bundle": "premium",
        "inputs": {"text": True, "hologram": True},
        "tasks": {
            "encode": {"dense": {"dim": 8, "normalize": True}, "matryoshka": [8, 4]},
            "generate": {"max_new_tokens": 5},
        },
        "profiles": {
            "default": {
                "adapter_path": "sie_server.adapters.bert_flash:B",
                "note": "tuned",
                "adapter_options": {"runtime": {"camelCaseKey": 1, "snake_key": 2}, "warmup": {"n": 1}},
                "adaptive_batching": {"enabled": True, "target_p50_ms": 20.5, "max_wait_ms": 3.0},
            }
        },
    }
    converted = sie_to_spec(doc)
    assert converted["extra"] == {"description": "keep-me-around", "default_bundle": "premium"}
    assert converted["inputs"]["extra"] == {"hologram": True}
    assert converted["tasks"]["extra"] == {"generate": {"max_new_tokens": 5}}
    assert converted["tasks"]["encode"]["extra"] == {"matryoshka": [8, 4]}
    assert converted["tasks"]["encode"]["dense"] == {"dim": 8, "extra": {"normalize": True}}
    profile = converted["profiles"]["default"]
    assert profile["extra"] == {"note": "tuned"}
    assert profile["adapterOptions"]["runtime"] == {"camelCaseKey": 1, "snake_key": 2}  # verbatim
    assert profile["adapterOptions"]["extra"] == {"warmup": {"n": 1}}
    assert profile["adaptiveBatching"] == {
        "enabled": True,
        "targetP50Ms": 20.5,
        "extra": {"max_wait_ms": 3.0},
    }
    back = spec_to_sie(converted)
    assert back == doc
    # Canonical order: unknown top-level keys before profiles, typed keys first inside objects.
    assert list(back) == ["sie_id", "inputs", "tasks", "description", "default_bundle", "profiles"]
    assert check(converted, SPEC_SCHEMA, "spec") == []


@pytest.mark.parametrize(
    "identity",
    [
        {"name": "acme/legacy"},
        {"sie_id": "acme/legacy", "name": "acme/legacy"},
        {"sie_id": None, "name": "acme/legacy"},
        {"sie_id": "", "name": "acme/legacy"},
        {"name": "acme/legacy", "sie_id": "acme/legacy"},
    ],
    ids=["name-only", "both", "null-sie_id", "empty-sie_id", "name-first"],
)
def test_legacy_name_key_round_trips(identity: dict[str, Any]) -> None:
    doc = {**identity, "hf_id": "x/y", "profiles": {"default": {"extends": None, "adapter_path": "a.b:C"}}}
    converted = sie_to_spec(doc)
    assert converted["sieId"] == "acme/legacy"
    assert {k: converted["extra"][k] for k in identity} == identity
    back = spec_to_sie(converted)
    assert ordered(back) == ordered(doc)
    assert spec_to_sie(api_server_view(converted)) == doc


def test_canonical_sie_id_needs_no_extra() -> None:
    converted = sie_to_spec(minimal())
    assert "extra" not in converted
    assert converted["sieId"] == "acme/bert"


def test_spec_order_is_canonical_even_if_the_file_is_not() -> None:
    doc = {
        "profiles": {"default": {"adapter_options": None, "adapter_path": "a.b:C", "max_batch_tokens": 4}},
        "max_sequence_length": 5,
        "sie_id": "acme/order",
    }
    back = spec_to_sie(sie_to_spec(doc))
    assert back == doc
    assert list(back) == ["sie_id", "max_sequence_length", "profiles"]
    assert list(back["profiles"]["default"]) == ["max_batch_tokens", "adapter_path", "adapter_options"]


def test_profile_name_order_is_kept() -> None:
    profiles = {name: {"extends": "default"} for name in ("zeta", "alpha", "mid")}
    doc = minimal()
    doc["profiles"].update(profiles)
    back = spec_to_sie(sie_to_spec(doc))
    assert list(back["profiles"]) == ["default", "zeta", "alpha", "mid"]


def test_every_catalog_schema_field_is_typed_in_the_spec() -> None:
    """A key the SIE schema knows must never fall into ``extra`` (and the spec invents none)."""
    pairs: list[tuple[type[BaseModel], type[spec.SpecModel]]] = [
        (sie_schema.ModelConfig, spec.ModelConfigSpec),
        (sie_schema.ProfileConfig, spec.ProfileSpec),
        (sie_schema.Inputs, spec.InputsSpec),
        (sie_schema.Tasks, spec.TasksSpec),
        (sie_schema.EncodeTask, spec.EncodeSpec),
        (sie_schema.EmbeddingDim, spec.EmbeddingDimSpec),
        (sie_schema.AdapterOptions, spec.AdapterOptionsSpec),
        (sie_schema.AdaptiveBatching, spec.AdaptiveBatchingSpec),
    ]
    for sie_model, spec_model in pairs:
        sie_keys = set(sie_model.model_fields) - {"name"}  # legacy id spelling: recorded in extra
        spec_keys = {k.sie for k in spec.field_keys(spec_model)}
        assert sie_keys == spec_keys, spec_model.__name__
        assert "extra_" in spec_model.model_fields


# --------------------------------------------------------------------------- refusals


def test_sie_to_spec_refuses_invalid_documents() -> None:
    with pytest.raises(SpecError, match="profiles: Field required"):
        sie_to_spec({"sie_id": "acme/x"})
    with pytest.raises(SpecError, match="adapter_path or extends"):
        sie_to_spec({"sie_id": "acme/x", "profiles": {"default": {"max_batch_tokens": 4}}})
    with pytest.raises(SpecError, match="Model ID"):
        sie_to_spec(minimal(sie_id="a__b"))
    with pytest.raises(SpecError, match="expected a mapping"):
        sie_to_spec(["not", "a", "mapping"])  # type: ignore[arg-type]


def test_sie_to_spec_refuses_values_json_cannot_carry() -> None:
    doc = minimal()
    doc["profiles"]["default"]["adapter_options"] = {"runtime": {"cutoff": datetime.date(2024, 1, 1), 1: "x"}}
    with pytest.raises(SpecError) as info:
        sie_to_spec(doc)
    text = str(info.value)
    assert "profiles.default.adapter_options.runtime.cutoff: a date value" in text
    assert "key 1 is not a string" in text
    with pytest.raises(SpecError, match="not representable in JSON"):
        sie_to_spec(minimal(extra_score=float("nan")))


def test_sie_to_spec_refuses_what_the_crd_bounds_would_refuse() -> None:
    with pytest.raises(SpecError, match=r"spec\.hfId: String should have at most 1024 characters"):
        sie_to_spec(minimal(hf_id="x" * 1025))


def test_spec_to_sie_refuses_unknown_camel_case_keys() -> None:
    converted = sie_to_spec(minimal())
    converted["profiles"]["default"]["maxBatchToken"] = 5
    with pytest.raises(
        SpecError, match=r"spec\.profiles\.default\.maxBatchToken: Extra inputs are not permitted"
    ):
        spec_to_sie(converted)


def test_spec_to_sie_refuses_wrong_types_strictly() -> None:
    converted = sie_to_spec(minimal())
    converted["profiles"]["default"]["maxBatchTokens"] = "8192"
    with pytest.raises(SpecError, match=r"maxBatchTokens"):
        spec_to_sie(converted)
    converted["profiles"]["default"]["maxBatchTokens"] = True
    with pytest.raises(SpecError, match=r"maxBatchTokens"):
        spec_to_sie(converted)


def test_spec_to_sie_reports_sie_rules_with_spec_paths() -> None:
    converted = sie_to_spec(minimal())
    converted["profiles"]["fast"] = {"maxBatchTokens": 4}
    with pytest.raises(SpecError, match=r"spec\.profiles\.fast: profile needs an adapter_path"):
        spec_to_sie(converted)


def test_spec_to_sie_refuses_extra_shadowing_a_typed_field() -> None:
    converted = sie_to_spec(minimal())
    converted["extra"] = {"hf_id": "x/y"}
    converted["profiles"]["default"]["extra"] = {"max_batch_tokens": 3}
    with pytest.raises(SpecError) as info:
        spec_to_sie(converted)
    assert "spec.extra.hf_id: set spec.hfId instead" in str(info.value)
    assert "spec.profiles.default.extra.max_batch_tokens: set spec.profiles.default.maxBatchTokens" in str(
        info.value
    )


def test_spec_to_sie_refuses_id_spelling_that_disagrees_with_sie_id() -> None:
    converted = sie_to_spec(minimal())
    converted["extra"] = {"name": "acme/other"}
    with pytest.raises(SpecError, match="disagrees"):
        spec_to_sie(converted)


def test_from_manifest_checks_kind_and_version() -> None:
    manifest = to_manifest(minimal())
    assert from_manifest(manifest) == minimal()
    with pytest.raises(SpecError, match="not a ModelConfig"):
        from_manifest({**manifest, "kind": "ConfigMap"})
    with pytest.raises(SpecError, match="unsupported apiVersion"):
        from_manifest({**manifest, "apiVersion": "sie.dev/v2"})
    with pytest.raises(SpecError, match="spec: missing"):
        from_manifest({k: v for k, v in manifest.items() if k != "spec"})


def test_spec_model_validates_what_the_mapping_produces() -> None:
    ModelConfigSpec.model_validate(sie_to_spec(minimal(description="x")))


# --------------------------------------------------------------------------- names and YAML


@pytest.mark.parametrize(
    ("sie_id", "expected"),
    [
        ("BAAI/bge-m3", "baai-bge-m3"),
        ("Alibaba-NLP/gte-Qwen2-1.5B-instruct", "alibaba-nlp-gte-qwen2-1-5b-instruct"),
        ("gliner-community/gliner_large-v2.5", "gliner-community-gliner-large-v2-5"),
        ("docling", "docling"),
        ("a-", "a"),
    ],
)
def test_resource_name(sie_id: str, expected: str) -> None:
    assert resource_name(sie_id) == expected


def test_resource_name_of_long_ids_is_bounded_and_distinct() -> None:
    a = resource_name("org/" + "x" * 100 + "-a")
    b = resource_name("org/" + "x" * 100 + "-b")
    assert a != b and len(a) == len(b) == 63
    assert DNS_LABEL.match(a) and DNS_LABEL.match(b)
    assert a == resource_name("org/" + "x" * 100 + "-a")  # deterministic


def test_yaml_output_quotes_what_kubectl_would_misread() -> None:
    doc = minimal()
    doc["profiles"]["y"] = {
        "extends": "default",
        "adapter_options": {"runtime": {"v": "n", "e": "1e3", "o": "on"}},
    }
    text = dump_yaml(to_manifest(doc))
    assert "'y':" in text and "v: 'n'" in text and "e: '1e3'" in text and "o: 'on'" in text
    assert from_manifest(yaml.safe_load(text)) == doc
    assert "&id" not in text


def test_module_imports_no_io_heavy_dependencies() -> None:
    """spec/crd/status are pure: importing them must not pull in kopf or aiohttp."""
    code = (
        "import sys; import sie_operator.controller.spec, sie_operator.controller.crd, "
        "sie_operator.controller.status; "
        "print(sorted(m for m in ('kopf', 'aiohttp', 'nats') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_read_only_mapping_views_are_accepted() -> None:
    """kopf hands the spec over as read-only Mapping views, not dicts."""
    from types import MappingProxyType

    converted = sie_to_spec(minimal(description="x"))
    profiles = {k: MappingProxyType(v) for k, v in converted["profiles"].items()}
    view = MappingProxyType({**converted, "profiles": MappingProxyType(profiles)})
    assert spec_to_sie(view) == minimal(description="x")
    assert sie_to_spec(MappingProxyType(minimal())) == sie_to_spec(minimal())
