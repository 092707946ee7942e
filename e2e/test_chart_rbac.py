"""The chart's RBAC is enough, and every verb it grants is needed.

The ServiceAccounts, Roles and RoleBindings come from `helm template` of the chart itself;
the operator and a gateway run as real processes with a token minted for the chart's
ServiceAccounts (TokenRequest), so the API server enforces exactly what the chart grants.
With all rights a ModelConfig reconciles to Ready. Then each verb is taken away in turn,
the process is restarted with the same identity, and the feature that verb serves is shown
to break (with the 403 in the log as the cause), then to work again once the verb is back.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sie_operator.devcluster.controlplane import find_binary
from sie_operator.devcluster.kubetest import Kube, model_manifest
from sie_operator.devcluster.ports import free_port
from sie_operator.devcluster.procs import ServerProcess, sie_operator_argv
from sie_operator.devcluster.stack import Stack, StackConfig

# a 403 in a log line, not the milliseconds of a timestamp ("23:54:57,403")
FORBIDDEN = re.compile(r"(?<![,.\d])403(?!\d)")
pytestmark = [pytest.mark.k8s, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "sie-operator"
RELEASE = "rbac"
FULLNAME = f"{RELEASE}-sie-operator"
OPERATOR_SA = FULLNAME
GATEWAY_SA = f"{FULLNAME}-gateway"
OPERATOR_ROLE = FULLNAME  # in each watched namespace (here: the release namespace)
DISCOVERY_ROLE = f"{FULLNAME}-discovery"
GATEWAY_ROLE = f"{FULLNAME}-gateway"
QUIET = 8.0  # seconds a broken operator gets to prove it does nothing (Ready takes ~1-2 s)
READY = 45.0


# --------------------------------------------------------------------------- chart objects


def render_rbac(namespace: str, release: str = RELEASE, *values: str) -> list[dict[str, Any]]:
    """ServiceAccounts, Roles and RoleBindings exactly as the chart renders them."""
    helm = find_binary("helm", allow_path=True)
    sets = [a for v in ("workers.enabled=true", *values) for a in ("--set", v)]
    argv = [str(helm), "template", release, str(CHART), "--namespace", namespace, *sets]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    keep = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    return [d for d in yaml.safe_load_all(out) if d and d["kind"] in keep]


def without_verb(role: dict[str, Any], resource: str, verb: str) -> dict[str, Any]:
    """The Role minus one verb on one resource (a rule left with no verb is dropped)."""
    role = copy.deepcopy(role)
    rules = []
    found = False
    for rule in role["rules"]:
        if resource in rule["resources"] and verb in rule["verbs"]:
            found = True
            rule["verbs"] = [v for v in rule["verbs"] if v != verb]
        if rule["verbs"]:
            rules.append(rule)
    assert found, f"the chart does not grant {verb} on {resource} in {role['metadata']['name']}"
    role["rules"] = rules
    return role


def can_i(
    cp: Any, ns: str, sa: str, verb: str, resource: str, subresource: str = "", *, sa_ns: str | None = None
) -> bool:
    """kubectl auth can-i in ``ns`` as ServiceAccount ``sa_ns/sa`` (default: same namespace)."""
    argv = ["auth", "can-i", verb, resource, "-n", ns, f"--as=system:serviceaccount:{sa_ns or ns}:{sa}"]
    if subresource:
        argv.append(f"--subresource={subresource}")
    res = cp.kubectl(*argv, check=False)
    return res.stdout.strip() == "yes"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------- the stack


class ChartIdentityStack(Stack):
    """The dev stack, with the operator optionally finding gateways through a Service's
    EndpointSlices (as the chart configures it) instead of fixed URLs."""

    gateway_service: tuple[str, str] | None = None  # (namespace, name)
    debug_logs = False

    def control_process(self, i: int = 0) -> ServerProcess:
        proc = super().control_process(i)
        if self.debug_logs:
            i = proc.argv.index("run")
            proc.argv[i:i] = ["--log-level", "debug"]
        if self.gateway_service is not None:
            argv: list[str] = []
            skip = False
            for a in proc.argv:
                if skip:
                    skip = False
                    continue
                if a == "--gateway-url":
                    skip = True
                    continue
                argv.append(a)
            ns, name = self.gateway_service
            proc.argv = [*argv, "--gateway-service", name, "--gateway-namespace", ns]
        return proc


def log_size(proc: ServerProcess | None) -> int:
    try:
        return proc.log_path.stat().st_size if proc is not None else 0
    except OSError:
        return 0


def log_since(proc: ServerProcess | None, offset: int) -> str:
    if proc is None:
        return ""
    with proc.log_path.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


class Harness:
    """Namespace, chart RBAC, the stack running as the chart's operator ServiceAccount."""

    def __init__(self, cp: Any, ns: str, stack: ChartIdentityStack, objs: list[dict[str, Any]]) -> None:
        self.cp = cp
        self.ns = ns
        self.stack = stack
        self.kube = Kube(cp, ns)
        self.roles = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Role"}

    def apply(self, obj: dict[str, Any]) -> None:
        self.cp.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def revoke(self, role: str, resource: str, verb: str, *, sa: str = OPERATOR_SA, sub: str = "") -> None:
        self.apply(without_verb(self.roles[role], resource if not sub else f"{resource}/{sub}", verb))
        group_resource = {
            "modelconfigs": "modelconfigs.sie.dev",
            "endpointslices": "endpointslices.discovery.k8s.io",
        }
        wait_until(
            lambda: not can_i(self.cp, self.ns, sa, verb, group_resource.get(resource, resource), sub),
            10,
            f"{verb} {resource} to be revoked",
        )

    def restore(self) -> None:
        for role in self.roles.values():
            self.apply(role)
        wait_until(
            lambda: (
                can_i(self.cp, self.ns, OPERATOR_SA, "patch", "modelconfigs.sie.dev", "status")
                and can_i(self.cp, self.ns, OPERATOR_SA, "list", "endpointslices.discovery.k8s.io")
                and can_i(self.cp, self.ns, GATEWAY_SA, "watch", "endpointslices.discovery.k8s.io")
            ),
            10,
            "the chart's rights to be back",
        )

    def restart_operator(self) -> int:
        """Restart with the same ServiceAccount kubeconfig; returns the log offset before it."""
        self.stack.stop_control()
        offset = log_size(self.stack.control)
        self.stack.start_control()
        return offset

    def no_status_for(self, name: str, seconds: float = QUIET) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            obj = self.kube.get(name)
            assert obj is not None
            assert not obj.get("status"), f"{name} got a status: {obj.get('status')}"
            time.sleep(0.25)


@pytest.fixture(scope="module")
def harness(
    control_plane: Any, crd_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    ns = f"t-chart-rbac-{int(time.time() * 1000) % 10**8}"
    control_plane.kubectl("create", "namespace", ns)
    objs = render_rbac(ns)
    for o in objs:
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(o))
    kubeconfig = control_plane.service_account_kubeconfig(ns, OPERATOR_SA)
    cfg = StackConfig(kubeconfig=str(kubeconfig), namespaces=[ns], heartbeat_timeout=6.0)
    yield from running(
        Harness(control_plane, ns, ChartIdentityStack(cfg, tmp_path_factory.mktemp("rbac")), objs)
    )


def running(h: Harness) -> Iterator[Harness]:
    """Start the harness's stack; on the way out stop it and drop the namespace."""
    try:
        h.stack.start()
    except Exception:
        print(h.stack.logs_tail())
        h.stack.stop()
        raise
    try:
        yield h
    finally:
        h.stack.stop()
        with contextlib.suppress(Exception):
            h.cp.kubectl("delete", "namespace", h.ns, "--wait=false", check=False)


@pytest.fixture
def rbac(harness: Harness) -> Iterator[Harness]:
    """Each test starts and ends with exactly the chart's rights and a fresh operator."""
    harness.restore()
    yield harness
    changed_mode = harness.stack.gateway_service is not None or harness.stack.debug_logs
    harness.stack.gateway_service = None
    harness.stack.debug_logs = False
    harness.restore()
    if changed_mode or not harness.stack.control or not harness.stack.control.running:
        harness.restart_operator()


# --------------------------------------------------------------------------- with the chart's rights


def test_chart_rights_are_enough_to_reach_ready(rbac: Harness) -> None:
    offset = rbac.restart_operator()
    rbac.kube.apply(model_manifest("full", "acme/full"))
    obj = rbac.kube.wait_ready("full", timeout=READY)
    assert obj["status"]["ackedWorkers"] == 2
    reasons = {e["reason"] for e in rbac.kube.events("full")}
    assert reasons, "the operator posted no Event"
    log = log_since(rbac.stack.control, offset)
    assert not FORBIDDEN.search(log) and "Forbidden" not in log, log[-3000:]


@pytest.mark.parametrize(
    ("verb", "resource", "subresource"),
    [
        ("patch", "modelconfigs.sie.dev", ""),  # spec/metadata: the operator never writes them
        ("update", "modelconfigs.sie.dev", ""),
        ("create", "modelconfigs.sie.dev", ""),
        ("delete", "modelconfigs.sie.dev", ""),
        ("update", "modelconfigs.sie.dev", "status"),
        ("get", "secrets", ""),
        ("list", "customresourcedefinitions.apiextensions.k8s.io", ""),
        ("list", "namespaces", ""),
        ("list", "kopfpeerings.kopf.dev", ""),
        ("list", "pods", ""),
        ("create", "endpointslices.discovery.k8s.io", ""),
    ],
)
def test_chart_grants_nothing_else(rbac: Harness, verb: str, resource: str, subresource: str) -> None:
    assert not can_i(rbac.cp, rbac.ns, OPERATOR_SA, verb, resource, subresource)
    assert not can_i(rbac.cp, rbac.ns, GATEWAY_SA, verb, resource, subresource)


def test_no_rights_outside_the_watched_namespaces(rbac: Harness) -> None:
    assert not can_i(rbac.cp, "default", OPERATOR_SA, "list", "modelconfigs.sie.dev", sa_ns=rbac.ns)
    res = rbac.cp.kubectl(
        "auth", "can-i", "list", "modelconfigs.sie.dev", "--all-namespaces",
        f"--as=system:serviceaccount:{rbac.ns}:{OPERATOR_SA}", check=False,
    )  # fmt: skip
    assert res.stdout.strip() == "no"


# --------------------------------------------------------------------------- one verb less


def test_without_list_on_modelconfigs_nothing_reconciles(rbac: Harness) -> None:
    rbac.revoke(OPERATOR_ROLE, "modelconfigs", "list")
    offset = rbac.restart_operator()
    rbac.kube.apply(model_manifest("nolist", "acme/nolist"))
    rbac.no_status_for("nolist")
    log = log_since(rbac.stack.control, offset)
    assert "403" in log or "Forbidden" in log or "forbidden" in log, log[-3000:]
    rbac.restore()
    rbac.restart_operator()
    rbac.kube.wait_ready("nolist", timeout=READY)


def test_without_watch_on_modelconfigs_changes_are_not_seen(rbac: Harness) -> None:
    rbac.revoke(OPERATOR_ROLE, "modelconfigs", "watch")
    offset = rbac.restart_operator()
    time.sleep(2)  # past the initial listing: only a watch would bring new objects
    rbac.kube.apply(model_manifest("nowatch", "acme/nowatch"))
    rbac.no_status_for("nowatch")
    log = log_since(rbac.stack.control, offset)
    assert "403" in log or "Forbidden" in log or "forbidden" in log, log[-3000:]
    rbac.restore()
    rbac.restart_operator()
    rbac.kube.wait_ready("nowatch", timeout=READY)


def test_without_status_patch_no_status_is_written(rbac: Harness) -> None:
    rbac.revoke(OPERATOR_ROLE, "modelconfigs", "patch", sub="status")
    offset = rbac.restart_operator()
    rbac.kube.apply(model_manifest("nostatus", "acme/nostatus"))
    rbac.no_status_for("nostatus")
    log = log_since(rbac.stack.control, offset)
    assert "403" in log or "Forbidden" in log or "forbidden" in log, log[-3000:]
    # the model itself was stored and published: only the status write is missing
    with urllib.request.urlopen(f"{rbac.stack.config_url}/v1/configs/models", timeout=10) as resp:
        ids = {m["model_id"] for m in json.loads(resp.read())["models"]}
    assert "acme/nostatus" in ids
    rbac.restore()
    rbac.restart_operator()
    rbac.kube.wait_ready("nostatus", timeout=READY)


def test_without_events_create_there_are_no_events(rbac: Harness) -> None:
    rbac.revoke(OPERATOR_ROLE, "events", "create")
    rbac.stack.debug_logs = True  # the operator reports failed Events at debug level only
    offset = rbac.restart_operator()
    rbac.kube.apply(model_manifest("noevents", "acme/noevents"))
    rbac.kube.wait_ready("noevents", timeout=READY)  # status is independent of Events
    time.sleep(1)
    assert rbac.kube.events("noevents") == []
    log = log_since(rbac.stack.control, offset)
    assert "not posted: HTTP 403" in log, log[-3000:]
    # with the right back, the next model gets its Events again
    rbac.restore()
    rbac.restart_operator()
    rbac.kube.apply(model_manifest("events", "acme/events"))
    rbac.kube.wait_ready("events", timeout=READY)
    wait_until(lambda: bool(rbac.kube.events("events")), 10, "Events for 'events'")


def host_ip() -> str:
    """A non-loopback address of this machine: EndpointSlices refuse 127.0.0.0/8."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))  # no packet is sent for UDP connect
            ip = str(s.getsockname()[0])
        except OSError:
            ip = ""
    if not ip or ip.startswith(("127.", "169.254.", "0.")):
        pytest.skip("no non-loopback IPv4 address for an EndpointSlice on this machine")
    return ip


def service_with_slice(rbac: Harness, name: str, ip: str, port: int) -> None:
    """A Service and the EndpointSlice the EndpointSlice controller would write for it
    (there is no controller manager here), pointing at one process on this machine."""
    rbac.apply(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": rbac.ns},
         "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": port}]}}
    )  # fmt: skip
    rbac.apply(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-1",
                "namespace": rbac.ns,
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        }
    )


class Extra:
    """One more gateway or worker of the stack, on an address and identity of our choice."""

    def __init__(self, rbac: Harness, kind: str, host: str, *, env: dict[str, str] | None = None) -> None:
        stack = rbac.stack
        self.host = host
        self.port = free_port()
        name = f"extra-{kind}-{self.port}"
        base = {"PYTHONUNBUFFERED": "1", **(env or {})}
        if kind == "gateway":
            workers = ",".join(f"http://127.0.0.1:{p}" for p in stack.worker_ports.values())
            base = {
                "SIE_CONFIG_SERVICE_URL": stack.config_url,
                "SIE_NATS_URL": stack.nats.url,
                "SIE_GATEWAY_WORKERS": workers,
                **base,
            }
            argv = sie_operator_argv(
                "gateway", "--host", host, "--port", str(self.port), "--gateway-id", name,
                "--heartbeat-timeout", "6",
            )  # fmt: skip
        else:
            argv = sie_operator_argv(
                "worker", "--name", name, "--bundle", "default", "--host", host, "--port", str(self.port),
                "--nats-url", stack.nats.url, "--config-url", stack.config_url,
            )  # fmt: skip
        self.proc = ServerProcess(argv, name=name, log_dir=stack.logs, env=base)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Extra:
        self.proc.start()
        self.proc.wait_http(f"{self.url}/healthz", 30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stop(timeout=5)

    def log(self) -> str:
        return log_since(self.proc, 0)

    def eligible(self, model_id: str) -> int:
        """Workers this gateway counts for the model (-1 while it does not know the model)."""
        try:
            with urllib.request.urlopen(f"{self.url}/v1/configs/models/{model_id}/status", timeout=5) as resp:
                snap = json.loads(resp.read())
        except OSError:
            return -1
        return sum(int(b.get("total_eligible_workers") or 0) for b in snap.get("bundles") or [])


def test_without_endpointslice_list_gateways_are_not_found(rbac: Harness) -> None:
    ip = host_ip()
    with Extra(rbac, "gateway", ip) as gateway:
        service_with_slice(rbac, "gateways", ip, gateway.port)
        rbac.stack.gateway_service = (rbac.ns, "gateways")
        # with the chart's rights, the operator finds the gateway through the Service
        rbac.restart_operator()
        rbac.kube.apply(model_manifest("viaslice", "acme/viaslice"))
        rbac.kube.wait_ready("viaslice", timeout=READY)
        rbac.revoke(DISCOVERY_ROLE, "endpointslices", "list")
        rbac.restart_operator()
        rbac.kube.apply(model_manifest("noslice", "acme/noslice"))
        obj = rbac.kube.wait_ready("noslice", status="False", reason="GatewayUnreachable", timeout=READY)
        ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
        assert "403" in ready["message"], ready


# --------------------------------------------------------------------------- the gateway's Role


def k8s_gateway(rbac: Harness, service: str, worker_port: int) -> Extra:
    """A gateway discovering workers through EndpointSlices, as the chart's gateway SA."""
    kubeconfig = rbac.cp.service_account_kubeconfig(rbac.ns, GATEWAY_SA)
    return Extra(
        rbac,
        "gateway",
        "127.0.0.1",
        env={
            "KUBECONFIG": str(kubeconfig),
            "SIE_GATEWAY_WORKERS": "",
            "SIE_GATEWAY_KUBERNETES": "true",
            "SIE_GATEWAY_K8S_NAMESPACE": rbac.ns,
            "SIE_GATEWAY_K8S_SERVICE": service,
            "SIE_GATEWAY_K8S_PORT": str(worker_port),
        },
    )


def test_gateway_role_finds_workers_and_needs_list(rbac: Harness) -> None:
    ip = host_ip()
    rbac.kube.apply(model_manifest("gwrole", "acme/gwrole"))
    rbac.kube.wait_ready("gwrole", timeout=READY)
    with Extra(rbac, "worker", ip) as worker:
        service_with_slice(rbac, "workers", ip, worker.port)
        with k8s_gateway(rbac, "workers", worker.port) as gw:
            wait_until(lambda: gw.eligible("acme/gwrole") == 1, 30, "the gateway to find the worker")
        rbac.revoke(GATEWAY_ROLE, "endpointslices", "list", sa=GATEWAY_SA)
        with k8s_gateway(rbac, "workers", worker.port) as gw:
            wait_until(lambda: "list EndpointSlices: HTTP 403" in gw.log(), 30, "the gateway to log the 403")
            wait_until(lambda: gw.eligible("acme/gwrole") >= 0, 30, "the gateway to know the model")
            time.sleep(2)
            assert gw.eligible("acme/gwrole") == 0


def test_gateway_role_needs_watch(rbac: Harness) -> None:
    """Without watch the gateway lists once, then every watch fails with 403 and it falls
    back to listing again after a backoff: discovery degrades to a noisy poll."""
    ip = host_ip()
    with Extra(rbac, "worker", ip) as worker:
        service_with_slice(rbac, "workers", ip, worker.port)
        rbac.revoke(GATEWAY_ROLE, "endpointslices", "watch", sa=GATEWAY_SA)
        with k8s_gateway(rbac, "workers", worker.port) as gw:
            wait_until(
                lambda: gw.log().count("watch EndpointSlices: HTTP 403") >= 2, 30, "repeated watch 403s"
            )


# --------------------------------------------------------------------------- rbac.clusterWide=true


def test_cluster_wide_rbac_serves_every_namespace(rbac: Harness) -> None:
    """The ClusterRole variant, as its own release: an operator with --all-namespaces and
    that release's ServiceAccount reconciles a ModelConfig in a namespace it was never told about."""
    release = "cw"
    sa = f"{release}-sie-operator"
    objs = render_rbac(rbac.ns, release, "rbac.clusterWide=true")
    kinds = sorted({o["kind"] for o in objs})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"]
    other = f"{rbac.ns}-other"
    rbac.cp.kubectl("create", "namespace", other)
    cluster_scoped = [o for o in objs if o["kind"].startswith("Cluster")]
    stack = rbac.stack
    saved = stack.cfg
    try:
        for o in objs:
            rbac.apply(o)
        wait_until(
            lambda: (
                can_i(rbac.cp, other, sa, "patch", "modelconfigs.sie.dev", "status", sa_ns=rbac.ns)
                and not can_i(rbac.cp, other, sa, "patch", "modelconfigs.sie.dev", sa_ns=rbac.ns)
            ),
            10,
            "the ClusterRole to apply",
        )
        res = rbac.cp.kubectl(
            "auth", "can-i", "watch", "modelconfigs.sie.dev", "--all-namespaces",
            f"--as=system:serviceaccount:{rbac.ns}:{sa}", check=False,
        )  # fmt: skip
        assert res.stdout.strip() == "yes"
        kubeconfig = rbac.cp.service_account_kubeconfig(rbac.ns, sa)
        stack.cfg = dataclasses.replace(
            saved, kubeconfig=str(kubeconfig), namespaces=[], operator_args=["--all-namespaces"]
        )
        offset = rbac.restart_operator()
        Kube(rbac.cp, other).apply(model_manifest("elsewhere", "acme/elsewhere"))
        Kube(rbac.cp, other).wait_ready("elsewhere", timeout=READY)
        log = log_since(stack.control, offset)
        assert not FORBIDDEN.search(log), log[-3000:]
    finally:
        stack.cfg = saved
        for o in cluster_scoped:
            rbac.cp.kubectl(
                "delete", o["kind"].lower(), o["metadata"]["name"], "--ignore-not-found", check=False
            )
        rbac.restart_operator()
