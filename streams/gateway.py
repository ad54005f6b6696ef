"""``wardwatch gateway``: the edge's network listeners, HL7 v2 over MLLP and FHIR over HTTP.

One asyncio process:

* **MLLP** (``WARDWATCH_GATEWAY_MLLP_PORT``): many connections, pipelined messages on one
  connection (ACKs go back in order), partial frames, a bounded message size. Each message
  is mapped by :func:`fhir.hl7v2.map_message` (pseudonymised there), published as one FHIR
  transaction Bundle to ``fhir.inbound`` keyed by the patient pseudonym, and answered **AA
  only after Kafka's delivery callback confirmed the write** (acks=all, idempotent producer).
  Messages it cannot take are answered AE/AR (reason in MSA-3, an ERR segment) and written,
  original bytes and reason in headers, to the dead-letter topic. A resend (same MSH-10 from
  the same MSH-3/MSH-4, same content apart from MSH-7) is answered AA and not published
  again; the same MSH-10 with other content is answered AE and dead-lettered.
* **FHIR REST** (``WARDWATCH_GATEWAY_HTTP_PORT``, FastAPI on uvicorn): ``POST /fhir/{type}``,
  ``PUT /fhir/{type}/{id}`` (R4 rest-hook with payload), ``POST /fhir`` (batch/transaction
  Bundles, R4 rest-hook history Bundles and R4B/R5 ``subscription-notification`` Bundles),
  ``GET /fhir/metadata``. 202 (or the batch/transaction response) only after Kafka has the
  data; 4xx with an OperationOutcome otherwise.

Edge limits: an MLLP connection idle past ``WARDWATCH_GATEWAY_MLLP_IDLE_TIMEOUT_S`` is
closed; connections past ``WARDWATCH_GATEWAY_MLLP_MAX_CONNECTIONS`` (overall) or
``..._PER_CLIENT`` (per client address) are accepted and closed at once; FHIR requests
past ``WARDWATCH_GATEWAY_HTTP_MAX_CONCURRENCY`` (503) or ``..._PER_CLIENT`` (429) in flight
are refused with an OperationOutcome and Retry-After.

Resend detection keeps ``(sender, control id, content digest)`` of every *published*
message in a small SQLite file (``WARDWATCH_GATEWAY_DEDUP_PATH``, pruned after
``WARDWATCH_GATEWAY_DEDUP_DAYS``), so a restarted gateway still recognises a resend. An id
is recorded only after Kafka acknowledged the write; a crash in between can publish a
resend twice, which the stream absorbs (the Bundle's Observation ids are derived from
their content, events are idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import orjson
from confluent_kafka import KafkaError, Producer
from confluent_kafka import Message as KafkaMessage
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from fhir.errors import (
    InvalidResource,
    MalformedJson,
    PermanentInputError,
    UnsupportedResource,
)
from fhir.hl7v2 import (
    ERR_DUPLICATE_KEY,
    ERR_INTERNAL,
    AckCode,
    Hl7Error,
    Hl7Header,
    Hl7Mapping,
    Hl7TooLongError,
    MllpDecoder,
    build_ack,
    content_digest,
    frame,
    load_hl7_mapping,
    map_message,
    normalise,
    read_header,
)
from fhir.parse import parse_resource

from . import dlq_headers
from .errors import safe_reason
from .fetch_back import FetchBack, FetchFailedError, FocusRefusedError, needs_fetch
from .oauth import InsufficientScopeError, InvalidTokenError, TokenVerifier
from .replay import make_producer
from .sealing import KeyRing, key_ring
from .settings import Settings
from .sources import fhir_message
from .tls import TlsFiles, allowed_clients, describe, peer_names, server_context, uvicorn_config

log = logging.getLogger("wardwatch.gateway")
Headers = list[tuple[str, str | bytes | None]]
Resend = Literal["new", "duplicate", "conflict"]
REUSED_CONTROL_ID = "control id reused with different content"


class DeliveryError(Exception):
    """Kafka did not acknowledge a write in time (transient: the sender should resend;
    the gateway answers AE / 503 and does not retry itself)."""


# ---------------------------------------------------------------------- Kafka bridge
class KafkaBridge:
    """An idempotent, acks=all confluent-kafka producer whose delivery callbacks resolve
    asyncio futures. A daemon thread polls the producer."""

    def __init__(self, settings: Settings, producer: Producer | None = None) -> None:
        timeout_ms = int(settings.gateway_delivery_timeout_s * 1000)
        self.producer = producer or make_producer(
            settings, **{"message.timeout.ms": max(timeout_ms, 1000), "linger.ms": 2}
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    async def send(
        self, topic: str, key: bytes, value: bytes, headers: Headers | None = None
    ) -> tuple[int, int]:
        """Write one message; return (partition, offset) once Kafka acknowledged it.

        Raises DeliveryError (transient, not retried here) when the broker refuses it or
        does not answer within ``message.timeout.ms``.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, int]] = loop.create_future()

        def settle(err: KafkaError | None, msg: KafkaMessage) -> None:
            if fut.done():
                return
            if err is not None:
                fut.set_exception(DeliveryError(f"Kafka refused the write: {err}"))
            else:
                fut.set_result((msg.partition() or 0, msg.offset() or 0))

        def on_delivery(err: KafkaError | None, msg: KafkaMessage) -> None:
            loop.call_soon_threadsafe(settle, err, msg)

        while True:
            try:
                self.producer.produce(
                    topic, key=key, value=value, headers=headers or [], on_delivery=on_delivery
                )
                break
            except BufferError:
                await asyncio.sleep(0.01)  # local queue full: deliveries drain in the thread
            except Exception as exc:  # KafkaException for a too-large message, etc.
                raise DeliveryError(f"Kafka refused the write: {exc}") from None
        return await fut

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued and stop the poll thread. Never raises."""
        with contextlib.suppress(Exception):
            self.producer.flush(timeout)
        self._stop.set()
        self._thread.join(timeout=2)


# ---------------------------------------------------------------------- resend detection
class SeenStore:
    """``(sender, control id)`` pairs already published, with the content digest
    (:func:`fhir.hl7v2.content_digest`) of what was published, in SQLite (survives
    restarts). Holds no patient data: the sender is MSH-3/MSH-4, the digest a SHA-256.

    A file written before digests were kept gets a nullable ``digest`` column on open;
    its old rows (digest NULL) cannot tell a resend from a reused control id and keep the
    old rule: a duplicate.
    """

    def __init__(self, path: Path, keep_days: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS seen (sender TEXT NOT NULL, control_id TEXT NOT NULL,"
            " at REAL NOT NULL, digest TEXT, PRIMARY KEY (sender, control_id))"
        )
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(seen)")}
        if "digest" not in columns:  # a store from before content digests
            self.db.execute("ALTER TABLE seen ADD COLUMN digest TEXT")
        self.db.execute("DELETE FROM seen WHERE at < ?", (time.time() - keep_days * 86400,))
        self._lock = threading.Lock()

    def seen(self, sender: str, control_id: str) -> bool:
        """Whether this control id was published before. Raises sqlite3.Error (not retried)."""
        return self.verdict(sender, control_id, None) != "new"

    def verdict(self, sender: str, control_id: str, digest: str | None) -> Resend:
        """``new`` (never published), ``duplicate`` (published with this digest, or the
        stored or given digest is unknown) or ``conflict`` (published with another digest:
        the control id was reused for different content). Raises sqlite3.Error (not
        retried)."""
        with self._lock:
            row = self.db.execute(
                "SELECT digest FROM seen WHERE sender = ? AND control_id = ?",
                (sender, control_id),
            ).fetchone()
        if row is None:
            return "new"
        if row[0] is None or digest is None or row[0] == digest:
            return "duplicate"
        return "conflict"

    def add(self, sender: str, control_id: str, digest: str | None = None) -> None:
        """Record a published message. Raises sqlite3.Error (not retried)."""
        with self._lock:
            self.db.execute(
                "INSERT OR REPLACE INTO seen (sender, control_id, at, digest) VALUES (?, ?, ?, ?)",
                (sender, control_id, time.time(), digest),
            )

    def close(self) -> None:
        """Close the database. Never raises."""
        with contextlib.suppress(Exception):
            self.db.close()


def dead_letter_headers(
    reason: str, stage: str, source: str, *, fmt: str, extra: Headers | None = None
) -> Headers:
    """Dead-letter headers (:mod:`streams.dlq_headers`) of a message refused at the edge,
    before it had an offset, then ``extra``."""
    return [*dlq_headers.build(reason, stage, source, fmt=fmt), *(extra or [])]


# ---------------------------------------------------------------------- the gateway
@dataclass(slots=True)
class GatewayStats:
    """Counters for logs and tests."""

    hl7_accepted: int = 0
    hl7_duplicates: int = 0
    hl7_reused: int = 0
    hl7_rejected: int = 0
    hl7_transient: int = 0
    http_resources: int = 0
    http_rejected: int = 0
    truncated_bytes: int = 0
    mllp_tls_refused: int = 0
    http_auth_refused: int = 0
    mllp_refused: int = 0
    mllp_idle_closed: int = 0
    http_throttled: int = 0


@dataclass(slots=True)
class Gateway:
    """The gateway's logic, independent of sockets (tests drive :meth:`handle_hl7`)."""

    settings: Settings
    bridge: KafkaBridge
    seen: SeenStore
    mapping: Hl7Mapping = field(default_factory=load_hl7_mapping)
    stats: GatewayStats = field(default_factory=GatewayStats)
    ring: KeyRing | None = None  # the dead-letter keys, read at the first dead letter
    # (sender, control id) -> (its outcome, its content digest) while it is being taken
    _mllp_open: int = 0
    _mllp_clients: dict[str, int] = field(default_factory=dict)  # open connections per address
    _refusal_logged_at: float = 0.0
    _inflight: dict[tuple[str, str], tuple[asyncio.Future[tuple[AckCode, str]], str]] = field(
        default_factory=dict
    )

    @property
    def key(self) -> bytes:
        return self.settings.pseudonym_key.get_secret_value().encode()

    async def dead_letter(self, key: bytes, value: bytes, headers: Headers) -> None:
        """Write a dead letter: ``value`` (the original, un-pseudonymised bytes) encrypted
        under the dead-letter key (:mod:`streams.sealing`, bound to the topic, stage and
        key), the reason header scrubbed of quoted input values. Raises DeliveryError
        (transient, not retried here) if Kafka does not take it; DeadLetterKeyError
        (permanent) if no dead-letter key is usable, which start-up checks first."""
        if self.ring is None:
            self.ring = key_ring(self.settings)
        stage = ""
        clean: Headers = []
        for name, v in headers:
            if name == dlq_headers.STAGE and isinstance(v, bytes):
                stage = v.decode()
            if name == dlq_headers.REASON and isinstance(v, bytes):
                # the reason can quote the refused input (an OBX-5, an id): at rest it
                # keeps what was wrong, not the value; the sender's ACK / 4xx has it whole
                v = safe_reason(v.decode("utf-8", "replace"), 1000).encode()
            clean.append((name, v))
        topic = self.settings.topic_dlq
        sealed, seal_headers = self.ring.seal(value, topic=topic, stage=stage, key=key)
        await self.bridge.send(topic, key, sealed, [*clean, *seal_headers])

    async def handle_hl7(self, payload: bytes, peer: str = "") -> bytes:
        """The ACK (unframed) for one MLLP payload. Never raises: every failure is an ACK
        (AR/AE for bad input, dead-lettered; AE for Kafka trouble or an internal error such
        as an unwritable resend store, so the sender resends)."""
        try:
            return await self._handle_hl7(payload, peer)
        except Exception as exc:  # contract: an ACK for everything
            return self._internal_error_ack(exc, peer)

    @staticmethod
    def _internal_error_ack(exc: Exception, peer: str) -> bytes:
        log.exception("MLLP %s: internal error", peer)
        return build_ack(None, "AE", f"gateway internal error ({type(exc).__name__}); resend later")

    async def _handle_hl7(self, payload: bytes, peer: str) -> bytes:
        text = normalise(payload)
        try:
            header = read_header(text)
        except Hl7Error as exc:
            return await self._reject(payload, None, exc, peer)
        ident = (header.sender, header.control_id)
        digest = content_digest(text)
        if header.control_id:
            verdict = self.seen.verdict(header.sender, header.control_id, digest)
            if verdict == "duplicate":
                self.stats.hl7_duplicates += 1
                return build_ack(header, "AA", "duplicate of a message already accepted")
            if verdict == "conflict":
                return await self._reused(payload, header, peer)
        pending = self._inflight.get(ident) if header.control_id else None
        if pending is not None:
            pending_fut, pending_digest = pending
            if pending_digest != digest:  # the same id, other content, at the same time
                return await self._reused(payload, header, peer)
            code, why = await asyncio.shield(pending_fut)
            if code == "AA":
                self.stats.hl7_duplicates += 1
                return build_ack(header, "AA", "duplicate of a message already accepted")
            return build_ack(header, code, why)
        fut: asyncio.Future[tuple[AckCode, str]] = asyncio.get_running_loop().create_future()
        if header.control_id:
            self._inflight[ident] = (fut, digest)
        try:
            ack, outcome = await self._take(payload, text, header, peer, digest)
            fut.set_result(outcome)
            return ack
        except BaseException:
            fut.set_result(("AE", "gateway error"))
            raise
        finally:
            self._inflight.pop(ident, None)

    async def _reused(self, payload: bytes, header: Hl7Header, peer: str) -> bytes:
        """AE and a dead letter for a control id already accepted with other content: the
        sender reused it (or changed a message it resends); dropping it as a duplicate
        would lose the new content. Not retried: the sender must send it under a new id."""
        self.stats.hl7_reused += 1
        exc = Hl7Error(
            f"{REUSED_CONTROL_ID}: this MSH-10 from this MSH-3/MSH-4 was accepted before with "
            "other content (MSH-7 aside); send new content under a new control id",
            ack_code="AE",
            error_code=ERR_DUPLICATE_KEY,
        )
        return await self._reject(payload, header, exc, peer)

    async def _take(
        self, payload: bytes, text: str, header: Hl7Header, peer: str, digest: str
    ) -> tuple[bytes, tuple[AckCode, str]]:
        try:
            mapped = map_message(
                text, self.key, default_tz=self.settings.gateway_default_tz, mapping=self.mapping
            )
        except Hl7Error as exc:
            ack = await self._reject(payload, header, exc, peer)
            return ack, (exc.ack_code, exc.reason)
        headers: Headers = [
            ("wardwatch.source", b"hl7v2"),
            ("wardwatch.hl7.sender", header.sender.encode()),
            ("wardwatch.hl7.control_id", header.control_id.encode()),
        ]
        try:
            await asyncio.wait_for(
                self.bridge.send(
                    self.settings.topic_inbound,
                    mapped.pseudonym.encode(),
                    orjson.dumps(mapped.bundle),
                    headers,
                ),
                self.settings.gateway_delivery_timeout_s,
            )
        except (DeliveryError, TimeoutError) as exc:
            self.stats.hl7_transient += 1
            why = f"Kafka did not acknowledge the write ({exc or 'timeout'}); resend later"
            log.warning("MLLP %s %s: %s", peer, header.control_id, why)
            return build_ack(header, "AE", why, error_code=ERR_INTERNAL), ("AE", why)
        if header.control_id:
            self.seen.add(header.sender, header.control_id, digest)
        self.stats.hl7_accepted += 1
        note = f"{mapped.observations} observations"
        if mapped.notes:
            note += f"; {len(mapped.notes)} notes, e.g. {mapped.notes[0]}"
        return build_ack(header, "AA", note), ("AA", note)

    async def _reject(
        self,
        payload: bytes,
        header: Hl7Header | None,
        exc: Hl7Error,
        peer: str,
        extra: Sequence[tuple[str, bytes]] = (),
    ) -> bytes:
        self.stats.hl7_rejected += 1
        sender = header.sender if header else ""
        cid = header.control_id if header else ""
        log.info("MLLP %s %s rejected %s: %s", peer, cid, exc.ack_code, safe_reason(exc.reason))
        hdrs = dead_letter_headers(
            exc.reason,
            "gateway.mllp",
            "mllp",
            fmt="hl7v2",
            extra=[
                ("wardwatch.source.sender", sender.encode()),
                ("wardwatch.source.control_id", cid.encode()),
                ("wardwatch.hl7.ack", exc.ack_code.encode()),
                *extra,
            ],
        )
        try:
            await asyncio.wait_for(
                self.dead_letter(f"hl7v2:{sender}".encode(), payload, hdrs),
                self.settings.gateway_delivery_timeout_s,
            )
        except (DeliveryError, TimeoutError) as dexc:
            why = f"{exc.reason} (and the dead letter was not written: {dexc}; resend later)"
            return build_ack(header, "AE", why, error_code=exc.error_code)
        return build_ack(header, exc.ack_code, exc.reason, error_code=exc.error_code)

    async def reject_too_long(self, exc: Hl7TooLongError, peer: str = "") -> bytes:
        """Dead-letter an over-long MLLP frame's kept head (headers say it is truncated and
        how long the frame was, when known) and return its AR; an AE when the dead letter
        could not be written (the sender resends). Never raises."""
        length = b"" if exc.length is None else str(exc.length).encode()
        extra = [
            ("wardwatch.truncated", b"true"),
            ("wardwatch.original_length", length),
        ]
        try:
            return await self._reject(exc.head, None, exc, peer, extra)
        except Exception as err:  # contract: an ACK for everything
            return self._internal_error_ack(err, peer)

    # ------------------------------------------------------------------ MLLP server
    def _admit(self, host: str) -> bool:
        """Count a new MLLP connection from ``host`` in, or refuse it (False; logged at
        most once a second, so a flood of refusals does not flood the log either)."""
        s = self.settings
        mine = self._mllp_clients.get(host, 0)
        if (
            self._mllp_open >= s.gateway_mllp_max_connections
            or mine >= s.gateway_mllp_max_connections_per_client
        ):
            self.stats.mllp_refused += 1
            now = time.monotonic()
            if now - self._refusal_logged_at >= 1.0:
                self._refusal_logged_at = now
                log.warning(
                    "MLLP %s: connection refused, %d open (%d from this address; caps %d and "
                    "%d per address); %d refused since start",
                    host,
                    self._mllp_open,
                    mine,
                    s.gateway_mllp_max_connections,
                    s.gateway_mllp_max_connections_per_client,
                    self.stats.mllp_refused,
                )
            return False
        self._mllp_open += 1
        self._mllp_clients[host] = mine + 1
        return True

    def _release(self, host: str) -> None:
        self._mllp_open -= 1
        left = self._mllp_clients.pop(host, 1) - 1
        if left > 0:
            self._mllp_clients[host] = left

    async def serve_mllp(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, admitted: bool = False
    ) -> None:
        """One MLLP connection: read frames, answer in order (pipelining). Never raises.

        Over the connection caps it is closed at once (``admitted``: the caller already
        counted it in, see :func:`serve_mllp_tls`); with nothing read and no ACK pending
        for ``gateway_mllp_idle_timeout_s`` it is closed (logged, counted).
        """
        peer = str(writer.get_extra_info("peername"))
        host = peer_host(writer)
        if not admitted and not self._admit(host):
            with contextlib.suppress(Exception):
                writer.close()
                await writer.wait_closed()
            return
        decoder = MllpDecoder(max_bytes=self.settings.gateway_max_body_bytes)
        queue: asyncio.Queue[asyncio.Future[bytes] | None] = asyncio.Queue(maxsize=256)
        idle_s = self.settings.gateway_mllp_idle_timeout_s
        # A connection waiting for its ACKs (Kafka slow) is not idle: the sender waits on us.
        pending = 0
        last_active = time.monotonic()

        async def answer() -> None:
            nonlocal pending, last_active
            while True:
                item = await queue.get()
                if item is None:
                    return
                ack = await item
                writer.write(frame(ack))
                await writer.drain()
                pending -= 1
                last_active = time.monotonic()

        answering = asyncio.create_task(answer())
        try:
            while not answering.done():
                wait = idle_s if pending else last_active + idle_s - time.monotonic()
                try:
                    data = await asyncio.wait_for(reader.read(65536), max(wait, 0.0))
                except TimeoutError:
                    if pending or time.monotonic() - last_active < idle_s:
                        continue
                    self.stats.mllp_idle_closed += 1
                    log.warning("MLLP %s: idle for %.0f s, closing the connection", peer, idle_s)
                    break
                if not data:
                    break
                last_active = time.monotonic()
                for item in decoder.feed(data):
                    # an over-long frame is dead-lettered (its kept head) before its AR;
                    # either way the ACKs go out in the frames' order
                    handled = (
                        self.reject_too_long(item, peer)
                        if isinstance(item, Hl7TooLongError)
                        else self.handle_hl7(item, peer)
                    )
                    pending += 1
                    await queue.put(asyncio.ensure_future(handled))
            if decoder.pending:
                self.stats.truncated_bytes += decoder.pending
                log.warning(
                    "MLLP %s closed inside a frame: %d bytes dropped", peer, decoder.pending
                )
            if not answering.done():
                await queue.put(None)
            await answering
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("MLLP %s: connection lost (%s)", peer, exc)
        finally:
            self._release(host)
            answering.cancel()
            with contextlib.suppress(Exception):
                writer.close()
                await writer.wait_closed()

    # ------------------------------------------------------------------ FHIR over HTTP
    async def publish_all(self, items: Sequence[tuple[bytes, bytes]], origin: str) -> None:
        """Publish (key, value) FHIR messages and wait for all acknowledgements.

        Raises DeliveryError (transient; the client should retry) if any is not acknowledged.
        """
        hdrs: Headers = [("wardwatch.source", origin.encode())]
        coros = [self.bridge.send(self.settings.topic_inbound, k, v, hdrs) for k, v in items]
        try:
            await asyncio.wait_for(asyncio.gather(*coros), self.settings.gateway_delivery_timeout_s)
        except TimeoutError:
            raise DeliveryError("Kafka did not acknowledge in time") from None

    def check_resource(self, raw: bytes, expected: str | None) -> tuple[bytes, bytes, int]:
        """Pseudonymise and validate one resource: (key, value, events).

        Raises PermanentInputError (not retryable; answer 4xx) for bad input; unknown
        Observation codes are accepted and ignored (no events).
        """
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedJson(f"not JSON: {str(exc)[:200]}") from None
        if not isinstance(doc, dict):
            raise MalformedJson(f"top level is a JSON {type(doc).__name__}, not an object")
        rt = doc.get("resourceType")
        if expected is not None and rt != expected:
            raise InvalidResource(
                f"resourceType {str(rt)[:40]!r} does not match the URL's {expected!r}"
            )
        try:
            msg = fhir_message(raw, self.key, origin="http", stem="http")
        except RecursionError:
            raise InvalidResource("resource nested too deeply") from None
        except Exception as exc:  # strip_phi on a shape it does not expect
            raise InvalidResource(f"cannot pseudonymise: {type(exc).__name__}") from None
        result = parse_resource(msg.value, strict=True)
        return msg.key, msg.value, len(result.events)


def operation_outcome(
    severity: str, code: str, text: str, *, expression: str | None = None
) -> dict[str, Any]:
    """A one-issue OperationOutcome."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": text[:1000]}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def http_status(exc: PermanentInputError) -> tuple[int, str]:
    """HTTP status and OperationOutcome issue code for a permanent input error:
    400 for what is not a FHIR resource, 422 for a valid resource WardWatch cannot use."""
    if isinstance(exc, MalformedJson):
        return 400, "structure"
    if isinstance(exc, UnsupportedResource):
        return 400, "not-supported"
    if isinstance(exc, InvalidResource):
        return 400, "invalid"
    name = type(exc).__name__
    return 422, {"MissingSubject": "required", "UnknownCode": "code-invalid"}.get(name, "value")


CAPABILITY_TYPES = (
    "Observation",
    "Patient",
    "Encounter",
    "Condition",
    "Flag",
    "Goal",
    "MedicationAdministration",
    "DocumentReference",
)


def capability_statement(settings: Settings) -> dict[str, Any]:
    """The gateway's CapabilityStatement (FHIR R4, JSON, create/update, batch, transaction;
    SMART Backend Services security when bearer tokens are required)."""
    scheme = "https" if settings.gateway_tls_cert is not None else "http"
    statement: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),
        "kind": "instance",
        "software": {"name": "WardWatch gateway"},
        "implementation": {
            "description": "WardWatch edge: FHIR R4 in, pseudonymised, to Kafka",
            "url": f"{scheme}://{settings.gateway_host}:{settings.gateway_http_port}/fhir",
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "POST/PUT resources and batch/transaction/subscription-notification Bundles; "
                    "202 once Kafka has them. Observations with codes WardWatch does not use are "
                    "accepted and ignored."
                ),
                "resource": [
                    {"type": t, "interaction": [{"code": "create"}, {"code": "update"}]}
                    for t in CAPABILITY_TYPES
                ],
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
            }
        ],
    }
    if settings.gateway_oauth_jwks_path is not None:
        statement["rest"][0]["security"] = {
            "service": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                            "code": "SMART-on-FHIR",
                        }
                    ]
                }
            ],
            "description": (
                "OAuth2 client-credentials bearer tokens (SMART Backend Services) from "
                f"{settings.gateway_oauth_issuer}; scopes system/<type>.write or system/*.write "
                "(SMART v2: .c/.u)"
            ),
        }
    return statement


class RequestLimit:
    """ASGI middleware: at most ``per_client`` FHIR requests in flight per client address
    (more: 429) and ``overall`` in all (more: 503), each refusal an OperationOutcome with
    Retry-After, counted in ``stats.http_throttled`` and logged at most once a second.

    Refusing rather than queueing keeps a flooding client from holding memory and
    connections; the address is the TCP peer's (behind a proxy: the proxy's).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        overall: int,
        per_client: int,
        retry_after_s: int,
        stats: GatewayStats,
    ) -> None:
        self.app = app
        self.overall = overall
        self.per_client = per_client
        self.retry_after = str(retry_after_s)
        self.stats = stats
        self.in_flight = 0
        self.by_client: dict[str, int] = {}  # only addresses with requests in flight
        self._logged_at = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        host = str(client[0]) if client else ""
        mine = self.by_client.get(host, 0)
        if mine >= self.per_client:
            why = f"more than {self.per_client} requests in flight from this client; retry"
            await self._refuse(scope, receive, send, 429, host, why)
            return
        if self.in_flight >= self.overall:
            why = f"the gateway has {self.overall} requests in flight; retry"
            await self._refuse(scope, receive, send, 503, host, why)
            return
        self.in_flight += 1
        self.by_client[host] = mine + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            left = self.by_client.pop(host, 1) - 1
            if left > 0:
                self.by_client[host] = left

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, host: str, why: str
    ) -> None:
        self.stats.http_throttled += 1
        now = time.monotonic()
        if now - self._logged_at >= 1.0:
            self._logged_at = now
            log.warning(
                "HTTP %s: %d, %s (%d refused since start)",
                host,
                status,
                why,
                self.stats.http_throttled,
            )
        response = JSONResponse(
            operation_outcome("error", "throttled" if status == 429 else "transient", why),
            status_code=status,
            media_type="application/fhir+json",
            headers={"Retry-After": self.retry_after},
        )
        await response(scope, receive, send)


_NOTIFICATION_SKIP = frozenset({"SubscriptionStatus", "Parameters"})


def build_http_app(gw: Gateway, verifier: TokenVerifier | None = None) -> Any:
    """The FastAPI app of the FHIR endpoints (see the module docstring). With ``verifier``
    every POST/PUT needs a bearer access token whose scopes cover what it writes (401
    without a valid token, 403 without the scope); metadata stays open."""
    app = FastAPI(title="WardWatch gateway", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        RequestLimit,
        overall=gw.settings.gateway_http_max_concurrency,
        per_client=gw.settings.gateway_http_max_concurrency_per_client,
        retry_after_s=gw.settings.gateway_http_retry_after_s,
        stats=gw.stats,
    )
    limit = gw.settings.gateway_max_body_bytes
    fetcher = FetchBack(gw.settings)

    def fhir_json(status: int, body: dict[str, Any]) -> JSONResponse:
        return JSONResponse(body, status_code=status, media_type="application/fhir+json")

    def refuse(status: int, code: str, text: str, challenge: str) -> JSONResponse:
        # Refused requests are not dead-lettered: nothing was accepted from an
        # unauthenticated or unauthorised client, and it is told why (RFC 6750).
        gw.stats.http_auth_refused += 1
        log.info("FHIR HTTP refused %d: %s", status, text)
        response = fhir_json(status, operation_outcome("error", code, text))
        response.headers["WWW-Authenticate"] = challenge
        return response

    def authenticate(request: Request) -> dict[str, Any] | JSONResponse:
        """The token's claims ({} without a verifier), or the 401 to answer."""
        if verifier is None:
            return {}
        header = request.headers.get("authorization")
        try:
            return dict(verifier.verify(header))
        except InvalidTokenError as exc:
            challenge = 'Bearer realm="wardwatch-gateway"'
            if header:  # RFC 6750: no error code when the request had no credentials
                challenge += f', error="invalid_token", error_description="{exc.reason}"'
            return refuse(401, "login", exc.reason, challenge)

    def authorise(claims: dict[str, Any], wanted: Sequence[tuple[str, str]]) -> JSONResponse | None:
        """None when the token's scopes cover every (resource type, action), else a 403."""
        if verifier is None:
            return None
        for rtype, action in wanted:
            try:
                verifier.require(claims, rtype, action)
            except InsufficientScopeError as exc:
                challenge = (
                    f'Bearer realm="wardwatch-gateway", error="insufficient_scope", '
                    f'scope="{exc.needed}"'
                )
                return refuse(403, "forbidden", str(exc), challenge)
        return None

    def bundle_writes(entries: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """(resource type, action) of every resource a Bundle's entries write."""
        wanted: dict[tuple[str, str], None] = {}
        for e in entries:
            r = e.get("resource")
            if not isinstance(r, dict) or not isinstance(r.get("resourceType"), str):
                continue  # refused per entry further on
            if r["resourceType"] in _NOTIFICATION_SKIP:
                continue
            method = (
                (e.get("request") or {}).get("method")
                if isinstance(e.get("request"), dict)
                else None
            )
            wanted[(r["resourceType"], "u" if method == "PUT" else "c")] = None
        return list(wanted)

    async def park(raw: bytes, reason: str) -> JSONResponse | None:
        """Dead-letter a refused body, original bytes and reason, for `wardwatch dlq`.

        Returns None once Kafka has it, else a 503 so the client resends instead of
        believing its input was recorded. Not retried here.
        """
        gw.stats.http_rejected += 1
        headers = dead_letter_headers(reason, "gateway.http", "http", fmt="fhir+json")
        try:
            await asyncio.wait_for(
                gw.dead_letter(b"unparsed", raw, headers), gw.settings.gateway_delivery_timeout_s
            )
        except (DeliveryError, TimeoutError):
            return fhir_json(
                503,
                operation_outcome(
                    "error", "transient", f"refused ({reason}), and Kafka is unavailable; retry"
                ),
            )
        return None

    async def bad(exc: PermanentInputError, raw: bytes) -> JSONResponse:
        """Refuse a body: dead-letter it (see :func:`park`) and answer 4xx with what to fix."""
        unavailable = await park(raw, str(exc))
        if unavailable is not None:
            return unavailable
        status, code = http_status(exc)
        return fhir_json(status, operation_outcome("error", code, str(exc)))

    async def body_of(request: Request) -> bytes | JSONResponse:
        too_big = fhir_json(
            413,
            operation_outcome(
                "error",
                "too-long",
                f"request body is larger than {limit} bytes; split it (e.g. a Bundle per "
                "patient) or raise WARDWATCH_GATEWAY_MAX_BODY_BYTES",
            ),
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return too_big
        chunks = bytearray()
        async for chunk in request.stream():
            chunks += chunk
            if len(chunks) > limit:
                return too_big
        return bytes(chunks)

    async def publish_or_503(
        items: Sequence[tuple[bytes, bytes]], body: dict[str, Any], status: int
    ) -> JSONResponse:
        try:
            await gw.publish_all(items, "fhir-http")
        except DeliveryError as exc:
            return fhir_json(
                503, operation_outcome("error", "transient", f"{exc}; retry the request")
            )
        gw.stats.http_resources += len(items)
        return fhir_json(status, body)

    async def single(request: Request, rtype: str, action: str) -> JSONResponse:
        claims = authenticate(request)
        if isinstance(claims, JSONResponse):
            return claims
        if (forbidden := authorise(claims, [(rtype, action)])) is not None:
            return forbidden
        raw = await body_of(request)
        if isinstance(raw, JSONResponse):
            return raw
        try:
            key, value, n = gw.check_resource(raw, rtype)
        except PermanentInputError as exc:
            return await bad(exc, raw)
        return await publish_or_503(
            [(key, value)],
            operation_outcome("information", "informational", f"accepted; {n} clinical events"),
            202,
        )

    @app.get("/fhir/metadata")
    @app.get("/metadata")
    async def metadata() -> JSONResponse:
        return fhir_json(200, capability_statement(gw.settings))

    @app.post("/fhir/{rtype}")
    async def create(rtype: str, request: Request) -> JSONResponse:
        return await single(request, rtype, "c")

    @app.put("/fhir/{rtype}/{rid}")
    async def update(rtype: str, rid: str, request: Request) -> JSONResponse:
        return await single(request, rtype, "u")

    @app.post("/fhir")
    async def bundle(request: Request) -> JSONResponse:
        claims = authenticate(request)
        if isinstance(claims, JSONResponse):
            return claims
        raw = await body_of(request)
        if isinstance(raw, JSONResponse):
            return raw
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return await bad(MalformedJson(f"not JSON: {str(exc)[:200]}"), raw)
        if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
            return await bad(
                InvalidResource(
                    "POST /fhir takes a Bundle (batch, transaction, history or "
                    "subscription-notification); post other resources to /fhir/<type>"
                ),
                raw,
            )
        btype = doc.get("type")
        entries = doc.get("entry") or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            return await bad(InvalidResource("Bundle.entry must be a list of objects"), raw)
        if (forbidden := authorise(claims, bundle_writes(entries))) is not None:
            return forbidden
        if btype in ("history", "subscription-notification") and needs_fetch(entries):
            # id-only / empty payload: fetch the focus resources, then as if posted in full
            try:
                entries = await fetcher.complete(entries)
            except FocusRefusedError as exc:
                return await bad(exc, raw)
            except FetchFailedError as exc:
                retry = fhir_json(503, operation_outcome("error", "transient", f"{exc}; resend"))
                retry.headers["Retry-After"] = str(gw.settings.gateway_http_retry_after_s)
                return retry
            if (forbidden := authorise(claims, bundle_writes(entries))) is not None:
                return forbidden
        if btype not in ("batch", "transaction", "history", "subscription-notification"):
            try:
                key, value, n = gw.check_resource(raw, "Bundle")
            except PermanentInputError as exc:
                return await bad(exc, raw)
            return await publish_or_503(
                [(key, value)],
                operation_outcome("information", "informational", f"accepted; {n} events"),
                202,
            )
        notification = btype in ("history", "subscription-notification")
        items: list[tuple[bytes, bytes]] = []
        responses: list[dict[str, Any]] = []
        errors: list[tuple[int, PermanentInputError]] = []
        for i, e in enumerate(entries):
            r = e.get("resource")
            if r is None:
                responses.append({"response": {"status": "200 OK"}})
                continue
            if notification and isinstance(r, dict) and r.get("resourceType") in _NOTIFICATION_SKIP:
                responses.append({"response": {"status": "200 OK"}})
                continue
            try:
                key, value, _ = gw.check_resource(orjson.dumps(r), None)
            except PermanentInputError as exc:
                errors.append((i, exc))
                status, code = http_status(exc)
                responses.append(
                    {
                        "response": {
                            "status": f"{status} {HTTPStatus(status).phrase}",
                            "outcome": operation_outcome(
                                "error", code, str(exc), expression=f"Bundle.entry[{i}]"
                            ),
                        }
                    }
                )
                continue
            items.append((key, value))
            responses.append({"response": {"status": "201 Created"}})
        if errors and btype in ("batch", "transaction"):
            # The client is told per entry; the dead letter keeps the original body for an
            # operator (a re-drive repeats the good entries, whose effects are idempotent).
            reasons = "; ".join(f"entry[{i}]: {err}" for i, err in errors[:10])
            unavailable = await park(raw, reasons)
            if unavailable is not None:
                return unavailable
        if btype == "transaction" and errors:
            oo: dict[str, Any] = {"resourceType": "OperationOutcome", "issue": []}
            for i, err in errors:
                oo["issue"].append(
                    {
                        "severity": "error",
                        "code": http_status(err)[1],
                        "diagnostics": str(err)[:500],
                        "expression": [f"Bundle.entry[{i}]"],
                    }
                )
            status = max(http_status(err)[0] for _, err in errors)
            return fhir_json(status, oo)
        if notification and errors:
            # the notifying server cannot fix its data: keep the bad entries as dead letters
            for i, err in errors:
                with contextlib.suppress(DeliveryError, TimeoutError):
                    await asyncio.wait_for(
                        gw.dead_letter(
                            b"unparsed",
                            orjson.dumps(entries[i].get("resource")),
                            dead_letter_headers(str(err), "gateway.http", "http", fmt="fhir+json"),
                        ),
                        gw.settings.gateway_delivery_timeout_s,
                    )
        if notification:
            body = operation_outcome(
                "information" if not errors else "warning",
                "informational" if not errors else "processing",
                f"{len(items)} resources accepted, {len(errors)} dead-lettered",
            )
            return await publish_or_503(items, body, 200)
        resp = {"resourceType": "Bundle", "type": f"{btype}-response", "entry": responses}
        return await publish_or_503(items, resp, 200)

    return app


# ---------------------------------------------------------------------- running it
# Longest a client may take over its TLS handshake before it is disconnected.
TLS_HANDSHAKE_TIMEOUT_S = 30.0


async def serve_mllp_tls(
    gw: Gateway,
    context: ssl.SSLContext,
    allowed: frozenset[str],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """One MLLP-over-TLS connection: the TLS handshake (a client certificate signed by the
    client CA when one is set), the allow-list of certificate names, then
    :meth:`Gateway.serve_mllp`. A refused client is logged, counted
    (``stats.mllp_tls_refused``) and disconnected before any message is read. Never raises.
    """
    # The handshake is done here rather than by start_server(ssl=...): asyncio drops a
    # failed server-side handshake silently, and a refused sender must be visible.
    peer = str(writer.get_extra_info("peername"))
    host = peer_host(writer)
    # The connection caps apply before the handshake: a flood of handshakes costs CPU.
    if not gw._admit(host):
        writer.transport.abort()
        return
    try:
        await writer.start_tls(context, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
        gw._release(host)
        gw.stats.mllp_tls_refused += 1
        why = getattr(exc, "reason", None) or type(exc).__name__
        log.warning("MLLP %s: TLS handshake refused (%s)", peer, why)
        writer.transport.abort()
        return
    if allowed:
        names = peer_names(writer.get_extra_info("peercert"))
        if not names & allowed:
            gw.stats.mllp_tls_refused += 1
            # certificate names identify sending systems, not patients
            log.warning(
                "MLLP %s: client certificate %s is not on WARDWATCH_GATEWAY_MLLP_ALLOWED_CLIENTS",
                peer,
                sorted(names)[:5],
            )
            gw._release(host)
            writer.transport.abort()
            return
    await gw.serve_mllp(reader, writer, admitted=True)


def peer_host(writer: asyncio.StreamWriter) -> str:
    """The client's address of an MLLP connection (the key of the per-client caps)."""
    peername = writer.get_extra_info("peername")
    return str(peername[0]) if isinstance(peername, tuple) and peername else str(peername)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


@dataclass(slots=True)
class GatewayServer:
    """Both listeners in the running event loop. ``start()`` binds (port 0: a free port,
    see ``mllp_port``/``http_port``); ``stop()`` closes everything."""

    settings: Settings
    gateway: Gateway | None = None
    mllp_port: int = 0
    http_port: int = 0
    _mllp: asyncio.base_events.Server | None = None
    _http_task: asyncio.Task[None] | None = None
    _uvicorn: Any = None

    async def start(self) -> None:
        """Bind and start. Raises OSError (not retried) when a port is taken, ValueError
        for a bad mapping table or time zone, TlsConfigError / OAuthConfigError (both
        ValueErrors, not retried) for unusable TLS files or token settings."""
        from zoneinfo import ZoneInfo

        import uvicorn

        ZoneInfo(self.settings.gateway_default_tz)  # fail fast on a bad time zone
        s = self.settings
        # TLS files and the token keys are read before binding: a bad one stops the start
        mllp_tls = TlsFiles.of(
            s.gateway_tls_cert,
            s.gateway_tls_key,
            s.gateway_tls_client_ca,
            s.tls_min_version,
            "gateway",
        )
        mllp_context = server_context(mllp_tls) if mllp_tls is not None else None
        # FHIR clients authenticate with bearer tokens, not certificates
        http_tls = None if mllp_tls is None else dataclasses.replace(mllp_tls, client_ca=None)
        verifier = (
            None
            if s.gateway_oauth_jwks_path is None
            else TokenVerifier(
                s.gateway_oauth_jwks_path, s.gateway_oauth_issuer, s.gateway_oauth_audience
            )
        )
        msock = _bind(s.gateway_host, s.gateway_mllp_port)
        try:
            hsock = _bind(s.gateway_host, s.gateway_http_port)
        except OSError:
            msock.close()
            raise
        gw = self.gateway = Gateway(
            s, KafkaBridge(s), SeenStore(s.gateway_dedup_path, s.gateway_dedup_days)
        )
        self.mllp_port = msock.getsockname()[1]
        self.http_port = hsock.getsockname()[1]
        handler = (
            gw.serve_mllp
            if mllp_context is None
            else functools.partial(
                serve_mllp_tls, gw, mllp_context, allowed_clients(s.gateway_mllp_allowed_clients)
            )
        )
        self._mllp = await asyncio.start_server(
            handler, sock=msock, limit=s.gateway_max_body_bytes + 1024
        )
        config = uvicorn_config(
            build_http_app(gw, verifier),
            http_tls,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_keep_alive=s.gateway_http_keep_alive_s,
            limit_concurrency=s.gateway_http_max_connections,
        )
        self._uvicorn = uvicorn.Server(config)
        self._http_task = asyncio.create_task(self._uvicorn.serve(sockets=[hsock]))
        while not self._uvicorn.started:
            if self._http_task.done():
                self._http_task.result()
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Stop listening, flush Kafka, close the resend store. Never raises."""
        if self._mllp is not None:
            self._mllp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._mllp.wait_closed(), 5)
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._http_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http_task, 5)
        if self.gateway is not None:
            await asyncio.to_thread(self.gateway.bridge.close)
            self.gateway.seen.close()


async def run_gateway(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run both listeners until ``stop`` is set (or the task is cancelled)."""
    server = GatewayServer(settings)
    await server.start()
    s = settings
    tls = TlsFiles.of(
        s.gateway_tls_cert, s.gateway_tls_key, s.gateway_tls_client_ca, s.tls_min_version, ""
    )
    log.warning(
        "gateway: MLLP on %s:%d (%s), FHIR on %s://%s:%d/fhir (%s) -> %s",
        s.gateway_host,
        server.mllp_port,
        describe(tls, allowed_clients(s.gateway_mllp_allowed_clients)),
        "http" if tls is None else "https",
        s.gateway_host,
        server.http_port,
        "bearer tokens" if s.gateway_oauth_jwks_path is not None else "no authentication",
        s.topic_inbound,
    )
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await server.stop()
        if server.gateway is not None:  # counts only: no patient data
            st = server.gateway.stats
            log.warning(
                "gateway stopped: HL7 accepted %d, duplicates %d, rejected %d (control id "
                "reused %d); MLLP connections refused %d, closed idle %d; FHIR resources %d, "
                "rejected %d, throttled %d",
                st.hl7_accepted,
                st.hl7_duplicates,
                st.hl7_rejected,
                st.hl7_reused,
                st.mllp_refused,
                st.mllp_idle_closed,
                st.http_resources,
                st.http_rejected,
                st.http_throttled,
            )


__all__ = [
    "DeliveryError",
    "Gateway",
    "GatewayServer",
    "KafkaBridge",
    "RequestLimit",
    "SeenStore",
    "build_http_app",
    "capability_statement",
    "dead_letter_headers",
    "http_status",
    "operation_outcome",
    "run_gateway",
]
