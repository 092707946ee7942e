"""The example ModelConfigs and the GitHub Actions workflow, exercised for real.

Why: examples are copied into users' repositories; one that the API server refuses, that
routes to no bundle, or a workflow whose failure report is wrong, is worse than none.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sie_operator.catalog.bundles import shipped_bundles
from sie_operator.catalog.registry import Registry
from sie_operator.controller.spec import from_manifest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
MODELCONFIGS = sorted((EXAMPLES / "modelconfigs").glob("*.yaml"))
WORKFLOW = EXAMPLES / "github-actions" / "apply-and-wait.yml"
CRD = REPO / "charts" / "sie-operator" / "crds" / "modelconfig.yaml"
CATALOG = REPO.parent / "shared" / "catalog" / "models"

# example file -> the bundle the shipped bundles route it to
ROUTES = {
    "intfloat-e5-small-v2.yaml": ["default"],
    "baai-bge-m3.yaml": ["default"],
    "intfloat-e5-mistral-7b-instruct.yaml": ["sglang"],
    "lightonai-lightonocr-2-1b.yaml": ["transformers5"],
}


def test_examples_cover_three_bundles() -> None:
    assert sorted(p.name for p in MODELCONFIGS) == sorted(ROUTES)


@pytest.mark.parametrize("path", MODELCONFIGS, ids=[p.name for p in MODELCONFIGS])
def test_example_is_a_valid_routable_model(path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    doc = from_manifest(manifest)
    plan = Registry(shipped_bundles()).plan(doc)
    assert list(plan.bundles) == ROUTES[path.name]
    assert plan.created == sorted(manifest["spec"]["profiles"]) or set(plan.created) == set(
        manifest["spec"]["profiles"]
    )


@pytest.mark.parametrize("path", MODELCONFIGS, ids=[p.name for p in MODELCONFIGS])
def test_example_matches_the_catalog_model(path: Path) -> None:
    """Trimmed (nulls and false inputs dropped), but every value kept is the catalog's."""
    spec = yaml.safe_load(path.read_text())["spec"]
    source = CATALOG / (spec["sieId"].replace("/", "__") + ".yaml")
    if not source.is_file():
        pytest.skip(f"catalog not available at {source}")
    original = yaml.safe_load(source.read_text())
    doc = from_manifest(yaml.safe_load(path.read_text()))

    def contained(small: Any, big: Any, where: str) -> None:
        if isinstance(small, dict):
            assert isinstance(big, dict), where
            for k, v in small.items():
                assert k in big, f"{where}.{k}"
                contained(v, big[k], f"{where}.{k}")
        else:
            assert small == big, where

    contained(doc, original, spec["sieId"])


# --------------------------------------------------------------------------- against the API server


def _install_crd(cp: Any) -> None:
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cp.kubectl("wait", "--for=condition=Established", "crd/modelconfigs.sie.dev", "--timeout=30s")


def _workflow_steps() -> dict[str, dict[str, Any]]:
    wf = yaml.safe_load(WORKFLOW.read_text())
    return {s["name"]: s for s in wf["jobs"]["apply"]["steps"] if "name" in s}


def _run_step(
    name: str, cp: Any, workdir: Path, namespace: str, timeout: str
) -> subprocess.CompletedProcess[str]:
    """Run one workflow step's script with bash, as the runner would (kubectl on PATH)."""
    script = _workflow_steps()[name]["run"]
    kubectl_dir = workdir / "bin"
    kubectl_dir.mkdir(exist_ok=True)
    shim = kubectl_dir / "kubectl"
    shim.write_text(f'#!/bin/sh\nexec {cp.bin("kubectl")} --cache-dir={workdir}/kube-cache "$@"\n')
    shim.chmod(0o755)
    runner_temp = workdir / "runner-temp"
    runner_temp.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PATH": f"{kubectl_dir}{os.pathsep}{os.environ['PATH']}",
        "KUBECONFIG": str(cp.kubeconfig),
        "NAMESPACE": namespace,
        "READY_TIMEOUT": timeout,
        "RUNNER_TEMP": str(runner_temp),
    }
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _set_status(cp: Any, ns: str, name: str, ready: str, reason: str, message: str) -> None:
    """Write a status as the operator would (these tests run no operator)."""
    obj = json.loads(cp.kubectl("get", "modelconfig", name, "-n", ns, "-o", "json").stdout)
    gen = obj["metadata"]["generation"]
    cond = {
        "type": "Ready",
        "status": ready,
        "reason": reason,
        "message": message,
        "observedGeneration": gen,
        "lastTransitionTime": "2026-05-04T10:00:00Z",
    }
    patch = {"status": {"observedGeneration": gen, "conditions": [cond]}}
    cp.kubectl(
        "patch",
        "modelconfig",
        name,
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(patch),
    )


@pytest.mark.k8s
def test_workflow_applies_and_reports_each_model_that_is_not_ready(
    control_plane: Any, k8s_namespace: str, tmp_path: Path
) -> None:
    _install_crd(control_plane)
    target = tmp_path / "configs" / "modelconfigs"
    target.mkdir(parents=True)
    for p in MODELCONFIGS:
        shutil.copy(p, target / p.name)

    for step in ("Validate (server-side dry run)", "Apply"):
        res = _run_step(step, control_plane, tmp_path, k8s_namespace, "5s")
        assert res.returncode == 0, res.stderr
    names = sorted(yaml.safe_load(p.read_text())["metadata"]["name"] for p in MODELCONFIGS)
    got = control_plane.kubectl("get", "mcfg", "-n", k8s_namespace, "-o", "name").stdout.split()
    assert sorted(n.split("/")[1] for n in got) == names

    # Applying the same files again changes nothing (same field manager, same content).
    def generations() -> dict[str, int]:
        items = json.loads(control_plane.kubectl("get", "mcfg", "-n", k8s_namespace, "-o", "json").stdout)[
            "items"
        ]
        return {o["metadata"]["name"]: o["metadata"]["generation"] for o in items}

    before = generations()
    res = _run_step("Apply", control_plane, tmp_path, k8s_namespace, "5s")
    assert res.returncode == 0, res.stderr
    assert generations() == before

    ready, pending, *rest = names
    _set_status(control_plane, k8s_namespace, ready, "True", "AllBundlesAcked", "2 worker(s) acked")
    _set_status(
        control_plane, k8s_namespace, pending, "False", "WorkersPending", "1/2 workers acked; pending: w-1"
    )
    res = _run_step("Wait for Ready", control_plane, tmp_path, k8s_namespace, "3s")
    assert res.returncode == 1, res.stdout + res.stderr
    errors = [ln for ln in res.stdout.splitlines() if ln.startswith("::error ")]
    assert len(errors) == len(names) - 1, res.stdout
    assert not any(f"title=ModelConfig {ready} " in e for e in errors)
    assert any(f"{pending} (" in e and "WorkersPending: 1/2 workers acked; pending: w-1" in e for e in errors)
    for name in rest:
        assert any(
            f"::{name} (" in e and "NoStatus: the operator has not reported a status yet" in e for e in errors
        )

    for name in [pending, *rest]:
        _set_status(control_plane, k8s_namespace, name, "True", "AllBundlesAcked", "acked")
    res = _run_step("Wait for Ready", control_plane, tmp_path, k8s_namespace, "10s")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "::error" not in res.stdout


@pytest.mark.k8s
def test_editing_a_stored_profile_is_refused_at_apply_time(control_plane: Any, k8s_namespace: str) -> None:
    """What the workflow's dry-run step catches before anything is written: the CRD's CEL
    append-only rule (the same refusal a GitOps sync gets)."""
    _install_crd(control_plane)
    path = EXAMPLES / "modelconfigs" / "baai-bge-m3.yaml"
    control_plane.kubectl("apply", "--server-side", "-n", k8s_namespace, "-f", str(path))
    edited = yaml.safe_load(path.read_text())
    edited["spec"]["profiles"]["default"]["maxBatchTokens"] = 1
    res = control_plane.kubectl(
        "apply", "--server-side", "--dry-run=server", "-n", k8s_namespace, "-f", "-",
        input=json.dumps(edited), check=False,
    )  # fmt: skip
    assert res.returncode != 0, res.stdout
    edited = yaml.safe_load(path.read_text())
    edited["spec"]["profiles"]["colbert"] = {"extends": "default"}
    res = control_plane.kubectl(
        "apply", "--server-side", "--dry-run=server", "-n", k8s_namespace, "-f", "-", input=json.dumps(edited)
    )
    assert res.returncode == 0
