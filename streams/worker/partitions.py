"""Whether the inbound topic, the events topic and the state table share a partition
count (then an edge-keyed message is scored where it arrives)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from faust.types import EventT

from inference.scoring.batch import Route
from inference.scoring.envelope import Envelope

from ..client_security import kafka_config
from ..routing import route
from ..settings import Settings
from .supervision import retry_transient

log = logging.getLogger("wardwatch.stream")


async def copartitioned(settings: Settings) -> int | None:
    """The partition count the inbound topic, the events topic and the state table
    share, or None when they differ (then everything is forwarded: a worker owning
    inbound partition k need not own table partition k).

    Read once, when the agent starts, so that every message of a partition takes the
    same path for the worker's lifetime: routing on metadata that comes and goes would
    let a patient's forwarded envelope be scored after a later one scored in place.
    Retries while the broker is away (transient); raises the last error once the retry
    budget (``WARDWATCH_RETRY_BUDGET_S``) is spent.
    """
    names = (settings.topic_inbound, settings.topic_events)

    def read() -> dict[str, int]:
        md = AdminClient(kafka_config(settings)).list_topics(timeout=10)
        missing = [t for t in names if t not in md.topics or md.topics[t].error]
        if missing:  # Faust creates them as the worker starts
            raise KafkaException(f"topics not there yet: {missing}")
        return {t: len(md.topics[t].partitions) for t in names}

    counts = await retry_transient(
        lambda: asyncio.to_thread(read), "topic metadata", settings.retry_budget_s
    )
    if set(counts.values()) == {settings.topic_partitions}:
        return settings.topic_partitions
    log.warning(
        "partition counts %s differ from the table's %d: every envelope goes through "
        "%s (slower); give the topics the same count to score in place",
        counts,
        settings.topic_partitions,
        settings.topic_events,
    )
    return None


def router(batch: Sequence[EventT[object]], partitions: int | None) -> Route:
    """The core's :data:`~inference.scoring.batch.Route` for ``batch``: a message's
    envelopes stay when their home is the partition it was read from. Raises nothing."""

    def here(index: int, envelopes: Sequence[Envelope]) -> tuple[list[Envelope], list[Envelope]]:
        return route(envelopes, batch[index].message.partition, partitions)

    return here
