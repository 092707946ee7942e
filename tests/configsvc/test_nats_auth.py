"""NATS credentials and TLS for every command, against a real nats-server that requires them.

Why: the chart's built-in NATS now requires a login, so every component must be able to
give one (URL userinfo, SIE_NATS_USER/SIE_NATS_PASSWORD, a creds file) and must say in one
log line, without the password, when the server refuses it. The option parsing lives in
one module (``sie_operator.natsconn``); these tests drive it through each command.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfgsvc_helpers import write_layout

from sie_operator import natsconn
from sie_operator.cli import build_parser
from sie_operator.configsvc import command as configsvc_command
from sie_operator.devcluster.natsserver import NatsServer
from sie_operator.devcluster.ports import free_port
from sie_operator.devcluster.procs import ServerProcess, sie_operator_argv
from sie_operator.natsconn import NatsAuth, NatsConfigError, connect_options, redact_url
from sie_operator.protocol.natsfeed import NatsFeed

USER = "sie-app"
PASSWORD = "s3cret-Pa55word"
WRONG = "wr0ng-Pa55word"


# --------------------------------------------------------------------------- parsing


def test_redact_url_hides_every_userinfo() -> None:
    assert redact_url("nats://u:p@h:4222") == "nats://u:***@h:4222"
    assert redact_url("nats://tok@h:4222") == "nats://***@h:4222"
    assert redact_url("nats://a:b@h1:4222,nats://c:d@h2:4222") == "nats://a:***@h1:4222,nats://c:***@h2:4222"
    assert redact_url("connect to tls://x:y@host failed") == "connect to tls://x:***@host failed"
    assert redact_url("http://u:p%40ss@cfg:8080/v1") == "http://u:***@cfg:8080/v1"
    assert redact_url("nats://h:4222") == "nats://h:4222"
    assert redact_url(None) == ""


@pytest.mark.parametrize(
    ("url", "auth", "expected"),
    [
        ("nats://h:4222", NatsAuth(), {"servers": ["nats://h:4222"]}),
        ("nats://u:p%40x@h:4222", NatsAuth(), {"servers": ["nats://h:4222"], "user": "u", "password": "p@x"}),
        ("nats://TOKEN@h:4222", NatsAuth(), {"servers": ["nats://h:4222"], "token": "TOKEN"}),
        (
            "nats://h1:4222, nats://h2:4222",
            NatsAuth(user="u", password="p"),
            {"servers": ["nats://h1:4222", "nats://h2:4222"], "user": "u", "password": "p"},
        ),
        ("h:4222", NatsAuth(), {"servers": ["nats://h:4222"]}),
    ],
)
def test_connect_options(url: str, auth: NatsAuth, expected: dict[str, Any]) -> None:
    assert connect_options(url, auth) == expected


@pytest.mark.parametrize(
    ("url", "auth", "message"),
    [
        ("nats://u:p@h:4222", NatsAuth(user="v", password="q"), "given twice"),
        ("nats://h:4222", NatsAuth(password="p"), "SIE_NATS_USER is not"),
        ("nats://a:b@h1:4222,nats://c:d@h2:4222", NatsAuth(), "different credentials"),
        ("nats://h:4222", NatsAuth(creds_file="/nonexistent/x.creds"), "not a readable file"),
        ("nats://h:4222", NatsAuth(user="u", password="p", creds_file="/x.creds"), "given twice"),
        ("nats://h:4222", NatsAuth(tls_cert="/c.pem"), "go together"),
        ("nats://h:4222", NatsAuth(tls_ca="/nonexistent/ca.pem"), "not a readable file"),
        ("http://u:secretpw@h:4222", NatsAuth(), "not a NATS URL"),
        ("nats://u:secretpw@h:99999", NatsAuth(), "invalid port"),
    ],
)
def test_bad_nats_options_are_one_line_errors_without_secrets(url: str, auth: NatsAuth, message: str) -> None:
    with pytest.raises(NatsConfigError, match=message) as err:
        connect_options(url, auth)
    assert "\n" not in str(err.value) and "secretpw" not in str(err.value)


def test_creds_file_is_handed_to_nats_py(tmp_path: Path) -> None:
    creds = tmp_path / "user.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\nx\n------END NATS USER JWT------\n")
    assert connect_options("nats://h:4222", NatsAuth(creds_file=str(creds))) == {
        "servers": ["nats://h:4222"],
        "user_credentials": str(creds),
    }


def test_env_and_flags() -> None:
    env = {
        "SIE_NATS_USER": "u",
        "SIE_NATS_PASSWORD": "hunter2",
        "SIE_NATS_CREDS": "/env.creds",
        "SIE_NATS_TLS_CA": "/env-ca.pem",
    }
    auth = NatsAuth.from_env(env, tls_ca="/flag-ca.pem")
    assert (auth.user, auth.password, auth.creds_file, auth.tls_ca) == (
        "u",
        "hunter2",
        "/env.creds",
        "/flag-ca.pem",
    )
    assert "hunter2" not in repr(auth)  # repr never shows the password
    assert NatsAuth.from_env({"SIE_NATS_USER": "", "SIE_NATS_PASSWORD": ""}) == NatsAuth()


@pytest.mark.parametrize("command", ["run", "config-api", "gateway", "worker"])
def test_every_command_takes_the_nats_file_flags(command: str) -> None:
    """One shared flag set (natsconn.add_arguments) on every command."""
    argv = [command, "--nats-creds", "/c.creds", "--nats-tls-ca", "/ca.pem"]
    argv += ["--nats-tls-cert", "/cert.pem", "--nats-tls-key", "/key.pem"]
    args = build_parser().parse_args(argv)
    auth = NatsAuth.from_args(args, {})
    assert auth == NatsAuth(None, None, "/c.creds", "/ca.pem", "/cert.pem", "/key.pem")


def test_run_and_config_api_share_the_settings_path(tmp_path: Path) -> None:
    """`run` builds its config service settings with configsvc's settings_from_args."""
    args = build_parser().parse_args(["run", "--namespace", "ns", "--nats-url", "nats://h:4222"])
    env = {"SIE_NATS_USER": USER, "SIE_NATS_PASSWORD": PASSWORD, "SIE_CONFIG_STORE_DIR": str(tmp_path)}
    settings = configsvc_command.settings_from_args(args, env)
    assert settings.nats_auth.user == USER and settings.nats_auth.password == PASSWORD
    assert PASSWORD not in settings.describe() and "user sie-app" in settings.describe()
    env["SIE_NATS_CREDS"] = "/missing.creds"
    with pytest.raises(Exception, match="given twice"):
        configsvc_command.settings_from_args(args, env)


# --------------------------------------------------------------------------- real server


@pytest.fixture
def auth_nats(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(log_dir=tmp_path / "nats", extra_args=["--user", USER, "--pass", PASSWORD]) as server:
        yield server


def _get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIE_")}
    bundles, models = write_layout(tmp_path / "fs")
    env.update(
        {
            "SIE_BUNDLES_DIR": str(bundles),
            "SIE_MODELS_DIR": str(models),
            "SIE_CONFIG_STORE_DIR": str(tmp_path / "store"),
            "SIE_NO_UVLOOP": "1",
        }
    )
    return env


def _start(command: str, tmp_path: Path, url: str, env: dict[str, str]) -> tuple[ServerProcess, int]:
    port = free_port()
    common = ["--host", "127.0.0.1", "--port", str(port), "--nats-url", url]
    dead_config = f"http://127.0.0.1:{free_port()}"  # nothing listens: NATS is what is tested
    if command == "config-api":
        argv = sie_operator_argv("config-api", *common)
    elif command == "gateway":
        argv = sie_operator_argv("gateway", *common, "--config-service-url", dead_config)
    else:
        argv = sie_operator_argv("worker", *common, "--config-url", dead_config, "--name", "w-0")
    proc = ServerProcess(argv, name=command, log_dir=tmp_path / "logs", env=env).start()
    proc.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
    return proc, port


def _nats_up(command: str, proc: ServerProcess, port: int) -> bool:
    if command == "config-api":
        return bool(_get_json(f"http://127.0.0.1:{port}/readyz")[1]["checks"]["nats"] == "connected")
    if command == "gateway":
        return bool(_get_json(f"http://127.0.0.1:{port}/health")[1]["nats_connected"])
    return "NATS connected to" in proc.log_path.read_text()


CASES = ["env-credentials", "url-userinfo", "wrong-password"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", ["config-api", "gateway", "worker"])
def test_command_logs_in_to_a_nats_that_requires_auth(
    command: str, case: str, auth_nats: NatsServer, tmp_path: Path
) -> None:
    env = _base_env(tmp_path)
    host = f"127.0.0.1:{auth_nats.port}"
    if case == "env-credentials":
        url = f"nats://{host}"
        env.update({"SIE_NATS_USER": USER, "SIE_NATS_PASSWORD": PASSWORD})
    elif case == "url-userinfo":
        url = f"nats://{USER}:{PASSWORD}@{host}"
    else:
        url = f"nats://{host}"
        env.update({"SIE_NATS_USER": USER, "SIE_NATS_PASSWORD": WRONG})
    proc, port = _start(command, tmp_path, url, env)
    try:
        deadline = time.monotonic() + (15 if case != "wrong-password" else 4)
        up = False
        while time.monotonic() < deadline and not (up := _nats_up(command, proc, port)):
            time.sleep(0.1)
    finally:
        proc.stop()
    log = proc.log_path.read_text()
    assert PASSWORD not in log and WRONG not in log, log
    assert "Traceback" not in log, log
    if case == "wrong-password":
        assert not up
        refusals = [line for line in log.splitlines() if "refused the login" in line]
        assert len(refusals) == 1, log  # one line, not one per retry
        assert "Authorization Violation" in refusals[0] and "SIE_NATS_PASSWORD" in refusals[0]
    else:
        assert up, log
        if case == "url-userinfo":
            assert f"nats://{USER}:***@{host}" in log or command == "worker"


def test_bad_nats_options_stop_each_command_with_one_line(tmp_path: Path) -> None:
    import subprocess

    env = _base_env(tmp_path)
    env["SIE_NATS_PASSWORD"] = "lonely-secret"
    for command, extra in (
        ("config-api", []),
        ("gateway", ["--config-service-url", "http://127.0.0.1:1"]),
        ("worker", ["--config-url", "http://127.0.0.1:1"]),
    ):
        res = subprocess.run(
            sie_operator_argv(command, "--port", "0", "--nats-url", "nats://127.0.0.1:4222", *extra),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 2, (command, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "SIE_NATS_USER is not" in lines[0], (command, res.stderr)
        assert "lonely-secret" not in res.stderr


# --------------------------------------------------------------------------- TLS, real server


def _make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (cryptography)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test-ca"))
        .issuer_name(name("test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    out = {"ca": d / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who, usage, san in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("client")]),
    ):
        k = key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(who))
            .issuer_name(ca.subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        out[f"{who}_cert"] = d / f"{who}.pem"
        out[f"{who}_key"] = d / f"{who}-key.pem"
        out[f"{who}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{who}_key"].write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return out


async def _feed_connects(url: str, auth: NatsAuth, wait: float) -> bool:
    feed = NatsFeed(url, name="tls-test", auth=auth)
    feed.start()
    try:
        up = asyncio.Event()
        feed.add_listener(lambda connected: up.set() if connected else None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(up.wait(), wait)
        return feed.connected
    finally:
        await feed.close()


async def test_mutual_tls_with_the_shared_options(tmp_path: Path) -> None:
    pki = _make_pki(tmp_path)
    args = [
        "--tls",
        "--tlscert",
        str(pki["server_cert"]),
        "--tlskey",
        str(pki["server_key"]),
        "--tlsverify",
        "--tlscacert",
        str(pki["ca"]),
        "--user",
        USER,
        "--pass",
        PASSWORD,
    ]
    with NatsServer(log_dir=tmp_path / "nats", extra_args=args) as server:
        url = f"tls://127.0.0.1:{server.port}"
        full = NatsAuth(
            user=USER,
            password=PASSWORD,
            tls_ca=str(pki["ca"]),
            tls_cert=str(pki["client_cert"]),
            tls_key=str(pki["client_key"]),
        )
        assert await _feed_connects(url, full, 15)
        # no client certificate: the server refuses the handshake
        no_cert = NatsAuth(user=USER, password=PASSWORD, tls_ca=str(pki["ca"]))
        assert not await _feed_connects(url, no_cert, 2)
        # the server is not trusted without the CA
        no_ca = NatsAuth(user=USER, password=PASSWORD, tls_cert=full.tls_cert, tls_key=full.tls_key)
        assert not await _feed_connects(url, no_ca, 2)
    assert natsconn.describe(url, full) == f"{url} (user {USER}, mutual TLS)"


# --------------------------------------------------------------------------- NKEY/JWT, real server


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any], signer: Any) -> str:
    """A NATS JWT (v2): ed25519-nkey signature over header.payload, base64url without padding."""
    claims = {**claims, "iat": int(time.time())}
    claims["jti"] = (
        base64.b32encode(hashlib.sha256(json.dumps(claims).encode()).digest()).decode().rstrip("=")
    )
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{header}.{payload}.{_b64(signer.sign(f'{header}.{payload}'.encode()))}"


def _operator_mode(d: Path) -> tuple[Path, Path, Path]:
    """nats-server in operator (decentralised JWT) mode with one account preloaded; a creds
    file for a user of that account, and one for a user of an account the server never saw."""
    import nkeys

    def key(prefix: int) -> Any:
        return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))

    op, acc, stranger = (
        key(nkeys.PREFIX_BYTE_OPERATOR),
        key(nkeys.PREFIX_BYTE_ACCOUNT),
        key(nkeys.PREFIX_BYTE_ACCOUNT),
    )
    opub, apub = op.public_key.decode(), acc.public_key.decode()
    limits = {
        "subs": -1,
        "data": -1,
        "payload": -1,
        "imports": -1,
        "exports": -1,
        "wildcards": True,
        "conn": -1,
    }
    op_jwt = _jwt({"iss": opub, "sub": opub, "name": "op", "nats": {"type": "operator", "version": 2}}, op)
    acc_jwt = _jwt(
        {
            "iss": opub,
            "sub": apub,
            "name": "sie",
            "nats": {"limits": {**limits, "leaf": -1}, "type": "account", "version": 2},
        },
        op,
    )
    conf = d / "operator.conf"
    conf.write_text(f"operator: {op_jwt}\nresolver: MEMORY\nresolver_preload: {{\n  {apub}: {acc_jwt}\n}}\n")
    out = []
    for name, issuer in (("good", acc), ("stranger", stranger)):
        user = key(nkeys.PREFIX_BYTE_USER)
        claims = {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}
        user_jwt = _jwt(
            {
                "iss": issuer.public_key.decode(),
                "sub": user.public_key.decode(),
                "name": name,
                "nats": claims,
            },
            issuer,
        )
        creds = d / f"{name}.creds"
        creds.write_text(
            f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n"
        )
        creds.chmod(0o600)
        out.append(creds)
    return conf, out[0], out[1]


async def test_nkey_jwt_creds_file_logs_in(tmp_path: Path) -> None:
    conf, good, stranger = _operator_mode(tmp_path)
    with NatsServer(log_dir=tmp_path / "nats", extra_args=["-c", str(conf)]) as server:
        assert await _feed_connects(server.url, NatsAuth(creds_file=str(good)), 15)
        assert not await _feed_connects(server.url, NatsAuth(creds_file=str(stranger)), 2)
        assert not await _feed_connects(server.url, NatsAuth(), 2)


def test_config_api_logs_in_with_a_creds_file_from_the_environment(tmp_path: Path) -> None:
    conf, good, _ = _operator_mode(tmp_path)
    with NatsServer(log_dir=tmp_path / "nats", extra_args=["-c", str(conf)]) as server:
        env = {**_base_env(tmp_path), "SIE_NATS_CREDS": str(good)}
        proc, port = _start("config-api", tmp_path, server.url, env)
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not _nats_up("config-api", proc, port):
                time.sleep(0.1)
            assert _nats_up("config-api", proc, port), proc.log_tail()
        finally:
            proc.stop()
    seed_line = good.read_text().split("-----BEGIN USER NKEY SEED-----\n")[1].splitlines()[0]
    assert seed_line not in proc.log_path.read_text()
