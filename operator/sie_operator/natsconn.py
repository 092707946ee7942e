"""NATS connection options of every command (run, config-api, gateway, worker), in one place.

Why one module: the config service publishes and the gateway and worker subscribe, but a
cluster has one NATS with one way to log in; three copies of the option parsing would
drift (and did: each command built its own ``connect`` call, none with auth).

Credentials, in the forms nats-server offers:

- user and password (or a token) as URL userinfo: ``nats://user:pass@host:4222``;
- ``SIE_NATS_USER`` / ``SIE_NATS_PASSWORD``, the way a Kubernetes Secret hands them over;
- ``SIE_NATS_CREDS`` (``--nats-creds``): a ``.creds`` file for NKEY/JWT (decentralised) auth;
- TLS: ``SIE_NATS_TLS_CA`` (``--nats-tls-ca``) to verify the server, and
  ``SIE_NATS_TLS_CERT`` + ``SIE_NATS_TLS_KEY`` for a client certificate (mutual TLS).

Userinfo is taken out of the server URLs and passed separately, so nothing nats-py logs or
raises contains it, and :func:`redact_url` is what every log line shows. Bad combinations
(two sources of credentials, a password without a user, a missing file) are a one-line
``NatsConfigError`` at startup.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import re
import ssl
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

SCHEMES = ("nats", "tls", "ws", "wss")
ENV_USER = "SIE_NATS_USER"
ENV_PASSWORD = "SIE_NATS_PASSWORD"
ENV_CREDS = "SIE_NATS_CREDS"
ENV_TLS_CA = "SIE_NATS_TLS_CA"
ENV_TLS_CERT = "SIE_NATS_TLS_CERT"
ENV_TLS_KEY = "SIE_NATS_TLS_KEY"
REDACTED = "***"


class NatsConfigError(ValueError):
    """NATS options that cannot be used; ``str(exc)`` is one line and holds no secret."""


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]*)@")


def redact_url(text: str | None) -> str:
    """``text`` with the userinfo of every URL in it replaced: ``nats://user:***@host``.

    Works on a comma list of URLs and on free text (an error message quoting a URL). A user
    name alone (no password) may be a token, so it is hidden too.
    """
    if not text:
        return text or ""

    def repl(m: re.Match[str]) -> str:
        user, sep, _ = m.group("userinfo").partition(":")
        shown = f"{user}:{REDACTED}" if sep else REDACTED
        return f"{m.group('scheme')}{shown}@"

    return _USERINFO.sub(repl, text)


@dataclass(frozen=True)
class NatsAuth:
    """Credentials and TLS files given outside the URL (environment or flags)."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    creds_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        creds_file: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> NatsAuth:
        """The SIE_NATS_* variables; non-empty arguments (flags) win over them."""
        env = os.environ if env is None else env

        def pick(flag: str | None, var: str) -> str | None:
            return flag or env.get(var) or None

        return cls(
            user=env.get(ENV_USER) or None,
            password=env.get(ENV_PASSWORD) or None,
            creds_file=pick(creds_file, ENV_CREDS),
            tls_ca=pick(tls_ca, ENV_TLS_CA),
            tls_cert=pick(tls_cert, ENV_TLS_CERT),
            tls_key=pick(tls_key, ENV_TLS_KEY),
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> NatsAuth:
        return cls.from_env(
            env,
            creds_file=getattr(args, "nats_creds", None),
            tls_ca=getattr(args, "nats_tls_ca", None),
            tls_cert=getattr(args, "nats_tls_cert", None),
            tls_key=getattr(args, "nats_tls_key", None),
        )

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert or self.tls_key)

    def describe(self) -> str:
        """What kind of login this is, for the startup log line (never the secret)."""
        parts = []
        if self.creds_file:
            parts.append(f"creds file {self.creds_file}")
        elif self.user:
            parts.append(f"user {self.user}")
        if self.uses_tls:
            parts.append("mutual TLS" if self.tls_cert else "TLS")
        return ", ".join(parts)


def add_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """The file-valued NATS flags (secrets themselves only come from the environment)."""
    parser.add_argument("--nats-creds", help=f"NATS .creds file for NKEY/JWT auth [{ENV_CREDS}]")
    parser.add_argument("--nats-tls-ca", help=f"CA bundle to verify the NATS server [{ENV_TLS_CA}]")
    parser.add_argument("--nats-tls-cert", help=f"client certificate for NATS mutual TLS [{ENV_TLS_CERT}]")
    parser.add_argument("--nats-tls-key", help=f"client key for NATS mutual TLS [{ENV_TLS_KEY}]")


def split_servers(url: str) -> list[str]:
    return [u.strip() for u in url.split(",") if u.strip()]


def _check_url(url: str) -> tuple[str, str | None, str | None]:
    """(URL without userinfo, user, password) of one server; NatsConfigError if unusable."""
    full = url if "://" in url else f"nats://{url}"
    try:
        parts = urlsplit(full)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise NatsConfigError(f"{redact_url(full)!r} has an invalid port") from None
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise NatsConfigError(f"{redact_url(full)!r} is not a NATS URL (e.g. nats://127.0.0.1:4222)")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), user, password


def validate_url(url: str) -> str:
    """A cleaned-up URL list (as given, userinfo kept); NatsConfigError if any URL is bad."""
    servers = split_servers(url)
    if not servers:
        raise NatsConfigError("the NATS URL is empty")
    for s in servers:
        _check_url(s)
    return ",".join(servers)


def _readable(path: str, what: str) -> None:
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise NatsConfigError(f"{what} {path!r} is not a readable file")


def connect_options(url: str, auth: NatsAuth | None = None) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` (servers, credentials, TLS).

    Raises NatsConfigError for anything that cannot work, without echoing a secret.
    """
    auth = auth or NatsAuth()
    servers: list[str] = []
    url_creds: set[tuple[str, str | None]] = set()
    for s in split_servers(url):
        clean, user, password = _check_url(s)
        servers.append(clean)
        if user is not None:
            url_creds.add((user, password))
    if not servers:
        raise NatsConfigError("the NATS URL is empty")
    if len(url_creds) > 1:
        raise NatsConfigError("the NATS URLs carry different credentials; give one set")
    if auth.password and not auth.user:
        raise NatsConfigError(f"{ENV_PASSWORD} is set but {ENV_USER} is not")
    sources = [
        name
        for name, present in (
            ("URL userinfo", bool(url_creds)),
            (f"{ENV_USER}/{ENV_PASSWORD}", bool(auth.user)),
            (ENV_CREDS, bool(auth.creds_file)),
        )
        if present
    ]
    if len(sources) > 1:
        raise NatsConfigError(f"NATS credentials given twice ({' and '.join(sources)}); give one")
    opts: dict[str, Any] = {"servers": servers}
    if url_creds:
        user, password = next(iter(url_creds))
        if password is None:
            opts["token"] = user  # nats://TOKEN@host, as nats-server and nats-py read it
        else:
            opts["user"], opts["password"] = user, password
    elif auth.user:
        if auth.password is None:
            opts["token"] = auth.user
        else:
            opts["user"], opts["password"] = auth.user, auth.password
    elif auth.creds_file:
        _readable(auth.creds_file, ENV_CREDS)
        opts["user_credentials"] = auth.creds_file
    if auth.uses_tls:
        opts["tls"] = tls_context(auth)
    return opts


def tls_context(auth: NatsAuth) -> ssl.SSLContext:
    if bool(auth.tls_cert) != bool(auth.tls_key):
        raise NatsConfigError(f"{ENV_TLS_CERT} and {ENV_TLS_KEY} go together (client certificate and key)")
    if auth.tls_ca:
        _readable(auth.tls_ca, ENV_TLS_CA)
    try:
        ctx = ssl.create_default_context(cafile=auth.tls_ca or None)
    except (ssl.SSLError, OSError) as exc:
        raise NatsConfigError(f"{ENV_TLS_CA} {auth.tls_ca!r}: {exc}") from None
    if auth.tls_cert and auth.tls_key:
        _readable(auth.tls_cert, ENV_TLS_CERT)
        _readable(auth.tls_key, ENV_TLS_KEY)
        try:
            ctx.load_cert_chain(auth.tls_cert, auth.tls_key)
        except (ssl.SSLError, OSError) as exc:
            raise NatsConfigError(
                f"{ENV_TLS_CERT}/{ENV_TLS_KEY}: cannot load the client certificate: {exc}"
            ) from None
    return ctx


def describe(url: str | None, auth: NatsAuth | None = None) -> str:
    """``nats://host:4222 (user app, TLS)``: the redacted URL and the kind of login."""
    if not url:
        return "(disabled)"
    extra = auth.describe() if auth is not None else ""
    return redact_url(url) + (f" ({extra})" if extra else "")


class ErrorLog:
    """One log line per distinct NATS problem, then at most one every ``interval`` seconds.

    nats-py calls its error callback on every failed (re)connect attempt, and a refused
    login alternates with "connection reset" as the server hangs up; unthrottled, a wrong
    password fills the log. An authorization failure is an ERROR naming where the
    credentials come from (never their value); anything else is a WARNING.
    """

    def __init__(self, logger: logging.Logger, shown_url: str, interval: float = 30.0) -> None:
        self.logger = logger
        self.shown_url = shown_url
        self.interval = interval
        self._seen: dict[str, tuple[float, int]] = {}  # message -> (last logged, suppressed since)

    def __call__(self, exc: BaseException) -> None:
        msg = redact_url(str(exc)) or type(exc).__name__
        now = time.monotonic()
        last, suppressed = self._seen.get(msg, (-math.inf, 0))
        if now - last < self.interval:
            self._seen[msg] = (last, suppressed + 1)
            return
        if len(self._seen) > 64:  # messages can embed changing details; stay bounded
            self._seen.clear()
        self._seen[msg] = (now, 0)
        extra = f" ({suppressed} similar messages suppressed)" if suppressed else ""
        if "authorization" in msg.lower() or "authentication" in msg.lower():
            self.logger.error(
                "NATS %s refused the login: %s (check the URL userinfo, %s/%s or %s)%s",
                self.shown_url,
                msg,
                ENV_USER,
                ENV_PASSWORD,
                ENV_CREDS,
                extra,
            )
        else:
            self.logger.warning("NATS %s: %s%s", self.shown_url, msg, extra)


async def bounded_close(coro: Coroutine[Any, Any, Any], seconds: float) -> None:
    """Run a NATS client's ``close()`` for at most ``seconds``, and never wait on a
    cancellation: nats-py can swallow one inside its connect retries, and a stop must not hang."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
    elif not task.cancelled():
        task.exception()  # retrieved: closing a client that never connected may fail, harmlessly
