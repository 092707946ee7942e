"""Running seeded simulation schedules, shared by the three simulations' tests
(reconcile core, Lease election, JetStream store fencing)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable


def failing_seeds(
    run_schedule: Callable[[int], object], error: type[Exception], seeds: Iterable[int]
) -> list[str]:
    """Run every seed; return "seed N: why" for each whose schedule broke an invariant
    (printing how many ran and how fast, for the test log)."""
    started = time.perf_counter()
    failures = []
    count = 0
    for seed in seeds:
        count += 1
        try:
            run_schedule(seed)
        except error as exc:
            failures.append(f"seed {seed}: {exc}")
    elapsed = time.perf_counter() - started
    print(
        f"{count} schedules in {elapsed:.1f} s ({count / max(elapsed, 1e-9):.0f}/s), {len(failures)} failed"
    )
    return failures
