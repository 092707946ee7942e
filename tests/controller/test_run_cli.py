"""``sie-operator run``'s high-availability flags: bad values are one-line errors (exit 2)
before anything starts, and the advertised URL defaults to the pod IP."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sie_operator.controller.command import advertise_url

BASE = ["run", "--namespace", "ns", "--nats-url", "nats://127.0.0.1:4", "--store-dir", "jetstream://s"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "KUBECONFIG": "/nonexistent", **(env or {})}
    full_env.pop("POD_NAMESPACE", None)
    return subprocess.run(
        [sys.executable, "-m", "sie_operator.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--leader-election", "--advertise-url", "ftp://x"], {}, "is not an http(s):// URL"),
        (["--leader-election", "--advertise-url", "http://:99999"], {}, "Port out of range"),
        ([], {"SIE_LEADER_ELECTION": "maybe"}, "is not a boolean"),
        (
            ["--leader-election", "--leader-election-lease-seconds", "5"],
            {},
            "must exceed the renew deadline",
        ),
        (["--leader-election", "--leader-election-retry-seconds", "0"], {}, "retry"),
    ],
)
def test_bad_ha_flags_are_one_line_errors(args: list[str], env: dict[str, str], message: str) -> None:
    res = run_cli(*BASE, *args, env=env)
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], res.stderr
    assert "Traceback" not in res.stderr


def test_leader_election_refuses_a_local_directory_store(tmp_path: object) -> None:
    res = run_cli("run", "--namespace", "ns", "--store-dir", str(tmp_path), "--leader-election")
    assert res.returncode == 2
    assert "--leader-election needs a store every replica shares" in res.stderr
    assert "Traceback" not in res.stderr


def test_the_advertised_url_defaults_to_the_pod_ip() -> None:
    assert advertise_url(None, {"POD_IP": "10.0.0.7"}, 8080) == "http://10.0.0.7:8080"
    assert advertise_url(None, {"POD_IP": "fd00::7"}, 8080) == "http://[fd00::7]:8080"
    assert advertise_url(None, {}, 9000) == "http://127.0.0.1:9000"
    assert advertise_url("http://op.example:8080/", {"POD_IP": "10.0.0.7"}, 8080) == "http://op.example:8080"


def test_kopf_per_event_lines_show_only_at_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf logs "Handler ... succeeded" at INFO for every watch event (20,000 lines for
    10,000 resources applied); at the default level the operator keeps its log to its own."""
    import logging

    from sie_operator import cli

    kopf_log = logging.getLogger("kopf.objects")
    monkeypatch.setattr(kopf_log, "level", logging.NOTSET)
    assert cli.main(["--log-level", "debug", "run"]) == 2  # refused: no namespace to watch
    assert kopf_log.level == logging.NOTSET  # left alone: its lines show
    assert cli.main(["--log-level", "info", "run"]) == 2
    assert kopf_log.level == logging.WARNING and not kopf_log.isEnabledFor(logging.INFO)
