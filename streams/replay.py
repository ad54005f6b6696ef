"""``wardwatch replay``: publish input files to ``fhir.inbound`` with confluent-kafka."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from tqdm import tqdm

from .client_security import kafka_config
from .settings import Settings
from .sources import count_messages, messages


@dataclass(slots=True)
class ReplayStats:
    """What a replay sent, and where each message landed (for accounting)."""

    files: int = 0
    sent: int = 0
    failed: int = 0
    seconds: float = 0.0
    # (partition, offset) -> (file stem, PhysioNet hour or None)
    landed: dict[tuple[int, int], tuple[str, int | None]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def landed_at(msg: Message) -> tuple[int, int]:
    """(partition, offset) of a delivered message."""
    partition, offset = msg.partition(), msg.offset()
    if partition is None or offset is None:
        raise ValueError("message was not delivered: it has no partition or offset")
    return partition, offset


def make_producer(settings: Settings, **extra: Any) -> Producer:
    """An idempotent producer that waits for all in-sync replicas.

    ``murmur2_random`` is the Java client's partitioner, which Faust (aiokafka) also
    uses, so a patient's key lands on the same partition whoever sends it.
    """
    conf: dict[str, Any] = {
        **kafka_config(settings),
        "acks": "all",
        "enable.idempotence": True,
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.max.bytes": 10_485_760,
    }
    conf.update(extra)
    return Producer(conf)


def publish(
    settings: Settings, topic: str, items: Sequence[tuple[bytes, bytes]]
) -> list[tuple[int, int]]:
    """Publish (key, value) pairs and wait for the broker: their (partition, offset).

    Raises ``RuntimeError`` naming the error when any message is not acknowledged.
    """
    producer = make_producer(settings)
    landed: list[tuple[int, int] | None] = [None] * len(items)
    errors: list[str] = []

    def delivered(err: KafkaError | None, msg: Message, i: int) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            landed[i] = landed_at(msg)

    for i, (key, value) in enumerate(items):
        producer.produce(topic, key=key, value=value, on_delivery=functools.partial(delivered, i=i))
    producer.flush(60)
    done = [x for x in landed if x is not None]
    if errors or len(done) != len(items):
        raise RuntimeError(
            f"Kafka acknowledged {len(done)} of {len(items)} messages on {topic}: {errors[:3]}; "
            "is it up (`make up`, `make status`)?"
        )
    return done


def replay(
    paths: Sequence[Path],
    settings: Settings,
    *,
    rate: float = 0.0,
    limit: int = 0,
    topic: str,
    progress: bool = True,
    on_sent: Callable[[int], None] | None = None,
) -> ReplayStats:
    """Publish every message of ``paths`` to ``topic`` and wait for all acknowledgements.

    ``rate`` > 0 paces sending to that many messages per second. Raises
    ``FileNotFoundError`` for a missing input; delivery failures are counted in
    ``stats.failed`` (the caller decides; the CLI exits non-zero).
    """
    stats = ReplayStats()
    producer = make_producer(settings)
    key = settings.pseudonym_key.get_secret_value().encode()
    stay_start = datetime.fromisoformat(settings.physionet_stay_start)
    total = count_messages(paths)
    if limit:
        total = min(total or limit, limit)
    seen_files: set[str] = set()

    def delivered(err: KafkaError | None, msg: Message, origin: tuple[str, int | None]) -> None:
        if err is not None:
            stats.failed += 1
            stats.errors.append(f"{origin[0]}: {err}")
        else:
            stats.landed[landed_at(msg)] = origin

    start = time.monotonic()
    bar = tqdm(total=total, unit="msg", desc="replay", disable=not progress)
    for n, m in enumerate(messages(paths, key, stay_start), 1):
        seen_files.add(m.stem)
        origin = (m.stem, m.hour)
        while True:
            try:
                producer.produce(
                    topic,
                    key=m.key,
                    value=m.value,
                    on_delivery=functools.partial(delivered, origin=origin),
                )
                break
            except BufferError:
                producer.poll(0.05)  # local queue full: let deliveries drain
        producer.poll(0)
        stats.sent += 1
        bar.update(1)
        if on_sent is not None:
            on_sent(stats.sent)
        if rate > 0:
            ahead = n / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        if limit and n >= limit:
            break
    remaining = producer.flush(60)
    bar.close()
    stats.failed += remaining
    stats.files = len(seen_files)
    stats.seconds = time.monotonic() - start
    return stats
