"""What `helm template` renders, configuration by configuration.

Why: the chart is the product's install path; its wiring (who talks to whom, which producer
id the gateways trust, which rights each ServiceAccount gets) only shows in rendered objects.
The API server's own verdict on these objects is in test_chart_k8s.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from chartlib import (
    CHART,
    FULLNAME,
    NAMESPACE,
    REPO,
    Obj,
    args,
    container,
    env,
    find,
    flag,
    helm,
    load_yaml,
    names,
    one,
    pod_templates,
    render,
    selects,
)

from sie_operator.protocol.deltas import is_trusted, parse_producer_list

GATEWAY = f"{FULLNAME}-gateway"
HEADLESS = f"{FULLNAME}-gateway-headless"
WORKER = f"{FULLNAME}-worker"
NATS = f"{FULLNAME}-nats"
ALL_VALUES = load_yaml(CHART / "ci" / "all-values.yaml")

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "cluster-wide": {"rbac.clusterWide": True},
    "namespaced-multi": {"watchNamespaces": ["team-a", "team-b"]},
    "external-nats": {"nats.external.url": "nats://nats.nats-system.svc:4222"},
    "no-nats": {"nats.builtin.enabled": False},
    "workers": {"workers.enabled": True, "workers.bundles": {"default": 2, "sglang": 1}},
    "servicemonitor": {"monitoring.serviceMonitor.enabled": True},
    "no-persistence": {"store.persistence.enabled": False},
    "tokens": {
        "auth.adminToken.existingSecret": "sie-admin",
        "auth.authToken.existingSecret": "sie-read",
        "auth.authToken.key": "token",
    },
    # the ci/ values file (everything on), passed key by key
    "all": {k: v for k, v in ALL_VALUES.items()},
    # high availability on the built-in NATS, and on an external cluster with a .creds file
    "ha": {"ha.enabled": True},
    "ha-external": {
        "ha.enabled": True,
        "nats.external.url": "nats://nats.nats.svc:4222",
        "nats.external.credsSecret.name": "sie-nats-creds",
        "workers.enabled": True,
        "networkPolicy.enabled": True,
    },
}


def rendered(config: str) -> list[Obj]:
    return render(CONFIGS[config])


def operator(objs: list[Obj]) -> Obj:
    return container(one(objs, "Deployment", FULLNAME))


def gateway(objs: list[Obj]) -> Obj:
    return container(one(objs, "Deployment", GATEWAY))


def pod_env_value(value: Any, pod_name: str) -> str:
    """An env value as the kubelet expands it ($(POD_NAME))."""
    assert isinstance(value, str), value
    return value.replace("$(POD_NAME)", pod_name)


# --------------------------------------------------------------------------- inventory


def test_default_objects() -> None:
    objs = rendered("default")
    assert names(objs) == sorted(
        [
            f"ConfigMap/{NAMESPACE}/{NATS}-config",
            f"Deployment/{NAMESPACE}/{FULLNAME}",
            f"Deployment/{NAMESPACE}/{GATEWAY}",
            f"Deployment/{NAMESPACE}/{NATS}",
            f"PersistentVolumeClaim/{NAMESPACE}/{FULLNAME}-store",
            f"Role/{NAMESPACE}/{FULLNAME}",
            f"Role/{NAMESPACE}/{FULLNAME}-discovery",
            f"Role/{NAMESPACE}/{GATEWAY}",
            f"RoleBinding/{NAMESPACE}/{FULLNAME}",
            f"RoleBinding/{NAMESPACE}/{FULLNAME}-discovery",
            f"RoleBinding/{NAMESPACE}/{GATEWAY}",
            f"Secret/{NAMESPACE}/{FULLNAME}-auth",
            f"Secret/{NAMESPACE}/{NATS}",
            f"Service/{NAMESPACE}/{FULLNAME}",
            f"Service/{NAMESPACE}/{GATEWAY}",
            f"Service/{NAMESPACE}/{HEADLESS}",
            f"Service/{NAMESPACE}/{NATS}",
            f"ServiceAccount/{NAMESPACE}/{FULLNAME}",
            f"ServiceAccount/{NAMESPACE}/{GATEWAY}",
        ]
    )


def test_fullname_follows_helm_conventions() -> None:
    objs = render(release="sie-operator")
    assert find(objs, "Deployment", "sie-operator")
    objs = render({"fullnameOverride": "sie"})
    assert {o["metadata"]["name"] for o in find(objs, "Deployment")} == {"sie", "sie-gateway", "sie-nats"}


def test_image_defaults_to_app_version_and_can_be_pinned() -> None:
    app_version = load_yaml(CHART / "Chart.yaml")["appVersion"]
    for _, tpl in pod_templates(rendered("workers")):
        image = tpl["spec"]["containers"][0]["image"]
        assert image.startswith("nats:") or image == f"ghcr.io/sie-operator/sie-operator:{app_version}"
    objs = render({"image.tag": "1.2.3", "image.repository": "example.com/sie"})
    assert operator(objs)["image"] == "example.com/sie:1.2.3"


def test_chart_metadata() -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"] == ">=1.30.0-0"


def test_chart_crd_is_the_repository_crd_byte_for_byte() -> None:
    """crds/ in the chart is a copy (Helm cannot reach outside the chart): it must not drift."""
    source = REPO / "crds" / "modelconfig.yaml"
    copy = CHART / "crds" / "modelconfig.yaml"
    assert source.is_file(), f"{source} is missing (make crd)"
    assert copy.is_file(), f"{copy} is missing: cp {source} {copy}"
    assert copy.read_bytes() == source.read_bytes(), f"{copy} differs from {source}: cp {source} {copy}"


# --------------------------------------------------------------------------- pod security


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_pod_meets_pod_security_restricted(config: str) -> None:
    """The restricted profile's fields, everywhere, plus a read-only root with a /tmp emptyDir."""
    workloads = list(pod_templates(rendered(config)))
    assert workloads
    for workload, tpl in workloads:
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        spec = tpl["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), where
        assert all("hostPath" not in v for v in spec.get("volumes") or []), where
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert not sc.get("privileged"), where
            res = c["resources"]
            assert res["requests"]["cpu"] and res["requests"]["memory"], where
            assert res["limits"]["cpu"] and res["limits"]["memory"], where
            if c["name"] != "nats":  # nats-server writes nothing without JetStream
                mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
                vols = {v["name"]: v for v in spec["volumes"]}
                assert "emptyDir" in vols[mounts["/tmp"]], where


# --------------------------------------------------------------------------- operator


def test_operator_is_one_replica_recreate_with_probes() -> None:
    objs = rendered("default")
    dep = one(objs, "Deployment", FULLNAME)
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    c = container(dep)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8080, "health": 8081}
    # liveness is the Config API's /healthz: it fails when only a restart repairs the store
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert args(c)[:2] == ["--log-level=info", "run"]
    assert flag(c, "port") == ["8080"] and flag(c, "health-port") == ["8081"]
    assert flag(c, "host") == ["0.0.0.0"]


def test_operator_store_is_the_pvc_and_restored() -> None:
    objs = rendered("default")
    dep = one(objs, "Deployment", FULLNAME)
    c = container(dep)
    e = env(c)
    store_dir = e["SIE_CONFIG_STORE_DIR"]
    assert e["SIE_CONFIG_RESTORE"] == "true"
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == store_dir)
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    pvc = one(objs, "PersistentVolumeClaim", f"{FULLNAME}-store")
    assert vol["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in pvc["spec"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # the pod's fsGroup makes a fresh volume writable for the non-root user
    assert dep["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 10001


def test_store_options() -> None:
    objs = render({"store.persistence.storageClass": "fast", "store.persistence.size": "10Gi"})
    pvc = one(objs, "PersistentVolumeClaim", f"{FULLNAME}-store")
    assert (
        pvc["spec"]["storageClassName"] == "fast"
        and pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    )
    pvc = one(render({"store.persistence.storageClass": "-"}), "PersistentVolumeClaim", f"{FULLNAME}-store")
    assert pvc["spec"]["storageClassName"] == ""
    objs = render({"store.persistence.existingClaim": "mine"})
    assert not find(objs, "PersistentVolumeClaim")
    vols = one(objs, "Deployment", FULLNAME)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "store", "persistentVolumeClaim": {"claimName": "mine"}} in vols


def test_no_persistence_uses_an_empty_dir() -> None:
    objs = rendered("no-persistence")
    assert not find(objs, "PersistentVolumeClaim")
    vols = one(objs, "Deployment", FULLNAME)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "store", "emptyDir": {}} in vols


def test_shipped_bundles_by_default_configmap_when_given() -> None:
    c = operator(rendered("default"))
    assert "SIE_BUNDLES_DIR" not in env(c)
    objs = rendered("all")
    cm = one(objs, "ConfigMap", f"{FULLNAME}-bundles")
    assert sorted(cm["data"]) == ["default.yaml", "sglang.yaml"]
    assert cm["data"]["sglang.yaml"] == ALL_VALUES["bundles"]["files"]["sglang.yaml"]
    dep = one(objs, "Deployment", FULLNAME)
    c = container(dep)
    bundles_dir = env(c)["SIE_BUNDLES_DIR"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == bundles_dir)
    assert mount["readOnly"] is True
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert vol["configMap"]["name"] == cm["metadata"]["name"]
    # a bundle change rolls the operator
    assert "checksum/bundles" in dep["spec"]["template"]["metadata"]["annotations"]
    cm2 = one(
        render({"bundles.files": {"default": "name: default\nadapters: [x]\n"}}),
        "ConfigMap",
        f"{FULLNAME}-bundles",
    )
    assert list(cm2["data"]) == ["default.yaml"]


def test_operator_discovers_gateways_through_the_headless_service() -> None:
    objs = rendered("default")
    c = operator(objs)
    headless = one(objs, "Service", HEADLESS)
    assert headless["spec"]["clusterIP"] == "None"
    assert flag(c, "gateway-service") == [HEADLESS]
    assert flag(c, "gateway-namespace") == [NAMESPACE]
    assert flag(c, "gateway-port") == [str(headless["spec"]["ports"][0]["port"])]
    assert not flag(c, "gateway-url")
    gw_pods = one(objs, "Deployment", GATEWAY)["spec"]["template"]["metadata"]["labels"]
    assert selects(headless["spec"]["selector"], gw_pods)
    # only Ready replicas are asked: a gateway still bootstrapping is not reported as behind
    assert headless["spec"].get("publishNotReadyAddresses") in (None, False)


# --------------------------------------------------------------------------- wiring


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_services_select_their_pods_and_ports(config: str) -> None:
    objs = rendered(config)
    pods = list(pod_templates(objs))
    for svc in find(objs, "Service"):
        matching = [tpl for _, tpl in pods if selects(svc["spec"]["selector"], tpl["metadata"]["labels"])]
        assert matching, f"Service {svc['metadata']['name']} selects no pod"
        for tpl in matching:
            port_names = {p["name"] for c in tpl["spec"]["containers"] for p in c.get("ports", [])}
            for p in svc["spec"]["ports"]:
                assert p["targetPort"] in port_names, (svc["metadata"]["name"], p)
        components = {tpl["metadata"]["labels"]["app.kubernetes.io/component"] for tpl in matching}
        assert len(components) == 1, (svc["metadata"]["name"], components)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_gateway_bootstraps_from_the_operator_service(config: str) -> None:
    objs = rendered(config)
    url = env(gateway(objs))["SIE_CONFIG_SERVICE_URL"]
    svc = one(objs, "Service", FULLNAME)
    assert url == f"http://{FULLNAME}.{NAMESPACE}.svc:{svc['spec']['ports'][0]['port']}"
    op_labels = one(objs, "Deployment", FULLNAME)["spec"]["template"]["metadata"]["labels"]
    assert selects(svc["spec"]["selector"], op_labels)
    assert svc["spec"]["ports"][0]["targetPort"] == "http"


@pytest.mark.parametrize(
    ("values", "pod"),
    [({}, "sie-sie-operator-5d9c7b9f4-x2x7q"), ({"operator.producerId": "acme-cfg"}, "op-0")],
)
def test_gateways_trust_the_operator_producer_id(values: dict[str, Any], pod: str) -> None:
    """Deltas from an untrusted producer are dropped silently (contract §3.5): the operator's
    router_id must pass the gateway's own trust check, with the pod name substituted."""
    objs = render(values)
    producer = pod_env_value(env(operator(objs))["SIE_PRODUCER_ID"], pod)
    trusted = parse_producer_list(env(gateway(objs))["SIE_NATS_CONFIG_TRUSTED_PRODUCERS"])
    assert is_trusted(producer, trusted), (producer, trusted)
    assert not is_trusted("someone-else", trusted)
    assert "$(POD_NAME)" in env(operator(objs))["SIE_PRODUCER_ID"]  # one id per pod, for debugging


def test_gateway_defaults() -> None:
    objs = rendered("default")
    dep = one(objs, "Deployment", GATEWAY)
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    c = container(dep)
    e = env(c)
    assert args(c)[1] == "gateway" and flag(c, "gateway-id") == ["$(POD_NAME)"]
    assert e["SIE_GATEWAY_KUBERNETES"] == "true"
    assert e["SIE_GATEWAY_K8S_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert e["SIE_GATEWAY_K8S_SERVICE"] == WORKER and e["SIE_GATEWAY_K8S_PORT"] == "8080"
    assert e["SIE_AUTH_MODE"] == "token"  # auth is on by default
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert one(render({"gateway.replicas": 5}), "Deployment", GATEWAY)["spec"]["replicas"] == 5


def test_gateway_drains_before_it_is_killed() -> None:
    """SIGTERM starts an in-process drain (readiness fails, serving goes on); the kubelet's
    grace period must outlast it, and a readiness failure must be seen within it."""
    c = container(dep := one(rendered("default"), "Deployment", GATEWAY))
    drain = int(flag(c, "drain-delay")[0])
    assert drain == 10 and dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30
    probe = c["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] < drain
    assert "lifecycle" not in c  # no preStop exec: the image needs no shell or sleep
    custom = one(
        render({"gateway.drainDelaySeconds": 20, "gateway.terminationGracePeriodSeconds": 45}),
        "Deployment",
        GATEWAY,
    )
    assert flag(container(custom), "drain-delay") == ["20"]
    assert custom["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 45
    res = helm(
        "template", "x", str(CHART), "--set", "gateway.drainDelaySeconds=40", check=False
    )  # fmt: skip
    assert res.returncode != 0 and "terminationGracePeriodSeconds" in res.stderr


@pytest.mark.parametrize("config", ["default", "workers", "tokens"])
def test_nats_builtin(config: str) -> None:
    objs = rendered(config)
    url = f"nats://{NATS}.{NAMESPACE}.svc:4222"
    assert env(operator(objs))["SIE_NATS_URL"] == url
    assert env(gateway(objs))["SIE_NATS_URL"] == url
    svc = one(objs, "Service", NATS)
    assert svc["spec"]["ports"][0]["port"] == 4222
    nats = one(objs, "Deployment", NATS)
    assert nats["spec"]["replicas"] == 1
    assert container(nats)["image"] == "nats:2.10-alpine"
    assert nats["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    for w in find(objs, "StatefulSet"):
        assert flag(container(w), "nats-url") == [url]


def test_nats_external() -> None:
    objs = rendered("external-nats")
    url = CONFIGS["external-nats"]["nats.external.url"]
    assert not find(objs, "Deployment", NATS) and not find(objs, "Service", NATS)
    assert env(operator(objs))["SIE_NATS_URL"] == url
    assert env(gateway(objs))["SIE_NATS_URL"] == url
    objs = render({**CONFIGS["external-nats"], **CONFIGS["workers"]})
    for w in find(objs, "StatefulSet"):
        assert flag(container(w), "nats-url") == [url]


def test_no_nats_at_all() -> None:
    objs = rendered("no-nats")
    assert not find(objs, "Deployment", NATS)
    assert "SIE_NATS_URL" not in env(operator(objs)) and "SIE_NATS_URL" not in env(gateway(objs))


def test_tokens_come_from_secrets() -> None:
    """Per-token Secrets win; the export token still comes from the generated Secret, and
    gateways and workers never get the admin token."""
    objs = rendered("tokens")
    admin = {"secretKeyRef": {"name": "sie-admin", "key": "SIE_ADMIN_TOKEN"}}
    read = {"secretKeyRef": {"name": "sie-read", "key": "token"}}
    export = {"secretKeyRef": {"name": f"{FULLNAME}-auth", "key": "SIE_EXPORT_TOKEN"}}
    op = env(operator(objs))
    assert op["SIE_ADMIN_TOKEN"] == admin and op["SIE_AUTH_TOKEN"] == read
    assert op["SIE_EXPORT_TOKEN"] == export
    assert op["SIE_GATEWAY_TOKEN"] == read  # the gateways enforce the read token
    gw = env(gateway(objs))
    assert "SIE_ADMIN_TOKEN" not in gw
    assert (
        gw["SIE_EXPORT_TOKEN"] == export and gw["SIE_AUTH_TOKEN"] == read and gw["SIE_AUTH_MODE"] == "token"
    )
    objs = render({**CONFIGS["tokens"], **CONFIGS["workers"]})
    for w in find(objs, "StatefulSet"):
        e = env(container(w))
        assert "SIE_ADMIN_TOKEN" not in e and e["SIE_EXPORT_TOKEN"] == export


# --------------------------------------------------------------------------- workers


def test_workers_off_by_default() -> None:
    objs = rendered("default")
    assert not find(objs, "StatefulSet") and not find(objs, "Service", WORKER)
    assert not find(objs, "ServiceAccount", WORKER)


def test_workers_one_statefulset_per_bundle() -> None:
    objs = rendered("workers")
    svc = one(objs, "Service", WORKER)
    assert svc["spec"]["clusterIP"] == "None"
    sets = {s["metadata"]["name"]: s for s in find(objs, "StatefulSet")}
    assert sorted(sets) == [f"{WORKER}-default", f"{WORKER}-sglang"]
    for bundle, replicas in (("default", 2), ("sglang", 1)):
        sts = sets[f"{WORKER}-{bundle}"]
        assert sts["spec"]["replicas"] == replicas
        assert sts["spec"]["serviceName"] == WORKER
        assert selects(svc["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
        spec = sts["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert spec["serviceAccountName"] == WORKER
        c = container(sts)
        assert args(c)[0] == "worker"
        assert flag(c, "bundle") == [bundle] and flag(c, "name") == ["$(POD_NAME)"]
        assert flag(c, "config-url") == [env(gateway(objs))["SIE_CONFIG_SERVICE_URL"]]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    sa = one(objs, "ServiceAccount", WORKER)
    assert sa["automountServiceAccountToken"] is False
    # the gateway discovers exactly these workers
    assert env(gateway(objs))["SIE_GATEWAY_K8S_SERVICE"] == WORKER
    assert env(gateway(objs))["SIE_GATEWAY_K8S_PORT"] == str(svc["spec"]["ports"][0]["port"])


def test_workers_without_bundles_fail_with_a_message() -> None:
    res = helm(
        "template",
        "x",
        str(CHART),
        "--set",
        "workers.enabled=true",
        "--set",
        "workers.bundles=null",
        check=False,
    )
    assert res.returncode != 0 and "workers.bundles" in res.stderr


# --------------------------------------------------------------------------- RBAC


def _rules(role: Obj) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    return sorted(
        (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(sorted(r["verbs"]))) for r in role["rules"]
    )


OPERATOR_RULES = sorted(
    [
        (("sie.dev",), ("modelconfigs",), ("list", "watch")),
        (("sie.dev",), ("modelconfigs/status",), ("patch",)),
        (("",), ("events",), ("create",)),
    ]
)
OPERATOR_DISCOVERY_RULES = [(("discovery.k8s.io",), ("endpointslices",), ("list",))]
GATEWAY_DISCOVERY_RULES = [(("discovery.k8s.io",), ("endpointslices",), ("list", "watch"))]


def _subjects(binding: Obj) -> list[tuple[str, str, str]]:
    return [(s["kind"], s["namespace"], s["name"]) for s in binding["subjects"]]


@pytest.mark.parametrize(
    ("config", "watched"), [("default", [NAMESPACE]), ("namespaced-multi", ["team-a", "team-b"])]
)
def test_rbac_namespaced(config: str, watched: list[str]) -> None:
    objs = rendered(config)
    op_sa = ("ServiceAccount", NAMESPACE, FULLNAME)
    assert not find(objs, "ClusterRole") and not find(objs, "ClusterRoleBinding")
    for ns in watched:
        assert _rules(one(objs, "Role", FULLNAME, ns)) == OPERATOR_RULES
        rb = one(objs, "RoleBinding", FULLNAME, ns)
        assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
        assert _subjects(rb) == [op_sa]
    assert sorted(r["metadata"]["namespace"] for r in find(objs, "Role", FULLNAME)) == sorted(watched)
    assert flag(operator(objs), "namespace") == watched and "--all-namespaces" not in args(operator(objs))
    _assert_discovery_roles(objs)


def test_rbac_cluster_wide() -> None:
    objs = rendered("cluster-wide")
    cr = one(objs, "ClusterRole", f"{NAMESPACE}-{FULLNAME}")
    assert _rules(cr) == OPERATOR_RULES
    crb = one(objs, "ClusterRoleBinding", f"{NAMESPACE}-{FULLNAME}")
    assert crb["roleRef"]["kind"] == "ClusterRole" and crb["roleRef"]["name"] == cr["metadata"]["name"]
    assert _subjects(crb) == [("ServiceAccount", NAMESPACE, FULLNAME)]
    assert not find(objs, "Role", FULLNAME)
    assert "--all-namespaces" in args(operator(objs)) and not flag(operator(objs), "namespace")
    _assert_discovery_roles(objs)


def _assert_discovery_roles(objs: list[Obj]) -> None:
    """EndpointSlice reads stay in the release namespace, for each component's own SA."""
    assert _rules(one(objs, "Role", f"{FULLNAME}-discovery", NAMESPACE)) == OPERATOR_DISCOVERY_RULES
    assert _subjects(one(objs, "RoleBinding", f"{FULLNAME}-discovery", NAMESPACE)) == [
        ("ServiceAccount", NAMESPACE, FULLNAME)
    ]
    assert _rules(one(objs, "Role", GATEWAY, NAMESPACE)) == GATEWAY_DISCOVERY_RULES
    assert _subjects(one(objs, "RoleBinding", GATEWAY, NAMESPACE)) == [("ServiceAccount", NAMESPACE, GATEWAY)]


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_least_privilege_everywhere(config: str) -> None:
    """No wildcard, no secrets, no writes to spec or metadata, workers bound to nothing."""
    objs = rendered(config)
    for role in find(objs, "Role") + find(objs, "ClusterRole"):
        for r in role["rules"]:
            assert "*" not in r["apiGroups"] + r["resources"] + r["verbs"], role["metadata"]["name"]
            assert "secrets" not in r["resources"]
            if "modelconfigs" in r["resources"]:
                assert set(r["verbs"]) <= {"get", "list", "watch"}
            if "modelconfigs/status" in r["resources"]:
                assert set(r["verbs"]) <= {"get", "patch"}
    bound = {
        s["name"] for b in find(objs, "RoleBinding") + find(objs, "ClusterRoleBinding") for s in b["subjects"]
    }
    assert WORKER not in bound
    assert {
        tpl["spec"]["serviceAccountName"]
        for _, tpl in pod_templates(objs)
        if "serviceAccountName" in tpl["spec"]
    } <= {
        FULLNAME,
        GATEWAY,
        WORKER,
    }


def test_rbac_can_be_left_to_the_user() -> None:
    objs = render({"rbac.create": False})
    assert not find(objs, "Role") and not find(objs, "RoleBinding")


# --------------------------------------------------------------------------- monitoring


def test_service_monitor_scrapes_operator_and_gateway_once() -> None:
    assert not find(rendered("default"), "ServiceMonitor")
    objs = rendered("servicemonitor")
    sm = one(objs, "ServiceMonitor", FULLNAME)
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    selected = [
        s
        for s in find(objs, "Service")
        if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert sorted(s["metadata"]["name"] for s in selected) == [FULLNAME, GATEWAY]
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    for s in selected:
        assert endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}
    # auth is on by default: the gateways' /metrics needs the read token
    assert endpoint["authorization"]["credentials"] == {"name": f"{FULLNAME}-auth", "key": "SIE_AUTH_TOKEN"}
    off = one(
        render({"monitoring.serviceMonitor.enabled": True, "auth.enabled": False}), "ServiceMonitor", FULLNAME
    )
    assert "authorization" not in off["spec"]["endpoints"][0]
    sm = one(rendered("all"), "ServiceMonitor", FULLNAME)
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"][0]["authorization"]["credentials"] == {
        "name": "sie-tokens",
        "key": "SIE_AUTH_TOKEN",
    }


def test_every_object_is_labelled_and_namespaced() -> None:
    for o in rendered("all"):
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "sie" and labels["team"] == "ml-platform", names([o])
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"], names([o])
