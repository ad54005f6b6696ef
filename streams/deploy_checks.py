"""Settings no hospital may run on: refused at start-up outside development mode.

The pseudonym key's default is a public string, so anyone could recompute the pseudonym
of any MRN from it; a short key can be searched. The local PostgreSQL's credentials
(``wardwatch``/``wardwatch``) are in this repository. Every component that pseudonymises
(gateway, replay) or holds the database (worker, writer, API) calls :func:`require_safe`
first; those that write or read dead letters (gateway, worker, ``dlq``) also need a
dead-letter key (``WARDWATCH_DEAD_LETTER_KEY``: without it dead letters would be sealed
with a public development key); only ``WARDWATCH_DEV_MODE=1`` (set by the Makefile's
local targets and by the demo) lets them start anyway, with a warning. A gateway or API
listening beyond loopback without TLS (and, for the gateway, without sender
authentication) is refused the same way.

Raises :class:`UnsafeSettingsError` (a ``ValueError``, permanent: fix the settings).
"""

from __future__ import annotations

import logging
from typing import Final

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .sealing import DeadLetterKeyError, key_ring
from .settings import DEFAULT_PSEUDONYM_KEY, Settings
from .tls import is_loopback

log = logging.getLogger("wardwatch.deploy")

# 256 bits, as HMAC-SHA256's output: a key shorter than that is the weaker part.
MIN_KEY_BYTES: Final = 32
# Passwords anyone can read: the local stack's, the compose example's and the usual ones.
PUBLIC_PASSWORDS: Final = frozenset({"wardwatch", "postgres", "password", "changeme", "secret"})


class UnsafeSettingsError(ValueError):
    """A component was asked to start on settings that are not safe outside development."""


def key_problems(settings: Settings) -> list[str]:
    """What is wrong with the pseudonym key (empty: nothing). Never quotes the key."""
    key = settings.pseudonym_key.get_secret_value()
    if key == DEFAULT_PSEUDONYM_KEY:
        return ["WARDWATCH_PSEUDONYM_KEY is the public default: anyone could recompute pseudonyms"]
    if len(key.encode()) < MIN_KEY_BYTES:
        return [
            f"WARDWATCH_PSEUDONYM_KEY is {len(key.encode())} bytes; use at least "
            f"{MIN_KEY_BYTES} random bytes (e.g. `openssl rand -base64 48`)"
        ]
    return []


def database_problems(settings: Settings) -> list[str]:
    """What is wrong with the database credentials (empty: nothing). Never quotes them."""
    try:
        url = make_url(settings.database_url)
    except ArgumentError:
        return ["WARDWATCH_DATABASE_URL is not a SQLAlchemy URL"]
    if url.get_backend_name() == "sqlite" or url.password is None:
        return []  # a file, or a server that authenticates otherwise (certificate, peer)
    password = str(url.password)
    if password.lower() in PUBLIC_PASSWORDS or password == url.username:
        return ["WARDWATCH_DATABASE_URL uses a default or public database password"]
    return []


def listener_problems(settings: Settings, component: str) -> list[str]:
    """What is wrong with the listeners of the ``gateway`` or the ``api`` (empty: nothing;
    other components have none): bound beyond loopback, each must use TLS, and the
    gateway must authenticate its senders (client certificates for MLLP, bearer tokens
    for FHIR), as anyone on the network could otherwise read or inject patient data."""
    if component == "gateway" and not is_loopback(settings.gateway_host):
        where = f"WARDWATCH_GATEWAY_HOST={settings.gateway_host} is not a loopback address"
        if settings.gateway_tls_cert is None:
            return [f"{where} and the gateway has no TLS (set WARDWATCH_GATEWAY_TLS_CERT/_KEY)"]
        problems = []
        if settings.gateway_tls_client_ca is None:
            problems.append(
                f"{where} and MLLP senders are not authenticated "
                "(set WARDWATCH_GATEWAY_TLS_CLIENT_CA)"
            )
        if settings.gateway_oauth_jwks_path is None:
            problems.append(
                f"{where} and FHIR clients are not authenticated "
                "(set WARDWATCH_GATEWAY_OAUTH_JWKS_PATH)"
            )
        return problems
    if component == "api" and not is_loopback(settings.api_host) and settings.api_tls_cert is None:
        return [
            f"WARDWATCH_API_HOST={settings.api_host} is not a loopback address and the "
            "API has no TLS (set WARDWATCH_API_TLS_CERT/_KEY)"
        ]
    return []


def dead_letter_key_problems(settings: Settings) -> list[str]:
    """What is wrong with the dead-letter key settings (empty: nothing). Never quotes a
    key. Unset means dead letters would be sealed with the public development key."""
    if settings.dead_letter_key is None:
        return [
            "WARDWATCH_DEAD_LETTER_KEY is not set: dead letters would be encrypted with a "
            "public development key (set 32 random bytes, e.g. `openssl rand -base64 32`)"
        ]
    try:
        key_ring(settings)
    except DeadLetterKeyError as exc:
        return [str(exc)]
    return []


def require_safe(
    settings: Settings, component: str, *, database: bool = True, dead_letters: bool = False
) -> None:
    """Refuse to start ``component`` on an unsafe pseudonym key, (``database``) database
    password, (gateway, api) listener or (``dead_letters``: it writes or reads dead letters)
    dead-letter key, unless ``settings.dev_mode``; in development mode log a warning
    instead (a malformed dead-letter key is refused even then). Raises
    :class:`UnsafeSettingsError` listing every problem."""
    problems = key_problems(settings)
    if database:
        problems += database_problems(settings)
    problems += listener_problems(settings, component)
    if dead_letters:
        dl = dead_letter_key_problems(settings)
        if dl and settings.dead_letter_key is not None:
            # a key that is set but unusable fails at the first dead letter: refuse now,
            # development mode or not
            raise UnsafeSettingsError(f"{component} refuses to start: " + "; ".join(dl))
        problems += dl
    if not problems:
        return
    if settings.dev_mode:
        log.warning("%s: development mode, starting anyway: %s", component, "; ".join(problems))
        return
    raise UnsafeSettingsError(
        f"{component} refuses to start: "
        + "; ".join(problems)
        + " (WARDWATCH_DEV_MODE=1 allows this on a development machine only)"
    )
