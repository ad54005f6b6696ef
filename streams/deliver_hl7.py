"""HL7 v2 delivery over MLLP from the outbox: one ORU^R01 per alert (``fhir.hl7v2_out``).

One task per ``hl7v2-mllp`` subscriber keeps one TCP connection to the destination and
sends strictly one message at a time, lowest event number first: the next is sent only
after the previous one was accepted (AA/CA with MSA-2 = our MSH-10) and recorded as
delivered, so the receiver gets them in order. A refusal (AE/AR/CE/CR), an ACK naming
another message, a closed or refused connection, or no ACK within
``delivery_timeout_s`` is a failure: the connection is closed (a late ACK must not be
read as the answer to the next message) and the same message, byte for byte and with the
same MSH-10, is resent after exponential backoff. After ``delivery_hl7_max_attempts``
sends of one message the subscriber is marked ``error`` (its events kept, never dropped)
and is still retried at the longest backoff, so it recovers by itself once the receiver
takes the message. A resend after a lost ACK can reach the receiver twice: it drops the
second by MSH-10.

Logs name the subscriber id, event numbers and MSA codes, never a patient.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from datetime import timedelta
from urllib.parse import urlsplit

from sqlalchemy import Engine

from fhir.hl7v2 import MllpDecoder, frame
from fhir.hl7v2_out import AckError, ack_accepted, control_id, oru_r01, read_ack
from storage import outbox
from storage.outbox import OutboxEvent, SubscriberState

from .client_security import client_context
from .delivery import backoff_s, db, serve_each_subscriber
from .settings import Settings
from .tls import TLS_VERSIONS

log = logging.getLogger("wardwatch.deliver.hl7")
KIND = "hl7v2-mllp"
MAX_ACK_BYTES = 1_000_000  # an ACK is a few hundred bytes; a stream this long is not one


class SendFailedError(Exception):
    """A destination did not accept a message (transient: resent with backoff, bounded
    by ``delivery_hl7_max_attempts`` before the subscriber is marked error)."""


def endpoint(host: str, port: int, *, tls: bool = False) -> str:
    """The stored endpoint of an MLLP destination: ``mllp://host:port``, or
    ``mllps://host:port`` for MLLP over TLS. Raises ValueError for a port outside 1-65535
    or an empty host."""
    if not host or not 0 < port < 65536:
        raise ValueError("an MLLP destination needs a host and a port 1-65535")
    return f"{'mllps' if tls else 'mllp'}://{host}:{port}"


def host_port(stored: str) -> tuple[str, int, bool]:
    """(host, port, TLS) of an endpoint made by :func:`endpoint`. Raises ValueError for
    any other (a subscriber stored by hand: the delivery stops loudly)."""
    u = urlsplit(stored)
    if u.scheme not in ("mllp", "mllps") or not u.hostname or u.port is None:
        raise ValueError(f"not an mllp:// or mllps://host:port endpoint: {stored[:100]!r}")
    return u.hostname, u.port, u.scheme == "mllps"


def client_tls(settings: Settings) -> ssl.SSLContext:
    """The TLS context of mllps:// destinations: their certificate checked against
    ``delivery_hl7_tls_ca`` (else the system's CAs) and their host name, TLS 1.2 or the
    settings' minimum, and the client certificate when one is set. Raises ValueError for
    a certificate without its key; OSError / ssl.SSLError for unreadable files (at
    start-up, not retried)."""
    s = settings
    ctx = client_context(
        s.delivery_hl7_tls_ca,
        s.delivery_hl7_tls_cert,
        s.delivery_hl7_tls_key,
        "WARDWATCH_DELIVERY_HL7_TLS_CERT and _KEY go together",
    )
    ctx.minimum_version = TLS_VERSIONS[s.tls_min_version]
    return ctx


def after_failure(attempts: int, settings: Settings) -> tuple[float, bool]:
    """What to do after ``attempts`` failed sends of the same message: (seconds to wait
    before resending, whether the subscriber is now to be marked error). Up to
    ``delivery_hl7_max_attempts`` the wait doubles from ``delivery_backoff_initial_s``;
    from there on the subscriber is in error and the wait is ``delivery_backoff_max_s``.
    Raises nothing."""
    if attempts >= settings.delivery_hl7_max_attempts:
        return settings.delivery_backoff_max_s, True
    wait = backoff_s(attempts, settings.delivery_backoff_initial_s, settings.delivery_backoff_max_s)
    return wait, False


def message_for(sub: SubscriberState, event: OutboxEvent) -> tuple[str, bytes]:
    """(MSH-10, ORU^R01) of ``event`` for ``sub``: the same bytes every time, so a
    resend is recognisable. Raises KeyError/ValueError/TypeError for a stored alert that
    is not one of ours (not retried)."""
    cid = control_id(sub.id, event.event_number)
    body = oru_r01(
        event.resource,
        control=cid,
        queued_at=event.queued_at,
        patient=event.patient,
        receiving_app=str(sub.resource.get("receiving_application", "")),
        receiving_facility=str(sub.resource.get("receiving_facility", "")),
    )
    return cid, body


class MllpLink:
    """One MLLP connection to one destination, opened when needed, one exchange at a
    time."""

    def __init__(
        self, host: str, port: int, timeout_s: float, tls: ssl.SSLContext | None = None
    ) -> None:
        """``tls``: MLLP over TLS with that context (the host name is checked)."""
        self._host, self._port, self._timeout, self._tls = host, port, timeout_s, tls
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def exchange(self, message: bytes) -> bytes:
        """Send ``message`` framed and return the first framed answer. Raises
        :class:`SendFailedError` (connection refused or lost, no answer within the
        timeout); the connection is closed then."""
        try:
            return await asyncio.wait_for(self._exchange(message), self._timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, SendFailedError) as exc:
            await self.close()
            reason = str(exc) if isinstance(exc, SendFailedError) else type(exc).__name__
            raise SendFailedError(reason or "no ACK") from exc

    async def _exchange(self, message: bytes) -> bytes:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(
                self._host, self._port, ssl=self._tls
            )
        assert self._reader is not None
        self._writer.write(frame(message))
        await self._writer.drain()
        decoder = MllpDecoder(max_bytes=MAX_ACK_BYTES)
        while True:
            chunk = await self._reader.read(65536)
            if not chunk:
                raise SendFailedError("connection closed before the ACK")
            frames = decoder.feed(chunk)
            if frames:
                first = frames[0]
                if isinstance(first, Exception) or len(frames) > 1 or decoder.pending:
                    # More than one answer to one message: the stream is out of step.
                    raise SendFailedError("unexpected frames on the connection")
                return first

    async def close(self) -> None:
        """Close the connection if open. Raises nothing."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def send(link: MllpLink, cid: str, message: bytes) -> str:
    """Send one message and check its ACK; returns the MSA-1 code (AA/CA). Raises
    :class:`SendFailedError` on a refusal, a mismatched or unreadable ACK, or no ACK
    (the caller resends)."""
    answer = await link.exchange(message)
    try:
        ack = read_ack(answer)
        if ack_accepted(ack, cid):
            return ack.code
    except AckError as exc:
        await link.close()
        raise SendFailedError(str(exc)) from exc
    raise SendFailedError(f"MSA-1 {ack.code}")


class Hl7Delivery:
    """Delivers every ``hl7v2-mllp`` subscriber's outbox until ``stop`` is set."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._s = settings
        self._tls = client_tls(settings)  # loaded at start: bad files stop it at once
        self.sent = 0  # messages accepted by destinations (for the log and tests)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve every live destination until ``stop``. Raises what a subscriber task
        raises (storage down past the retry budget, a stored alert or endpoint it cannot
        send): the process stops loudly and a restart resumes from the outbox."""
        await serve_each_subscriber(
            self._engine, self._s, KIND, lambda sid: self._serve(sid, stop), stop
        )

    async def _serve(self, sid: str, stop: asyncio.Event) -> None:
        budget = self._s.retry_budget_s
        sub = await db(lambda: outbox.get_subscriber(self._engine, sid), budget)
        if sub is None or sub.status == "off":
            return
        host, port, tls = host_port(sub.endpoint)
        link = MllpLink(host, port, self._s.delivery_timeout_s, self._tls if tls else None)
        failures = 0  # failed sends of the message at the head of the queue
        try:
            while not stop.is_set():
                sub = await db(lambda: outbox.get_subscriber(self._engine, sid), budget)
                if sub is None or sub.status == "off":
                    return
                events = await db(
                    lambda: outbox.pending(self._engine, sid, self._s.delivery_max_events),
                    budget,
                )
                wait = self._s.delivery_poll_s if not events else 0.0
                for ev in events:
                    if stop.is_set():
                        break
                    cid, message = message_for(sub, ev)
                    try:
                        code = await send(link, cid, message)
                    except SendFailedError as exc:
                        failures += 1
                        wait, give_up = after_failure(failures, self._s)
                        give_up_after = (
                            timedelta(0)
                            if give_up
                            else timedelta(hours=self._s.delivery_retry_hours)
                        )
                        failed = functools.partial(
                            outbox.record_failure, self._engine, sid,
                            f"event {ev.event_number}: {exc}", give_up_after,
                        )  # fmt: skip
                        status = await db(failed, budget)
                        (log.error if give_up else log.warning)(
                            "hl7 destination %s: event %d not accepted (%s), send %d, "
                            "status %s; resend in %.1f s",
                            sid, ev.event_number, exc, failures, status, wait,
                        )  # fmt: skip
                        break
                    done = functools.partial(
                        outbox.mark_delivered, self._engine, sid, ev.event_number
                    )
                    await db(done, budget)
                    if sub.status == "requested":  # no handshake in HL7: first ACK makes it so
                        await db(lambda: outbox.mark_handshake(self._engine, sid), budget)
                        sub = await db(lambda: outbox.get_subscriber(self._engine, sid), budget)
                        if sub is None:
                            return
                    self.sent += 1
                    if failures:
                        log.info(
                            "hl7 destination %s: event %d accepted (%s) after %d failed sends",
                            sid, ev.event_number, code, failures,
                        )  # fmt: skip
                    failures = 0
                if wait:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), wait)
        finally:
            await link.close()
