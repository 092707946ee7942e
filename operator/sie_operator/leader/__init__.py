"""Lease leader election (coordination.k8s.io/v1), client-go semantics, for HA replicas.

Usage (how ``sie-operator run --leader-election`` plugs it in)::

    from sie_operator.leader import Elector, Timing, default_identity

    elector = Elector(
        kube,                                  # sie_operator.kube.client.KubeClient
        namespace="sie",                       # where the Lease lives
        identity=default_identity(),           # POD_NAME, else hostname-pid
        name="sie-operator",                   # the Lease name (--leader-election-id)
        advertise_url="http://10.0.0.7:8080",  # this replica's Config API, for standbys to proxy to
        timing=Timing(lease_duration=15, renew_deadline=10, retry_period=2),
        on_started_leading=start_leader_work,  # async callables, run in order in their own task
        on_stopped_leading=stop_leader_work,
    )
    service.leadership = elector               # configsvc Leadership protocol (structural)
    task = asyncio.create_task(elector.run(stop_event))   # releases the Lease when stop_event is set

- ``elector.may_write()`` is the gate to check immediately before every write: True only
  before (send time of the last successful acquire/renew) + renew deadline, so a leader
  stops before anyone else may take the Lease, even after a SIGSTOP.
- ``leader_identity()`` / ``leader_url()``: who leads as this replica judges it (the URL
  from the ``sie.dev/leader-url`` annotation the leader writes), None when nobody does.
- ``await elector.wait_leading()`` / ``wait_leading(False)``: until the loop noticed.
- ``await elector.release()``: stop leading and clear the holder so a standby takes over at
  its next retry (``run`` does it on stop).

RBAC: get, create and update on ``leases`` (coordination.k8s.io) in the Lease's namespace.
Layers: ``decide`` is pure (the simulation in tests/leader drives it); ``lease`` is the
three API calls; ``elector`` the asyncio loop.
"""

from .decide import ElectionConfigError, LeaseRecord, State, Timing
from .elector import Elector, default_identity

__all__ = ["ElectionConfigError", "Elector", "LeaseRecord", "State", "Timing", "default_identity"]
