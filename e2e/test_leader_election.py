"""Lease leader election on the real kube-apiserver.

Candidates run with a ServiceAccount whose Role allows exactly get/create/update on leases.
One candidate is a separate process (e2e/leader_candidate.py) so it can really be SIGKILLed
and SIGSTOPped; the other runs in the test's event loop. Timings are short (lease 4 s,
renew deadline 3 s, retry 0.5 s) to keep each test to seconds; the bounds asserted are the
ones the README promises: takeover within lease + retry after the leader stops renewing,
at the next retry after a clean release.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sie_operator.devcluster.controlplane import ControlPlane
from sie_operator.kube.auth import KubeAuth
from sie_operator.kube.client import KubeClient
from sie_operator.leader import Elector, Timing

pytestmark = [pytest.mark.k8s]

HERE = Path(__file__).resolve().parent
LEASE, RENEW, RETRY = 4.0, 3.0, 0.5
TIMING = Timing(lease_duration=LEASE, renew_deadline=RENEW, retry_period=RETRY)
SLACK = 1.5  # API round trips and the 1.2 jitter of a candidate's retry

ROLE = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: elector}
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
"""


@pytest.fixture
def kubeconfig(control_plane: ControlPlane, k8s_namespace: str) -> Path:
    cp, ns = control_plane, k8s_namespace
    cp.kubectl("-n", ns, "create", "serviceaccount", "elector")
    cp.kubectl("-n", ns, "apply", "-f", "-", input=ROLE)
    cp.kubectl(
        "-n", ns, "create", "rolebinding", "elector", "--role=elector", f"--serviceaccount={ns}:elector"
    )
    return cp.service_account_kubeconfig(ns, "elector")


class Candidate:
    """A candidate process; its JSON lines are read by a thread into ``lines``."""

    def __init__(self, kubeconfig: Path, ns: str, identity: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, str(HERE / "leader_candidate.py"), str(kubeconfig), ns, identity]
        argv += [f"http://{identity}:8080", str(LEASE), str(RENEW), str(RETRY)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        self.lines: list[dict[str, Any]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def wait(self, pred: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                if pred(line):
                    return line
            seen = len(self.lines)
            time.sleep(0.02)
        err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        raise AssertionError(f"candidate never reported {what}; last {self.lines[-1:]} {err[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def candidates() -> Iterator[list[Candidate]]:
    made: list[Candidate] = []
    yield made
    for c in made:
        c.stop()


@pytest.fixture
async def kube(kubeconfig: Path) -> AsyncIterator[KubeClient]:
    auth = await KubeAuth.load(str(kubeconfig))
    client = KubeClient(auth, timeout=5)
    yield client
    await client.close()
    auth.close()


async def elected(elector: Elector, within: float) -> float:
    started = time.monotonic()
    await asyncio.wait_for(elector.wait_leading(), within)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def first_leads(
    kube: KubeClient, kubeconfig: Path, ns: str, candidates: list[Candidate], **elector: Any
) -> AsyncIterator[tuple[Candidate, Elector]]:
    """Candidate process "first" leads; elector "second" campaigns in this loop until the end."""
    first = Candidate(kubeconfig, ns, "first")
    candidates.append(first)
    await asyncio.to_thread(first.wait, lambda x: x.get("may_write"), 20, "leading")
    b = Elector(kube, namespace=ns, identity="second", timing=TIMING, **elector)
    stop = asyncio.Event()
    task = asyncio.create_task(b.run(stop))
    try:
        yield first, b
    finally:
        stop.set()
        await task


async def test_one_leads_and_the_other_takes_over_after_sigkill(
    kube: KubeClient, kubeconfig: Path, k8s_namespace: str, candidates: list[Candidate]
) -> None:
    events: list[str] = []

    async def started() -> None:
        events.append("started")

    standby = first_leads(
        kube,
        kubeconfig,
        k8s_namespace,
        candidates,
        advertise_url="http://second:8080",
        on_started_leading=started,
    )
    async with standby as (first, b):
        for _ in range(int(LEASE * 1.5 / RETRY)):  # longer than a lease: the standby never leads
            await asyncio.sleep(RETRY)
            assert not b.may_write()
        assert b.leader_identity() == "first"
        assert b.leader_url() == "http://first:8080"
        first.proc.kill()  # SIGKILL: no release
        took = await elected(b, LEASE + RETRY + SLACK + 5)
        print(f"takeover after SIGKILL: {took:.2f} s (lease {LEASE} s, retry {RETRY} s)")
        assert took <= LEASE + RETRY * 1.2 + SLACK, f"takeover after SIGKILL took {took:.1f} s"
        assert b.may_write() and b.leader_identity() == "second" and events == ["started"]
        lease = await kube.request("GET", b.api.path)
        assert lease["spec"]["holderIdentity"] == "second"
        assert lease["spec"]["leaseTransitions"] == 1
        assert lease["metadata"]["annotations"]["sie.dev/leader-url"] == "http://second:8080"
    lease = await kube.request("GET", b.api.path)
    assert not lease["spec"].get("holderIdentity")  # released on stop


async def test_sigstopped_leader_is_fenced_and_steps_down(
    kube: KubeClient, kubeconfig: Path, k8s_namespace: str, candidates: list[Candidate]
) -> None:
    async with first_leads(kube, kubeconfig, k8s_namespace, candidates) as (first, b):
        await asyncio.sleep(RETRY * 3)
        assert not b.may_write()
        os.kill(first.proc.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        await elected(b, LEASE + RETRY + SLACK + 5)
        took = time.monotonic() - stopped_at
        print(f"takeover after SIGSTOP: {took:.2f} s")
        assert took <= LEASE + RETRY * 1.2 + SLACK
        await asyncio.sleep(1.0)
        mark = len(first.lines)
        os.kill(first.proc.pid, signal.SIGCONT)
        after = await asyncio.to_thread(
            first.wait, lambda x: x.get("leader") == "second", 10, "the new leader"
        )
        resumed = first.lines[mark:]
        assert resumed, "the resumed process reported nothing"
        assert not any(x["may_write"] for x in resumed), f"fenced leader answered may_write: {resumed[:3]}"
        assert after["may_write"] is False
        assert b.may_write()


async def test_release_hands_over_at_the_next_retry(
    kube: KubeClient, kubeconfig: Path, k8s_namespace: str, candidates: list[Candidate]
) -> None:
    async with first_leads(kube, kubeconfig, k8s_namespace, candidates) as (first, b):
        await asyncio.sleep(RETRY * 3)
        first.proc.send_signal(signal.SIGTERM)
        released = await asyncio.to_thread(first.wait, lambda x: x.get("released"), 10, "release")
        assert released["may_write"] is False
        took = await elected(b, LEASE)
        print(f"hand-over after release: {took:.2f} s")
        assert took < RETRY * 1.2 + SLACK, f"handover after release took {took:.1f} s"
        assert first.proc.wait(10) == 0


async def test_rbac_is_get_create_update_on_leases_only(
    control_plane: ControlPlane, kubeconfig: Path, k8s_namespace: str
) -> None:
    def can(verb: str, resource: str = "leases.coordination.k8s.io") -> bool:
        res = control_plane.kubectl(
            "-n", k8s_namespace, "auth", "can-i", verb, resource, kubeconfig=kubeconfig, check=False
        )
        return res.stdout.strip() == "yes"

    assert [can(v) for v in ("get", "create", "update")] == [True, True, True]
    assert [can(v) for v in ("delete", "list", "watch", "patch")] == [False] * 4
    assert not can("get", "secrets")
