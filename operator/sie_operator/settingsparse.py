"""Checks shared by the gateway's and the worker's settings (flags over environment over
defaults): each bad value is a one-line ``ConfigError``, turned into a usage error by the
command, never a crash later.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

from sie_operator import natsconn
from sie_operator.natsconn import NatsAuth

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class ConfigError(ValueError):
    """A configuration value the user must fix; ``str(exc)`` is one line."""


def env_bool(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={env[name]!r} is not a boolean (true/false)")


def parse_number(value: object, name: str, *, integer: bool = False, minimum: float = 0.0) -> float:
    try:
        n = int(str(value)) if integer else float(str(value))
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a {'whole ' if integer else ''}number") from None
    if n < minimum or n != n:
        raise ConfigError(f"{name}={value!r} must be at least {minimum:g}")
    return n


def check_http_url(url: str, name: str) -> str:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ConfigError(f"{name}={natsconn.redact_url(url)!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={natsconn.redact_url(url)!r} is not an http(s):// URL")
    return url.rstrip("/")


def check_http_urls(value: str, name: str) -> str:
    """A comma-separated list of http(s) base URLs (config service replicas), normalised to
    ``"a,b"``; one URL comes back exactly as :func:`check_http_url` returns it."""
    items = [item.strip() for item in value.split(",")]
    if any(not item for item in items):
        raise ConfigError(f"{name}={natsconn.redact_url(value)!r} has an empty entry in its comma list")
    urls = [check_http_url(item, name) for item in items]
    if len(set(urls)) != len(urls):
        raise ConfigError(f"{name}={natsconn.redact_url(value)!r} lists a URL twice")
    return ",".join(urls)


def check_nats(url: str, auth: NatsAuth) -> tuple[str, NatsAuth]:
    """The shared NATS option checks (natsconn), as a one-line ConfigError."""
    if not url.startswith(tuple(f"{s}://" for s in natsconn.SCHEMES)):
        raise ConfigError(f"SIE_NATS_URL={natsconn.redact_url(url)!r} is not a nats:// URL")
    try:
        natsconn.connect_options(url, auth)
    except natsconn.NatsConfigError as exc:
        raise ConfigError(f"SIE_NATS_URL: {exc}") from None
    return url, auth


def default_instance_id(env: Mapping[str, str]) -> str:
    return env.get("POD_NAME") or env.get("HOSTNAME") or socket.gethostname()
