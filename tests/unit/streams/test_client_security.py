"""TLS / SASL options of the Kafka, PostgreSQL and Triton clients (streams.client_security)."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import faust
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from storage.db import make_engine
from streams.client_security import (
    database_connect_args,
    faust_credentials,
    kafka_config,
    triton_tls,
)
from streams.settings import Settings


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and its key (PEM files), usable as CA and client cert."""
    folder = tmp_path_factory.mktemp("pki")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wardwatch-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def settings(**kw: Any) -> Settings:
    return Settings(kafka_bootstrap="broker:9093", **kw)


# ------------------------------------------------------------------ Kafka (confluent)
def test_plaintext_is_todays_config() -> None:
    assert kafka_config(settings()) == {
        "bootstrap.servers": "broker:9093",
        "security.protocol": "plaintext",
    }
    assert faust_credentials(settings()) is None
    extra = kafka_config(settings(), **{"group.id": "g", "bootstrap.servers": "other:1"})
    assert extra["group.id"] == "g" and extra["bootstrap.servers"] == "other:1"


def test_ssl_with_client_certificate(pem: tuple[Path, Path]) -> None:
    cert, key = pem
    s = settings(
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=cert,
        kafka_ssl_cert_file=cert,
        kafka_ssl_key_file=key,
    )
    assert kafka_config(s) == {
        "bootstrap.servers": "broker:9093",
        "security.protocol": "ssl",
        "ssl.ca.location": str(cert),
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
    }
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SSLCredentials)
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SSL"
    ctx = auth["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert any(c["subject"] == ((("commonName", "wardwatch-test"),),) for c in ctx.get_ca_certs())


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl(mechanism: str, pem: tuple[Path, Path]) -> None:
    s = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_ca_file=pem[0],
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="ww",
        kafka_sasl_password="s3cret",
    )
    assert kafka_config(s) == {
        "bootstrap.servers": "broker:9093",
        "security.protocol": "sasl_ssl",
        "ssl.ca.location": str(pem[0]),
        "sasl.mechanism": mechanism,
        "sasl.username": "ww",
        "sasl.password": "s3cret",
    }
    auth = credentials_to_aiokafka_auth(faust_credentials(s))
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == mechanism
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("ww", "s3cret")
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    assert "s3cret" not in repr(s)  # a SecretStr: not in logs of the settings


def test_sasl_plaintext() -> None:
    s = settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="ww",
        kafka_sasl_password="pw",
    )
    conf = kafka_config(s)
    assert conf["security.protocol"] == "sasl_plaintext" and "ssl.ca.location" not in conf
    assert conf["sasl.mechanism"] == "SCRAM-SHA-256"
    auth = credentials_to_aiokafka_auth(faust_credentials(s))
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["ssl_context"] is None


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u"}, "PASSWORD"),
        ({"kafka_ssl_ca_file": Path("/ca.pem")}, "SECURITY_PROTOCOL is PLAINTEXT"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_cert_file": Path("/c.pem")},
            "needs its key",
        ),
    ],
)
def test_half_configured_kafka_is_refused(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        kafka_config(settings(**kw))
    with pytest.raises(ValueError, match=match):
        faust_credentials(settings(**kw))


def test_every_kafka_client_uses_the_builder() -> None:
    """No module builds a confluent-kafka config of its own (it would miss TLS/SASL)."""
    root = Path(__file__).resolve().parents[3] / "streams"
    offenders = [
        p.name
        for p in root.glob("*.py")
        if '"bootstrap.servers"' in p.read_text() and p.name != "client_security.py"
    ]
    assert offenders == []


# ------------------------------------------------------------------ PostgreSQL
def test_database_connect_args(pem: tuple[Path, Path]) -> None:
    assert database_connect_args(Settings()) == {}
    s = Settings(
        database_sslmode="verify-full",
        database_sslrootcert=pem[0],
        database_sslcert=pem[0],
        database_sslkey=pem[1],
    )
    assert database_connect_args(s) == {
        "sslmode": "verify-full",
        "sslrootcert": str(pem[0]),
        "sslcert": str(pem[0]),
        "sslkey": str(pem[1]),
    }
    with pytest.raises(ValueError, match="needs its key"):
        database_connect_args(Settings(database_sslcert=pem[0]))


def test_tls_options_for_sqlite_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SQLite"):
        make_engine(f"sqlite:///{tmp_path / 'x.db'}", connect_args={"sslmode": "require"})


# ------------------------------------------------------------------ Triton
def test_triton_tls(pem: tuple[Path, Path]) -> None:
    assert triton_tls(Settings()) == {}
    s = Settings(
        triton_ssl=True,
        triton_ssl_ca_file=pem[0],
        triton_ssl_cert_file=pem[0],
        triton_ssl_key_file=pem[1],
    )
    assert triton_tls(s) == {
        "ssl": True,
        "root_certificates": str(pem[0]),
        "private_key": str(pem[1]),
        "certificate_chain": str(pem[0]),
    }
    assert triton_tls(Settings(triton_ssl=True)) == {
        "ssl": True,
        "root_certificates": None,
        "private_key": None,
        "certificate_chain": None,
    }
    with pytest.raises(ValueError, match="WARDWATCH_TRITON_SSL is false"):
        triton_tls(Settings(triton_ssl_ca_file=pem[0]))


def test_triton_client_takes_the_tls_files(pem: tuple[Path, Path], tmp_path: Path) -> None:
    """The TLS options reach tritonclient: it reads the files when the channel is made."""
    import asyncio

    from inference.client import TritonRiskClient

    async def make(**kw: Any) -> None:
        client = TritonRiskClient("127.0.0.1:1", **kw)
        try:
            client._get()
        finally:
            await client.close()

    asyncio.run(make(**triton_tls(Settings(triton_ssl=True, triton_ssl_ca_file=pem[0]))))
    missing = tmp_path / "no-ca.pem"
    with pytest.raises(FileNotFoundError):
        asyncio.run(make(**triton_tls(Settings(triton_ssl=True, triton_ssl_ca_file=missing))))
    asyncio.run(make(root_certificates=str(missing)))  # without ssl the files are not read
