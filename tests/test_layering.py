"""Floors that import only downward: the shared fleet protocol below gateway, worker and
controller; neither the worker nor the controller reaches into the gateway (or each other);
leader election sits on kube/ and below, under the controller and the config service."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def loaded(module: str) -> list[str]:
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in json.loads(out.stdout) if m.startswith("sie_operator.")]


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("sie_operator.worker.command", ("sie_operator.gateway", "sie_operator.controller")),
        ("sie_operator.controller.command", ("sie_operator.gateway", "sie_operator.worker")),
        ("sie_operator.gateway.command", ("sie_operator.worker", "sie_operator.controller")),
        (
            "sie_operator.leader",
            (
                "sie_operator.controller",
                "sie_operator.configsvc",
                "sie_operator.gateway",
                "sie_operator.worker",
            ),
        ),
        (
            "sie_operator.protocol.mirror",
            ("sie_operator.gateway", "sie_operator.worker", "sie_operator.controller"),
        ),
    ],
)
def test_no_module_reaches_into_a_sibling(module: str, forbidden: tuple[str, ...]) -> None:
    bad = [m for m in loaded(module) if m.startswith(forbidden)]
    assert not bad, f"{module} imports {bad}"
