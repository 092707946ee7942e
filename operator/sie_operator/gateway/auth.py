"""Gateway auth rules (contract §1.2), as a pure decision over (method, path, header).

Kept from SIE: auth only with ``SIE_AUTH_MODE`` token/static; ``/healthz`` and ``/readyz``
always open; ``SIE_AUTH_EXEMPT_OPERATIONAL`` opens ``/``, ``/health``, ``/metrics``, ``/ws/*``;
``Bearer`` prefix case-insensitive; constant-time comparison; writes under ``/v1/config``,
``/v1/admin``, ``/v1/pools`` need the admin token; error bodies ``{"message": ...}``.

Deliberate differences (W12): the admin token is also accepted for reads (SIE's own CI
example polls the gateway with it and gets 401 forever), ``POST /v1/configs/resolve`` is a
read (any valid token), and misconfiguration (unknown mode, auth on without tokens) is
refused at startup instead of failing open or answering 500 to every request.

The export token (``SIE_EXPORT_TOKEN``) is what a gateway sends to the config service
instead of the admin token; it is also accepted here for reads, never for admin routes.
Tokens are compared as bytes (undecodable header bytes arrive as surrogate escapes), so
no header, however malformed, can make a check raise: it is a wrong token, 401 or 403.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

ALWAYS_OPEN = frozenset({"/healthz", "/readyz"})
OPERATIONAL = frozenset({"/", "/health", "/metrics"})
ADMIN_PREFIXES = ("/v1/config", "/v1/admin", "/v1/pools")
WRITE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
READ_POSTS = frozenset({"/v1/configs/resolve"})
ENABLED_MODES = frozenset({"token", "static"})
DISABLED_MODES = frozenset({"", "none", "off", "disabled"})


class AuthConfigError(ValueError):
    pass


def parse_tokens(*csvs: str | None) -> tuple[str, ...]:
    """The first non-empty comma list wins (``SIE_AUTH_TOKENS`` before ``SIE_AUTH_TOKEN``)."""
    for csv in csvs:
        tokens = tuple(t.strip() for t in (csv or "").split(",") if t.strip())
        if tokens:
            return tokens
    return ()


def extract_token(header: str | None) -> str:
    value = (header or "").strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    return value


def _bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _eq(a: str, b: str) -> bool:
    return hmac.compare_digest(_bytes(a), _bytes(b))


@dataclass(frozen=True)
class AuthPolicy:
    enabled: bool = False
    tokens: tuple[str, ...] = field(default=(), repr=False)
    admin_token: str | None = field(default=None, repr=False)
    exempt_operational: bool = False
    export_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(
        cls,
        mode: str | None,
        tokens: tuple[str, ...],
        admin_token: str | None,
        exempt_operational: bool,
        export_token: str | None = None,
    ) -> AuthPolicy:
        m = (mode or "").strip().lower()
        if m not in ENABLED_MODES | DISABLED_MODES:
            raise AuthConfigError(f"SIE_AUTH_MODE={mode!r} is not one of none, token, static")
        enabled = m in ENABLED_MODES
        if enabled and not tokens and not admin_token and not export_token:
            raise AuthConfigError(
                f"SIE_AUTH_MODE={m} but none of SIE_AUTH_TOKEN(S), SIE_ADMIN_TOKEN, SIE_EXPORT_TOKEN is set"
            )
        return cls(enabled, tokens, admin_token or None, exempt_operational, export_token or None)

    def check(self, method: str, path: str, authorization: str | None) -> tuple[int, str] | None:
        """None if the request may proceed, else (status, message)."""
        if not self.enabled or path in ALWAYS_OPEN:
            return None
        if self.exempt_operational and (path in OPERATIONAL or path.startswith("/ws/")):
            return None
        token = extract_token(authorization)
        if not token:
            return 401, "Missing Authorization header"
        is_admin = self.admin_token is not None and _eq(token, self.admin_token)
        if method in WRITE_METHODS and path.startswith(ADMIN_PREFIXES) and path not in READ_POSTS:
            if self.admin_token is None:
                return 403, "Admin token not configured"
            return None if is_admin else (403, "Admin token required")
        readers = [*self.tokens, *([self.export_token] if self.export_token else [])]
        if is_admin or any([_eq(token, t) for t in readers]):
            return None
        return 401, "Invalid token"
