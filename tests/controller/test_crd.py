"""The committed CRD, ``build_crd()``, ``sie-operator crd`` and the pydantic models agree."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from sie_operator.controller import crd, spec
from sie_operator.controller.crd import build_crd, render_crd_yaml

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "modelconfig.yaml"
REGENERATE = "sie-operator crd > crds/modelconfig.yaml"

VERSION = build_crd()["spec"]["versions"][0]
ROOT = VERSION["schema"]["openAPIV3Schema"]
SPEC = ROOT["properties"]["spec"]
STATUS = ROOT["properties"]["status"]
FREE_FORM_LEAVES = {"loadtime", "runtime", "score", "extract", "extra"}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from sie_operator.cli import main; sys.exit(main())", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )


# --------------------------------------------------------------------------- one source of truth


def test_committed_crd_file_is_current() -> None:
    assert CRD_FILE.is_file(), f"crds/modelconfig.yaml is missing; run: {REGENERATE}"
    assert CRD_FILE.read_text() == render_crd_yaml(), (
        f"crds/modelconfig.yaml is out of date with the pydantic models; run: {REGENERATE}"
    )


def test_chart_copy_of_the_crd_is_current() -> None:
    chart_crd = REPO / "charts" / "sie-operator" / "crds" / "modelconfig.yaml"
    if not chart_crd.is_file():
        pytest.skip("no Helm chart copy of the CRD in this checkout")
    assert chart_crd.read_text() == render_crd_yaml(), (
        "charts/sie-operator/crds/modelconfig.yaml is out of date; run: "
        "sie-operator crd > charts/sie-operator/crds/modelconfig.yaml"
    )


def test_committed_crd_parses_to_build_crd() -> None:
    assert yaml.safe_load(CRD_FILE.read_text()) == build_crd()


def test_cli_prints_the_committed_crd() -> None:
    res = _cli("crd")
    assert res.returncode == 0, res.stderr
    assert res.stdout == CRD_FILE.read_text()
    res = _cli("crd", "-o", "json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == build_crd()


def _model_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every field path of a pydantic model (by alias), ``*`` for map values and list items."""
    for name, info in model.model_fields.items():
        key = info.alias or name
        path = f"{prefix}.{key}" if prefix else key
        yield path
        sub, is_map = _inner_model(info.annotation)
        if sub is not None:
            yield from _model_paths(sub, f"{path}.*" if is_map else path)


def _inner_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, getattr(annotation, "__origin__", None) in (dict, list)
        inner, is_map = _inner_model(arg)
        if inner is not None:
            return inner, is_map
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        yield path
        yield from _schema_paths(sub, path)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _schema_paths(schema["additionalProperties"], f"{prefix}.*")
    if isinstance(schema.get("items"), dict):
        yield from _schema_paths(schema["items"], f"{prefix}.*")


def test_every_spec_model_field_is_in_the_crd_and_vice_versa() -> None:
    model = set(_model_paths(spec.ModelConfigSpec))
    schema = set(_schema_paths(SPEC))
    assert model == schema
    assert {"sieId", "profiles.*.adapterOptions.runtime", "profiles.*.extra", "extra"} <= schema


def test_every_status_model_field_is_in_the_crd_and_vice_versa() -> None:
    model = set(_model_paths(crd.ModelConfigStatus))
    schema = set(_schema_paths(STATUS))
    assert model == schema
    assert {"conditions.*.lastTransitionTime", "bundles.*.pendingWorkers", "gateways.agreeing"} <= schema


# --------------------------------------------------------------------------- structural rules


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}.*")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")


def test_schema_is_structural() -> None:
    forbidden = {"anyOf", "allOf", "oneOf", "not", "$ref", "default", "title", "const"}
    for path, node in _nodes(ROOT):
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, path
        assert forbidden.isdisjoint(node), (path, forbidden & set(node))
        assert node.get("additionalProperties") is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path


def test_preserve_unknown_fields_only_on_free_form_maps() -> None:
    preserved = [path for path, node in _nodes(ROOT) if node.get("x-kubernetes-preserve-unknown-fields")]
    assert preserved, "the free-form maps must keep their content"
    for path in preserved:
        assert path.startswith(".spec."), path
        assert path.rsplit(".", 1)[-1] in FREE_FORM_LEAVES, path
        assert "properties" not in _node_at(path), path
    assert not [p for p in preserved if p.startswith(".status")]


def _node_at(path: str) -> dict[str, Any]:
    return dict(_nodes(ROOT))[path]


def test_optional_spec_fields_are_nullable_required_ones_are_not() -> None:
    required_paths = {".spec", ".spec.sieId", ".spec.profiles", ".spec.profiles.*"}
    required_paths |= {f".spec.tasks.encode.{k}.dim" for k in ("dense", "sparse", "multivector")}
    for path, node in _nodes(SPEC, ".spec"):
        if path in required_paths:
            assert not node.get("nullable"), path
        else:
            assert node.get("nullable") is True, f"{path} must be nullable so explicit nulls survive"


def test_status_is_typed_not_nullable_and_bounded() -> None:
    for path, node in _nodes(STATUS, ".status"):
        assert not node.get("nullable"), path
        assert not node.get("x-kubernetes-preserve-unknown-fields"), path
        if node["type"] == "array":
            assert "maxItems" in node, path
    conditions = STATUS["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert item["required"] == ["type", "status", "lastTransitionTime", "reason", "message"]
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["reason"]["pattern"] == "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"
    bundles = STATUS["properties"]["bundles"]
    assert bundles["x-kubernetes-list-type"] == "map" and bundles["x-kubernetes-list-map-keys"] == [
        "bundleId"
    ]
    assert bundles["items"]["required"] == ["bundleId"]
    for key in ("ackedWorkers", "pendingWorkers"):
        assert bundles["items"]["properties"][key]["maxItems"] == 32


def test_strings_and_maps_under_cel_rules_are_bounded() -> None:
    """Unbounded strings/maps make the API server's CEL cost estimate explode."""
    for path, node in _nodes(SPEC, ".spec"):
        if node["type"] == "string":
            allow_list = any(
                r["rule"].startswith("self in [") for r in node.get("x-kubernetes-validations", [])
            )
            assert "maxLength" in node or allow_list, path
        if node["type"] == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, path
    assert SPEC["properties"]["profiles"]["maxProperties"] == 64


# --------------------------------------------------------------------------- CEL, names, columns


def _rules(node: dict[str, Any]) -> dict[str, str]:
    return {r["rule"]: r["message"] for r in node.get("x-kubernetes-validations", [])}


def test_cel_rules() -> None:
    props = SPEC["properties"]
    assert _rules(props["sieId"])["self == oldSelf"] == "sieId is immutable"
    profiles = props["profiles"]
    assert _rules(profiles)["oldSelf.all(k, k in self)"] == crd.PROFILE_REMOVED
    assert _rules(profiles["additionalProperties"])["self == oldSelf"] == crd.PROFILE_CHANGED
    once = _rules(SPEC)
    expected = ["hfId", "hfRevision", "weightsPath", "packageBacked", "inputs", "tasks", "maxSequenceLength"]
    assert crd.once_set_fields() == expected
    for field in expected:
        rule = f"!has(oldSelf.{field}) || has(self.{field}) && self.{field} == oldSelf.{field}"
        assert once[rule] == crd.ONCE_SET.format(field=field)
    cp = props["profiles"]["additionalProperties"]["properties"]["computePrecision"]
    assert "enum" not in cp  # the API server refuses null against an enum even when nullable
    listed = '"float16", "bfloat16", "float32"'
    assert _rules(cp) == {f"self in [{listed}]": f"must be one of {listed} or null"}


def test_names_scope_and_subresources() -> None:
    c = build_crd()
    assert c["metadata"]["name"] == "modelconfigs.sie.dev"
    assert c["spec"]["group"] == "sie.dev"
    assert c["spec"]["scope"] == "Namespaced"
    assert c["spec"]["names"] == {
        "kind": "ModelConfig",
        "listKind": "ModelConfigList",
        "plural": "modelconfigs",
        "singular": "modelconfig",
        "shortNames": ["mcfg"],
        "categories": ["sie"],
    }
    assert [(v["name"], v["served"], v["storage"]) for v in c["spec"]["versions"]] == [
        ("v1alpha1", True, True)
    ]
    assert VERSION["subresources"] == {"status": {}}
    assert ROOT["required"] == ["spec"]
    assert SPEC["required"] == ["sieId", "profiles"]


def test_printer_columns() -> None:
    cols = [
        (c["name"], c["type"], c["jsonPath"], c.get("priority", 0))
        for c in VERSION["additionalPrinterColumns"]
    ]
    ready = '.status.conditions[?(@.type=="Ready")]'
    assert cols == [
        ("SIE-ID", "string", ".spec.sieId", 0),
        ("Ready", "string", f"{ready}.status", 0),
        ("Acked", "integer", ".status.ackedWorkers", 0),
        ("Pending", "integer", ".status.pendingWorkers", 0),
        ("Epoch", "integer", ".status.configEpoch", 0),
        ("Age", "date", ".metadata.creationTimestamp", 0),
        ("Bundles", "string", ".status.bundles[*].bundleId", 1),
        ("Reason", "string", f"{ready}.reason", 1),
    ]


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_crd_command_output_is_a_single_parseable_document(fmt: str) -> None:
    res = _cli("crd", "--output", fmt)
    assert res.returncode == 0 and res.stderr == ""
    docs = list(yaml.safe_load_all(res.stdout))
    assert len(docs) == 1 and docs[0]["kind"] == "CustomResourceDefinition"
