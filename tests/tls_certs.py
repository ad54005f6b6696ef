"""Test PKI and OAuth2 keys made with ``cryptography``: a CA, a server certificate for
127.0.0.1/localhost, client certificates (trusted, another CA's, another name) and an
EC signing key with its JWKS, written as PEM/JSON files into a folder."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Ca:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.key = folder, _key()
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.path = folder / f"{name}.ca.crt"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, stem: str, cn: str, *, server: bool, sans: list[x509.GeneralName] | None = None
    ) -> tuple[Path, Path]:
        """Write ``stem``.crt/.key: a leaf certificate for ``cn`` (TLS server or client)."""
        key = _key()
        now = dt.datetime.now(dt.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return _write(self.folder, stem, builder.sign(self.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client: tuple[Path, Path]  # CN lab-engine, signed by the CA
    other_name: tuple[Path, Path]  # CN intruder, signed by the CA
    untrusted: tuple[Path, Path]  # CN lab-engine, signed by another CA


def make_pki(folder: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and localhost, three client certificates."""
    ca, rogue = Ca(folder, "wardwatch-test"), Ca(folder, "rogue")
    server = ca.issue(
        "server",
        "wardwatch-gateway",
        server=True,
        sans=[
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
    )
    return Pki(
        ca=ca.path,
        server_cert=server[0],
        server_key=server[1],
        client=ca.issue("client", "lab-engine", server=False),
        other_name=ca.issue("intruder", "intruder", server=False),
        untrusted=rogue.issue("untrusted", "lab-engine", server=False),
    )


class TokenIssuer:
    """An authorisation server's signing key (ES384, as SMART names) and its JWKS file."""

    def __init__(self, folder: Path, issuer: str, kid: str = "test-1") -> None:
        self.issuer, self.kid = issuer, kid
        self.key = ec.generate_private_key(ec.SECP384R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = folder / "jwks.json"
        self.jwks.write_text(json.dumps({"keys": [{**jwk, "kid": kid, "use": "sig"}]}))

    def token(
        self,
        audience: str,
        scope: str = "system/*.write",
        *,
        expires_in: float = 300,
        issuer: str | None = None,
        key: Any = None,
    ) -> str:
        """A signed access token (client-credentials style claims)."""
        now = int(time.time())
        claims = {
            "iss": issuer or self.issuer,
            "sub": "lab-engine",
            "aud": audience,
            "iat": now,
            "exp": now + int(expires_in),
            "scope": scope,
            "jti": f"t-{time.monotonic_ns()}",
        }
        return jwt.encode(claims, key or self.key, algorithm="ES384", headers={"kid": self.kid})
