"""Bearer-token checks with the SIE config service's rules and messages.

Read endpoints accept the inference or the admin token; writes (and export) need the
admin token. Tokens are compared as bytes in constant time, so odd header bytes (non-ASCII,
undecodable) are simply a wrong token (SIE answers 500 there).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

MISSING = "Missing Authorization header"
INVALID = "Invalid token"
INFERENCE_NOT_ENOUGH = "Write operations require SIE_ADMIN_TOKEN (inference token is not sufficient)."
ADMIN_REQUIRED = "Admin token required for config mutations"


@dataclass(frozen=True)
class AuthFailure:
    status: int
    detail: str


def _token_of(header: str | None) -> bytes | None:
    """SIE's parsing: drop a literal ``Bearer `` prefix if present, then trim whitespace."""
    if header is None:
        return None
    value = header.removeprefix("Bearer ").strip()
    if not value:
        return None
    # aiohttp hands undecodable header bytes over as surrogate escapes; keep them as bytes.
    return value.encode("utf-8", "surrogateescape")


def _same(a: bytes, b: str) -> bool:
    return hmac.compare_digest(a, b.encode("utf-8"))


@dataclass(frozen=True)
class Authenticator:
    """``auth_token`` is SIE_AUTH_TOKEN, ``admin_token`` SIE_ADMIN_TOKEN; None means unset.

    An empty string counts as *set* (SIE's behaviour, which fails closed): an empty
    SIE_AUTH_TOKEN locks reads, an empty SIE_ADMIN_TOKEN locks writes.
    """

    auth_token: str | None = None
    admin_token: str | None = None

    def check_read(self, header: str | None) -> AuthFailure | None:
        if self.auth_token is None and self.admin_token is None:
            return None
        token = _token_of(header)
        if token is None:
            return AuthFailure(401, MISSING)
        for candidate in (self.auth_token, self.admin_token):
            if candidate and _same(token, candidate):
                return None
        return AuthFailure(403, INVALID)

    def check_write(self, header: str | None) -> AuthFailure | None:
        if self.admin_token is None:
            if self.auth_token:
                return AuthFailure(403, INFERENCE_NOT_ENOUGH)
            return None
        token = _token_of(header)
        if token is None:
            return AuthFailure(401, MISSING)
        if self.admin_token and _same(token, self.admin_token):
            return None
        return AuthFailure(403, ADMIN_REQUIRED)
