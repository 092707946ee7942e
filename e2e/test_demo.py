"""The README's first command works: `sie-operator demo` brings the examples to Ready and stops cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sie_operator.devcluster.procs import sie_operator_argv

pytestmark = [pytest.mark.k8s, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def test_demo_brings_every_example_to_ready_and_leaves_nothing_running(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = subprocess.run(
        [*sie_operator_argv("demo", "--exit-when-ready", "--timeout", "120", "--workdir", str(work))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "all ModelConfigs are Ready" in out
    assert "export KUBECONFIG=" in out
    examples = sorted(p.stem for p in (REPO / "examples" / "modelconfigs").glob("*.yaml"))
    last_table = out.rsplit("kubectl get modelconfigs", 1)[-1]
    for name in examples:
        assert name in last_table, f"{name} missing from the final table:\n{last_table}"
    # every process the demo started is gone (their logs are in the workdir)
    logs = list((work / "logs").glob("*.log"))
    assert logs
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(work) not in ps, ps
    assert sys.executable  # the demo ran with this interpreter
