"""The whole SIE loop on one machine as real processes: NATS, operator (or config-api),
gateway and reference workers. Used by the e2e tests, the demo and the benchmarks.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .natsserver import NatsServer
from .ports import free_port
from .procs import ServerProcess, sie_operator_argv


@dataclass
class StackConfig:
    workers: Sequence[tuple[str, str]] = (
        ("worker-0", "default"),
        ("worker-1", "default"),
        ("worker-2", "sglang"),
    )
    kubeconfig: str | None = None  # None: run `config-api` instead of the operator
    namespaces: Sequence[str] = ()
    gateways: int = 1
    admin_token: str | None = None  # the operator / config-api only
    export_token: str | None = None  # reads and /export: what gateways and workers get
    # short catch-up polls keep tests and the demo quick after an outage (defaults are 30 s)
    worker_args: Sequence[str] = ("--poll-interval", "2")
    gateway_args: Sequence[str] = ("--poll-interval", "2")
    operator_args: Sequence[str] = ()
    heartbeat_timeout: float = 3.0
    extra_env: dict[str, str] = field(default_factory=dict)
    # high availability: several operator replicas (each its own Config API port and
    # POD_NAME operator-<i>), the store given as SIE_CONFIG_STORE_DIR (e.g.
    # jetstream://sie-config), and an external NATS (e.g. a NatsCluster's comma list)
    operators: int = 1
    store: str | None = None
    nats_url: str | None = None
    nats_args: Sequence[str] = ()  # for the stack's own nats-server, e.g. ("-js", "-sd", dir)


class Stack:
    """Start/stop the processes; each one is individually stoppable for fault tests."""

    def __init__(self, cfg: StackConfig, workdir: Path | None = None) -> None:
        self.cfg = cfg
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="sie-stack-"))
        self.logs = self.workdir / "logs"
        self.store_dir = self.workdir / "store"
        self.nats = NatsServer(log_dir=self.logs, extra_args=cfg.nats_args)
        self.api_ports = [free_port() for _ in range(max(1, cfg.operators))]
        self.health_ports = [free_port() for _ in range(max(1, cfg.operators))]
        self.api_port = self.api_ports[0]
        self.health_port = self.health_ports[0]
        self.controls: list[ServerProcess | None] = [None] * len(self.api_ports)
        self.gateway_ports = [free_port() for _ in range(cfg.gateways)]
        self.worker_ports = {name: free_port() for name, _ in cfg.workers}
        self.control: ServerProcess | None = None
        self.gateways: list[ServerProcess] = []
        self.workers: dict[str, ServerProcess] = {}

    @property
    def config_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def config_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.api_ports]

    @property
    def nats_url(self) -> str:
        return self.cfg.nats_url or self.nats.url

    @property
    def gateway_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.gateway_ports]

    def _env(self, *, control: bool = False) -> dict[str, str]:
        """Least credential: the admin token goes to the config service alone."""
        env = {"PYTHONUNBUFFERED": "1", **self.cfg.extra_env}
        if self.cfg.export_token:
            env["SIE_EXPORT_TOKEN"] = self.cfg.export_token
        if control and self.cfg.admin_token:
            env["SIE_ADMIN_TOKEN"] = self.cfg.admin_token
        return env

    # -- pieces ------------------------------------------------------------------------
    def control_process(self, i: int = 0) -> ServerProcess:
        env = self._env(control=True) | {
            "SIE_CONFIG_STORE_DIR": self.cfg.store
            or str(self.store_dir if i == 0 else self.store_dir / f"{i}"),
            "SIE_NATS_URL": self.nats_url,
            "POD_NAME": f"operator-{i}",
        }
        if self.cfg.kubeconfig is None:
            argv = sie_operator_argv("config-api", "--host", "127.0.0.1", "--port", str(self.api_ports[i]))
            name = "config-api" if i == 0 else f"config-api-{i}"
        else:
            env["KUBECONFIG"] = self.cfg.kubeconfig
            argv = sie_operator_argv(
                "run",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.api_ports[i]),
                "--health-port",
                str(self.health_ports[i]),
                *[a for ns in self.cfg.namespaces for a in ("--namespace", ns)],
                *[a for u in self.gateway_urls for a in ("--gateway-url", u)],
                # damp gateway blips for as long as the gateway gives a silent worker
                "--gateway-grace-seconds",
                str(self.cfg.heartbeat_timeout),
                *self.cfg.operator_args,
            )
            name = "operator" if i == 0 else f"operator-{i}"
        return ServerProcess(argv, name=name, log_dir=self.logs, env=env)

    def gateway_process(self, i: int) -> ServerProcess:
        env = self._env() | {
            "SIE_CONFIG_SERVICE_URL": ",".join(self.config_urls),
            "SIE_NATS_URL": self.nats_url,
            "SIE_GATEWAY_WORKERS": ",".join(f"http://127.0.0.1:{p}" for p in self.worker_ports.values()),
        }
        argv = sie_operator_argv(
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.gateway_ports[i]),
            "--gateway-id",
            f"gateway-{i}",
            "--heartbeat-timeout",
            str(self.cfg.heartbeat_timeout),
            *self.cfg.gateway_args,
        )
        return ServerProcess(argv, name=f"gateway-{i}", log_dir=self.logs, env=env)

    def worker_process(self, name: str) -> ServerProcess:
        bundle = dict(self.cfg.workers)[name]
        argv = sie_operator_argv(
            "worker",
            "--name",
            name,
            "--bundle",
            bundle,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.worker_ports[name]),
            "--nats-url",
            self.nats_url,
            "--config-url",
            ",".join(self.config_urls),
            *self.cfg.worker_args,
        )
        return ServerProcess(argv, name=name, log_dir=self.logs, env=self._env())

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Stack:
        if self.cfg.nats_url is None:
            self.nats.start()
        for i in range(len(self.api_ports)):
            self.start_control(timeout, i=i)
        for name in self.worker_ports:
            self.start_worker(name, wait=False)
        for name in self.worker_ports:
            self.workers[name].wait_http(f"http://127.0.0.1:{self.worker_ports[name]}/readyz", timeout)
        # gateways dial workers at startup: start them once the workers listen, so the first
        # readiness answers already count every worker
        for i in range(len(self.gateway_ports)):
            self.start_gateway(i, wait=False)
        for i, g in enumerate(self.gateways):
            g.wait_http(f"{self.gateway_urls[i]}/readyz", timeout)
        return self

    def start_control(self, timeout: float = 60.0, i: int = 0) -> ServerProcess:
        p = self.control_process(i).start()
        self.controls[i] = p
        if i == 0:
            self.control = p
        p.wait_http(f"{self.config_urls[i]}/healthz", timeout)
        return p

    def stop_control(self) -> None:
        for p in self.controls:
            if p is not None:
                p.stop()

    def start_worker(self, name: str, wait: bool = True) -> ServerProcess:
        p = self.worker_process(name).start()
        self.workers[name] = p
        if wait:
            p.wait_http(f"http://127.0.0.1:{self.worker_ports[name]}/healthz", 30)
        return p

    def start_gateway(self, i: int, wait: bool = True) -> ServerProcess:
        p = self.gateway_process(i).start()
        if i < len(self.gateways):
            self.gateways[i] = p
        else:
            self.gateways.append(p)
        if wait:
            p.wait_http(f"{self.gateway_urls[i]}/healthz", 30)
        return p

    def stop(self) -> None:
        for g in self.gateways:
            g.stop(timeout=5)
        for w in self.workers.values():
            w.stop(timeout=5)
        self.stop_control()
        if self.cfg.nats_url is None:
            self.nats.stop()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs_tail(self) -> str:
        parts = []
        for p in [*self.controls, *self.gateways, *self.workers.values()]:
            if p is not None:
                parts.append(f"--- {p.name} ---\n{p.log_tail(30)}")
        return "\n".join(parts)
