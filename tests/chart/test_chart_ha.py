"""The chart's HA mode (``ha.enabled``) and an external NATS cluster (``nats.external.*``).

Why: HA is a handful of objects that only work together — several operator replicas, a
Lease they may take (and nothing more), a PodDisruptionBudget and anti-affinity so one node
or drain never takes them all, the store moved from the RWO volume to JetStream, and a URL
each replica advertises so standbys can forward writes. Each is checked in what Helm renders;
the API server's verdict is in test_chart_k8s.py, and the flag names against the CLI in
test_chart_cli_contract.py.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import nats
import pytest
from chartlib import (
    CHART,
    FULLNAME,
    NAMESPACE,
    Obj,
    args,
    container,
    env,
    find,
    flag,
    helm,
    one,
    pod_templates,
    render,
    selects,
)
from nats.js.api import StorageType, StreamConfig

from sie_operator.devcluster.natsserver import nats_server_binary
from sie_operator.devcluster.ports import free_port, wait_port
from sie_operator.devcluster.procs import ServerProcess

NATS = f"{FULLNAME}-nats"
EXTERNAL = {
    "ha.enabled": True,
    "nats.external.url": "nats://nats-0.nats.nats.svc:4222,nats://nats-1.nats.nats.svc:4222",
    "nats.external.existingSecret": "nats-login",
}
CREDS = {
    "nats.external.url": "nats://nats.nats.svc:4222",
    "nats.external.credsSecret.name": "sie-nats-creds",
    "workers.enabled": True,
}


def operator_deployment(objs: list[Obj]) -> Obj:
    return one(objs, "Deployment", FULLNAME)


def pod_labels(workload: Obj) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def test_default_install_is_single_replica_without_ha_objects() -> None:
    objs = render({})
    dep = operator_deployment(objs)
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    c = container(dep)
    assert not [a for a in args(c) if a.startswith("--leader-election")]
    assert env(c)["SIE_CONFIG_STORE_DIR"] == "/var/lib/sie-operator"
    assert "SIE_ADVERTISE_URL" not in env(c) and "SIE_CONFIG_STORE_REPLICAS" not in env(c)
    assert "affinity" not in dep["spec"]["template"]["spec"]
    assert not find(objs, "PodDisruptionBudget")
    assert not find(objs, "Role", f"{FULLNAME}-leader-election")
    assert "jetstream" not in one(objs, "ConfigMap", f"{NATS}-config")["data"]["nats.conf"]


def test_ha_runs_replicas_with_leader_election_and_a_jetstream_store() -> None:
    objs = render({"ha.enabled": True})
    dep = operator_deployment(objs)
    assert dep["spec"]["replicas"] == 2
    rolling = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert dep["spec"]["strategy"] == rolling
    c = container(dep)
    assert "--leader-election" in args(c)
    assert flag(c, "leader-election-id") == [FULLNAME]
    assert flag(c, "leader-election-namespace") == [NAMESPACE]
    e = env(c)
    assert e["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert e["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert e["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert "SIE_ADVERTISE_URL" not in e  # run derives http://POD_IP:port itself (IPv6 too)
    assert e["SIE_CONFIG_STORE_DIR"] == "jetstream://sie-config"
    assert e["SIE_CONFIG_STORE_REPLICAS"] == "1"  # the built-in NATS is one node
    assert e["SIE_NATS_URL"] == f"nats://{NATS}.{NAMESPACE}.svc:4222"
    # no volume pins a replica: the store PVC is neither mounted nor created
    spec = dep["spec"]["template"]["spec"]
    assert {v["name"] for v in spec["volumes"]} == {"tmp"}
    assert not find(objs, "PersistentVolumeClaim", f"{FULLNAME}-store")


def test_ha_on_builtin_nats_turns_on_jetstream_on_a_kept_volume() -> None:
    objs = render({"ha.enabled": True})
    conf = one(objs, "ConfigMap", f"{NATS}-config")["data"]["nats.conf"]
    assert "jetstream {" in conf and "store_dir: /data/jetstream" in conf
    nats = one(objs, "Deployment", NATS)
    assert nats["spec"]["strategy"] == {"type": "Recreate"}  # one RWO volume
    mounts = {m["name"]: m["mountPath"] for m in container(nats)["volumeMounts"]}
    assert mounts["jetstream"] == "/data"
    vols = {v["name"]: v for v in nats["spec"]["template"]["spec"]["volumes"]}
    claim = vols["jetstream"]["persistentVolumeClaim"]["claimName"]
    pvc = one(objs, "PersistentVolumeClaim", claim)
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    # the config checksum restarts nats-server when JetStream is switched on
    default_sum = one(render({}), "Deployment", NATS)["spec"]["template"]["metadata"]["annotations"]
    assert nats["spec"]["template"]["metadata"]["annotations"] != default_sum

    objs = render({"ha.enabled": True, "nats.builtin.jetstream.persistence.enabled": False})
    vols = {v["name"]: v for v in one(objs, "Deployment", NATS)["spec"]["template"]["spec"]["volumes"]}
    assert vols["jetstream"] == {"name": "jetstream", "emptyDir": {}}
    assert not find(objs, "PersistentVolumeClaim")


def test_ha_lease_rbac_is_get_create_update_on_its_lease_only() -> None:
    objs = render({"ha.enabled": True})
    role = one(objs, "Role", f"{FULLNAME}-leader-election", NAMESPACE)
    assert sorted(
        (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r.get("resourceNames", ())), tuple(r["verbs"]))
        for r in role["rules"]
    ) == [
        (("coordination.k8s.io",), ("leases",), (), ("create",)),  # create cannot name its object
        (("coordination.k8s.io",), ("leases",), (FULLNAME,), ("get", "update")),
    ]
    rb = one(objs, "RoleBinding", f"{FULLNAME}-leader-election", NAMESPACE)
    assert rb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert [(s["kind"], s["namespace"], s["name"]) for s in rb["subjects"]] == [
        ("ServiceAccount", NAMESPACE, FULLNAME)
    ]
    # a custom Lease name is the flag and the RBAC resource name at once
    objs = render({"ha.enabled": True, "ha.leaseName": "sie-leader"})
    assert flag(container(operator_deployment(objs)), "leader-election-id") == ["sie-leader"]
    rules = one(objs, "Role", f"{FULLNAME}-leader-election")["rules"]
    assert [r.get("resourceNames") for r in rules] == [None, ["sie-leader"]]
    # RBAC left to the user: no Lease Role either
    assert not find(render({"ha.enabled": True, "rbac.create": False}), "Role")


def test_ha_pdb_and_anti_affinity_select_the_operator_pods() -> None:
    objs = render({"ha.enabled": True})
    dep = operator_deployment(objs)
    labels = pod_labels(dep)
    pdb = one(objs, "PodDisruptionBudget", FULLNAME, NAMESPACE)
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["minAvailable"] == 1
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    for w, tpl in pod_templates(objs):  # and nothing else: gateways have their own lifecycle
        if w is not dep:
            assert not selects(pdb["spec"]["selector"]["matchLabels"], tpl["metadata"]["labels"])
    (term,) = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["weight"] == 100 and term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)

    hard = operator_deployment(render({"ha.enabled": True, "ha.antiAffinity": "hard", "ha.replicas": 3}))
    (req,) = hard["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert selects(req["labelSelector"]["matchLabels"], labels) and hard["spec"]["replicas"] == 3
    none = render({"ha.enabled": True, "ha.antiAffinity": "none", "ha.podDisruptionBudget.enabled": False})
    assert "affinity" not in operator_deployment(none)["spec"]["template"]["spec"]
    assert not find(none, "PodDisruptionBudget")


def test_ha_gateways_and_workers_still_use_the_operator_service() -> None:
    """Every replica serves reads, so the Service (all ready operator pods) is the URL."""
    objs = render({"ha.enabled": True, "workers.enabled": True})
    url = f"http://{FULLNAME}.{NAMESPACE}.svc:8080"
    assert env(container(one(objs, "Deployment", f"{FULLNAME}-gateway")))["SIE_CONFIG_SERVICE_URL"] == url
    for sts in find(objs, "StatefulSet"):
        assert flag(container(sts), "config-url") == [url]


def test_ha_on_external_nats_replicates_the_stream_three_times() -> None:
    objs = render(EXTERNAL)
    assert not find(objs, "Deployment", NATS) and not find(objs, "PersistentVolumeClaim")
    e = env(container(operator_deployment(objs)))
    assert e["SIE_NATS_URL"] == EXTERNAL["nats.external.url"]
    assert e["SIE_CONFIG_STORE_REPLICAS"] == "3"
    assert e["SIE_NATS_USER"] == {"secretKeyRef": {"name": "nats-login", "key": "SIE_NATS_USER"}}
    assert e["SIE_NATS_PASSWORD"] == {"secretKeyRef": {"name": "nats-login", "key": "SIE_NATS_PASSWORD"}}
    e = env(container(operator_deployment(render({**EXTERNAL, "ha.storeReplicas": 5, "ha.stream": "cfg"}))))
    assert e["SIE_CONFIG_STORE_REPLICAS"] == "5" and e["SIE_CONFIG_STORE_DIR"] == "jetstream://cfg"


def test_external_nats_creds_file_is_mounted_everywhere() -> None:
    objs = render(CREDS)
    gateway = one(objs, "Deployment", f"{FULLNAME}-gateway")
    workloads = [operator_deployment(objs), gateway, *find(objs, "StatefulSet")]
    assert len(workloads) >= 3
    for w in workloads:
        c = container(w)
        e = env(c)
        assert e["SIE_NATS_CREDS"] == "/etc/sie/nats/nats.creds", w["metadata"]["name"]
        assert "SIE_NATS_USER" not in e and "SIE_NATS_PASSWORD" not in e
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["nats-creds"] == {"name": "nats-creds", "mountPath": "/etc/sie/nats", "readOnly": True}
        vols = {v["name"]: v for v in w["spec"]["template"]["spec"]["volumes"]}
        assert vols["nats-creds"]["secret"]["secretName"] == "sie-nats-creds"
    e = env(container(operator_deployment(render({**CREDS, "nats.external.credsSecret.key": "user.creds"}))))
    assert e["SIE_NATS_CREDS"] == "/etc/sie/nats/user.creds"
    # without an external URL the credsSecret means nothing (the built-in NATS has its login)
    e = env(container(operator_deployment(render({"nats.external.credsSecret.name": "x"}))))
    assert "SIE_NATS_CREDS" not in e and "SIE_NATS_USER" in e


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ha.enabled": True, "nats.builtin.enabled": False}, "ha.enabled keeps the store in NATS JetStream"),
        ({"ha.enabled": True, "ha.storeReplicas": 3}, "ha.storeReplicas > 1 needs a NATS cluster"),
        ({**EXTERNAL, "ha.podDisruptionBudget.minAvailable": 2}, "minAvailable must be below ha.replicas"),
        ({**CREDS, "nats.external.existingSecret": "login"}, "existingSecret (user/password) or credsSecret"),
    ],
)
def test_incoherent_values_fail_with_one_line(values: dict[str, Any], message: str) -> None:
    set_args = [a for k, v in values.items() for a in ("--set-json", f"{k}={json.dumps(v)}")]
    res = helm("template", "sie", str(CHART), *set_args, check=False)
    assert res.returncode != 0 and message in res.stderr, res.stderr


@pytest.mark.parametrize(
    "bad",
    [
        ["--set", "ha.replicas=1"],
        ["--set", "ha.antiAffinity=sometimes"],
        ["--set", "ha.stream=has.dot"],
        ["--set", "ha.storeReplicas=-1"],
        ["--set", "ha.leaseNam=x"],
        ["--set", "nats.external.credsSecret.file=x"],
        ["--set", "nats.builtin.jetstream.persistence.size=lots"],
    ],
)
def test_schema_rejects_bad_ha_values(bad: list[str]) -> None:
    res = helm("template", "x", str(CHART), *bad, check=False)
    assert res.returncode != 0, f"{bad} was accepted"
    assert "values don't meet the specifications of the schema" in res.stderr, res.stderr


async def test_builtin_nats_conf_in_ha_gives_the_login_a_file_jetstream(tmp_path: Path) -> None:
    """The rendered nats.conf, run by the real nats-server with the generated login in its
    environment (as the pod gets it): the login may create a file-backed stream, which is
    what the operator's jetstream:// store needs."""
    objs = render({"ha.enabled": True})
    conf_text = one(objs, "ConfigMap", f"{NATS}-config")["data"]["nats.conf"]
    assert "store_dir: /data/jetstream" in conf_text
    conf = tmp_path / "nats.conf"
    conf.write_text(conf_text.replace("/data/jetstream", str(tmp_path / "js")))
    login = {k: base64.b64decode(v).decode() for k, v in one(objs, "Secret", NATS)["data"].items()}
    port = free_port()
    argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-c", str(conf), "-m", "0"]
    proc = ServerProcess(argv, name="nats-ha", log_dir=tmp_path / "log", env=login).start()
    try:
        assert wait_port("127.0.0.1", port, 10), proc.log_tail()
        nc = await nats.connect(
            f"nats://127.0.0.1:{port}",
            user=login["SIE_NATS_USER"],
            password=login["SIE_NATS_PASSWORD"],
            allow_reconnect=False,
            connect_timeout=3,
        )
        try:
            js = nc.jetstream()
            stream = StreamConfig(name="sie-config", subjects=["sie.t.>"], storage=StorageType.FILE)
            await js.add_stream(stream)
            ack = await js.publish("sie.t.x", b"1")
            assert ack.stream == "sie-config" and ack.seq == 1
        finally:
            await nc.close()
        assert any((tmp_path / "js").rglob("*")), "JetStream wrote nothing under store_dir"
    finally:
        proc.stop()
