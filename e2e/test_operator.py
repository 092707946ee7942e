"""The operator end to end: kubectl apply -> store -> NATS -> workers -> gateway -> status.

Real kube-apiserver + etcd (or E2E_CLUSTER=existing), real nats-server, and the operator,
gateway and three reference workers as real processes. Workers: worker-0 and worker-1
serve bundle `default`, worker-2 serves `sglang`.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from typing import Any

import pytest

from sie_operator.devcluster.kubetest import Kube, model_manifest
from sie_operator.devcluster.stack import Stack

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

SGLANG = {"default": {"adapterPath": "sie_server.adapters.sglang:SGLangAdapter", "maxBatchTokens": 4096}}


def http_json(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> Any:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def store_epoch(stack: Stack) -> int:
    return int(http_json(f"{stack.config_url}/v1/configs/epoch")["epoch"])


def test_apply_reaches_ready_and_kubectl_wait(stack: Stack, kube: Kube) -> None:
    kube.apply(model_manifest("bert", "acme/bert"))
    r = kube.run("wait", "--for=condition=Ready", "modelconfig/bert", "--timeout=30s", check=False)
    assert r.returncode == 0, r.stderr
    obj = kube.get("bert")
    assert obj is not None
    st = obj["status"]
    assert st["observedGeneration"] == obj["metadata"]["generation"]
    assert st["configEpoch"] >= 1
    assert st["ackedWorkers"] == 2 and st["pendingWorkers"] == 0
    assert [b["bundleId"] for b in st["bundles"]] == ["default"]
    assert sorted(st["bundles"][0]["ackedWorkers"]) == ["worker-0", "worker-1"]
    assert st["gateways"] == {"seen": 1, "agreeing": 1}
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["reason"] == "AllBundlesAcked"
    assert conds["Stalled"]["status"] == "False" and conds["Reconciling"]["status"] == "False"
    assert all(c["observedGeneration"] == obj["metadata"]["generation"] for c in conds.values())
    out = kube.run("get", "mcfg", "bert").stdout
    assert "acme/bert" in out and "True" in out
    reasons = {e["reason"] for e in kube.events("bert")}
    assert {"Published", "Ready"} <= reasons


def test_add_profile_new_epoch_then_ready_again(stack: Stack, kube: Kube) -> None:
    m = model_manifest("e5", "acme/e5")
    kube.apply(m)
    first = kube.wait_ready("e5")
    m["spec"]["profiles"]["fast"] = {"extends": "default", "adapterOptions": {"runtime": {"pooling": "mean"}}}
    kube.apply(m)
    second = kube.wait_ready("e5")
    assert second["metadata"]["generation"] == first["metadata"]["generation"] + 1
    assert second["status"]["configEpoch"] > first["status"]["configEpoch"]
    assert sorted(second["status"]["profiles"]) == ["default", "fast"]
    exported = http_json(f"{stack.config_url}/v1/configs/models")
    ids = {m["model_id"]: m for m in exported["models"]}
    assert ids["acme/e5"]["profiles"] == ["default", "fast"]


def test_editing_an_existing_profile_is_refused_by_the_api_server(stack: Stack, kube: Kube) -> None:
    m = model_manifest("frozen", "acme/frozen")
    kube.apply(m)
    kube.wait_ready("frozen")
    m["spec"]["profiles"]["default"]["maxBatchTokens"] = 1
    r = kube.apply(m, check=False)
    assert r.returncode != 0
    assert "append-only" in r.stderr or "cannot be changed" in r.stderr, r.stderr
    m["spec"]["profiles"]["default"]["maxBatchTokens"] = 8192
    m["spec"]["sieId"] = "acme/other"
    r = kube.apply(m, check=False)
    assert r.returncode != 0 and "immutable" in r.stderr, r.stderr


def test_stopped_worker_turns_pending_and_recovers(stack: Stack, kube: Kube) -> None:
    m = model_manifest("pend", "acme/pend")
    kube.apply(m)
    kube.wait_ready("pend")
    stack.workers["worker-1"].signal(signal.SIGSTOP)
    try:
        m["spec"]["profiles"]["more"] = {"extends": "default"}
        kube.apply(m)
        obj = kube.wait_ready("pend", status="False", reason="WorkersPending", timeout=20)
        bundle = obj["status"]["bundles"][0]
        assert bundle["pendingWorkers"] == ["worker-1"]
        assert obj["status"]["pendingWorkers"] == 1
    finally:
        stack.workers["worker-1"].signal(signal.SIGCONT)
    kube.wait_ready("pend", timeout=30)


def test_bundle_without_workers_reports_no_workers(stack: Stack, kube: Kube) -> None:
    stack.workers["worker-2"].stop()
    kube.apply(model_manifest("sg", "acme/sg", profiles=SGLANG))
    obj = kube.wait_ready("sg", status="False", reason="NoWorkers", timeout=30)
    assert obj["status"]["bundles"][0]["bundleId"] == "sglang"
    stack.start_worker("worker-2")
    kube.wait_ready("sg", timeout=30)


def test_operator_restart_makes_no_writes_and_no_status_churn(stack: Stack, kube: Kube) -> None:
    kube.apply(model_manifest("r1", "acme/r1"))
    kube.apply(model_manifest("r2", "acme/r2", profiles=SGLANG))
    before = {n: kube.wait_ready(n) for n in ("r1", "r2")}
    epoch = store_epoch(stack)
    stack.stop_control()
    stack.start_control()
    time.sleep(4)  # several refresh rounds of the restarted operator
    assert store_epoch(stack) == epoch
    for n in ("r1", "r2"):
        after = kube.get(n)
        assert after is not None
        assert after["status"] == before[n]["status"]
        assert after["metadata"]["resourceVersion"] == before[n]["metadata"]["resourceVersion"], n


def test_restart_with_many_existing_resources_resumes_them_all(stack: Stack, kube: Kube) -> None:
    """More resources than kopf has workers for must not deadlock a restarted operator
    (handlers wait for the index of the initial listing)."""
    items = [model_manifest(f"many-{i:02d}", f"acme/many-{i:02d}") for i in range(60)]
    kube.apply({"apiVersion": "v1", "kind": "List", "items": items})
    for i in range(60):
        kube.wait_ready(f"many-{i:02d}", timeout=60)
    epoch = store_epoch(stack)
    stack.stop_control()
    stack.start_control()
    kube.apply(model_manifest("after", "acme/after"))
    kube.wait_ready("after", timeout=30)
    assert store_epoch(stack) == epoch + 1  # only the new resource was written


def test_gateway_down_is_reported_then_recovers(stack: Stack, kube: Kube) -> None:
    kube.apply(model_manifest("gw", "acme/gw"))
    kube.wait_ready("gw")
    stack.gateways[0].stop()
    # noticed at the next resync (15 s while all is Ready), reported once the failure has
    # lasted the grace period (the stack's gateway heartbeat timeout, 6 s): blips flip nothing
    obj = kube.wait_ready("gw", status="False", reason="GatewayUnreachable", timeout=35)
    assert obj["status"]["gateways"]["seen"] == 1
    stack.start_gateway(0)
    kube.wait_ready("gw", timeout=30)


def sie_model(model_id: str, max_batch_tokens: int) -> bytes:
    return (
        f"sie_id: {model_id}\nprofiles:\n  default:\n"
        f"    adapter_path: sie_server.adapters.bert_flash:B\n    max_batch_tokens: {max_batch_tokens}\n"
    ).encode()


def bert_b(max_batch_tokens: int) -> dict[str, Any]:
    return {
        "default": {"adapterPath": "sie_server.adapters.bert_flash:B", "maxBatchTokens": max_batch_tokens}
    }


def test_http_api_and_resources_share_one_store(stack: Stack, kube: Kube) -> None:
    res = http_json(f"{stack.config_url}/v1/configs/models", "POST", sie_model("acme/posted", 512))
    assert res["created_profiles"] == ["default"]
    posted_epoch = store_epoch(stack)
    # a resource with the same content adopts the posted model: no new write, same epoch
    adopt = model_manifest("posted", "acme/posted", profiles=bert_b(512))
    del adopt["spec"]["hfId"]  # exactly what was posted (an added field would be a new write)
    kube.apply(adopt)
    obj = kube.wait_ready("posted")
    assert obj["status"]["configEpoch"] == posted_epoch
    assert store_epoch(stack) == posted_epoch
    # a resource is visible through the HTTP API
    kube.apply(model_manifest("viacr", "acme/viacr"))
    kube.wait_ready("viacr")
    listed = {m["model_id"]: m for m in http_json(f"{stack.config_url}/v1/configs/models")["models"]}
    assert {"acme/posted", "acme/viacr"} <= set(listed)
    assert listed["acme/viacr"]["source"] == "api"
    # a resource that disagrees with the store is stalled with the profile named
    http_json(f"{stack.config_url}/v1/configs/models", "POST", sie_model("acme/posted3", 64))
    kube.apply(model_manifest("clash3", "acme/posted3", profiles=bert_b(65)))
    obj = kube.wait_ready("clash3", status="False", reason="ContentConflict")
    stalled = {c["type"]: c for c in obj["status"]["conditions"]}["Stalled"]
    assert stalled["status"] == "True" and "default" in stalled["message"]


def test_duplicate_sie_id_newer_is_stalled_until_older_goes(stack: Stack, kube: Kube) -> None:
    kube.apply(model_manifest("older", "acme/dup"))
    kube.wait_ready("older")
    kube.apply(model_manifest("newer", "acme/dup"))
    obj = kube.wait_ready("newer", status="False", reason="DuplicateSieId")
    assert "older" in {c["type"]: c for c in obj["status"]["conditions"]}["Ready"]["message"]
    kube.run("delete", "modelconfig", "older")
    kube.wait_ready("newer", timeout=30)


def test_deleting_retains_the_model_and_recreating_adopts_it(stack: Stack, kube: Kube) -> None:
    m = model_manifest("keep", "acme/keep")
    kube.apply(m)
    kube.wait_ready("keep")
    epoch = store_epoch(stack)
    kube.run("delete", "modelconfig", "keep")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "Retained" not in {e["reason"] for e in kube.events("keep")}:
        time.sleep(0.2)
    assert "Retained" in {e["reason"] for e in kube.events("keep")}
    listed = {m["model_id"] for m in http_json(f"{stack.config_url}/v1/configs/models")["models"]}
    assert "acme/keep" in listed
    kube.apply(m)
    obj = kube.wait_ready("keep")
    assert store_epoch(stack) == epoch  # adopted, not written again
    assert obj["status"]["configEpoch"] <= epoch


def test_nats_outage_is_reported_and_converges(stack: Stack, kube: Kube) -> None:
    stack.nats.stop()
    time.sleep(1.0)
    kube.apply(model_manifest("nats", "acme/nats"))
    kube.wait_ready("nats", status="False", reason="NatsUnavailable", timeout=20)
    stack.nats.start()
    kube.wait_ready("nats", timeout=45)


def test_unroutable_and_invalid_specs_are_stalled(stack: Stack, kube: Kube) -> None:
    kube.apply(
        model_manifest(
            "nowhere",
            "acme/nowhere",
            profiles={"default": {"adapterPath": "x.unknown:Thing", "maxBatchTokens": 1}},
        )
    )
    obj = kube.wait_ready("nowhere", status="False", reason="Unroutable")
    stalled = {c["type"]: c for c in obj["status"]["conditions"]}["Stalled"]
    assert stalled["status"] == "True" and "x.unknown" in stalled["message"]
