"""The security matrix: every Config API and gateway endpoint x every kind of credential.

Why: auth bugs live in the corners (an empty ``Bearer``, bytes that are not UTF-8, a token
of the wrong class on the one endpoint that takes a different class). Each cell is a real
HTTP request over a raw socket on 127.0.0.1 (so the header bytes are exactly what is
sent, undecodable ones included) to a real config service and a real gateway that
bootstrapped from it with the export token, as the chart wires them. A cell passes when
the status is the expected 2xx/401/403; no cell may answer 500 or show a traceback.

Credential kinds: none, the read token, the export token, the admin token, a wrong
token, non-ASCII (UTF-8) bytes, non-UTF-8 bytes, an empty ``Bearer``, and a huge (8 KB)
token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from sie_operator.configsvc import command as configsvc_command
from sie_operator.configsvc.service import ConfigService
from sie_operator.configsvc.settings import Settings
from sie_operator.gateway.auth import AuthPolicy
from sie_operator.gateway.service import Gateway
from sie_operator.gateway.settings import GatewaySettings

pytestmark = pytest.mark.asyncio(loop_scope="module")

READ = "read-token-r3ad"
EXPORT = "export-token-3xp0rt"
ADMIN = "admin-token-adm1n"
BERT = "sie_server.adapters.bert_flash:BertFlashAdapter"

# kind -> raw Authorization header bytes (None: no header at all)
CREDENTIALS: dict[str, bytes | None] = {
    "none": None,
    "read": f"Bearer {READ}".encode(),
    "export": f"Bearer {EXPORT}".encode(),
    "admin": f"Bearer {ADMIN}".encode(),
    "wrong": b"Bearer not-a-token",
    "non-ascii": "Bearer tökén-✓".encode(),
    "non-utf8": b"Bearer \xff\xfe\xc3(",
    "empty-bearer": b"Bearer ",  # the server sees "Bearer": a wrong token
    "huge": b"Bearer " + b"x" * 8000,
}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    klass: str  # open | read | export | write
    body: bytes = b""
    content_type: str = ""


MODEL_BODY = f"sie_id: sec/m\nprofiles:\n  default:\n    adapter_path: {BERT}\n".encode()
RESOLVE = b'{"model": "sec/m"}'

CONFIG_API = [
    Endpoint("GET", "/healthz", "open"),
    Endpoint("GET", "/readyz", "open"),
    Endpoint("GET", "/metrics", "open"),
    Endpoint("GET", "/v1/configs/models", "read"),
    Endpoint("GET", "/v1/configs/models/sec/m", "read"),
    Endpoint("POST", "/v1/configs/resolve", "read", RESOLVE, "application/json"),
    Endpoint("GET", "/v1/configs/bundles", "read"),
    Endpoint("GET", "/v1/configs/bundles/default", "read"),
    Endpoint("GET", "/v1/configs/epoch", "read"),
    Endpoint("GET", "/v1/configs/export", "export"),
    Endpoint("POST", "/v1/configs/models", "write", MODEL_BODY, "application/x-yaml"),
]

GATEWAY = [
    Endpoint("GET", "/healthz", "open"),
    Endpoint("GET", "/readyz", "open"),
    Endpoint("GET", "/health", "read"),
    Endpoint("GET", "/metrics", "read"),
    Endpoint("GET", "/v1/configs/models", "read"),
    Endpoint("GET", "/v1/configs/models/sec/m", "read"),
    Endpoint("GET", "/v1/configs/models/sec/m/status", "read"),
    Endpoint("GET", "/v1/configs/bundles", "read"),
    Endpoint("GET", "/v1/configs/bundles/default", "read"),
    Endpoint("POST", "/v1/configs/resolve", "read", RESOLVE, "application/json"),
    Endpoint("GET", "/v1/configs/status", "read"),
    Endpoint("POST", "/v1/configs/models", "write", MODEL_BODY, "application/x-yaml"),
    Endpoint("GET", "/no/such/path", "read"),
]


def expected_config_api(ep: Endpoint, cred: str) -> set[int]:
    """SIE's rules plus the export class: 401 without a token, 403 with a wrong one.

    An empty ``Bearer`` reaches the server as ``Bearer`` (HTTP trims trailing blanks), which
    SIE's parsing takes as the token "Bearer": a wrong token, 403 (contract §2)."""
    if ep.klass == "open":
        return {200}
    if cred == "none":
        return {401}
    allowed = {
        "read": {"read", "export", "admin"},
        "export": {"export", "admin"},
        "write": {"admin"},
    }[ep.klass]
    if cred in allowed:
        return {200, 201} if ep.klass == "write" else {200}
    return {403}


def expected_gateway(ep: Endpoint, cred: str) -> set[int]:
    """The gateway as the chart runs it: read and export tokens, no admin token at all.

    SIE's gateway answers 401 for an unknown token; its admin routes need an admin token
    it does not have (403 for any token)."""
    if ep.klass == "open":
        return {200}
    if cred == "none":
        return {401}
    if ep.klass == "write":
        return {403}
    if cred in ("read", "export"):
        return {404} if ep.path == "/no/such/path" else {200}
    return {401}


async def raw_request(port: int, ep: Endpoint, auth: bytes | None) -> tuple[int, bytes]:
    """One HTTP/1.1 request with exactly these header bytes; (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = [f"{ep.method} {ep.path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
        if auth is not None:
            head.append(b"Authorization: " + auth)
        if ep.content_type:
            head.append(f"Content-Type: {ep.content_type}".encode())
        head.append(f"Content-Length: {len(ep.body)}".encode())
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + ep.body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=15)
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = data.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), body


@dataclass
class Servers:
    service: ConfigService
    api_port: int
    gateway_port: int


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def servers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Servers]:
    root: Path = tmp_path_factory.mktemp("security")
    settings = Settings(
        host="127.0.0.1",
        port=0,
        store_dir=root / "store",
        auth_token=READ,
        admin_token=ADMIN,
        export_token=EXPORT,
        checkpoint_interval=0.05,
    )
    service, runner = await configsvc_command.start_service(settings)
    api_port = int(runner.addresses[0][1])
    # the model the read endpoints look at, written with the admin token
    status, body = await raw_request(api_port, CONFIG_API[-1], CREDENTIALS["admin"])
    assert status == 201, body
    # the gateway as the chart runs it: the export token to bootstrap and for reads, no admin token
    gw_settings = GatewaySettings(
        config_url=f"http://127.0.0.1:{api_port}",
        host="127.0.0.1",
        port=0,
        export_token=EXPORT,
        auth=AuthPolicy.from_settings("token", (READ,), None, False, EXPORT),
        poll_interval=0.5,
        gateway_id="gw-security",
    )
    gateway = Gateway(gw_settings)
    await gateway.start()
    try:
        assert gateway.mirror is not None
        for _ in range(200):
            if gateway.mirror.bootstrapped:
                break
            await asyncio.sleep(0.05)
        assert gateway.mirror.bootstrapped, "the gateway did not bootstrap with the export token"
        yield Servers(service, api_port, gateway.port)
    finally:
        await gateway.stop()
        await configsvc_command.stop_service(service, runner)


def _cells(endpoints: list[Endpoint]) -> list[tuple[Endpoint, str]]:
    return [(ep, cred) for ep in endpoints for cred in CREDENTIALS]


def _id(cell: tuple[Endpoint, str]) -> str:
    ep, cred = cell
    return f"{ep.method} {ep.path} [{cred}]"


CONFIG_API_CELLS = _cells(CONFIG_API)
GATEWAY_CELLS = _cells(GATEWAY)
MATRIX_SIZE = len(CONFIG_API_CELLS) + len(GATEWAY_CELLS)


def _check(status: int, body: bytes, expected: set[int], caplog: pytest.LogCaptureFixture) -> None:
    assert status in expected, (status, expected, body[:300])
    assert status < 500 and b"Traceback" not in body
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("sie_operator")]
    assert not errors, [r.getMessage() for r in errors]


@pytest.mark.parametrize("cell", CONFIG_API_CELLS, ids=_id)
async def test_config_api(
    servers: Servers, cell: tuple[Endpoint, str], caplog: pytest.LogCaptureFixture
) -> None:
    ep, cred = cell
    status, body = await raw_request(servers.api_port, ep, CREDENTIALS[cred])
    _check(status, body, expected_config_api(ep, cred), caplog)


@pytest.mark.parametrize("cell", GATEWAY_CELLS, ids=_id)
async def test_gateway(
    servers: Servers, cell: tuple[Endpoint, str], caplog: pytest.LogCaptureFixture
) -> None:
    ep, cred = cell
    status, body = await raw_request(servers.gateway_port, ep, CREDENTIALS[cred])
    _check(status, body, expected_gateway(ep, cred), caplog)


async def test_export_token_never_writes_anything(servers: Servers) -> None:
    """A refused write with the export token leaves the epoch where it was."""
    before = servers.service.epoch
    other = Endpoint(
        "POST",
        "/v1/configs/models",
        "write",
        f"sie_id: sec/other\nprofiles:\n  default:\n    adapter_path: {BERT}\n".encode(),
        "application/x-yaml",
    )
    status, _ = await raw_request(servers.api_port, other, CREDENTIALS["export"])
    assert status == 403
    assert servers.service.epoch == before and servers.service.registry is not None
    assert servers.service.registry.lookup("sec/other") is None


async def test_a_sie_gateway_with_the_export_token_as_its_admin_token_bootstraps(servers: Servers) -> None:
    """What a real SIE gateway does with SIE_ADMIN_TOKEN set (contract §2 and §6): it sends
    that token to /epoch, /bundles, /bundles/{id} and /export. All must accept the export
    token; our own gateway configured the SIE way (admin_token=export token) bootstraps."""
    for path in (
        "/v1/configs/epoch",
        "/v1/configs/bundles",
        "/v1/configs/bundles/default",
        "/v1/configs/export",
    ):
        status, body = await raw_request(
            servers.api_port, Endpoint("GET", path, "read"), CREDENTIALS["export"]
        )
        assert status == 200, (path, body[:200])
    sie_style = Gateway(
        GatewaySettings(
            config_url=f"http://127.0.0.1:{servers.api_port}",
            host="127.0.0.1",
            port=0,
            admin_token=EXPORT,
            poll_interval=0.5,
            gateway_id="gw-sie-style",
        )
    )
    await sie_style.start()
    try:
        assert sie_style.mirror is not None
        for _ in range(200):
            if sie_style.mirror.bootstrapped:
                break
            await asyncio.sleep(0.05)
        assert sie_style.mirror.bootstrapped
        assert sie_style.mirror.registry.lookup("sec/m") is not None
    finally:
        await sie_style.stop()


async def test_a_header_past_the_parser_limit_is_a_clean_4xx(servers: Servers) -> None:
    """Past aiohttp's 8 KiB header-field limit the HTTP parser answers before any auth
    code runs: a 4xx (400/431), never a 500."""
    ep = Endpoint("GET", "/v1/configs/models", "read")
    for port in (servers.api_port, servers.gateway_port):
        status, _ = await raw_request(port, ep, b"Bearer " + b"y" * 70_000)
        assert 400 <= status < 500, status


async def test_matrix_size() -> None:
    """Recorded in the README; printed with ``-s``."""
    print(
        f"security matrix: {len(CONFIG_API)} Config API endpoints x {len(CREDENTIALS)} credential kinds "
        f"= {len(CONFIG_API_CELLS)}; {len(GATEWAY)} gateway endpoints x {len(CREDENTIALS)} = "
        f"{len(GATEWAY_CELLS)}; total {MATRIX_SIZE}"
    )
    assert MATRIX_SIZE == (len(CONFIG_API) + len(GATEWAY)) * len(CREDENTIALS) == 216
