"""TLS and SASL options of WardWatch's clients of Kafka, PostgreSQL and Triton, from the
settings (``WARDWATCH_KAFKA_SECURITY_PROTOCOL``, ``WARDWATCH_DATABASE_SSLMODE``,
``WARDWATCH_TRITON_SSL``, ...; see docs/settings.md).

One builder per client kind, so every Kafka client (confluent-kafka producers, consumers
and admin clients; the Faust app) and every engine and Triton client gets the same options.
The lower layers take plain values: ``storage.db.make_engine(url, connect_args=...)``,
``inference.client.TritonRiskClient(..., ssl=..., root_certificates=...)``.

A half-configured setup is refused (``ValueError``, at start-up) rather than silently
talking plain text: certificate files for PLAINTEXT, SASL without a user name or password,
a client certificate without its key.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import faust
from faust.types.auth import CredentialsT

from .settings import Settings


def _pair(cert: Path | None, key: Path | None, what: str) -> None:
    if (cert is None) != (key is None):
        raise ValueError(f"{what}: a client certificate needs its key, and a key its certificate")


def _check_kafka(settings: Settings) -> None:
    s = settings
    protocol = s.kafka_security_protocol
    _pair(s.kafka_ssl_cert_file, s.kafka_ssl_key_file, "WARDWATCH_KAFKA_SSL_CERT_FILE/KEY_FILE")
    files = (s.kafka_ssl_ca_file, s.kafka_ssl_cert_file, s.kafka_ssl_key_file)
    if not protocol.endswith("SSL") and any(f is not None for f in files):
        raise ValueError(
            f"Kafka TLS files are set but WARDWATCH_KAFKA_SECURITY_PROTOCOL is {protocol}: "
            "set SSL or SASL_SSL (or unset the files)"
        )
    if protocol.startswith("SASL") and (
        s.kafka_sasl_username is None or s.kafka_sasl_password is None
    ):
        raise ValueError(
            f"WARDWATCH_KAFKA_SECURITY_PROTOCOL={protocol} needs WARDWATCH_KAFKA_SASL_USERNAME "
            "and WARDWATCH_KAFKA_SASL_PASSWORD"
        )


def kafka_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """A confluent-kafka (librdkafka) configuration: bootstrap servers, security protocol,
    TLS files and SASL credentials from ``settings``, then ``extra`` (for example
    ``**{"group.id": "g"}``) on top.

    Raises ValueError (configuration error, not retried) for a half-configured setup.
    """
    _check_kafka(settings)
    s = settings
    conf: dict[str, Any] = {
        "bootstrap.servers": s.kafka_bootstrap,
        "security.protocol": s.kafka_security_protocol.lower(),
    }
    if s.kafka_security_protocol.endswith("SSL"):
        if s.kafka_ssl_ca_file is not None:
            conf["ssl.ca.location"] = str(s.kafka_ssl_ca_file)
        if s.kafka_ssl_cert_file is not None and s.kafka_ssl_key_file is not None:
            conf["ssl.certificate.location"] = str(s.kafka_ssl_cert_file)
            conf["ssl.key.location"] = str(s.kafka_ssl_key_file)
    if s.kafka_security_protocol.startswith("SASL"):
        assert s.kafka_sasl_password is not None  # checked above
        conf["sasl.mechanism"] = s.kafka_sasl_mechanism
        conf["sasl.username"] = s.kafka_sasl_username
        conf["sasl.password"] = s.kafka_sasl_password.get_secret_value()
    conf.update(extra)
    return conf


def client_context(
    ca: Path | None, cert: Path | None, key: Path | None, what: str
) -> ssl.SSLContext:
    """A client TLS context that verifies the server (``ca``, else the system's CAs, and
    its host name) and presents ``cert``/``key`` when set. Raises ValueError for a
    certificate without its key (``what`` names the settings); OSError / ssl.SSLError
    (not retried) for unreadable files."""
    _pair(cert, key, what)
    ctx = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext:
    """A client TLS context that verifies the brokers (the CA file, else the system's
    CAs) and presents the client certificate when one is set. Raises ValueError for a
    half-configured setup; OSError / ssl.SSLError (not retried) for unreadable files."""
    _check_kafka(settings)
    s = settings
    return client_context(
        s.kafka_ssl_ca_file,
        s.kafka_ssl_cert_file,
        s.kafka_ssl_key_file,
        "WARDWATCH_KAFKA_SSL_CERT_FILE/KEY_FILE",
    )


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """The Faust app's ``broker_credentials`` (None for PLAINTEXT): ``SSLCredentials`` for
    SSL, ``SASLCredentials`` (with a TLS context for SASL_SSL) for SASL.

    Raises ValueError for a half-configured setup; OSError / ssl.SSLError (not retried)
    for unreadable certificate files.
    """
    _check_kafka(settings)
    s = settings
    protocol = s.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    ctx = kafka_ssl_context(settings) if protocol.endswith("SSL") else None
    if protocol == "SSL":
        assert ctx is not None
        return faust.SSLCredentials(ctx)
    assert s.kafka_sasl_password is not None  # checked above
    return faust.SASLCredentials(
        username=s.kafka_sasl_username,
        password=s.kafka_sasl_password.get_secret_value(),
        ssl_context=ctx,
        mechanism=s.kafka_sasl_mechanism,
    )


def database_connect_args(settings: Settings) -> dict[str, str]:
    """libpq TLS parameters (sslmode, sslrootcert, sslcert, sslkey) for
    ``storage.db.make_engine``; empty when none is set (the URL's or libpq's defaults).

    Raises ValueError for a client certificate without its key (or the reverse).
    """
    s = settings
    _pair(s.database_sslcert, s.database_sslkey, "WARDWATCH_DATABASE_SSLCERT/SSLKEY")
    args: dict[str, str] = {}
    if s.database_sslmode is not None:
        args["sslmode"] = s.database_sslmode
    for name, value in (
        ("sslrootcert", s.database_sslrootcert),
        ("sslcert", s.database_sslcert),
        ("sslkey", s.database_sslkey),
    ):
        if value is not None:
            args[name] = str(value)
    return args


def triton_tls(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``inference.client.TritonRiskClient`` for TLS to Triton:
    ``ssl`` and the PEM file paths (tritonclient reads them). Raises ValueError for files
    set without ``WARDWATCH_TRITON_SSL`` or a certificate without its key."""
    s = settings
    _pair(s.triton_ssl_cert_file, s.triton_ssl_key_file, "WARDWATCH_TRITON_SSL_CERT_FILE/KEY_FILE")
    files = (s.triton_ssl_ca_file, s.triton_ssl_cert_file, s.triton_ssl_key_file)
    if not s.triton_ssl:
        if any(f is not None for f in files):
            raise ValueError("Triton TLS files are set but WARDWATCH_TRITON_SSL is false")
        return {}
    return {
        "ssl": True,
        "root_certificates": None if s.triton_ssl_ca_file is None else str(s.triton_ssl_ca_file),
        "private_key": None if s.triton_ssl_key_file is None else str(s.triton_ssl_key_file),
        "certificate_chain": None
        if s.triton_ssl_cert_file is None
        else str(s.triton_ssl_cert_file),
    }


__all__ = [
    "database_connect_args",
    "faust_credentials",
    "kafka_config",
    "kafka_ssl_context",
    "triton_tls",
]
