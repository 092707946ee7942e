"""The chart's leader-election RBAC (``ha.enabled``) is enough, and every Lease verb is needed.

As in ``test_chart_rbac.py``: the Roles come from ``helm template`` with ``ha.enabled=true``,
the operator runs as the chart's ServiceAccount (a TokenRequest token) with the flags the
chart gives it (``--leader-election --leader-election-id=<fullname>`` and a JetStream store),
so the API server enforces exactly what the chart grants. With all rights the operator leads
and a ModelConfig reconciles; without ``get``, ``create`` or ``update`` on its Lease it never
leads, so nothing reconciles (the 403 in the log says why), and it works again once the verb
is back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

from sie_operator.devcluster.kubetest import model_manifest
from sie_operator.devcluster.stack import StackConfig
from test_chart_rbac import (
    FORBIDDEN,
    FULLNAME,
    OPERATOR_SA,
    READY,
    RELEASE,
    ChartIdentityStack,
    Harness,
    can_i,
    log_since,
    log_size,
    render_rbac,
    running,
    wait_until,
    without_verb,
)

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

LEASE = FULLNAME  # ha.leaseName defaults to the release's full name
LEASE_ROLE = f"{FULLNAME}-leader-election"


class HaHarness(Harness):
    """The RBAC harness, judged on the Lease Role's verbs."""

    def can(self, verb: str) -> bool:
        return can_i(self.cp, self.ns, OPERATOR_SA, verb, f"leases.coordination.k8s.io/{LEASE}")

    def revoke_lease(self, verb: str) -> None:
        self.apply(without_verb(self.roles[LEASE_ROLE], "leases", verb))
        wait_until(lambda: not self.can(verb), 10, f"{verb} on the Lease to be revoked")

    def restore(self) -> None:
        for role in self.roles.values():
            self.apply(role)
        wait_until(lambda: all(self.can(v) for v in ("get", "create", "update")), 10, "the Lease rights")


@pytest.fixture(scope="module")
def ha_harness(
    control_plane: Any, crd_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HaHarness]:
    ns = f"t-chart-rbac-ha-{int(time.time() * 1000) % 10**8}"
    control_plane.kubectl("create", "namespace", ns)
    objs = render_rbac(ns, RELEASE, "ha.enabled=true")
    for o in objs:
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(o))
    kubeconfig = control_plane.service_account_kubeconfig(ns, OPERATOR_SA)
    work = tmp_path_factory.mktemp("rbac-ha-stack")
    cfg = StackConfig(
        kubeconfig=str(kubeconfig),
        namespaces=[ns],
        heartbeat_timeout=6.0,
        store="jetstream://sie-config",
        nats_args=("-js", "-sd", str(work / "jetstream")),
        workers=(("worker-0", "default"),),
        operator_args=[
            *("--leader-election", f"--leader-election-id={LEASE}", f"--leader-election-namespace={ns}"),
            *("--leader-election-lease-seconds", "4", "--leader-election-renew-deadline-seconds", "3"),
            *("--leader-election-retry-seconds", "0.5"),
        ],
    )
    h = HaHarness(control_plane, ns, ChartIdentityStack(cfg, work), objs)
    for started in running(h):
        yield cast(HaHarness, started)


@pytest.fixture
def ha(ha_harness: HaHarness) -> Iterator[HaHarness]:
    ha_harness.restore()
    yield ha_harness
    ha_harness.restore()
    if not ha_harness.stack.control or not ha_harness.stack.control.running:
        ha_harness.restart_operator()


def test_ha_rights_are_enough_to_lead_and_reach_ready(ha: HaHarness) -> None:
    offset = ha.restart_operator()
    ha.kube.apply(model_manifest("ha-full", "acme/ha-full"))
    ha.kube.wait_ready("ha-full", timeout=READY)
    assert ha.kube.lease_holder(LEASE) == "operator-0"
    log = log_since(ha.stack.control, offset)
    assert not FORBIDDEN.search(log) and "Forbidden" not in log, log[-3000:]


@pytest.mark.parametrize("verb", ["get", "create", "update"])
def test_without_a_lease_verb_the_operator_never_leads(ha: HaHarness, verb: str) -> None:
    ha.stack.stop_control()  # a clean stop releases the Lease (with the rights still there)
    if verb == "create":
        ha.kube.run("delete", "lease", LEASE, "--ignore-not-found")
    ha.revoke_lease(verb)
    offset = log_size(ha.stack.control)
    ha.stack.start_control()
    name = f"ha-no-{verb}"
    ha.kube.apply(model_manifest(name, f"acme/{name}"))
    ha.no_status_for(name)
    assert ha.kube.lease_holder(LEASE) is None
    log = log_since(ha.stack.control, offset)
    assert FORBIDDEN.search(log) or "forbidden" in log.lower(), log[-3000:]
    assert "leading: starting the controller" not in log
    ha.restore()
    ha.kube.wait_ready(name, timeout=READY)  # the running operator leads at its next retry
