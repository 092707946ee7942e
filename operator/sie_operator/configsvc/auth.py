"""Bearer-token checks with the SIE config service's rules and messages, plus an export class.

Three token classes:

- read (``SIE_AUTH_TOKEN``): the read endpoints;
- export (``SIE_EXPORT_TOKEN``, ours): the read endpoints and ``/export``, never a write.
  It is what gateways and workers need to bootstrap, so they no longer have to hold the
  admin token; a SIE gateway given it as its ``SIE_ADMIN_TOKEN`` bootstraps unchanged;
- admin (``SIE_ADMIN_TOKEN``): everything, including writes.

Tokens are compared as bytes in constant time, so odd header bytes (non-ASCII,
undecodable, huge) are simply a wrong token: 401 or 403, never the 500 SIE answers.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

MISSING = "Missing Authorization header"
INVALID = "Invalid token"
INFERENCE_NOT_ENOUGH = "Write operations require SIE_ADMIN_TOKEN (inference token is not sufficient)."
ADMIN_REQUIRED = "Admin token required for config mutations"
EXPORT_REQUIRED = "Admin or export token required for export"


@dataclass(frozen=True)
class AuthFailure:
    status: int
    detail: str


def token_of(header: str | None) -> bytes | None:
    """SIE's parsing: drop a literal ``Bearer `` prefix if present, then trim whitespace.

    aiohttp hands undecodable header bytes over as surrogate escapes; they are kept as the
    original bytes, so no header value can make the comparison raise.
    """
    if header is None:
        return None
    value = header.removeprefix("Bearer ").strip()
    if not value:
        return None
    return value.encode("utf-8", "surrogateescape")


def _same(a: bytes, b: str) -> bool:
    return hmac.compare_digest(a, b.encode("utf-8", "surrogateescape"))


@dataclass(frozen=True)
class Authenticator:
    """``auth_token`` is SIE_AUTH_TOKEN, ``admin_token`` SIE_ADMIN_TOKEN, ``export_token``
    SIE_EXPORT_TOKEN; None means unset.

    An empty string counts as *set* (SIE's behaviour, which fails closed): an empty
    SIE_AUTH_TOKEN locks reads, an empty SIE_ADMIN_TOKEN locks writes. An empty token
    never matches anything.
    """

    auth_token: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)
    export_token: str | None = field(default=None, repr=False)

    def _matches(self, token: bytes, *candidates: str | None) -> bool:
        # every candidate is compared (no early exit), so timing does not say which class matched
        hits = [bool(c) and _same(token, c) for c in candidates if c is not None]
        return any(hits)

    def check_read(self, header: str | None) -> AuthFailure | None:
        if self.auth_token is None and self.admin_token is None and self.export_token is None:
            return None
        token = token_of(header)
        if token is None:
            return AuthFailure(401, MISSING)
        if self._matches(token, self.auth_token, self.export_token, self.admin_token):
            return None
        return AuthFailure(403, INVALID)

    def check_write(self, header: str | None) -> AuthFailure | None:
        if self.admin_token is None:
            # SIE: writes are open only when no token at all is configured. A read or
            # export token without an admin token locks writes (fail closed).
            if self.auth_token or self.export_token:
                return AuthFailure(403, INFERENCE_NOT_ENOUGH)
            return None
        token = token_of(header)
        if token is None:
            return AuthFailure(401, MISSING)
        if self._matches(token, self.admin_token):
            return None
        return AuthFailure(403, ADMIN_REQUIRED)

    def check_export(self, header: str | None) -> AuthFailure | None:
        """``/export``: the admin or the export token (SIE: write auth)."""
        if self.export_token is None:
            return self.check_write(header)
        token = token_of(header)
        if token is None:
            return AuthFailure(401, MISSING)
        if self._matches(token, self.export_token, self.admin_token):
            return None
        return AuthFailure(403, EXPORT_REQUIRED)
