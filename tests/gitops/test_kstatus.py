"""kstatus (what Flux's `wait`/`healthChecks` and `kubectl`-style tooling compute) on
ModelConfig objects, and the Flux examples that rely on it.

Why re-implement it: Flux decides a Kustomization's health with sigs.k8s.io/cli-utils'
kstatus; the rules below follow pkg/kstatus/status/generic.go in order (deletionTimestamp,
observedGeneration, Reconciling, Stalled) and then the README's `Ready` fallback. The
operator's status must land in the right phase under those rules, in particular without
relying on the `Ready` fallback (the operator sets the abnormal-true conditions itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from gitops_objects import Case, computed_cases, fixture_cases

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "flux"


def _condition(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return None


def kstatus(obj: dict[str, Any], *, ready_fallback: bool = True) -> tuple[str, str]:
    """(status, message) as kstatus.Compute gives them for a custom resource."""
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating", "Resource scheduled for deletion"
    generation = meta.get("generation")
    observed = (obj.get("status") or {}).get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        kind = obj.get("kind", "")
        return (
            "InProgress",
            f"{kind} generation is {generation}, but latest observed generation is {observed}",
        )
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Reconciling" and c.get("status") == "True":
            return "InProgress", str(c.get("message", ""))
        if c.get("type") == "Stalled" and c.get("status") == "True":
            return "Failed", str(c.get("message", ""))
    if ready_fallback:
        ready = _condition(obj, "Ready")
        if ready is not None and ready.get("status") == "True":
            return "Current", str(ready.get("message", ""))
        if ready is not None and ready.get("status") == "False":
            return "InProgress", str(ready.get("message", ""))
    return "Current", "Resource is current"


CASES = computed_cases()
FIXTURES = fixture_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_phase_of_operator_statuses(case: Case) -> None:
    status, message = kstatus(case.obj)
    assert status == case.kstatus, (case.name, case.notes, message)


@pytest.mark.parametrize("case", CASES + FIXTURES, ids=[c.name for c in CASES + FIXTURES])
def test_phase_does_not_depend_on_the_ready_fallback(case: Case) -> None:
    """Tools that implement only generic.go (no Ready fallback) reach the same verdict."""
    assert kstatus(case.obj, ready_fallback=False)[0] == kstatus(case.obj)[0]


@pytest.mark.parametrize("case", FIXTURES, ids=[c.name for c in FIXTURES])
def test_phase_of_captured_objects(case: Case) -> None:
    status, message = kstatus(case.obj)
    assert status == case.kstatus, (case.notes, message)


def test_all_phases_are_reached() -> None:
    assert {"InProgress", "Current", "Failed", "Terminating"} <= {c.kstatus for c in CASES}


def test_failed_means_a_spec_change_is_needed() -> None:
    """Stalled (kstatus Failed) ends a Flux wait at once; only spec problems may do that.
    Transient trouble (NATS, gateways, workers) must keep it InProgress until the timeout."""
    for case in CASES:
        ready = _condition(case.obj, "Ready")
        if case.kstatus == "Failed":
            assert ready is not None
            assert ready["reason"] in {"InvalidSpec", "Unroutable", "DuplicateSieId", "ContentConflict"}
        elif ready is not None and ready["reason"] in {"NatsUnavailable", "GatewayUnreachable", "NoWorkers"}:
            assert case.kstatus == "InProgress"


def test_kubectl_wait_needs_observed_generation_on_every_condition() -> None:
    """`kubectl wait --for=condition=Ready` ignores a condition older than the generation."""
    for case in CASES:
        status = case.obj.get("status")
        if not status or case.name == "generation-not-observed":
            continue
        gen = case.obj["metadata"]["generation"]
        assert status["observedGeneration"] == gen
        assert all(c["observedGeneration"] == gen for c in status["conditions"]), case.name


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def test_flux_kustomization_waits_for_modelconfigs() -> None:
    ks = {d["metadata"]["name"]: d for d in _docs("kustomization.yaml")}
    main = ks["sie-modelconfigs"]["spec"]
    assert main["wait"] is True and main["timeout"] and main["prune"] is True
    assert {"name": "sie-operator"} in main["dependsOn"]
    critical = ks["sie-modelconfigs-critical"]["spec"]
    assert not critical.get("wait")  # healthChecks are ignored when wait is true
    assert critical["timeout"]
    for check in critical["healthChecks"]:
        assert check["apiVersion"] == "sie.dev/v1alpha1" and check["kind"] == "ModelConfig"
        assert check["name"] and check["namespace"]
    assert ks["sie-operator"]["spec"]["wait"] is True


def test_flux_helmrelease_upgrades_crds() -> None:
    (hr,) = _docs("helmrelease.yaml")
    assert hr["kind"] == "HelmRelease"
    assert hr["spec"]["upgrade"]["crds"] == "CreateReplace"
    assert hr["spec"]["install"]["crds"] in ("Create", "CreateReplace")
    assert hr["spec"]["chart"]["spec"]["chart"] == "./charts/sie-operator"
    sources = {d["metadata"]["name"]: d for d in _docs("gitrepository.yaml")}
    assert hr["spec"]["chart"]["spec"]["sourceRef"]["name"] in sources
