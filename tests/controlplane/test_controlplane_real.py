"""Proof that the local control plane is a real Kubernetes API: CEL, RBAC, status subresource.

These run against a real etcd + kube-apiserver (or E2E_CLUSTER=existing) and assert actual
outcomes, so a harness that silently ran with AlwaysAllow or without validation would fail.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sie_operator.cli import main as cli_main
from sie_operator.devcluster import ControlPlane, ControlPlaneError, parse_duration
from sie_operator.devcluster.controlplane import _remove_stale_workdirs

CRD_NAME = "widgets.proof.sie.dev"
CEL_MESSAGE = "size must be at most 10"

WIDGET_CRD = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {CRD_NAME}
spec:
  group: proof.sie.dev
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {{status: {{}}}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [size]
              properties:
                size: {{type: integer}}
              x-kubernetes-validations:
                - rule: "self.size <= 10"
                  message: "{CEL_MESSAGE}"
            status:
              type: object
              properties:
                phase: {{type: string}}
"""


def widget(name: str, namespace: str, size: int) -> str:
    return json.dumps(
        {
            "apiVersion": "proof.sie.dev/v1",
            "kind": "Widget",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"size": size},
        }
    )


def get_json(cp: ControlPlane, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cp.kubectl("get", *args, "-o", "json").stdout)
    return out


def wait_until(fn: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def process_gone(pid: int) -> bool:
    """Dead or a zombie (PID 1 in a container may not reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


def port_closed(url: str) -> bool:
    host, port = url.removeprefix("https://").removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.fixture(scope="module")
def widget_crd(control_plane: ControlPlane) -> Iterator[str]:
    control_plane.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    control_plane.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    yield CRD_NAME
    control_plane.kubectl("delete", "crd", CRD_NAME, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def own_planes_only(control_plane: ControlPlane) -> None:
    if control_plane.external:
        pytest.skip("starts its own control plane; not meaningful with E2E_CLUSTER=existing")


def child_env(control_plane: ControlPlane) -> dict[str, str]:
    env = dict(os.environ)
    if control_plane.assets_dir is not None:
        env["KUBEBUILDER_ASSETS"] = str(control_plane.assets_dir)
    return env


# --------------------------------------------------------------------------- API semantics


@pytest.mark.k8s
def test_namespace_fixture_creates_an_active_namespace(
    control_plane: ControlPlane, k8s_namespace: str
) -> None:
    ns = get_json(control_plane, "namespace", k8s_namespace)
    assert ns["status"]["phase"] == "Active"
    assert ns["metadata"]["labels"]["sie.dev/test-namespace"] == "true"
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["major"] == "1"


@pytest.mark.k8s
def test_cel_rule_refuses_object_with_its_message(
    control_plane: ControlPlane, k8s_namespace: str, widget_crd: str
) -> None:
    bad = control_plane.kubectl("apply", "-f", "-", input=widget("big", k8s_namespace, 11), check=False)
    assert bad.returncode != 0
    assert CEL_MESSAGE in bad.stderr
    assert "Invalid" in bad.stderr
    missing = control_plane.kubectl("get", "widget", "big", "-n", k8s_namespace, check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr

    control_plane.kubectl("apply", "-f", "-", input=widget("edge", k8s_namespace, 10))
    assert get_json(control_plane, "widget", "edge", "-n", k8s_namespace)["spec"]["size"] == 10

    # The rule also guards updates, not only creation.
    upd = control_plane.kubectl(
        "patch",
        "widget",
        "edge",
        "-n",
        k8s_namespace,
        "--type=merge",
        "-p",
        '{"spec":{"size":12}}',
        check=False,
    )
    assert upd.returncode != 0 and CEL_MESSAGE in upd.stderr


@pytest.mark.k8s
def test_service_account_is_forbidden_until_a_role_is_bound(
    control_plane: ControlPlane, k8s_namespace: str, widget_crd: str
) -> None:
    ns = k8s_namespace
    control_plane.kubectl("apply", "-f", "-", input=widget("w1", ns, 1))
    control_plane.kubectl("create", "serviceaccount", "reader", "-n", ns)
    kc = control_plane.service_account_kubeconfig(ns, "reader")

    who = control_plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=kc)
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:reader"

    denied = control_plane.kubectl("get", "widgets", "-n", ns, kubeconfig=kc, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr
    assert f'"system:serviceaccount:{ns}:reader" cannot list resource "widgets"' in denied.stderr

    control_plane.kubectl(
        "create",
        "role",
        "widget-reader",
        "-n",
        ns,
        "--verb=get,list,watch",
        "--resource=widgets.proof.sie.dev",
    )
    control_plane.kubectl(
        "create", "rolebinding", "reader-widgets", "-n", ns, "--role=widget-reader",
        f"--serviceaccount={ns}:reader",
    )  # fmt: skip

    def allowed() -> subprocess.CompletedProcess[str] | None:
        res = control_plane.kubectl("get", "widgets", "-n", ns, "-o", "json", kubeconfig=kc, check=False)
        return res if res.returncode == 0 else None

    ok = wait_until(allowed, what="the RoleBinding to take effect")
    assert [i["metadata"]["name"] for i in json.loads(ok.stdout)["items"]] == ["w1"]

    # Exactly the granted rights: no writes, nothing outside the namespace, no other resources.
    write = control_plane.kubectl("apply", "-f", "-", input=widget("w2", ns, 2), kubeconfig=kc, check=False)
    assert write.returncode != 0 and "Forbidden" in write.stderr
    other_ns = control_plane.kubectl("get", "widgets", "-n", "default", kubeconfig=kc, check=False)
    assert other_ns.returncode != 0 and "Forbidden" in other_ns.stderr
    secrets = control_plane.kubectl("get", "secrets", "-n", ns, kubeconfig=kc, check=False)
    assert secrets.returncode != 0 and "Forbidden" in secrets.stderr


@pytest.mark.k8s
def test_status_changes_only_through_the_subresource(
    control_plane: ControlPlane, k8s_namespace: str, widget_crd: str
) -> None:
    ns = k8s_namespace
    control_plane.kubectl("apply", "-f", "-", input=widget("s1", ns, 1))
    before = get_json(control_plane, "widget", "s1", "-n", ns)
    assert before["metadata"]["generation"] == 1

    control_plane.kubectl(
        "patch",
        "widget",
        "s1",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec":{"size":2},"status":{"phase":"Sneaky"}}',
    )
    after_spec = get_json(control_plane, "widget", "s1", "-n", ns)
    assert after_spec["spec"]["size"] == 2
    assert after_spec.get("status", {}).get("phase") is None  # status part of a main-resource patch dropped
    assert after_spec["metadata"]["generation"] == 2

    control_plane.kubectl(
        "patch", "widget", "s1", "-n", ns, "--subresource=status", "--type=merge",
        "-p", '{"status":{"phase":"Ready"},"spec":{"size":7}}',
    )  # fmt: skip
    after_status = get_json(control_plane, "widget", "s1", "-n", ns)
    assert after_status["status"]["phase"] == "Ready"
    assert after_status["spec"]["size"] == 2  # spec part of a status patch dropped
    assert after_status["metadata"]["generation"] == 2  # status writes do not bump generation

    # RBAC distinguishes the subresource: patch on widgets does not grant patch on widgets/status.
    control_plane.kubectl("create", "serviceaccount", "writer", "-n", ns)
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "widget-writer", "namespace": ns},
        "rules": [
            {"apiGroups": ["proof.sie.dev"], "resources": ["widgets"], "verbs": ["get", "patch"]},
            {"apiGroups": ["proof.sie.dev"], "resources": ["widgets/status"], "verbs": ["get"]},
        ],
    }
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(role))
    control_plane.kubectl(
        "create", "rolebinding", "writer", "-n", ns, "--role=widget-writer", f"--serviceaccount={ns}:writer"
    )
    kc = control_plane.service_account_kubeconfig(ns, "writer")
    wait_until(
        lambda: (
            control_plane.kubectl("get", "widget", "s1", "-n", ns, kubeconfig=kc, check=False).returncode == 0
        ),
        what="the writer RoleBinding",
    )
    denied = control_plane.kubectl(
        "patch", "widget", "s1", "-n", ns, "--subresource=status", "--type=merge",
        "-p", '{"status":{"phase":"Hijacked"}}', kubeconfig=kc, check=False,
    )  # fmt: skip
    assert denied.returncode != 0 and "Forbidden" in denied.stderr
    assert 'cannot patch resource "widgets/status"' in denied.stderr
    assert get_json(control_plane, "widget", "s1", "-n", ns)["status"]["phase"] == "Ready"


@pytest.mark.k8s
def test_existing_wrapper_reuses_a_running_cluster(control_plane: ControlPlane, k8s_namespace: str) -> None:
    wrapped = ControlPlane.existing(control_plane.kubeconfig)
    wrapped.start()
    assert wrapped.external and wrapped.server == control_plane.server
    wrapped.kubectl("create", "serviceaccount", "viewer", "-n", k8s_namespace)
    kc = wrapped.service_account_kubeconfig(k8s_namespace, "viewer", expiration_seconds=600)
    denied = wrapped.kubectl("get", "configmaps", "-n", k8s_namespace, kubeconfig=kc, check=False)
    assert "Forbidden" in denied.stderr
    wrapped.stop()
    assert not kc.exists()  # scratch files go, the cluster stays
    assert control_plane.kubectl("get", "namespace", k8s_namespace).returncode == 0


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.k8s
@pytest.mark.usefixtures("own_planes_only")
def test_stop_removes_processes_ports_and_workdir() -> None:
    cp = ControlPlane()
    cp.start()
    pids, workdir, server, etcd_url = cp.pids, cp.workdir, cp.server, cp.etcd_url
    assert workdir is not None and etcd_url is not None
    assert cp.start_seconds is not None and cp.start_seconds < cp.start_timeout
    assert cp.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    cp.stop()
    assert all(process_gone(p) for p in pids)
    assert not workdir.exists()
    assert port_closed(server) and port_closed(etcd_url)
    cp.stop()  # idempotent


@pytest.mark.k8s
@pytest.mark.usefixtures("own_planes_only")
def test_failed_start_raises_with_log_tail_and_leaves_nothing() -> None:
    spawned: list[int] = []

    class Recording(ControlPlane):
        def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
            proc = super()._spawn(name, argv)
            spawned.append(proc.pid)
            return proc

    cp = Recording(extra_apiserver_args=["--no-such-flag=1"], start_timeout=60)
    with pytest.raises(ControlPlaneError) as info:
        cp.start()
    msg = str(info.value)
    assert "kube-apiserver exited" in msg
    assert "unknown flag: --no-such-flag" in msg  # the apiserver's own words, from its log
    assert "--- etcd log" in msg
    assert len(spawned) == 2 and all(process_gone(p) for p in spawned)
    assert cp.workdir is None and cp.pids == []


def _spawn_python(code: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        raise AssertionError(f"child failed: {proc.stderr.read() if proc.stderr else ''}")
    return proc, json.loads(line)


_CHILD = """
import json, sys, time
from sie_operator.devcluster import ControlPlane
cp = ControlPlane()
cp.start()
print(json.dumps({"pids": cp.pids, "workdir": str(cp.workdir), "server": cp.server}), flush=True)
time.sleep(600)
"""


@pytest.mark.k8s
@pytest.mark.usefixtures("own_planes_only")
def test_sigkilled_owner_leaves_no_processes_or_ports(control_plane: ControlPlane) -> None:
    proc, info = _spawn_python(_CHILD, child_env(control_plane))
    try:
        assert not any(process_gone(p) for p in info["pids"])
        proc.kill()  # no atexit, no finally: only PR_SET_PDEATHSIG can clean up
        proc.wait(timeout=10)
        wait_until(lambda: all(process_gone(p) for p in info["pids"]), timeout=15, what="children to die")
        wait_until(lambda: port_closed(info["server"]), timeout=15, what="the port to close")
        assert Path(info["workdir"]).is_dir()  # nobody could remove it ...
        _remove_stale_workdirs()
        assert not Path(info["workdir"]).exists()  # ... until the next start sweeps it
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.k8s
@pytest.mark.usefixtures("own_planes_only")
def test_ctrl_c_cleans_up_via_atexit(control_plane: ControlPlane) -> None:
    proc, info = _spawn_python(_CHILD, child_env(control_plane))
    try:
        proc.send_signal(signal.SIGINT)  # KeyboardInterrupt, then interpreter exit
        proc.wait(timeout=60)
        assert all(process_gone(p) for p in info["pids"])
        assert not Path(info["workdir"]).exists()
        assert port_closed(info["server"])
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.k8s
@pytest.mark.usefixtures("own_planes_only")
def test_controlplane_command_serves_until_sigterm(control_plane: ControlPlane, tmp_path: Path) -> None:
    out = tmp_path / "nested" / "kubeconfig"
    errlog = tmp_path / "stderr.log"
    with errlog.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sie_operator.cli", "controlplane", "--kubeconfig-out", str(out)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=child_env(control_plane),
        )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first == f"export KUBECONFIG={out}", (first, errlog.read_text())
        second = proc.stdout.readline()
        server = second.split()[2]
        assert server.startswith("https://127.0.0.1:"), second
        nss = control_plane.kubectl("get", "namespaces", "-o", "name", kubeconfig=out).stdout.split()
        assert "namespace/kube-system" in nss
        assert not any(n.startswith("namespace/t-") for n in nss)  # a different, fresh cluster
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not out.exists()  # it would point at a dead port
        assert port_closed(server)
    finally:
        if proc.poll() is None:
            proc.kill()


# --------------------------------------------------------------------------- no cluster needed


def test_controlplane_command_rejects_unwritable_kubeconfig_path(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["controlplane", "--kubeconfig-out", "/proc/no-such-dir/kubeconfig"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("sie-operator controlplane: error: --kubeconfig-out /proc/no-such-dir/kubeconfig")
    assert "\n" not in err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("2.5", 2.5), ("60s", 60.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "1m 30s", "-5s"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
