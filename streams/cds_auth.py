"""Trusting CDS Clients (CDS Hooks 2.0): verify the EHR's signed JWT.

The EHR sends ``Authorization: Bearer <JWT>``, signed with one of its private keys; the
keys' public halves come from ``WARDWATCH_CDS_JWKS`` (a JWKS file, re-read when it
changes, or an https URL fetched and cached by PyJWT's ``PyJWKClient``). A ``jku`` header
is *not* followed: fetching a URL the caller names would let any caller supply its own
keys (and reach internal hosts). Checked: an asymmetric algorithm, the signature, ``iss``
in ``WARDWATCH_CDS_ISSUERS``, ``aud`` = the service endpoint called, ``exp`` (at most
:data:`MAX_LIFETIME_S` ahead, as the spec asks of EHRs), ``iat``, and a ``jti`` not seen
before from that issuer.

Replay protection is an in-memory set of (iss, jti) kept until the token's ``exp``: one
API process remembers what it has seen; several API replicas behind a balancer each keep
their own set, so a replay to another replica inside the token's (short) lifetime is not
caught.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt

from .jwks import ALGORITHMS, LEEWAY_S, JwksFile, UnknownKeyError

MAX_LIFETIME_S = 300  # the spec: exp SHALL be no more than 5 minutes in the future


class CdsAuthError(Exception):
    """The CDS client's token is missing or not trusted (answer 401). ``reason`` says why
    (never the token itself)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CdsTokenVerifier:
    """Verifies CDS clients' JWTs against one JWKS and an issuer allow-list."""

    def __init__(self, jwks: str, issuers: Sequence[str]) -> None:
        """``jwks``: a file path or an ``https://`` URL. Raises ValueError when no issuer
        is allowed or the URL is plain http, or (as JwksFileError) for an unreadable or
        malformed file."""
        if not issuers:
            raise ValueError("WARDWATCH_CDS_ISSUERS is empty: no CDS client could be trusted")
        self.issuers = list(issuers)
        self._url_client: jwt.PyJWKClient | None = None
        self._file: JwksFile | None = None
        if jwks.startswith("https://"):
            self._url_client = jwt.PyJWKClient(jwks, cache_keys=True, lifespan=300)
        elif jwks.startswith("http://"):
            raise ValueError("WARDWATCH_CDS_JWKS: fetch keys over https only")
        else:
            self._file = JwksFile(Path(jwks))
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def _key(self, token: str, kid: str | None) -> Any:
        if self._url_client is not None:
            try:
                return self._url_client.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientError as e:
                raise CdsAuthError(f"no signing key: {e}") from e
        assert self._file is not None
        try:
            return self._file.key_for(kid).key
        except UnknownKeyError as e:
            raise CdsAuthError(e.reason) from None

    def verify(self, token: str | None, audience: Sequence[str]) -> dict[str, Any]:
        """The claims of a trusted ``token`` whose ``aud`` is one of ``audience``.

        Raises :class:`CdsAuthError` for a missing, malformed, forged, expired,
        too-long-lived, wrong-issuer, wrong-audience or replayed token."""
        if not token:
            raise CdsAuthError("a bearer JWT from the CDS client is required")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as e:
            raise CdsAuthError(f"malformed token: {e}") from e
        if header.get("alg") not in ALGORITHMS:
            raise CdsAuthError(f"algorithm {header.get('alg')!r} is not accepted")
        kid = header.get("kid")
        key = self._key(token, kid if isinstance(kid, str) else None)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=list(audience),
                issuer=self.issuers,
                leeway=LEEWAY_S,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.InvalidTokenError as e:
            raise CdsAuthError(f"token rejected: {e}") from e
        now = time.time()
        exp = float(claims["exp"])
        if exp > now + MAX_LIFETIME_S + LEEWAY_S:
            raise CdsAuthError(f"token lives too long (exp more than {MAX_LIFETIME_S} s ahead)")
        self._remember(str(claims["iss"]), str(claims["jti"]), exp, now)
        return claims

    def _remember(self, iss: str, jti: str, exp: float, now: float) -> None:
        with self._lock:
            # Forget tokens past their expiry: they fail the exp check anyway.
            for k in [k for k, e in self._seen.items() if e + LEEWAY_S < now]:
                del self._seen[k]
            if (iss, jti) in self._seen:
                raise CdsAuthError("token replayed (jti already used)")
            self._seen[(iss, jti)] = exp
