"""``wardwatch dlq list|show|replay``: inspect and re-drive dead letters.

A dead letter (``WARDWATCH_TOPIC_DLQ``) keeps the original bytes, encrypted
(:mod:`streams.sealing`: AES-256-GCM under ``WARDWATCH_DEAD_LETTER_KEY``, the key id and
nonce in headers), the original key and the reason in headers (``wardwatch.reason``,
``wardwatch.stage``, ``wardwatch.source.*``; ``wardwatch.format: hl7v2`` for messages the
MLLP gateway refused). Reasons say what was wrong without quoting values. ``list`` shows
position, time, stage, size, key id and reason, never the payload; ``show --decrypt``
prints one dead letter's original bytes for an operator (audited in the database's audit
log first). ``replay`` decrypts and sends them back to ``fhir.inbound`` after a fix, through
the edge's pseudonymisation wherever the edge refused them (their bytes are as the sender
sent them): HL7 v2 mapped again with the current tables, FHIR pseudonymised again by the
gateway's :func:`streams.sources.fhir_message`; what the stream refused (already
pseudonymised) goes as its original bytes under its original key. A message that still
fails is reported, not sent. A message over the gateway's size limit is dead-lettered
truncated (``wardwatch.truncated: true``, its first bytes only) and is never replayed: the
sender must split and resend it. Every re-driven message carries ``wardwatch.redrive``
headers naming the dead letter it came from.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from fhir.hl7v2 import Hl7Error, map_message

from . import dlq_headers
from .client_security import kafka_config
from .errors import safe_reason
from .replay import make_producer
from .sealing import H_KEY_ID, H_SEALED, TAG_BYTES, KeyRing, SealError, key_ring
from .settings import Settings
from .sources import fhir_message


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter as read from the topic."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]

    @property
    def position(self) -> str:
        """``partition:offset`` (what ``dlq replay --offset`` takes)."""
        return f"{self.partition}:{self.offset}"

    @property
    def reason(self) -> str:
        return self.headers.get(dlq_headers.REASON, "(no reason header)")

    @property
    def stage(self) -> str:
        return self.headers.get(dlq_headers.STAGE, "?")

    @property
    def sealed(self) -> bool:
        """Whether the payload is encrypted (dead letters from before encryption are not)."""
        return H_SEALED in self.headers

    @property
    def size(self) -> int:
        """Length of the original bytes (the ciphertext less its tag)."""
        return max(len(self.value) - TAG_BYTES, 0) if self.sealed else len(self.value)

    @property
    def key_id(self) -> str:
        """The id of the key that sealed it, ``plain`` if it is not sealed."""
        return self.headers.get(H_KEY_ID, "?") if self.sealed else "plain"

    def original(self, ring: KeyRing) -> bytes:
        """The original bytes, decrypted. Raises SealError (permanent) when ``ring`` has
        no key that opens it or the record was altered or moved."""
        if not self.sealed:
            return self.value
        return ring.open(self.value, self.headers, topic=self.topic, key=self.key)


def _consumer(settings: Settings) -> Consumer:
    return Consumer(
        {
            **kafka_config(settings),
            "group.id": f"wardwatch-dlq-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )


def read_dead_letters(
    settings: Settings, *, since: datetime | None = None, timeout_s: float = 10.0
) -> Iterator[DeadLetter]:
    """Every dead letter (from ``since`` on, if given), partition by partition, to the end
    of the topic as it is now. Raises RuntimeError (transient: check Kafka, run again) when
    the topic cannot be read."""
    topic = settings.topic_dlq
    c = _consumer(settings)
    try:
        try:
            md = c.list_topics(topic, timeout=timeout_s)
        except KafkaException as exc:
            raise RuntimeError(
                f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}; is it up "
                "(`make up`, `make status`)?"
            ) from None
        tmd = md.topics.get(topic)
        if tmd is None or tmd.error is not None:
            raise RuntimeError(
                f"cannot read topic {topic}: {tmd.error if tmd else 'absent'}; is Kafka up "
                "(`make status`) and WARDWATCH_TOPIC_DLQ right?"
            )
        parts = sorted(tmd.partitions)
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for p in parts:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            ends[p] = hi
            starts.append(TopicPartition(topic, p, OFFSET_BEGINNING if since is None else lo))
        if since is not None:
            ms = int(since.timestamp() * 1000)
            starts = c.offsets_for_times(
                [TopicPartition(topic, p, ms) for p in parts], timeout=timeout_s
            )
        todo = {tp.partition for tp in starts if ends[tp.partition] > 0 and tp.offset >= -2}
        todo = {p for p in todo if ends[p] > 0}
        if not todo:
            return
        c.assign([tp for tp in starts if tp.partition in todo])
        idle = 0
        while todo and idle < 3:
            msgs = c.consume(500, timeout=1.0)
            if not msgs:
                idle += 1
                continue
            idle = 0
            for m in msgs:
                p = m.partition() or 0
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        todo.discard(p)
                        continue
                    raise RuntimeError(f"reading {topic}: {err}")
                off = m.offset() or 0
                if off >= ends[p] - 1:
                    todo.discard(p)
                if off >= ends[p]:
                    continue
                hdrs: dict[str, str] = {}
                for h in m.headers() or []:
                    k, v = h[0], h[1]
                    hdrs[k] = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                ts = m.timestamp()[1]
                yield DeadLetter(topic, p, off, ts, m.key(), m.value() or b"", hdrs)
    finally:
        c.close()


def format_table(letters: Sequence[DeadLetter]) -> Iterator[str]:
    """Table lines: position, time, stage, size, key id, reason. No payload, and the
    reasons quote no values (they were scrubbed when the dead letter was written)."""
    yield (
        f"{'partition:offset':<17} {'time (UTC)':<20} {'stage':<16} {'bytes':>8} "
        f"{'key id':<8}  reason"
    )
    for d in letters:
        t = datetime.fromtimestamp(d.timestamp_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        yield (
            f"{d.position:<17} {t:<20} {d.stage[:16]:<16} {d.size:>8} {d.key_id[:8]:<8}  "
            f"{d.reason[:160]}"
        )


@dataclass(slots=True)
class Redrive:
    """What replaying one dead letter did (or would do, with --dry-run)."""

    letter: DeadLetter
    sent: bool
    note: str


def redrive(
    settings: Settings,
    letters: Sequence[DeadLetter],
    *,
    dry_run: bool = False,
) -> list[Redrive]:
    """Decrypt dead letters and send them back to ``fhir.inbound`` (see the module
    docstring); one that cannot be decrypted is reported, not sent.

    Raises DeadLetterKeyError (permanent) when no dead-letter key is configured;
    RuntimeError (transient: Kafka did not acknowledge; safe to run again, the stream's
    effects are idempotent) when the writes are not all acknowledged.
    """
    key = settings.pseudonym_key.get_secret_value().encode()
    ring = key_ring(settings)
    out: list[Redrive] = []
    items: list[tuple[bytes, bytes]] = []
    for d in letters:
        if d.headers.get("wardwatch.truncated") == "true":
            # only the head of an over-long message was kept: mapping it could succeed on
            # its first segments and silently drop the rest
            out.append(
                Redrive(
                    d,
                    False,
                    f"not replayable: only the first {d.size} bytes were kept (the "
                    "message was over the size limit); ask the sender to split and resend it",
                )
            )
            continue
        try:
            raw = d.original(ring)
        except SealError as exc:
            out.append(Redrive(d, False, f"cannot decrypt: {exc}"))
            continue
        if d.headers.get("wardwatch.format") == "hl7v2":
            try:
                mapped = map_message(raw, key, default_tz=settings.gateway_default_tz)
            except Hl7Error as exc:
                # the output is a terminal's scrollback: what was wrong, not the value
                out.append(Redrive(d, False, f"still refused: {safe_reason(exc.reason)}"))
                continue
            items.append((mapped.pseudonym.encode(), orjson.dumps(mapped.bundle)))
            out.append(Redrive(d, not dry_run, "HL7 v2 mapped again"))
        elif d.stage.startswith("gateway."):
            # the edge refused it before pseudonymising: it must not reach the stream raw
            msg = fhir_message(raw, key, origin="redrive", stem="redrive")
            if msg.key == b"unparsed":
                out.append(
                    Redrive(d, False, "still refused: not a JSON object (cannot pseudonymise)")
                )
                continue
            items.append((msg.key, msg.value))
            out.append(Redrive(d, not dry_run, "FHIR pseudonymised again"))
        else:
            items.append((d.key or b"unparsed", raw))
            out.append(Redrive(d, not dry_run, "original bytes"))
    if not dry_run and items:
        _publish_redrives(settings, [r.letter for r in out if r.sent], items)
    return out


def _publish_redrives(
    settings: Settings, letters: Sequence[DeadLetter], items: Sequence[tuple[bytes, bytes]]
) -> None:
    producer = make_producer(settings)
    errors: list[str] = []

    def delivered(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    for d, (k, v) in zip(letters, items, strict=True):
        producer.produce(
            settings.topic_inbound,
            key=k,
            value=v,
            headers=[
                ("wardwatch.redrive", b"1"),
                ("wardwatch.redrive.from", f"{d.topic}/{d.partition}/{d.offset}".encode()),
                ("wardwatch.redrive.reason", d.reason.encode()),
            ],
            on_delivery=delivered,
        )
        producer.poll(0)
    left = producer.flush(60)
    if errors or left:
        raise RuntimeError(
            f"Kafka did not acknowledge {len(errors) + left} re-driven messages: {errors[:3]}; "
            "run the replay again (re-drives are idempotent downstream)"
        )


__all__ = [
    "DeadLetter",
    "Redrive",
    "format_table",
    "read_dead_letters",
    "redrive",
]
