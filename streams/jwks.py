"""A JSON Web Key Set file, re-read when it changes (key rotation without a restart).

Shared by the gateway's OAuth2 resource server (``streams.oauth``) and the CDS Hooks
client check (``streams.cds_auth``).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import jwt

log = logging.getLogger(__name__)
# Asymmetric algorithms only: SMART requires RS384 and ES384, and a shared-secret (HS*)
# or "none" token could be forged by anyone who can read the public keys.
ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512")
# Clock difference tolerated between the token's issuer and us.
LEEWAY_S = 30


class JwksFileError(ValueError):
    """The key set file cannot be read or is not a JWKS (configuration; not retried)."""


class UnknownKeyError(LookupError):
    """No key of the set signs the token: its ``kid`` is unknown, or it names none while
    the set holds several keys. ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _load(path: Path) -> jwt.PyJWKSet:
    try:
        return jwt.PyJWKSet.from_json(path.read_text())
    except (OSError, ValueError, jwt.PyJWTError) as exc:
        raise JwksFileError(f"cannot read the JWKS {path}: {exc}") from None


class JwksFile:
    """The keys of one JWKS file (thread-safe)."""

    def __init__(self, path: Path) -> None:
        """Reads the file now, so a bad one fails at start-up. Raises JwksFileError."""
        self.path = path
        self._lock = threading.Lock()
        self._keys = _load(path)
        self._mtime = os.stat(path).st_mtime_ns

    def keys(self) -> jwt.PyJWKSet:
        """The current key set. Raises nothing: a rotated file that cannot be read keeps
        the last good keys (logged), so one bad copy does not lock every client out, and a
        restart would refuse it."""
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            return self._keys
        with self._lock:
            if mtime != self._mtime:
                self._mtime = mtime
                try:
                    self._keys = _load(self.path)
                except JwksFileError as exc:
                    log.error("keeping the previous token keys: %s", exc)
            return self._keys

    def key_for(self, kid: str | None) -> jwt.PyJWK:
        """The key named ``kid``, or the only key when the token names none. Raises
        UnknownKeyError (not retried)."""
        keys = self.keys()
        if kid is None:
            if len(keys.keys) == 1:
                return keys.keys[0]
            raise UnknownKeyError("the token names no signing key (kid)")
        try:
            return keys[kid]
        except KeyError:
            raise UnknownKeyError(f"the token's signing key (kid {kid!r}) is unknown") from None


__all__ = ["ALGORITHMS", "LEEWAY_S", "JwksFile", "JwksFileError", "UnknownKeyError"]
