"""The reconcile core without I/O: what one gateway blip costs, and what one fleet update costs.

    python bench/reconcile_core.py [--resources 1000] [--blip 2.0] [--grace 15]

Drives ``k8s.reconcile.step`` with N Ready resources and the real damping
(``k8s.fleetview.damp``) at the operator's 0.25 s fleet interval, through one gateway blip:
prints the status patches and Events it causes with damping (grace period) and without it
(grace 0: what the previous fleet reader did, one failed fetch = unreachable). Then prints the
time of one fleet update (a ``FleetSeen`` step) at 1k and 10k resources.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from sie_operator.controller.fleetview import FleetSnapshot, GatewayView, ReplicaHealth, damp
from sie_operator.controller.objects import ObjectRef, ObjectSnapshot
from sie_operator.controller.reconcile import (
    CoreConfig,
    Effect,
    FleetSeen,
    Input,
    Listed,
    PatchDone,
    PatchStatus,
    PostEvent,
    State,
    StoreWrite,
    WriteDone,
    step,
)
from sie_operator.controller.status import StoreOutcome

CFG = CoreConfig()


def model(i: int) -> dict[str, Any]:
    return {
        "model_id": f"org/m{i}",
        "config_epoch": 1,
        "model_acked": True,
        "all_bundles_acked": True,
        "bundles": [
            {
                "bundle_id": "default",
                "acked": True,
                "model_acked": True,
                "total_eligible_workers": 2,
                "model_acked_workers": ["w0", "w1"],
                "model_pending_workers": [],
            }
        ],
    }


class Bench:
    def __init__(self, n: int) -> None:
        self.state = State()
        self.now = 0.0
        self.patches = 0
        self.events = 0
        self.rv = 1
        self.objs = {
            f"u{i}": ObjectSnapshot(
                ObjectRef("ns", f"r{i}", f"u{i}"), "t", 1, "1", {"sieId": f"org/m{i}"}, None
            )
            for i in range(n)
        }
        self.good = GatewayView(
            "gw", "gw", True, config_epoch=1, models={f"org/m{i}": model(i) for i in range(n)}
        )
        self.feed(Listed(tuple(self.objs.values())))
        self.feed(FleetSeen(FleetSnapshot((self.good,), 0.0)))

    def feed(self, inp: Input) -> None:
        queue: list[Input] = [inp]
        while queue:
            effects: list[Effect] = step(self.state, queue.pop(0), now=self.now, wall="t", cfg=CFG)
            for e in effects:
                if isinstance(e, StoreWrite):
                    queue.append(WriteDone(e.write, StoreOutcome("accepted", epoch=1, profiles=("default",))))
                elif isinstance(e, PatchStatus):
                    self.patches += 1
                    self.rv += 1
                    old = self.objs[e.ref.uid]
                    new = ObjectSnapshot(old.ref, old.created, 1, str(self.rv), old.spec, dict(e.status))
                    self.objs[e.ref.uid] = new
                    queue.append(PatchDone(e.ref, new))
                elif isinstance(e, PostEvent):
                    self.events += 1


def blip(n: int, blip_s: float, grace: float, poll: float = 0.25) -> tuple[int, int]:
    b = Bench(n)
    p0, e0 = b.patches, b.events
    health: dict[str, ReplicaHealth] = {"gw": ReplicaHealth(b.good)}
    down = GatewayView("gw", "gw", False, "gw: ServerDisconnectedError")
    t = 0.0
    while t < blip_s + 2.0:
        b.now = 100.0 + t
        views = [down if poll <= t < poll + blip_s else b.good]
        health, damped = damp(health, views, b.now, grace)
        b.feed(FleetSeen(FleetSnapshot(damped, b.now)))
        t += poll
    return b.patches - p0, b.events - e0


def fleet_update_seconds(n: int, rounds: int = 5) -> float:
    b = Bench(n)
    started = time.perf_counter()
    for i in range(rounds):
        b.now += 0.25
        b.feed(FleetSeen(FleetSnapshot((b.good,), float(i))))
    return (time.perf_counter() - started) / rounds


def burst_update_seconds(n: int, *, streamed: bool, rounds: int = 5) -> float:
    """One fleet update while writes go on elsewhere: the replica's epoch moved on and one
    model's answer changed. ``streamed``: the snapshot names the changed model (our
    gateways' streams); else the core compares every resource (bulk or per-model readers)."""
    b = Bench(n)
    prev = b.state.fleet
    assert prev is not None
    snaps = []
    view = b.good
    for i in range(rounds):
        key = f"org/m{i}"
        models = dict(view.models)
        models[key] = {**models[key], "config_epoch": view.config_epoch + 1}
        view = GatewayView("gw", "gw", True, config_epoch=view.config_epoch + 1, models=models)
        seq = prev.seq + 1 + i
        snaps.append(
            FleetSnapshot(
                (view,), float(i), seq, frozenset({key}) if streamed else None, seq - 1 if streamed else -1
            )
        )
    started = time.perf_counter()
    for snap in snaps:
        b.now += 0.25
        b.feed(FleetSeen(snap))
    return (time.perf_counter() - started) / rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resources", type=int, default=1000)
    ap.add_argument("--blip", type=float, default=2.0)
    ap.add_argument("--grace", type=float, default=15.0)
    args = ap.parse_args()
    before = blip(args.resources, args.blip, 0.0)
    after = blip(args.resources, args.blip, args.grace)
    print(f"{args.blip:.1f} s gateway blip, {args.resources} Ready resources, fleet read every 0.25 s:")
    print(f"  without damping (before): {before[0]} status patches, {before[1]} Events")
    print(f"  grace {args.grace:.0f} s (after):        {after[0]} status patches, {after[1]} Events")
    for n in (1000, 10000):
        print(f"one fleet update with {n} tracked resources: {fleet_update_seconds(n) * 1000:.1f} ms")
        print(
            f"  during writes (replica epoch +1, one model changed): "
            f"{burst_update_seconds(n, streamed=True) * 1000:.2f} ms streamed (changed models named), "
            f"{burst_update_seconds(n, streamed=False) * 1000:.1f} ms compared in full"
        )


if __name__ == "__main__":
    main()
