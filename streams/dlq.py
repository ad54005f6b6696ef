"""``wardwatch dlq list|replay``: inspect and re-drive dead letters.

A dead letter (``WARDWATCH_TOPIC_DLQ``) keeps the original bytes, the original key and the
reason in headers (``wardwatch.reason``, ``wardwatch.stage``, ``wardwatch.source.*``;
``wardwatch.format: hl7v2`` for messages the MLLP gateway refused). ``list`` shows them
without patient data: position, stage, reason, size and the first bytes escaped (FHIR
that reached the stream is pseudonymised; raw HL7 v2 shows only the start of its MSH).
``replay`` sends them back to ``fhir.inbound`` after a mapping fix: FHIR as the original
bytes under the original key, HL7 v2 mapped again with the current tables (a message that
still fails is reported, not sent). A message over the gateway's size limit is
dead-lettered truncated (``wardwatch.truncated: true``, its first bytes only) and is
never replayed: the sender must split and resend it. Every re-driven message carries
``wardwatch.redrive`` headers naming the dead letter it came from.
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

from .client_security import kafka_config
from .replay import make_producer
from .settings import Settings

HEAD_BYTES = 40


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
        return self.headers.get("wardwatch.reason", "(no reason header)")

    @property
    def stage(self) -> str:
        return self.headers.get("wardwatch.stage", "?")

    def head(self, n: int = HEAD_BYTES) -> str:
        """The first ``n`` bytes, non-printable bytes escaped (``\\x0d``)."""
        raw = self.value[:n]
        text = "".join(chr(b) if 32 <= b < 127 else f"\\x{b:02x}" for b in raw)
        return text + ("..." if len(self.value) > n else "")


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
    """Table lines: position, time, stage, size, reason, first bytes. No patient data beyond
    what the reason says."""
    yield (
        f"{'partition:offset':<17} {'time (UTC)':<20} {'stage':<16} {'bytes':>8}  "
        "reason / first bytes"
    )
    for d in letters:
        t = datetime.fromtimestamp(d.timestamp_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        yield f"{d.position:<17} {t:<20} {d.stage[:16]:<16} {len(d.value):>8}  {d.reason[:160]}"
        yield f"{'':<64}  {d.head()}"


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
    """Send dead letters back to ``fhir.inbound`` (see the module docstring).

    Raises RuntimeError (transient: Kafka did not acknowledge; safe to run again, the stream's
    effects are idempotent) when the writes are not all acknowledged.
    """
    key = settings.pseudonym_key.get_secret_value().encode()
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
                    f"not replayable: only the first {len(d.value)} bytes were kept (the "
                    "message was over the size limit); ask the sender to split and resend it",
                )
            )
            continue
        if d.headers.get("wardwatch.format") == "hl7v2":
            try:
                mapped = map_message(d.value, key, default_tz=settings.gateway_default_tz)
            except Hl7Error as exc:
                out.append(Redrive(d, False, f"still refused: {exc.reason}"))
                continue
            items.append((mapped.pseudonym.encode(), orjson.dumps(mapped.bundle)))
            out.append(Redrive(d, not dry_run, "HL7 v2 mapped again"))
        else:
            items.append((d.key or b"unparsed", d.value))
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


__all__ = ["DeadLetter", "Redrive", "format_table", "read_dead_letters", "redrive"]
