"""pytest fixtures: a real nats-server per test (starts in ~50 ms)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .natsserver import NatsServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(log_dir=tmp_path / "nats") as server:
        yield server
