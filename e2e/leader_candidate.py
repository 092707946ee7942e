"""One leader-election candidate as its own process, for e2e/test_leader_election.py.

Usage: python leader_candidate.py KUBECONFIG NAMESPACE IDENTITY URL LEASE RENEW RETRY

Prints one JSON line every 50 ms: {"t": monotonic, "may_write": bool, "leader": identity},
so the test sees what ``may_write()`` answers the instant the process runs again after a
SIGSTOP. SIGTERM stops the campaign cleanly (the Lease is released).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

from sie_operator.kube.auth import KubeAuth
from sie_operator.kube.client import KubeClient
from sie_operator.leader import Elector, Timing


async def main(argv: list[str]) -> None:
    kubeconfig, namespace, identity, url = argv[:4]
    lease, renew, retry = (float(x) for x in argv[4:7])
    auth = await KubeAuth.load(kubeconfig)
    kube = KubeClient(auth, timeout=5)
    elector = Elector(
        kube,
        namespace=namespace,
        identity=identity,
        advertise_url=url,
        timing=Timing(lease_duration=lease, renew_deadline=renew, retry_period=retry),
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def report() -> None:
        while True:
            line = {
                "t": time.monotonic(),
                "may_write": elector.may_write(),
                "leader": elector.leader_identity(),
            }
            print(json.dumps(line), flush=True)
            await asyncio.sleep(0.05)

    reporter = asyncio.create_task(report())
    try:
        await elector.run(stop)
    finally:
        reporter.cancel()
        print(
            json.dumps({"t": time.monotonic(), "released": True, "may_write": elector.may_write()}),
            flush=True,
        )
        await kube.close()
        auth.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
