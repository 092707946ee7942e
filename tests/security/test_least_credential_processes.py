"""The chart's credential wiring, as real processes: the config API with all three token
classes, a gateway and a worker that hold only the export token (and the read token for the
gateway), everyone logging in to a nats-server that requires a password.

Why: "gateways and workers never get the admin token" is only worth something if they
still work with what they get. Each process reads its credentials from the environment,
exactly the variables the chart sets from its Secrets.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sie_operator.configsvc.settings import Settings
from sie_operator.devcluster.natsserver import NatsServer
from sie_operator.devcluster.ports import free_port
from sie_operator.devcluster.procs import ServerProcess, sie_operator_argv

ADMIN, READ, EXPORT = "adm-Tok3n", "read-Tok3n", "exp-Tok3n"
NATS_USER, NATS_PASSWORD = "sie", "NatsPa55word"
BERT = "sie_server.adapters.bert_flash:BertFlashAdapter"


def _request(url: str, token: str | None = None, data: bytes | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    except (urllib.error.URLError, OSError):
        return 0, {}  # not listening yet
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


def _wait(cond: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_export_token_reads_from_the_environment() -> None:
    assert Settings.from_env({"SIE_EXPORT_TOKEN": "x", "HOME": "/tmp"}).export_token == "x"
    assert Settings.from_env({"HOME": "/tmp"}).export_token is None


def test_gateway_and_worker_run_on_the_export_token_alone(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SIE_")}
    nats_login = {"SIE_NATS_USER": NATS_USER, "SIE_NATS_PASSWORD": NATS_PASSWORD}
    procs: list[ServerProcess] = []
    with NatsServer(
        log_dir=tmp_path / "nats", extra_args=["--user", NATS_USER, "--pass", NATS_PASSWORD]
    ) as nats:
        api_port, gw_port, w_port = free_port(), free_port(), free_port()
        api = f"http://127.0.0.1:{api_port}"
        try:
            procs.append(
                ServerProcess(
                    sie_operator_argv("config-api", "--host", "127.0.0.1", "--port", str(api_port)),
                    name="config-api",
                    log_dir=tmp_path,
                    env={
                        **base,
                        **nats_login,
                        "SIE_NATS_URL": nats.url,
                        "SIE_CONFIG_STORE_DIR": str(tmp_path / "store"),
                        "SIE_ADMIN_TOKEN": ADMIN,
                        "SIE_AUTH_TOKEN": READ,
                        "SIE_EXPORT_TOKEN": EXPORT,
                        "SIE_PRODUCER_ID": "sie-config-test",
                        "SIE_NO_UVLOOP": "1",
                    },
                ).start()
            )
            procs[0].wait_http(f"{api}/readyz", timeout=30)
            status, _ = _request(
                f"{api}/v1/configs/models",
                ADMIN,
                f"sie_id: lc/m\nprofiles:\n  default:\n    adapter_path: {BERT}\n".encode(),
            )
            assert status == 201
            procs.append(
                ServerProcess(
                    sie_operator_argv("gateway", "--host", "127.0.0.1", "--port", str(gw_port)),
                    name="gateway",
                    log_dir=tmp_path,
                    env={
                        **base,
                        **nats_login,
                        "SIE_NATS_URL": nats.url,
                        "SIE_CONFIG_SERVICE_URL": api,
                        "SIE_EXPORT_TOKEN": EXPORT,
                        "SIE_AUTH_MODE": "token",
                        "SIE_AUTH_TOKEN": READ,
                        "SIE_GATEWAY_WORKERS": f"127.0.0.1:{w_port}",
                    },
                ).start()
            )
            procs.append(
                ServerProcess(
                    sie_operator_argv(
                        "worker",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(w_port),
                        "--name",
                        "w-0",
                        "--config-url",
                        api,
                    ),
                    name="worker",
                    log_dir=tmp_path,
                    env={**base, **nats_login, "SIE_NATS_URL": nats.url, "SIE_EXPORT_TOKEN": EXPORT},
                ).start()
            )
            gw = f"http://127.0.0.1:{gw_port}"
            # both bootstrapped from /export with the export token, and logged in to NATS
            assert _wait(lambda: _request(f"{gw}/readyz")[0] == 200), procs[1].log_tail()
            assert _wait(lambda: _request(f"http://127.0.0.1:{w_port}/readyz")[0] == 200), procs[2].log_tail()
            assert _wait(lambda: _request(f"{gw}/health", READ)[1].get("nats_connected") is True)
            # a write with the admin token reaches the worker through NATS and is acked
            status, _ = _request(
                f"{api}/v1/configs/models",
                ADMIN,
                f"sie_id: lc/n\nprofiles:\n  default:\n    adapter_path: {BERT}\n".encode(),
            )
            assert status == 201

            def acked() -> bool:
                code, body = _request(f"{gw}/v1/configs/models/lc/n/status", EXPORT)
                return code == 200 and body.get("all_bundles_acked") is True

            assert _wait(acked), (procs[1].log_tail(), procs[2].log_tail())
            # the export token can read and export but never write
            assert _request(f"{api}/v1/configs/export", EXPORT)[0] == 200
            assert _request(f"{api}/v1/configs/models", EXPORT, b"sie_id: lc/x\nprofiles: {}\n")[0] == 403
        finally:
            for p in reversed(procs):
                p.stop()
    for p in procs:
        log = p.log_path.read_text()
        for secret in (ADMIN, READ, EXPORT, NATS_PASSWORD):
            assert secret not in log, (p.name, secret)
        assert "Traceback" not in log, (p.name, log)
