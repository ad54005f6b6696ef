"""The gateway with TLS and client authentication against the real Kafka: MLLP over mutual
TLS with an allow-list, FHIR over HTTPS with OAuth2 bearer tokens (SMART Backend Services).

Certificates and token keys are made per run (tests/tls_certs.py). Needs the local Kafka;
fails, never skips, when it is not there.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from fhir.hl7v2 import frame
from tests.integration.harness import isolated_run
from tests.integration.test_gateway import ORU, Running, consume_all, msa
from tests.tls_certs import Pki, TokenIssuer, make_pki

pytestmark = pytest.mark.kafka

ISSUER = "https://auth.hospital.example"
AUDIENCE = "https://gateway.hospital.example/fhir"
OBS = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1"}]},
    "subject": {"reference": "Patient/MRN-0815"},
    "effectiveDateTime": "2026-01-01T00:00:00Z",
    "valueQuantity": {"value": 22, "unit": "/min", "code": "/min"},
}


@dataclass
class Edge:
    run: Running
    pki: Pki
    tokens: TokenIssuer

    @property
    def mllp_port(self) -> int:
        return self.run.server.mllp_port

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.run.server.http_port}"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    folder = tmp_path_factory.mktemp("tls")
    pki, tokens = make_pki(folder), TokenIssuer(folder, ISSUER)
    with (
        isolated_run(
            "gwtls",
            gateway_mllp_port=0,
            gateway_http_port=0,
            gateway_dedup_path=folder / "seen.sqlite",
            gateway_delivery_timeout_s=20,
            gateway_tls_cert=pki.server_cert,
            gateway_tls_key=pki.server_key,
            gateway_tls_client_ca=pki.ca,
            gateway_mllp_allowed_clients="lab-engine, monitor-hub",
            gateway_oauth_jwks_path=tokens.jwks,
            gateway_oauth_issuer=ISSUER,
            gateway_oauth_audience=AUDIENCE,
        ) as s,
        Running(s) as r,
    ):
        yield Edge(r, pki, tokens)


def client_context(pki: Pki, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


def refused(edge: Edge) -> int:
    assert edge.run.server.gateway is not None
    return edge.run.server.gateway.stats.mllp_tls_refused


def mllp_tls(edge: Edge, cert: tuple[Path, Path] | None, message: bytes) -> bytes:
    """Send one framed message over TLS; everything the gateway answered until it closed
    or sent one ACK. Raises ssl.SSLError / OSError when the gateway refuses the client."""
    ctx = client_context(edge.pki, cert)
    with (
        socket.create_connection(("127.0.0.1", edge.mllp_port), timeout=20) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(frame(message))
        buf = b""
        while b"\x1c\r" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    return buf


def test_a_trusted_listed_client_gets_aa_and_the_message_reaches_kafka(edge: Edge) -> None:
    s = edge.run.settings
    reply = mllp_tls(edge, edge.pki.client, ORU.format(cid="TLS-1", hr=91).encode())
    ack = reply.lstrip(b"\x0b").split(b"\x1c")[0].decode()
    assert msa(ack)[1:3] == ["AA", "TLS-1"], ack
    inbound = consume_all(s, s.topic_inbound, 1)
    assert len(inbound) == 1 and b"MRN-4711" not in inbound[0].value()


@pytest.mark.parametrize("who", ["no certificate", "untrusted CA", "CN not on the list"])
def test_other_mllp_clients_are_refused(edge: Edge, who: str) -> None:
    cert = {
        "no certificate": None,
        "untrusted CA": edge.pki.untrusted,
        "CN not on the list": edge.pki.other_name,
    }[who]
    before = refused(edge)
    try:
        reply = mllp_tls(edge, cert, ORU.format(cid=f"TLS-X-{who}", hr=90).encode())
    except (ssl.SSLError, OSError):
        reply = b""  # refused in the handshake (TLS 1.3: at the client's first read)
    assert b"MSA" not in reply
    # the client may see the refusal before the gateway's loop has counted it
    deadline = time.monotonic() + 5
    while refused(edge) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert refused(edge) == before + 1


def test_plain_text_to_the_tls_port_gets_no_ack(edge: Edge) -> None:
    with socket.create_connection(("127.0.0.1", edge.mllp_port), timeout=20) as sock:
        sock.sendall(frame(ORU.format(cid="PLAIN-1", hr=90).encode()))
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
    assert b"MSA" not in got


def test_https_fhir_needs_a_valid_token_with_the_scope(edge: Edge) -> None:
    s, tokens = edge.run.settings, edge.tokens
    body = orjson.dumps(OBS)
    (edge.pki.ca.parent / "rogue").mkdir(exist_ok=True)
    rogue = TokenIssuer(edge.pki.ca.parent / "rogue", ISSUER)
    with httpx.Client(base_url=edge.https, verify=client_context(edge.pki, None), timeout=30) as c:
        meta = c.get("/fhir/metadata")  # open, as FHIR servers keep metadata
        assert meta.status_code == 200
        security = meta.json()["rest"][0]["security"]
        assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"

        r = c.post("/fhir/Observation", content=body)
        assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"
        assert r.headers["www-authenticate"].startswith("Bearer")

        def post(token: str) -> httpx.Response:
            return c.post(
                "/fhir/Observation", content=body, headers={"Authorization": f"Bearer {token}"}
            )

        for bad in (
            tokens.token("https://other.example/fhir"),
            tokens.token(AUDIENCE, expires_in=-120),
            tokens.token(AUDIENCE, issuer="https://evil.example"),
            rogue.token(AUDIENCE),  # same kid, a key the gateway does not know
        ):
            r = post(bad)
            assert r.status_code == 401, r.text
            assert 'error="invalid_token"' in r.headers["www-authenticate"]

        r = post(tokens.token(AUDIENCE, scope="system/Patient.write system/*.read"))
        assert r.status_code == 403, r.text
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
        assert r.json()["issue"][0]["code"] == "forbidden"

        r = post(tokens.token(AUDIENCE, scope="system/Observation.write"))
        assert r.status_code == 202, r.text
        r = post(tokens.token(AUDIENCE, scope="system/Observation.cu"))  # SMART v2
        assert r.status_code == 202, r.text

        batch = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"resource": OBS, "request": {"method": "POST", "url": "Observation"}}],
        }
        auth = {"Authorization": f"Bearer {tokens.token(AUDIENCE, scope='system/Patient.write')}"}
        r = c.post("/fhir", content=orjson.dumps(batch), headers=auth)
        assert r.status_code == 403, r.text
        auth = {"Authorization": f"Bearer {tokens.token(AUDIENCE)}"}  # system/*.write
        r = c.post("/fhir", content=orjson.dumps(batch), headers=auth)
        assert r.status_code == 200 and r.json()["type"] == "batch-response", r.text

    # the two accepted resources and the batch's one; nothing of the refused requests
    http = [
        m
        for m in consume_all(s, s.topic_inbound, 3)
        if dict(m.headers() or [])["wardwatch.source"] == b"fhir-http"
    ]
    assert len(http) == 3


def test_plain_http_to_the_https_port_fails(edge: Edge) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{edge.run.server.http_port}/fhir/metadata", timeout=10)
