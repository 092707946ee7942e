"""The ModelConfig CRD on a real kube-apiserver: schema, CEL rules, status, printer columns.

These talk to the session's control plane (``control_plane`` fixture: etcd + kube-apiserver,
or E2E_CLUSTER=existing) and assert what the API server itself accepts and refuses.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from sie_operator.catalog import yamlio
from sie_operator.controller import crd
from sie_operator.controller.spec import dump_yaml, dump_yaml_all, from_manifest, to_manifest
from sie_operator.controller.status import GatewayObservation, StoreOutcome, compute_status
from sie_operator.devcluster.controlplane import ControlPlane

pytestmark = [pytest.mark.k8s, pytest.mark.usefixtures("modelconfig_crd")]

NOW = "2025-01-01T00:00:00Z"
BASE_DOC: dict[str, Any] = {
    "sie_id": "acme/bert-base",
    "hf_id": "acme/bert-base",
    "inputs": {"text": True, "image": False},
    "tasks": {"encode": {"dense": {"dim": 768}, "sparse": None}, "score": None},
    "max_sequence_length": 512,
    "description": "kept verbatim",
    "profiles": {
        "default": {
            "max_batch_tokens": 8192,
            "compute_precision": None,
            "adapter_path": "sie_server.adapters.bert_flash:BertFlashAdapter",
            "adapter_options": {"loadtime": {}, "runtime": {"pooling": "mean", "normalize": True}},
            "note": "profile-level unknown key",
        },
        "long": {"extends": "default", "adapter_options": {"runtime": {"max_length": 512}}},
    },
}


def kubectl(cp: ControlPlane, *args: str, stdin: str | None = None, check: bool = True) -> str:
    res = cp.kubectl(*args, input=stdin, check=check)
    return res.stdout + (res.stderr if not check else "")


def create(
    cp: ControlPlane, ns: str, doc: dict[str, Any] | None = None, name: str | None = None
) -> dict[str, Any]:
    manifest = to_manifest(copy.deepcopy(doc or BASE_DOC), namespace=ns, name=name)
    kubectl(cp, "create", "-f", "-", stdin=dump_yaml(manifest))
    return get(cp, ns, manifest["metadata"]["name"])


def get(cp: ControlPlane, ns: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(kubectl(cp, "get", "mcfg", name, "-n", ns, "-o", "json"))
    return obj


def replace(cp: ControlPlane, obj: dict[str, Any]) -> tuple[bool, str]:
    """Replace the whole object (a spec edit as an apply would make); (accepted, output)."""
    res = cp.kubectl("replace", "-f", "-", input=json.dumps(obj), check=False)
    return res.returncode == 0, res.stdout + res.stderr


def patch_status(cp: ControlPlane, ns: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps({"status": status})
    kubectl(cp, "patch", "mcfg", name, "-n", ns, "--subresource=status", "--type=merge", "-p", body)
    return get(cp, ns, name)


# --------------------------------------------------------------------------- install and catalog


def test_crd_is_established_and_structural(control_plane: ControlPlane) -> None:
    obj = json.loads(kubectl(control_plane, "get", "crd", "modelconfigs.sie.dev", "-o", "json"))
    conditions = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert conditions.get("NamesAccepted") == "True"
    assert "NonStructuralSchema" not in conditions
    assert obj["status"]["acceptedNames"]["shortNames"] == ["mcfg"]
    assert obj["status"]["acceptedNames"]["categories"] == ["sie"]


def test_every_catalog_model_is_accepted_and_comes_back_identical(
    control_plane: ControlPlane, k8s_namespace: str, catalog_model_files: list[Path]
) -> None:
    docs = {}
    manifests = []
    for path in catalog_model_files:
        doc = yamlio.load(path.read_text())
        manifest = to_manifest(doc, namespace=k8s_namespace)
        docs[manifest["spec"]["sieId"]] = doc
        manifests.append(manifest)
    stream = dump_yaml_all(manifests)
    kubectl(control_plane, "create", "--dry-run=server", "-f", "-", stdin=stream)
    kubectl(control_plane, "create", "-f", "-", stdin=stream)
    items = json.loads(kubectl(control_plane, "get", "mcfg", "-n", k8s_namespace, "-o", "json"))["items"]
    assert len(items) == len(catalog_model_files)
    for item in items:
        assert from_manifest(item) == docs[item["spec"]["sieId"]], item["metadata"]["name"]
    # and the explicit nulls are really stored, not re-created by the mapping
    bge = next(i for i in items if i["spec"]["sieId"] == "BAAI/bge-m3")
    assert bge["spec"]["tasks"]["extract"] is None
    assert bge["spec"]["profiles"]["bge_m3_flag"]["computePrecision"] is None


def test_explicit_nulls_and_unknown_keys_survive_create_and_server_side_apply(
    control_plane: ControlPlane, k8s_namespace: str
) -> None:
    obj = create(control_plane, k8s_namespace)
    assert from_manifest(obj) == BASE_DOC
    assert obj["spec"]["profiles"]["default"]["computePrecision"] is None
    assert obj["spec"]["extra"] == {"description": "kept verbatim"}
    doc = {**copy.deepcopy(BASE_DOC), "sie_id": "acme/ssa"}
    manifest = to_manifest(doc, namespace=k8s_namespace)
    kubectl(
        control_plane, "apply", "--server-side", "--field-manager=test", "-f", "-", stdin=dump_yaml(manifest)
    )
    assert from_manifest(get(control_plane, k8s_namespace, manifest["metadata"]["name"])) == doc


def test_client_side_apply_drops_explicit_nulls(control_plane: ControlPlane, k8s_namespace: str) -> None:
    """Why README and ``convert`` say "use --server-side": plain ``kubectl apply`` treats a
    null in the manifest as "delete this field", so the stored spec loses it."""
    manifest = to_manifest(copy.deepcopy(BASE_DOC), namespace=k8s_namespace)
    kubectl(control_plane, "apply", "-f", "-", stdin=dump_yaml(manifest))
    stored = get(control_plane, k8s_namespace, manifest["metadata"]["name"])
    assert "computePrecision" not in stored["spec"]["profiles"]["default"]
    assert "sparse" not in stored["spec"]["tasks"]["encode"]


def test_strings_kubectl_could_misread_stay_strings(control_plane: ControlPlane, k8s_namespace: str) -> None:
    doc = copy.deepcopy(BASE_DOC)
    doc["profiles"]["y"] = {
        "extends": "default",
        "adapter_options": {"runtime": {"a": "n", "b": "1e3", "c": "on"}},
    }
    obj = create(control_plane, k8s_namespace, doc)
    assert obj["spec"]["profiles"]["y"]["adapterOptions"]["runtime"] == {"a": "n", "b": "1e3", "c": "on"}


# --------------------------------------------------------------------------- CEL: immutability


def test_sie_id_is_immutable(control_plane: ControlPlane, k8s_namespace: str) -> None:
    obj = create(control_plane, k8s_namespace)
    obj["spec"]["sieId"] = "acme/bert-other"
    ok, out = replace(control_plane, obj)
    assert not ok and "sieId is immutable" in out


def test_removing_a_profile_is_refused(control_plane: ControlPlane, k8s_namespace: str) -> None:
    obj = create(control_plane, k8s_namespace)
    del obj["spec"]["profiles"]["long"]
    ok, out = replace(control_plane, obj)
    assert not ok and crd.PROFILE_REMOVED in out


@pytest.mark.parametrize(
    "edit",
    [
        ("maxBatchTokens", lambda p: p.__setitem__("maxBatchTokens", 4096)),
        ("runtime-value", lambda p: p["adapterOptions"]["runtime"].__setitem__("pooling", "cls")),
        ("runtime-new-key", lambda p: p["adapterOptions"]["runtime"].__setitem__("instruction", "x")),
        ("loadtime-nested", lambda p: p["adapterOptions"]["loadtime"].__setitem__("cfg", {"a": 1})),
        ("null-to-value", lambda p: p.__setitem__("computePrecision", "float16")),
        ("null-to-absent", lambda p: p.pop("computePrecision")),
        ("profile-extra", lambda p: p["extra"].__setitem__("note", "changed")),
        ("adapter-path", lambda p: p.__setitem__("adapterPath", "sie_server.adapters.bert_flash:Other")),
    ],
    ids=lambda e: e[0],
)
def test_changing_an_existing_profile_is_refused(
    control_plane: ControlPlane, k8s_namespace: str, edit: Any
) -> None:
    obj = create(control_plane, k8s_namespace)
    edit[1](obj["spec"]["profiles"]["default"])
    ok, out = replace(control_plane, obj)
    assert not ok, out
    assert "spec.profiles[default]" in out and crd.PROFILE_CHANGED in out


def test_adding_a_profile_is_accepted(control_plane: ControlPlane, k8s_namespace: str) -> None:
    obj = create(control_plane, k8s_namespace)
    obj["spec"]["profiles"]["fast"] = {
        "extends": "default",
        "adapterOptions": {"runtime": {"pooling": "cls"}},
    }
    ok, out = replace(control_plane, obj)
    assert ok, out
    again = get(control_plane, k8s_namespace, obj["metadata"]["name"])
    assert set(again["spec"]["profiles"]) == {"default", "long", "fast"}
    assert again["metadata"]["generation"] == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hfId", "acme/other"),
        ("maxSequenceLength", 1024),
        ("inputs", {"text": True, "image": True}),
        ("tasks", {"encode": {"dense": {"dim": 1024}}}),
        ("hfId", None),
        ("maxSequenceLength", "<remove>"),
    ],
    ids=["hfId", "maxSequenceLength", "inputs", "tasks", "hfId-to-null", "maxSequenceLength-removed"],
)
def test_top_level_fields_cannot_change_once_set(
    control_plane: ControlPlane, k8s_namespace: str, field: str, value: Any
) -> None:
    obj = create(control_plane, k8s_namespace)
    if value == "<remove>":
        del obj["spec"][field]
    else:
        obj["spec"][field] = value
    ok, out = replace(control_plane, obj)
    assert not ok and crd.ONCE_SET.format(field=field) in out


def test_fields_not_yet_set_can_be_added(control_plane: ControlPlane, k8s_namespace: str) -> None:
    obj = create(control_plane, k8s_namespace)
    obj["spec"]["hfRevision"] = "main"
    obj["spec"]["extra"]["default_bundle"] = "premium"  # top-level extra: keys can be added
    ok, out = replace(control_plane, obj)
    assert ok, out


def test_known_gap_explicit_null_counts_as_unset_for_cel(
    control_plane: ControlPlane, k8s_namespace: str
) -> None:
    """CEL's has() is false for a null field, so null -> value passes admission (the store's
    content check then reports ContentConflict). If this starts failing, tighten the README."""
    doc = {**copy.deepcopy(BASE_DOC), "hf_revision": None}
    obj = create(control_plane, k8s_namespace, doc)
    obj["spec"]["hfRevision"] = "main"
    ok, out = replace(control_plane, obj)
    assert ok, out


# --------------------------------------------------------------------------- CEL: validity


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.__setitem__("sieId", "acme__bert"), "sieId must not contain"),
        (lambda s: s.__setitem__("sieId", "acme/status"), "sieId must not contain"),
        (lambda s: s.__setitem__("sieId", "-bad"), "spec.sieId"),
        (lambda s: s["profiles"].__setitem__("-x", {"extends": "default"}), "profile names must be"),
        (lambda s: s["profiles"].__setitem__("p", {"maxBatchTokens": 5}), "needs an adapterPath or extends"),
        (
            lambda s: s["profiles"].__setitem__("p", {"extends": "default", "computePrecision": "fp8"}),
            'must be one of "float16", "bfloat16", "float32" or null',
        ),
        (lambda s: s["profiles"]["default"].__setitem__("maxBatchTokens", 0), "maxBatchTokens"),
        (lambda s: s.__setitem__("profiles", {}), "spec.profiles"),
        (lambda s: s.__setitem__("maxSequenceLenght", 5), 'unknown field "spec.maxSequenceLenght"'),
    ],
    ids=[
        "id-dunder",
        "id-status",
        "id-pattern",
        "profile-name",
        "no-adapter",
        "precision",
        "mbt-zero",
        "no-profiles",
        "typo",
    ],
)
def test_invalid_specs_are_refused(
    control_plane: ControlPlane, k8s_namespace: str, edit: Any, message: str
) -> None:
    manifest = to_manifest(copy.deepcopy(BASE_DOC), namespace=k8s_namespace, name="invalid")
    edit(manifest["spec"])
    res = control_plane.kubectl("create", "-f", "-", input=json.dumps(manifest), check=False)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr


# --------------------------------------------------------------------------- status and columns


def _status(generation: int, acked: bool) -> dict[str, Any]:
    snap = {
        "model_id": "acme/bert-base",
        "config_epoch": 12,
        "all_bundles_acked": acked,
        "no_bundles": False,
        "bundles": [
            {
                "bundle_id": "default",
                "expected_bundle_config_hash": "cd" * 32,
                "total_eligible_workers": 3,
                "acked_workers": ["w1", "w2", "w3"] if acked else ["w1", "w2"],
                "pending_workers": [] if acked else ["w3"],
                "acked": acked,
            }
        ],
        "source": "gateway-registry",
    }
    return compute_status(
        generation=generation,
        outcome=StoreOutcome("accepted", epoch=12, profiles=("default", "long")),
        gateways=[GatewayObservation("gw-a", True, "", 12, snap)],
        previous=None,
        now=NOW,
    )


def test_status_subresource_and_printer_columns(control_plane: ControlPlane, k8s_namespace: str) -> None:
    obj = create(control_plane, k8s_namespace)
    name = obj["metadata"]["name"]
    stored = patch_status(
        control_plane, k8s_namespace, name, _status(obj["metadata"]["generation"], acked=False)
    )
    assert stored["status"] == _status(obj["metadata"]["generation"], acked=False)  # round-trips unchanged
    assert stored["metadata"]["generation"] == obj["metadata"]["generation"]  # status does not bump it

    table = kubectl(control_plane, "get", "mcfg", name, "-n", k8s_namespace)
    header, row = table.splitlines()
    assert header.split() == ["NAME", "SIE-ID", "READY", "ACKED", "PENDING", "EPOCH", "AGE"]
    assert row.split()[:6] == [name, "acme/bert-base", "False", "2", "1", "12"]

    wide = kubectl(control_plane, "get", "sie", "-n", k8s_namespace, "-o", "wide")  # the category works
    header, row = wide.splitlines()
    assert header.split() == [
        "NAME",
        "SIE-ID",
        "READY",
        "ACKED",
        "PENDING",
        "EPOCH",
        "AGE",
        "BUNDLES",
        "REASON",
    ]
    assert row.split()[0] in (name, f"modelconfig.sie.dev/{name}")
    assert row.split()[-2:] == ["default", "WorkersPending"]


def test_kubectl_wait_for_ready_honours_observed_generation(
    control_plane: ControlPlane, k8s_namespace: str
) -> None:
    obj = create(control_plane, k8s_namespace)
    name = obj["metadata"]["name"]
    gen = obj["metadata"]["generation"]
    patch_status(control_plane, k8s_namespace, name, _status(gen, acked=True))
    kubectl(
        control_plane, "wait", f"mcfg/{name}", "-n", k8s_namespace, "--for=condition=Ready", "--timeout=10s"
    )
    # A stale observedGeneration must not satisfy `kubectl wait` (kstatus: LatestGenerationNotObserved).
    obj = get(control_plane, k8s_namespace, name)
    obj["spec"]["profiles"]["fast"] = {"extends": "default"}
    ok, out = replace(control_plane, obj)
    assert ok, out
    res = control_plane.kubectl(
        "wait", f"mcfg/{name}", "-n", k8s_namespace, "--for=condition=Ready", "--timeout=2s", check=False
    )
    assert res.returncode != 0


def test_status_fields_outside_the_schema_are_pruned(control_plane: ControlPlane, k8s_namespace: str) -> None:
    obj = create(control_plane, k8s_namespace)
    name = obj["metadata"]["name"]
    status = _status(obj["metadata"]["generation"], acked=True)
    status["heartbeat"] = NOW
    status["gateways"]["lastPoll"] = NOW
    status["bundles"][0]["debug"] = {"x": 1}
    stored = patch_status(control_plane, k8s_namespace, name, status)["status"]
    assert "heartbeat" not in stored
    assert stored["gateways"] == {"seen": 1, "agreeing": 1}
    assert "debug" not in stored["bundles"][0]


def test_status_writes_do_not_touch_spec_and_spec_writes_do_not_touch_status(
    control_plane: ControlPlane, k8s_namespace: str
) -> None:
    obj = create(control_plane, k8s_namespace)
    name = obj["metadata"]["name"]
    body = json.dumps({"spec": {"hfId": "ignored"}, "status": _status(1, acked=True)})
    kubectl(
        control_plane,
        "patch",
        "mcfg",
        name,
        "-n",
        k8s_namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        body,
    )
    after = get(control_plane, k8s_namespace, name)
    assert after["spec"]["hfId"] == "acme/bert-base"
    assert after["status"]["configEpoch"] == 12


def test_status_out_of_bounds_is_refused(control_plane: ControlPlane, k8s_namespace: str) -> None:
    obj = create(control_plane, k8s_namespace)
    status = _status(1, acked=True)
    status["conditions"][0]["reason"] = "not a reason"
    status["bundles"][0]["ackedWorkers"] = [f"w{i}" for i in range(33)]
    body = json.dumps({"status": status})
    res = control_plane.kubectl(
        "patch",
        "mcfg",
        obj["metadata"]["name"],
        "-n",
        k8s_namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        body,
        check=False,
    )
    assert res.returncode != 0
    assert "reason" in res.stderr and "ackedWorkers" in res.stderr
