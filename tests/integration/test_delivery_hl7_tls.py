"""HL7 v2 alerts out over MLLP with TLS (``mllps://``), against a loopback receiver.

The receiver is the test's own asyncio MLLP server with certificates the test makes
(``tests.tls_certs``), requiring a client certificate. ``Hl7Delivery`` sends the stored
alerts (SQLite outbox) with the CA and client certificate from its settings: every alert
is accepted in order. Without the CA the receiver's certificate is not trusted, nothing
is sent and the failure is recorded on the destination; a plain ``mllp://`` sender is
refused by the TLS receiver the same way.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from fhir.hl7v2 import MllpDecoder, build_ack, frame, read_header
from storage import outbox
from storage.db import make_engine, migrate, write_alerts
from streams.deliver_hl7 import KIND, Hl7Delivery, endpoint
from streams.settings import Settings
from tests.tls_certs import Pki, make_pki

from .test_delivery_hl7_postgres import alert


class TlsReceiver:
    """An MLLP-over-TLS destination that answers AA and records MSH-10 and the client
    certificate's common name."""

    def __init__(self, pki: Pki) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
        self.ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.accepted: list[str] = []
        self.clients: set[str] = set()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        self.clients |= {v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"}
        dec = MllpDecoder()
        try:
            while chunk := await reader.read(65536):
                for f in dec.feed(chunk):
                    assert isinstance(f, bytes)
                    header = read_header(f.decode().rstrip("\r"))
                    self.accepted.append(header.control_id)
                    writer.write(frame(build_ack(header, "AA")))
                    await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path / 'out.db'}"
    migrate(url)
    eng = make_engine(url)
    yield eng
    eng.dispose()


def _settings(**kw: Any) -> Settings:
    return Settings(delivery_backoff_initial_s=0.05, delivery_backoff_max_s=0.2,
                    delivery_poll_s=0.05, delivery_timeout_s=2.0, **kw)  # fmt: skip


async def _run(
    engine: Engine, s: Settings, receiver: TlsReceiver, tls: bool, until: Callable[[], bool]
) -> str:
    await receiver.start()
    sub = outbox.create_subscriber(engine, kind=KIND, topic="t", payload="full-resource",
                                   endpoint=endpoint("127.0.0.1", receiver.port, tls=tls),
                                   who="test")  # fmt: skip
    outbox.mark_handshake(engine, sub.id)
    write_alerts(engine, [alert(i) for i in range(1, 6)], outbox.enqueue)
    stop = asyncio.Event()
    task = asyncio.create_task(Hl7Delivery(engine, s).run(stop))
    deadline = time.monotonic() + 30
    while not await asyncio.to_thread(until):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
    stop.set()
    await task
    await receiver.stop()
    return sub.id


def test_alerts_go_out_over_mutual_tls_in_order(pki: Pki, engine: Engine) -> None:
    s = _settings(delivery_hl7_tls_ca=pki.ca, delivery_hl7_tls_cert=pki.client[0],
                  delivery_hl7_tls_key=pki.client[1])  # fmt: skip
    rx = TlsReceiver(pki)
    sid = asyncio.run(_run(engine, s, rx, True, lambda: len(rx.accepted) >= 5))
    assert rx.accepted == [f"{sid[:8]}-{n}" for n in range(1, 6)]
    assert rx.clients == {"lab-engine"}  # the client certificate was presented
    state = outbox.get_subscriber(engine, sid)
    assert state is not None and state.delivered_through == 5


def test_an_untrusted_destination_gets_nothing_and_the_failure_is_recorded(
    pki: Pki, engine: Engine
) -> None:
    # no CA configured: the test CA's server certificate is not trusted
    s = _settings(delivery_hl7_tls_cert=pki.client[0], delivery_hl7_tls_key=pki.client[1])
    rx = TlsReceiver(pki)

    def failed() -> bool:
        subs = outbox.list_subscribers(engine, KIND)
        return bool(subs and subs[0].last_error)

    sid = asyncio.run(_run(engine, s, rx, True, failed))
    assert rx.accepted == []
    state = outbox.get_subscriber(engine, sid)
    assert state is not None and state.delivered_through == 0
    assert state.last_error is not None and "SSLCertVerificationError" in state.last_error


def test_plain_mllp_to_a_tls_destination_is_not_accepted(pki: Pki, engine: Engine) -> None:
    rx = TlsReceiver(pki)

    def failed() -> bool:
        subs = outbox.list_subscribers(engine, KIND)
        return bool(subs and subs[0].last_error)

    sid = asyncio.run(_run(engine, _settings(), rx, False, failed))
    assert rx.accepted == []
    state = outbox.get_subscriber(engine, sid)
    assert state is not None and state.delivered_through == 0


def test_a_client_certificate_without_its_key_stops_at_start(pki: Pki, engine: Engine) -> None:
    with pytest.raises(ValueError, match="go together"):
        Hl7Delivery(engine, _settings(delivery_hl7_tls_cert=pki.client[0]))
