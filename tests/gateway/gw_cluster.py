"""Real processes for the gateway integration tests: nats-server, config-api, gateway, workers."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sie_operator.catalog.bundles import shipped_bundles_dir
from sie_operator.devcluster.natsserver import NatsServer
from sie_operator.devcluster.ports import free_port
from sie_operator.devcluster.procs import ServerProcess, sie_operator_argv

ADMIN = "gw-test-admin"
EXTRA_BUNDLE = "name: extra\npriority: 50\nadapters:\n- acme.adapters.custom\n"
T = TypeVar("T")


def model_yaml(
    model_id: str, *profiles: str, adapter: str = "sie_server.adapters.sentence_transformer"
) -> str:
    lines = [
        f"sie_id: {model_id}",
        "hf_id: org/x",
        "tasks:",
        "  encode:",
        "    dense:",
        "      dim: 8",
        "profiles:",
    ]
    for p in profiles or ("default",):
        lines += [f"  {p}:", f"    adapter_path: {adapter}:Adapter", "    max_batch_tokens: 1024"]
    return "\n".join(lines) + "\n"


def http_json(url: str, *, data: bytes | None = None, token: str | None = None, timeout: float = 5.0) -> Any:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_for(fn: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``fn`` until it returns something truthy; its last exception/result goes in the error."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
            last = value
        except (OSError, urllib.error.URLError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.bundles_dir = root / "bundles"
        shutil.copytree(shipped_bundles_dir(), self.bundles_dir)
        (self.bundles_dir / "extra.yaml").write_text(EXTRA_BUNDLE)
        self.store_dir = root / "store"
        self.nats = NatsServer(log_dir=self.logs)
        self.config_port = free_port()
        self.config: ServerProcess | None = None
        self.gateways: dict[str, tuple[ServerProcess, int]] = {}
        self.workers: dict[str, tuple[ServerProcess, int]] = {}

    # -- processes --------------------------------------------------------------------------
    @property
    def config_url(self) -> str:
        return f"http://127.0.0.1:{self.config_port}"

    def start_config(self) -> ServerProcess:
        env = {
            "SIE_CONFIG_STORE_DIR": str(self.store_dir),
            "SIE_BUNDLES_DIR": str(self.bundles_dir),
            "SIE_NATS_URL": self.nats.url,
            "SIE_ADMIN_TOKEN": ADMIN,
            "SIE_CONFIG_RESTORE": "true",
        }
        argv = sie_operator_argv("config-api", "--host", "127.0.0.1", "--port", str(self.config_port))
        self.config = ServerProcess(argv, name="config-api", log_dir=self.logs, env=env).start()
        return self.config

    def start_worker(self, name: str, *extra: str, port: int | None = None) -> ServerProcess:
        port = port or free_port()
        argv = sie_operator_argv(
            "worker", "--name", name, "--bundle", "default", "--host", "127.0.0.1", "--port", str(port),
            "--nats-url", self.nats.url, "--config-url", self.config_url, "--admin-token", ADMIN, *extra,
        )  # fmt: skip
        proc = ServerProcess(argv, name=f"worker-{name}", log_dir=self.logs).start()
        self.workers[name] = (proc, port)
        return proc

    def start_gateway(
        self, name: str, workers: list[str], *extra: str, port: int | None = None
    ) -> ServerProcess:
        port = port or free_port()
        argv = sie_operator_argv(
            "gateway", "--host", "127.0.0.1", "--port", str(port), "--config-service-url", self.config_url,
            "--nats-url", self.nats.url, "--gateway-id", name,
            "--heartbeat-timeout", "3", "--sweep-interval", "0.2", "--reconnect-interval", "0.2",
            "--bootstrap-backoff-max", "0.5",
            *[a for w in workers for a in ("--worker", f"127.0.0.1:{self.workers[w][1]}")], *extra,
        )  # fmt: skip
        proc = ServerProcess(argv, name=f"gateway-{name}", log_dir=self.logs, env={"SIE_ADMIN_TOKEN": ADMIN})
        self.gateways[name] = (proc.start(), port)
        return proc

    def gw(self, name: str = "main") -> str:
        return f"http://127.0.0.1:{self.gateways[name][1]}"

    def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.config is not None
        self.config.wait_http(f"{self.config_url}/healthz", timeout)
        for proc, port in self.workers.values():
            if proc.running:
                proc.wait_http(f"http://127.0.0.1:{port}/readyz", timeout)
        for proc, port in self.gateways.values():
            if proc.running:
                proc.wait_http(f"http://127.0.0.1:{port}/readyz", timeout)

    def stop_all(self) -> None:
        for proc, _ in [*self.gateways.values(), *self.workers.values()]:
            proc.stop(timeout=5)
        if self.config is not None:
            self.config.stop(timeout=5)
        self.nats.stop()

    # -- API helpers --------------------------------------------------------------------------
    def post(self, body: str, timeout: float = 15.0) -> dict[str, Any]:
        """POST a model, retrying while the config service answers 503 (e.g. NATS reconnecting)."""

        def attempt() -> dict[str, Any] | None:
            try:
                result: dict[str, Any] = http_json(
                    f"{self.config_url}/v1/configs/models", data=body.encode(), token=ADMIN
                )
                return result
            except urllib.error.HTTPError as exc:
                if exc.code == 503:
                    return None
                raise AssertionError(f"POST failed: {exc.code} {exc.read()!r}") from exc

        return wait_for(attempt, timeout, "the config service to accept a write", interval=0.05)

    def config_epoch(self) -> int:
        return int(http_json(f"{self.config_url}/v1/configs/epoch", token=ADMIN)["epoch"])

    def status(self, model_id: str, gateway: str = "main") -> dict[str, Any]:
        result: dict[str, Any] = http_json(f"{self.gw(gateway)}/v1/configs/models/{model_id}/status")
        return result

    def wait_status(
        self, model_id: str, pred: Callable[[dict[str, Any]], bool], what: str, timeout: float = 10.0,
        gateway: str = "main",
    ) -> dict[str, Any]:  # fmt: skip
        def check() -> dict[str, Any] | None:
            s = self.status(model_id, gateway)
            return s if pred(s) else None

        return wait_for(check, timeout, f"{model_id}: {what}")

    def metrics(self, gateway: str = "main") -> str:
        with urllib.request.urlopen(f"{self.gw(gateway)}/metrics", timeout=5) as resp:
            return str(resp.read().decode())


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head != name and not head.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def acked(s: dict[str, Any]) -> bool:
    return bool(s["all_bundles_acked"])
