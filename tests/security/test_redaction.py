"""No credential in a log line, an error message or a repr.

Why: URLs with userinfo (NATS, the config service) and tokens pass through startup lines,
connection errors and settings objects; each of those is a place a password used to leak.
Everything here runs against real sockets on 127.0.0.1 (a closed port where a failure is
the point).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import aiohttp
import pytest

from sie_operator.configsvc.metrics import Metrics
from sie_operator.configsvc.publisher import NatsPublisher
from sie_operator.configsvc.settings import Settings
from sie_operator.devcluster.ports import free_port
from sie_operator.gateway import settings as gateway_settings
from sie_operator.gateway.auth import AuthPolicy
from sie_operator.protocol.configclient import ConfigServiceClient, ConfigServiceError
from sie_operator.protocol.natsfeed import NatsFeed

PASSWORD = "Sup3r-s3cret-pw"


async def test_nats_connection_failures_never_log_the_password(caplog: pytest.LogCaptureFixture) -> None:
    url = f"nats://app:{PASSWORD}@127.0.0.1:{free_port()}"  # nothing listens there
    publisher = NatsPublisher(url, "sie-config", Metrics(), connect_timeout=0.2, reconnect_wait=0.1)
    feed = NatsFeed(url, name="t", backoff_max=0.2)
    with caplog.at_level(logging.DEBUG):
        publisher.start()
        feed.start()
        await asyncio.sleep(1.0)
        await publisher.stop()
        await feed.close()
    text = caplog.text
    assert "app:***@127.0.0.1" in text, text  # the failure was logged, redacted
    assert PASSWORD not in text


@pytest.mark.parametrize("token", [None, "tok"])
async def test_config_service_errors_are_redacted(token: str | None) -> None:
    """Connection refused, or (with a token) aiohttp refusing userinfo plus a bearer: either
    way one ConfigServiceError the sync loop retries on, without the password."""
    url = f"http://gw:{PASSWORD}@127.0.0.1:{free_port()}"
    async with aiohttp.ClientSession() as session:
        client = ConfigServiceClient(session, url, admin_token=token, timeout=2)
        with pytest.raises(ConfigServiceError) as err:
            await client.epoch()
    assert PASSWORD not in str(err.value)


def test_settings_never_show_credentials() -> None:
    s = Settings(
        nats_url=f"nats://app:{PASSWORD}@127.0.0.1:4222",
        admin_token=PASSWORD,
        auth_token=PASSWORD,
        export_token=PASSWORD,
    )
    assert PASSWORD not in repr(s) and PASSWORD not in s.describe()
    assert "nats://app:***@127.0.0.1:4222" in s.describe()
    policy = AuthPolicy.from_settings("token", (PASSWORD,), PASSWORD, False, PASSWORD)
    assert PASSWORD not in repr(policy)


def test_a_bad_gateway_url_with_credentials_is_refused_without_echoing_them() -> None:
    parser = argparse.ArgumentParser()
    gateway_settings.add_arguments(parser)
    args = parser.parse_args([])  # every flag unset: the environment decides
    env = {"SIE_CONFIG_SERVICE_URL": f"ftp://u:{PASSWORD}@cfg:1", "SIE_NATS_URL": "nats://127.0.0.1:4222"}
    with pytest.raises(gateway_settings.ConfigError) as err:
        gateway_settings.from_args(args, env)
    assert PASSWORD not in str(err.value) and "u:***@cfg" in str(err.value)
    env = {"SIE_CONFIG_SERVICE_URL": "http://cfg:1", "SIE_NATS_URL": f"http://u:{PASSWORD}@n:4222"}
    with pytest.raises(gateway_settings.ConfigError) as err:
        gateway_settings.from_args(args, env)
    assert PASSWORD not in str(err.value)
    ok = gateway_settings.from_args(
        args, {"SIE_CONFIG_SERVICE_URL": "http://cfg:1", "SIE_EXPORT_TOKEN": PASSWORD}
    )
    assert PASSWORD not in repr(ok) and ok.export_token == PASSWORD
