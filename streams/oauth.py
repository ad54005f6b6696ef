"""The gateway's FHIR endpoints as an OAuth2 resource server (SMART Backend Services).

A backend client (an interface engine, a monitor hub) gets an access token from the
hospital's authorisation server with the client-credentials grant and sends it as
``Authorization: Bearer <JWT>``. :class:`TokenVerifier` checks it with PyJWT: the
signature against the authorisation server's keys (a JWKS file, re-read when it
changes, for key rotation), ``iss``, ``aud``, ``exp`` (and ``nbf``/``iat`` when present),
then the SMART ``system/`` scopes for what the request writes.

Scopes: SMART v1 ``system/Observation.write``, ``system/*.write``, ``system/*.*`` and
SMART v2 ``system/Observation.cu`` style (``c`` for create, ``u`` for update).

Errors (both permanent for the request, never retried by the gateway): :class:`InvalidTokenError`
(answer 401) and :class:`InsufficientScopeError` (answer 403). A JWKS file that cannot be read
raises :class:`OAuthConfigError` at start-up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jwt

from .jwks import ALGORITHMS, LEEWAY_S, JwksFile, JwksFileError, UnknownKeyError


class OAuthConfigError(ValueError):
    """The resource-server settings cannot be used (no issuer, unreadable JWKS)."""


class InvalidTokenError(Exception):
    """No, or an unusable, access token: 401. ``reason`` is safe to return and log (it
    never quotes the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InsufficientScopeError(Exception):
    """A valid token whose scopes do not cover the request: 403."""

    def __init__(self, needed: str) -> None:
        super().__init__(f"the access token lacks scope {needed}")
        self.needed = needed


def scope_allows(scopes: Iterable[str], resource_type: str, action: str) -> bool:
    """Whether SMART ``system/`` scopes allow ``action`` ("c" create, "u" update) on
    ``resource_type``."""
    for scope in scopes:
        context, _, rest = scope.partition("/")
        rtype, _, perms = rest.partition(".")
        if context != "system" or rtype not in (resource_type, "*"):
            continue
        if perms in ("write", "*"):  # SMART v1
            return True
        perms = perms.split("?", 1)[0]  # SMART v2 may narrow with a query; we allow it
        if perms and set(perms) <= set("cruds") and action in perms:
            return True
    return False


class TokenVerifier:
    """Verifies bearer access tokens for one audience from one issuer (thread-safe)."""

    def __init__(self, jwks_path: Path, issuer: str, audience: str) -> None:
        """Raises OAuthConfigError (not retried) without an issuer or audience, or when
        the JWKS file cannot be read."""
        if not issuer or not audience:
            raise OAuthConfigError(
                "WARDWATCH_GATEWAY_OAUTH_JWKS_PATH needs WARDWATCH_GATEWAY_OAUTH_ISSUER and "
                "WARDWATCH_GATEWAY_OAUTH_AUDIENCE"
            )
        self.issuer, self.audience = issuer, audience
        try:
            self._keys = JwksFile(jwks_path)
        except JwksFileError as exc:
            raise OAuthConfigError(str(exc)) from None

    def verify(self, authorization: str | None) -> Mapping[str, Any]:
        """The claims of the bearer token in an ``Authorization`` header value.

        Raises InvalidTokenError (401, not retried) when there is no bearer token or it is
        not signed by a known key, for another issuer or audience, or expired.
        """
        if not authorization:
            raise InvalidTokenError("an OAuth2 bearer access token is required")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidTokenError("the Authorization header must be 'Bearer <access token>'")
        token = token.strip()
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            try:
                key = self._keys.key_for(kid if isinstance(kid, str) else None)
            except UnknownKeyError as exc:
                raise InvalidTokenError(exc.reason) from None
            return jwt.decode(
                token,
                key=key,
                algorithms=list(ALGORITHMS),
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidTokenError("the access token has expired") from None
        except jwt.InvalidAudienceError:
            raise InvalidTokenError("the access token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidTokenError("the access token is from another issuer") from None
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(f"invalid access token ({type(exc).__name__})") from None

    @staticmethod
    def require(claims: Mapping[str, Any], resource_type: str, action: str) -> None:
        """Raises InsufficientScopeError (403, not retried) unless the token's ``scope``
        claim allows ``action`` ("c"/"u") on ``resource_type``."""
        raw = claims.get("scope", "")
        scopes = raw.split() if isinstance(raw, str) else []
        if not scope_allows(scopes, resource_type, action):
            raise InsufficientScopeError(f"system/{resource_type}.write")


__all__ = [
    "InsufficientScopeError",
    "InvalidTokenError",
    "OAuthConfigError",
    "TokenVerifier",
    "scope_allows",
]
