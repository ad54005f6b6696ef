"""Envelope encryption of dead-letter payloads: no readable patient data at rest in the DLQ.

A dead letter keeps the refused message's original bytes so that an operator can fix the
cause and re-drive it; before the edge those bytes still carry names, MRNs and addresses.
:meth:`KeyRing.seal` encrypts them with AES-256-GCM (``cryptography``'s ``AESGCM``) under the
current dead-letter key and returns the headers that say how (``wardwatch.sealed`` = the
scheme, ``wardwatch.key_id``, ``wardwatch.nonce``); :meth:`KeyRing.open` decrypts with
whichever configured key the header names, so keys can be rotated while old dead letters
stay readable (``WARDWATCH_DEAD_LETTER_OLD_KEYS``).

The associated data binds a ciphertext to its place: the dead-letter topic, the stage that
refused it and the record key. A ciphertext copied under another key, stage or topic fails
to decrypt instead of being re-driven as something it is not.

Without ``WARDWATCH_DEAD_LETTER_KEY`` a development key is derived from a public string
(id ``dev``): only ``WARDWATCH_DEV_MODE=1`` allows that (:func:`streams.deploy_checks`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import dlq_headers
from .settings import Settings

SCHEME: Final = "aesgcm-v1"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16  # AES-GCM appends a 128-bit tag to the ciphertext
DEV_KEY_ID: Final = "dev"
# Public on purpose: a development machine's dead letters are readable by anyone with the
# repository, which is why nothing starts on this key outside development mode.
DEV_KEY: Final = hashlib.sha256(b"wardwatch-public-development-dead-letter-key").digest()

H_SEALED: Final = "wardwatch.sealed"
H_KEY_ID: Final = "wardwatch.key_id"
H_NONCE: Final = "wardwatch.nonce"


class DeadLetterKeyError(ValueError):
    """A dead-letter key setting cannot be used (permanent: fix the settings). The message
    names the setting, never the key."""


class SealError(ValueError):
    """A sealed dead letter cannot be opened: unknown key id, unknown scheme, or the
    ciphertext, nonce or associated data do not match (wrong key, or a moved or altered
    record). Permanent: retrying does not help."""


def parse_key(text: str, what: str) -> bytes:
    """A 32-byte key from base64 (standard or URL-safe) or hex text.

    Raises DeadLetterKeyError (permanent) if it is neither or not 32 bytes long."""
    text = text.strip()
    candidates: list[bytes] = []
    if len(text) == 2 * KEY_BYTES:
        with contextlib.suppress(ValueError):
            candidates.append(bytes.fromhex(text))
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        with contextlib.suppress(binascii.Error, ValueError):
            candidates.append(decode(text + "=" * (-len(text) % 4)))
    for c in candidates:
        if len(c) == KEY_BYTES:
            return c
    raise DeadLetterKeyError(
        f"{what} must be {KEY_BYTES} random bytes, base64 or hex (e.g. `openssl rand -base64 32`)"
    )


def associated_data(topic: str, stage: str, key: bytes | None) -> bytes:
    """What a ciphertext is bound to (unambiguous JSON, not a joined string)."""
    return orjson.dumps([SCHEME, topic, stage, (key or b"").hex()])


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The current dead-letter key (encrypts) and the retired ones (decrypt only)."""

    current_id: str
    keys: Mapping[str, bytes]

    @property
    def is_development(self) -> bool:
        return self.current_id == DEV_KEY_ID

    def seal(
        self, plaintext: bytes, *, topic: str, stage: str, key: bytes | None
    ) -> tuple[bytes, list[tuple[str, bytes]]]:
        """``(ciphertext, headers)`` of ``plaintext`` for a dead letter on ``topic`` from
        ``stage`` under record key ``key``. A fresh random 96-bit nonce each time. Never
        raises for valid inputs."""
        nonce = os.urandom(NONCE_BYTES)
        aad = associated_data(topic, stage, key)
        ct = AESGCM(self.keys[self.current_id]).encrypt(nonce, plaintext, aad)
        return ct, [
            (H_SEALED, SCHEME.encode()),
            (H_KEY_ID, self.current_id.encode()),
            (H_NONCE, base64.b64encode(nonce)),
        ]

    def open(
        self, ciphertext: bytes, headers: Mapping[str, str], *, topic: str, key: bytes | None
    ) -> bytes:
        """The original bytes of a sealed dead letter (headers as ``str``, as
        :class:`streams.dlq.DeadLetter` keeps them; ``wardwatch.stage`` is part of the
        associated data). Raises SealError (permanent) if it cannot be opened."""
        scheme = headers.get(H_SEALED)
        if scheme != SCHEME:
            raise SealError(f"unknown dead-letter scheme {scheme!r} (this version reads {SCHEME})")
        kid = headers.get(H_KEY_ID, "")
        secret = self.keys.get(kid)
        if secret is None:
            raise SealError(
                f"dead letter sealed with key id {kid!r}, which is neither "
                "WARDWATCH_DEAD_LETTER_KEY_ID nor in WARDWATCH_DEAD_LETTER_OLD_KEYS"
            )
        try:
            nonce = base64.b64decode(headers.get(H_NONCE, ""), validate=True)
        except (binascii.Error, ValueError):
            raise SealError("dead letter's nonce header is not base64") from None
        if len(nonce) != NONCE_BYTES:
            raise SealError("dead letter's nonce header is not 12 bytes")
        aad = associated_data(topic, headers.get(dlq_headers.STAGE, ""), key)
        try:
            return AESGCM(secret).decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise SealError(
                f"dead letter does not decrypt with key {kid!r}: wrong key, or the record "
                "was altered or moved (its topic, stage and key are bound to it)"
            ) from None


def key_ring(settings: Settings) -> KeyRing:
    """The key ring of ``settings``: ``dead_letter_key`` under ``dead_letter_key_id`` plus
    ``dead_letter_old_keys``; without a key, the public development key (id ``dev``, only
    in development mode). Raises DeadLetterKeyError (permanent) for a malformed or missing
    key outside development mode, or an old key id that clashes with the current one."""
    keys: dict[str, bytes] = {DEV_KEY_ID: DEV_KEY} if settings.dev_mode else {}
    old = settings.dead_letter_old_keys
    for item in _pairs(old.get_secret_value() if old else ""):
        kid, sep, text = item.partition(":")
        kid = kid.strip()
        if not sep or not kid:
            raise DeadLetterKeyError(
                "WARDWATCH_DEAD_LETTER_OLD_KEYS must be comma-separated <key id>:<key> pairs"
            )
        keys[kid] = parse_key(text, f"WARDWATCH_DEAD_LETTER_OLD_KEYS key {kid!r}")
    current = settings.dead_letter_key
    if current is None:
        if not settings.dev_mode:
            raise DeadLetterKeyError(
                "WARDWATCH_DEAD_LETTER_KEY is not set: dead letters would hold patient data "
                "in the clear (WARDWATCH_DEV_MODE=1 uses a public development key)"
            )
        return KeyRing(DEV_KEY_ID, keys)
    kid = settings.dead_letter_key_id
    if kid == DEV_KEY_ID:
        raise DeadLetterKeyError(f"WARDWATCH_DEAD_LETTER_KEY_ID {DEV_KEY_ID!r} is reserved")
    secret = parse_key(current.get_secret_value(), "WARDWATCH_DEAD_LETTER_KEY")
    if kid in keys and keys[kid] != secret:
        raise DeadLetterKeyError(
            f"key id {kid!r} is both WARDWATCH_DEAD_LETTER_KEY_ID and, with another key, in "
            "WARDWATCH_DEAD_LETTER_OLD_KEYS: give each key its own id"
        )
    keys[kid] = secret
    return KeyRing(kid, keys)


def _pairs(text: str) -> Sequence[str]:
    return [p for p in (x.strip() for x in text.split(",")) if p]


__all__ = [
    "DEV_KEY_ID",
    "H_KEY_ID",
    "H_NONCE",
    "H_SEALED",
    "SCHEME",
    "TAG_BYTES",
    "DeadLetterKeyError",
    "KeyRing",
    "SealError",
    "associated_data",
    "key_ring",
    "parse_key",
]
