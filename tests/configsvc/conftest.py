"""Fixtures for the config service: the contract's small bundle/model layout, a real
aiohttp server on 127.0.0.1 around a started ConfigService, and a 3-node JetStream cluster
(shared by the session: it takes seconds to elect its leaders; tests use their own streams)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cfgsvc_helpers import Api, MakeApi, write_layout

from sie_operator.configsvc.http import build_app
from sie_operator.configsvc.service import ConfigService
from sie_operator.configsvc.settings import Settings
from sie_operator.devcluster.natsserver import NatsCluster


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    return write_layout(tmp_path / "fs")


@pytest.fixture
async def make_api(tmp_path: Path, layout: tuple[Path, Path]) -> AsyncIterator[MakeApi]:
    """Start ConfigService + HTTP server; keyword arguments override Settings fields.

    ``start=False`` leaves the service unstarted (registry absent)."""
    made: list[tuple[TestClient[Any, Any], ConfigService]] = []

    async def make(*, start: bool = True, **overrides: Any) -> Api:
        bundles, models = layout
        values: dict[str, Any] = {
            "bundles_dir": bundles,
            "models_dir": models,
            "store_dir": tmp_path / "store",
            "checkpoint_interval": 0.05,
            "nats_reconnect_wait": 0.2,
            "nats_flush_timeout": 1.0,
        }
        values.update(overrides)
        settings = Settings(**values)
        service = ConfigService.from_settings(settings)
        if start:
            await service.start()
        client: TestClient[Any, Any] = TestClient(TestServer(build_app(service, settings), host="127.0.0.1"))
        await client.start_server()
        made.append((client, service))
        return Api(client, service, settings)

    yield make
    for client, service in reversed(made):
        await client.close()
        await service.stop()


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with NatsCluster(3, tmp_path_factory.mktemp("natscluster")) as cluster:
        yield cluster
