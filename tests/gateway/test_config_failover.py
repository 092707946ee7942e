"""Config-service failover for gateways and workers (issue 10, HA).

An HA install runs several operator replicas and every one serves the config reads, so a
gateway or worker is given all their URLs and must keep bootstrapping and polling when the
one it talks to dies. The client-level tests use small aiohttp apps on real loopback ports
(a 500 is a fault a real config-api will not show on demand); the end-to-end test runs two
real ``config-api`` processes on one bundles directory and SIGKILLs the one in use.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from gw_cluster import ADMIN, EXTRA_BUNDLE, acked, http_json, model_yaml, wait_for

from sie_operator.catalog.bundles import shipped_bundles_dir
from sie_operator.cli import UsageError
from sie_operator.devcluster.ports import free_port
from sie_operator.devcluster.procs import ServerProcess, sie_operator_argv
from sie_operator.gateway import settings as gateway_settings
from sie_operator.protocol.configclient import (
    ConfigServiceClient,
    ConfigServiceError,
    failover_order,
    split_base_urls,
)
from sie_operator.settingsparse import ConfigError, check_http_urls
from sie_operator.worker import command as worker_command

EPOCH = "/v1/configs/epoch"


# -- the pure parts -----------------------------------------------------------------------------
def test_one_url_is_checked_as_before() -> None:
    assert check_http_urls("http://cfg:8080/", "X") == "http://cfg:8080"


def test_a_comma_list_is_normalised() -> None:
    assert check_http_urls(" http://a:1/ , https://b ", "X") == "http://a:1,https://b"
    assert split_base_urls("http://a:1,https://b") == ("http://a:1", "https://b")
    assert split_base_urls(["http://a/"]) == ("http://a",)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http://a,,http://b", "empty entry"),
        ("http://a,", "empty entry"),
        ("http://a,ftp://b", "is not an http(s):// URL"),
        ("http://a,http://b:99999", "Port out of range"),
        ("http://a,http://a/", "lists a URL twice"),
    ],
)
def test_a_bad_list_is_one_line(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_http_urls(value, "SIE_CONFIG_SERVICE_URL")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("SIE_CONFIG_SERVICE_URL=")


def test_failover_order_starts_at_the_sticky_url() -> None:
    assert failover_order(0, 3) == [0, 1, 2]
    assert failover_order(2, 3) == [2, 0, 1]
    assert failover_order(0, 1) == [0]


def test_an_empty_list_is_refused() -> None:
    with pytest.raises(ValueError, match="no config service URL"):
        split_base_urls(" , ")


# -- the client on real sockets ----------------------------------------------------------------
class FakeReplica:
    """An HTTP app answering /epoch with a status chosen by the test; counts its hits."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.status = 200
        self.hits = 0
        self.runner: web.AppRunner | None = None
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.status != 200:
            return web.json_response({"error": "x"}, status=self.status)
        return web.json_response({"epoch": self.epoch, "bundles_hash": "h"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(EPOCH, self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[FakeReplica, FakeReplica]]:
    a, b = FakeReplica(1), FakeReplica(2)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


async def test_a_5xx_moves_the_client_and_it_sticks(
    replicas: tuple[FakeReplica, FakeReplica], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = replicas
    async with aiohttp.ClientSession() as session:
        client = ConfigServiceClient(session, f"{a.url},{b.url}", timeout=2)
        assert (await client.epoch()).epoch == 1
        a.status = 503
        with caplog.at_level(logging.WARNING, logger="sie_operator.protocol.configclient"):
            assert (await client.epoch()).epoch == 2
        switches = [r.getMessage() for r in caplog.records if "switching to" in r.getMessage()]
        assert len(switches) == 1 and b.url in switches[0] and "HTTP 503" in switches[0], switches
        assert client.base_url == b.url
        a.status, a_hits = 200, a.hits
        assert (await client.epoch()).epoch == 2  # sticky: A is healthy again but B answers
        assert a.hits == a_hits


async def test_a_dead_replica_is_skipped(replicas: tuple[FakeReplica, FakeReplica]) -> None:
    a, b = replicas
    await a.stop()  # connection refused from now on
    async with aiohttp.ClientSession() as session:
        client = ConfigServiceClient(session, [a.url, b.url], timeout=2)
        assert (await client.epoch()).epoch == 2
        assert client.base_url == b.url


async def test_a_4xx_is_an_answer_not_an_outage(replicas: tuple[FakeReplica, FakeReplica]) -> None:
    a, b = replicas
    a.status = 401
    async with aiohttp.ClientSession() as session:
        client = ConfigServiceClient(session, f"{a.url},{b.url}", timeout=2)
        with pytest.raises(ConfigServiceError, match="HTTP 401"):
            await client.epoch()
    assert b.hits == 0 and client.base_url == a.url


async def test_all_down_is_one_line_naming_each(replicas: tuple[FakeReplica, FakeReplica]) -> None:
    a, b = replicas
    a.status = b.status = 500
    async with aiohttp.ClientSession() as session:
        client = ConfigServiceClient(session, f"{a.url},{b.url}", timeout=2)
        with pytest.raises(ConfigServiceError) as err:
            await client.epoch()
    text = str(err.value)
    assert text.startswith(f"GET {EPOCH}: all 2 config service URLs failed: ")
    assert a.url in text and b.url in text and "\n" not in text


async def test_one_url_keeps_its_old_messages(replicas: tuple[FakeReplica, FakeReplica]) -> None:
    a, _ = replicas
    a.status = 500
    async with aiohttp.ClientSession() as session:
        client = ConfigServiceClient(session, a.url, timeout=2)
        with pytest.raises(ConfigServiceError) as err:
            await client.epoch()
    assert str(err.value) == f'GET {EPOCH}: HTTP 500 {{"error": "x"}}'


# -- two real config-api processes, one SIGKILLed ----------------------------------------------
class TwoReplicas:
    """Two config-api processes on one bundles directory (as two operator pods mount one
    ConfigMap). Each keeps its own directory store: replication is stream A's business; here
    both start empty, so they agree until the test writes to the survivor."""

    def __init__(self, root: Path) -> None:
        self.logs = root / "logs"
        self.bundles = root / "bundles"
        shutil.copytree(shipped_bundles_dir(), self.bundles)
        (self.bundles / "extra.yaml").write_text(EXTRA_BUNDLE)
        self.root = root
        self.ports = [free_port(), free_port()]
        self.procs: list[ServerProcess] = []
        self.others: list[ServerProcess] = []

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def start(self) -> None:
        for i, port in enumerate(self.ports):
            env = {
                "SIE_CONFIG_STORE_DIR": str(self.root / f"store-{i}"),
                "SIE_BUNDLES_DIR": str(self.bundles),
                "SIE_ADMIN_TOKEN": ADMIN,
            }
            argv = sie_operator_argv("config-api", "--host", "127.0.0.1", "--port", str(port))
            self.procs.append(ServerProcess(argv, name=f"config-api-{i}", log_dir=self.logs, env=env).start())
        for i, proc in enumerate(self.procs):
            proc.wait_http(f"{self.url(i)}/healthz", 20)

    def spawn(self, name: str, *args: str) -> ServerProcess:
        proc = ServerProcess(sie_operator_argv(*args), name=name, log_dir=self.logs).start()
        self.others.append(proc)
        return proc

    def stop(self) -> None:
        for proc in [*self.others, *self.procs]:
            proc.stop(timeout=5)


@pytest.fixture
def two(tmp_path: Path) -> Iterator[TwoReplicas]:
    t = TwoReplicas(tmp_path)
    try:
        t.start()
        yield t
    finally:
        t.stop()


def test_gateway_and_worker_keep_syncing_when_their_config_replica_dies(two: TwoReplicas) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the worker starts past it
    wport, gport = free_port(), free_port()
    worker = two.spawn(
        "worker", "worker", "--name", "w0", "--bundle", "default", "--host", "127.0.0.1",
        "--port", str(wport), "--config-url", f"{dead},{two.url(0)},{two.url(1)}",
        "--admin-token", ADMIN, "--poll-interval", "0.3",
    )  # fmt: skip
    worker.wait_http(f"http://127.0.0.1:{wport}/readyz", 20)
    gateway = two.spawn(
        "gateway", "gateway", "--host", "127.0.0.1", "--port", str(gport),
        "--config-service-url", f"{two.url(0)},{two.url(1)}", "--gateway-id", "gw",
        "--admin-token", ADMIN, "--poll-interval", "0.3", "--bootstrap-backoff-max", "0.5",
        "--worker", f"127.0.0.1:{wport}", "--sweep-interval", "0.2", "--reconnect-interval", "0.2",
    )  # fmt: skip
    gw = f"http://127.0.0.1:{gport}"
    gateway.wait_http(f"{gw}/readyz", 20)
    wait_for(lambda: http_json(f"{gw}/readyz")["healthy_workers"] == 1, 15, "the worker on the gateway")

    two.procs[0].signal(signal.SIGKILL)  # the replica both are using
    http_json(f"{two.url(1)}/v1/configs/models", data=model_yaml("ha/after-kill").encode(), token=ADMIN)
    epoch = int(http_json(f"{two.url(1)}/v1/configs/epoch", token=ADMIN)["epoch"])
    assert epoch >= 1

    def status() -> dict[str, object] | None:
        s: dict[str, object] = http_json(f"{gw}/v1/configs/models/ha/after-kill/status")
        return s if acked(s) else None

    # known to the gateway (its poll failed over to replica 1) and acked by the worker (same)
    s = wait_for(status, 20, "the model written to the survivor, acked through the gateway")
    assert s["config_epoch"] == epoch
    assert "switching to " + two.url(1) in gateway.log_tail(200)
    assert "switching to " + two.url(0) in worker.log_tail(200)  # first past the dead URL
    assert "switching to " + two.url(1) in worker.log_tail(200)


# -- the command lines -------------------------------------------------------------------------
def test_gateway_and_worker_take_the_list_from_flag_or_environment() -> None:
    parser = argparse.ArgumentParser()
    gateway_settings.add_arguments(parser)
    env = {"SIE_CONFIG_SERVICE_URL": "http://op-0:8080/, http://op-1:8080", "SIE_NATS_URL": "nats://n:4222"}
    s = gateway_settings.from_args(parser.parse_args([]), env)
    assert s.config_url == "http://op-0:8080,http://op-1:8080"
    with pytest.raises(ConfigError, match="empty entry"):
        gateway_settings.from_args(parser.parse_args(["--config-service-url", "http://a,"]), env)

    wparser = argparse.ArgumentParser()
    worker_command.add_arguments(wparser)
    with pytest.raises(UsageError) as err:
        worker_command.run(wparser.parse_args(["--config-url", "http://a,ftp://b"]))
    assert "--config-url='ftp://b' is not an http(s):// URL" in str(err.value)
