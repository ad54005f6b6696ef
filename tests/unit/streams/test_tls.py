"""TLS contexts, client names, bearer-token checks, the listener deployment checks and the
analyst API over HTTPS (a real uvicorn on a free port, certificates from tests/tls_certs.py)."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from sqlalchemy import create_engine

from streams.api import server_config
from streams.deploy_checks import UnsafeSettingsError, require_safe
from streams.gateway import capability_statement
from streams.oauth import (
    InsufficientScopeError,
    InvalidTokenError,
    OAuthConfigError,
    TokenVerifier,
    scope_allows,
)
from streams.settings import Settings
from streams.tls import (
    TlsConfigError,
    TlsFiles,
    allowed_clients,
    is_loopback,
    peer_names,
    server_context,
)
from tests.tls_certs import Pki, TokenIssuer, make_pki

ISS, AUD = "https://auth.example", "https://gw.example/fhir"
GOOD_KEY = "k" * 48


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize(
    ("scope", "rtype", "action", "ok"),
    [
        ("system/Observation.write", "Observation", "c", True),
        ("system/*.write", "Encounter", "u", True),
        ("system/*.*", "Patient", "c", True),
        ("system/Observation.cu", "Observation", "u", True),
        ("system/Observation.c", "Observation", "u", False),
        ("system/Observation.read", "Observation", "c", False),
        ("system/Observation.rs", "Observation", "c", False),
        ("system/Patient.write", "Observation", "c", False),
        ("patient/Observation.write", "Observation", "c", False),
        ("user/*.write", "Observation", "c", False),
        ("", "Observation", "c", False),
    ],
)
def test_smart_system_scopes(scope: str, rtype: str, action: str, ok: bool) -> None:
    assert scope_allows(scope.split(), rtype, action) is ok


def test_peer_names_are_cns_and_sans() -> None:
    cert = {
        "subject": ((("organizationName", "Hosp"),), (("commonName", "lab-engine"),)),
        "subjectAltName": (("DNS", "lab.hosp.example"), ("URI", "urn:lab")),
    }
    assert peer_names(cert) == {"lab-engine", "lab.hosp.example", "urn:lab"}
    assert peer_names(None) == set()
    assert allowed_clients(" a, b ,,") == {"a", "b"}


@pytest.mark.parametrize(
    ("host", "loop"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("gw", False)],
)
def test_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


def test_half_a_tls_configuration_is_refused(pki: Pki, tmp_path: Path) -> None:
    assert TlsFiles.of(None, None, None, "1.2", "x") is None
    with pytest.raises(TlsConfigError, match="both"):
        TlsFiles.of(pki.server_cert, None, None, "1.2", "x")
    with pytest.raises(TlsConfigError, match="client CA needs TLS"):
        TlsFiles.of(None, None, pki.ca, "1.2", "x")
    with pytest.raises(TlsConfigError, match="cannot load"):
        server_context(TlsFiles(pki.server_cert, tmp_path / "missing.key"))
    ctx = server_context(TlsFiles(pki.server_cert, pki.server_key, pki.ca, "1.3"))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3 and ctx.verify_mode == ssl.CERT_REQUIRED


def test_token_verifier(tmp_path: Path) -> None:
    issuer = TokenIssuer(tmp_path, ISS)
    with pytest.raises(OAuthConfigError, match="ISSUER"):
        TokenVerifier(issuer.jwks, "", AUD)
    with pytest.raises(OAuthConfigError, match="cannot read"):
        TokenVerifier(tmp_path / "none.json", ISS, AUD)
    v = TokenVerifier(issuer.jwks, ISS, AUD)
    claims = v.verify(f"Bearer {issuer.token(AUD, 'system/Observation.write')}")
    assert claims["sub"] == "lab-engine"
    v.require(claims, "Observation", "c")
    with pytest.raises(InsufficientScopeError, match=r"system/Patient\.write"):
        v.require(claims, "Patient", "c")
    for header, why in [
        (None, "required"),
        ("Basic dXNlcjpwdw==", "Bearer"),
        (f"Bearer {issuer.token(AUD, expires_in=-120)}", "expired"),
        (f"Bearer {issuer.token('https://other')}", "audience"),
        (f"Bearer {issuer.token(AUD, issuer='https://evil')}", "issuer"),
        # a shared-secret token must not pass, whatever its secret
        (f"Bearer {jwt.encode({'iss': ISS, 'aud': AUD, 'exp': 2**40}, 's' * 32)}", "invalid"),
    ]:
        with pytest.raises(InvalidTokenError, match=why):
            v.verify(header)


def test_a_rotated_jwks_is_read_again(tmp_path: Path) -> None:
    old = TokenIssuer(tmp_path, ISS, kid="old")
    v = TokenVerifier(old.jwks, ISS, AUD)
    token = old.token(AUD)
    v.verify(f"Bearer {token}")
    new = TokenIssuer(tmp_path, ISS, kid="new")  # overwrites jwks.json
    st = os.stat(new.jwks)
    os.utime(new.jwks, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    v.verify(f"Bearer {new.token(AUD)}")
    with pytest.raises(InvalidTokenError, match="kid"):
        v.verify(f"Bearer {token}")


def _prod(**kw: object) -> Settings:
    return Settings(dev_mode=False, pseudonym_key=GOOD_KEY, **kw)  # type: ignore[arg-type]


def test_listeners_beyond_loopback_need_tls_and_authentication(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    require_safe(_prod(), "gateway", database=False)  # loopback: plain text is fine
    with pytest.raises(UnsafeSettingsError, match="gateway has no TLS"):
        require_safe(_prod(gateway_host="0.0.0.0"), "gateway", database=False)
    tls = {"gateway_tls_cert": pki.server_cert, "gateway_tls_key": pki.server_key}
    with pytest.raises(UnsafeSettingsError, match=r"MLLP senders.*FHIR clients"):
        require_safe(_prod(gateway_host="0.0.0.0", **tls), "gateway", database=False)
    full = _prod(
        gateway_host="0.0.0.0",
        gateway_tls_client_ca=pki.ca,
        gateway_oauth_jwks_path=pki.ca,
        **tls,
    )
    require_safe(full, "gateway", database=False)
    require_safe(_prod(gateway_host="0.0.0.0"), "worker", database=False)  # not its listener
    with pytest.raises(UnsafeSettingsError, match="API has no TLS"):
        require_safe(_prod(api_host="0.0.0.0"), "api", database=False)
    api = _prod(api_host="0.0.0.0", api_tls_cert=pki.server_cert, api_tls_key=pki.server_key)
    require_safe(api, "api", database=False)
    dev = Settings(dev_mode=True, pseudonym_key=GOOD_KEY, gateway_host="0.0.0.0")
    require_safe(dev, "gateway", database=False)
    assert "gateway has no TLS" in caplog.text


def test_capability_statement_declares_smart_only_when_tokens_are_required(pki: Pki) -> None:
    plain = capability_statement(Settings())
    assert "security" not in plain["rest"][0]
    assert plain["implementation"]["url"].startswith("http://")
    secured = capability_statement(
        Settings(
            gateway_tls_cert=pki.server_cert,
            gateway_tls_key=pki.server_key,
            gateway_oauth_jwks_path=pki.ca,
            gateway_oauth_issuer=ISS,
        )
    )
    assert secured["rest"][0]["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    assert secured["implementation"]["url"].startswith("https://")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def api_over_tls(pki: Pki, request: pytest.FixtureRequest) -> Iterator[str]:
    import uvicorn

    port = _free_port()
    client_ca = pki.ca if request.param == "client-ca" else None
    files = TlsFiles(pki.server_cert, pki.server_key, client_ca)
    config = server_config(create_engine("sqlite://"), "127.0.0.1", port, tls=files)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "API did not start"
        time.sleep(0.05)
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _ctx(pki: Pki, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


@pytest.mark.parametrize("api_over_tls", [None], indirect=True)
def test_the_api_answers_health_over_https(pki: Pki, api_over_tls: str) -> None:
    r = httpx.get(f"{api_over_tls}/health", verify=_ctx(pki), timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    with pytest.raises(httpx.HTTPError):  # plain text to the TLS port
        httpx.get(api_over_tls.replace("https", "http") + "/health", timeout=10)
    with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate
        httpx.get(f"{api_over_tls}/health", verify=ssl.create_default_context(), timeout=10)


@pytest.mark.parametrize("api_over_tls", ["client-ca"], indirect=True)
def test_the_api_with_a_client_ca_requires_a_client_certificate(
    pki: Pki, api_over_tls: str
) -> None:
    r = httpx.get(f"{api_over_tls}/health", verify=_ctx(pki, pki.client), timeout=10)
    assert r.status_code == 200
    for cert in (None, pki.untrusted):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{api_over_tls}/health", verify=_ctx(pki, cert), timeout=10)
