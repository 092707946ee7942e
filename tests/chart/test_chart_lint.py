"""`helm lint --strict` and values.schema.json.

Why a strict schema: a typo in values (``gateway.replica: 3``) is otherwise silently ignored
and the install "works" with defaults; with ``additionalProperties: false`` Helm refuses it on
lint, template, install and upgrade.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from chartlib import CHART, helm, load_yaml


@pytest.mark.parametrize("values_file", [None, "ci/all-values.yaml", "ci/ha-values.yaml"])
def test_helm_lint_strict(values_file: str | None) -> None:
    extra = ["--values", str(CHART / values_file)] if values_file else []
    res = helm("lint", "--strict", str(CHART), *extra, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 chart(s) failed" in res.stdout
    assert "[WARNING]" not in res.stdout and "[ERROR]" not in res.stdout


@pytest.mark.parametrize(
    "bad",
    [
        ["--set", "foo=bar"],
        ["--set", "operator.foo=1"],
        ["--set", "gateway.replica=3"],  # typo of replicas
        ["--set", "gateway.resources.limits.gpu=1"],
        ["--set", "nats.external.foo=x"],
        ["--set", "monitoring.serviceMonitor.enabled=yes-please"],
        ["--set", "gateway.replicas=-1"],
        ["--set", "operator.logLevel=verbose"],
        ["--set", "nats.external.url=http://nats:4222"],
        ["--set", "workers.bundles.Not_A_Name=1"],
        ["--set-json", 'operator.extraEnv=[{"nam":"X"}]'],
        ["--set-json", 'operator.tolerations=[{"key":"a","effect":"Sometimes"}]'],
    ],
)
def test_schema_rejects_unknown_keys_and_bad_values(bad: list[str]) -> None:
    res = helm("template", "x", str(CHART), *bad, check=False)
    assert res.returncode != 0, f"{bad} was accepted"
    assert "values don't meet the specifications of the schema" in res.stderr, res.stderr


def _objects(node: Any, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield path, node
        for key, value in node.items():
            yield from _objects(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _objects(value, f"{path}[{i}]")


def test_schema_closes_every_object_level() -> None:
    """Every object either lists its properties and refuses others, or is a typed map."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    checked = 0
    for path, node in _objects(schema):
        if path == "$.properties.global":
            continue  # reserved by Helm for parent charts
        extra = node.get("additionalProperties")
        assert extra is False or (isinstance(extra, dict) and extra.get("type")), path
        checked += 1
    assert checked > 30


def test_every_default_value_is_described_by_the_schema() -> None:
    """values.yaml and the schema move together (the schema validates the defaults too)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = load_yaml(CHART / "values.yaml")

    def walk(v: Any, s: dict[str, Any], path: str) -> None:
        if "$ref" in s:
            s = schema["definitions"][s["$ref"].rsplit("/", 1)[1]]
        if isinstance(v, dict) and "properties" in s:
            for key, sub in v.items():
                assert key in s["properties"], f"{path}.{key} is not in values.schema.json"
                walk(sub, s["properties"][key], f"{path}.{key}")

    walk(values, schema, "values")
    assert set(schema["properties"]) - {"global"} == set(values)
