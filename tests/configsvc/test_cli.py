"""``sie-operator config-api`` as a real subprocess: env and flags, clean stop, bad config."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cfgsvc_helpers import model_yaml, write_layout

from sie_operator.configsvc.settings import Settings, SettingsError, default_producer_id, default_store_dir
from sie_operator.devcluster.ports import free_port
from sie_operator.devcluster.procs import ServerProcess, sie_operator_argv


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    if (tmp_path / "fs").exists():
        bundles, models = tmp_path / "fs" / "bundles", tmp_path / "fs" / "models"
    else:
        bundles, models = write_layout(tmp_path / "fs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIE_")}
    env.update(
        {
            "SIE_BUNDLES_DIR": str(bundles),
            "SIE_MODELS_DIR": str(models),
            "SIE_CONFIG_STORE_DIR": str(tmp_path / "store"),
            "POD_NAME": "cfg-0",
        }
    )
    env.update(extra)
    return env


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serves_and_stops_cleanly(tmp_path: Path, sig: int) -> None:
    port = free_port()
    proc = ServerProcess(
        sie_operator_argv("config-api", "--host", "127.0.0.1", "--port", str(port)),
        name="config-api",
        log_dir=tmp_path,
        env=_env(tmp_path, SIE_ADMIN_TOKEN="adm"),
    ).start()
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/configs/models",
            data=model_yaml("cli/m").encode(),
            headers={"Authorization": "Bearer adm"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 201
            assert json.loads(resp.read())["router_id"] == "standalone"
        proc.signal(sig)
        assert proc.proc is not None
        assert proc.proc.wait(timeout=15) == 0
    finally:
        proc.stop()
    log = proc.log_path.read_text()
    assert "Traceback" not in log and "listening on 127.0.0.1:" in log
    store = tmp_path / "store"
    assert (store / "epoch").read_text() == "1"
    assert (store / "models" / "cli__m.yaml").is_file()
    assert not (store / "wal").exists()  # checkpointed and closed


def _run_bad(tmp_path: Path, args: list[str], **env: str) -> str:
    result = subprocess.run(
        sie_operator_argv("config-api", "--host", "127.0.0.1", *args),
        env=_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sie-operator config-api: error: ")
    return lines[0]


def test_bad_configuration_is_one_line_and_exit_2(tmp_path: Path) -> None:
    port = str(free_port())
    assert "does not exist" in _run_bad(tmp_path, ["--port", port], SIE_BUNDLES_DIR=str(tmp_path / "nope"))
    assert "port" in _run_bad(tmp_path, ["--port", "http"])
    assert "port" in _run_bad(tmp_path, ["--port", "70000"])
    assert "SIE_CONFIG_RESTORE" in _run_bad(tmp_path, ["--port", port], SIE_CONFIG_RESTORE="maybe")
    assert "s3://" in _run_bad(tmp_path, ["--port", port], SIE_CONFIG_STORE_DIR="s3://bucket/prefix")
    assert "NATS URL" in _run_bad(tmp_path, ["--port", port], SIE_NATS_URL="http://x")
    assert "durability" in _run_bad(tmp_path, ["--port", port, "--store-durability", "yolo"])
    assert "needs a NATS server" in _run_bad(tmp_path, ["--port", port, "--store-dir", "jetstream://cfg"])
    assert "stream name" in _run_bad(tmp_path, ["--port", port], SIE_CONFIG_STORE_DIR="jetstream://a.b")
    assert "store_replicas" in _run_bad(
        tmp_path, ["--port", port, "--store-replicas", "7"], SIE_CONFIG_STORE_DIR="jetstream://c"
    )
    store = tmp_path / "store"
    (store / "models").mkdir(parents=True, exist_ok=True)
    (store / "epoch").write_text("x1")
    assert "corrupt" in _run_bad(tmp_path, ["--port", port])
    (store / "epoch").write_text("0")
    (tmp_path / "fs" / "models" / "bad.yaml").write_text("sie_id: [")
    assert "bad.yaml" in _run_bad(tmp_path, ["--port", port])
    (tmp_path / "fs" / "models" / "bad.yaml").unlink()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        used = str(busy.getsockname()[1])
        assert "cannot listen" in _run_bad(tmp_path, ["--port", used])


def test_flags_override_environment(tmp_path: Path) -> None:
    env = _env(tmp_path, SIE_CONFIG_RESTORE="false", SIE_NATS_URL="nats://127.0.0.1:4222")
    import argparse

    from sie_operator.configsvc.command import add_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--port", "9000", "--restore", "--nats-url", "127.0.0.1:4333", "--producer-id", "sie-config-x"]
    )
    s = settings_from_args(args, env)
    assert (s.port, s.restore, s.nats_url, s.producer_id) == (9000, True, "127.0.0.1:4333", "sie-config-x")
    assert s.store_dir == tmp_path / "store"
    args = parser.parse_args([])
    s = settings_from_args(args, env)
    assert (s.port, s.restore, s.nats_url, s.producer_id) == (
        8080,
        False,
        "nats://127.0.0.1:4222",
        "sie-config-cfg-0",
    )


def test_settings_defaults() -> None:
    s = Settings.from_env({"HOME": "/home/u"})
    assert s.store_dir == Path("/home/u/.local/state/sie-operator/config-store")
    assert s.restore is True and s.nats_url is None and s.auth_token is None and s.admin_token is None
    assert default_store_dir({"XDG_STATE_HOME": "/var/st"}) == Path("/var/st/sie-operator/config-store")
    assert (
        default_producer_id({"POD_NAME": "sie-cluster-config-7d9f"}) == "sie-config-sie-cluster-config-7d9f"
    )
    assert default_producer_id({"POD_NAME": "sie-config-0"}) == "sie-config-0"
    assert Settings.from_env({"SIE_PRODUCER_ID": "custom", "HOME": "/h"}).producer_id == "custom"
    assert Settings.from_env({"SIE_AUTH_TOKEN": "", "HOME": "/h"}).auth_token == ""  # set but empty
    for value, expected in (("TRUE", True), ("false", False), ("0", False), ("yes", True)):
        assert Settings.from_env({"SIE_CONFIG_RESTORE": value, "HOME": "/h"}).restore is expected
    with pytest.raises(SettingsError):
        Settings.from_env({"SIE_CONFIG_RESTORE": "perhaps", "HOME": "/h"})


def test_help_lists_the_environment_variables() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sie_operator.cli", "config-api", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for var in (
        "SIE_BUNDLES_DIR",
        "SIE_MODELS_DIR",
        "SIE_CONFIG_STORE_DIR",
        "SIE_CONFIG_RESTORE",
        "SIE_NATS_URL",
    ):
        assert var in out


def test_unreachable_nats_neither_blocks_startup_nor_shutdown(tmp_path: Path) -> None:
    port = free_port()
    proc = ServerProcess(
        sie_operator_argv("config-api", "--host", "127.0.0.1", "--port", str(port)),
        name="config-api-nonats",
        log_dir=tmp_path,
        env=_env(tmp_path, SIE_NATS_URL=f"nats://127.0.0.1:{free_port()}"),
    ).start()
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
        proc.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=5, expect=None)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
            raise AssertionError("readyz must say NATS is down")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            assert json.loads(exc.read())["checks"]["nats"] == "disconnected"
        proc.signal(signal.SIGTERM)
        assert proc.proc is not None
        assert proc.proc.wait(timeout=10) == 0
    finally:
        proc.stop()


def test_jetstream_store_location_from_flag_or_environment(tmp_path: Path) -> None:
    import argparse

    from sie_operator.configsvc.command import add_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert "jetstream://NAME" in parser.format_help() and "--store-replicas" in parser.format_help()
    env = _env(tmp_path, SIE_NATS_URL="nats://a:4222,nats://b:4222")
    args = parser.parse_args(["--store-dir", "jetstream://sie-config", "--store-replicas", "3"])
    s = settings_from_args(args, env)
    assert (s.store_stream, s.store_dir, s.store_replicas) == ("sie-config", None, 3)
    assert "store=jetstream://sie-config (R3)" in s.describe()
    env.update(SIE_CONFIG_STORE_DIR="jetstream://from-env", SIE_CONFIG_STORE_REPLICAS="5")
    s = settings_from_args(parser.parse_args([]), env)
    assert (s.store_stream, s.store_dir, s.store_replicas) == ("from-env", None, 5)
    # a directory flag wins over a jetstream environment variable, and the other way round
    s = settings_from_args(parser.parse_args(["--store-dir", str(tmp_path / "d")]), env)
    assert (s.store_stream, s.store_dir) == (None, tmp_path / "d")
    with pytest.raises(SettingsError, match="needs a NATS server"):
        Settings.from_env({"SIE_CONFIG_STORE_DIR": "jetstream://x", "HOME": "/h"})
