"""Where a patient's records live on Kafka: the home partition of a pseudonym, and the
split of an inbound message's envelopes into those scored in place and those forwarded
to their home partition (Kafka's partitioner: stream-layer knowledge, not the core's)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from aiokafka.partitioner import murmur2

from inference.scoring.envelope import Envelope


@functools.lru_cache(maxsize=1 << 16)
def home_partition(patient: str, partitions: int) -> int:
    """The partition a patient's records live on when ``partitions`` is the topic's
    partition count: Kafka's Java partitioner (murmur2 of the pseudonym), which Faust's
    producer and the edge's (``murmur2_random``) use, so the events topic, the state
    table's changelog and an edge-keyed inbound message all agree. Raises
    ``ZeroDivisionError`` for ``partitions`` 0."""
    hashed: int = murmur2(patient.encode())  # aiokafka ships no type hints
    return (hashed & 0x7FFFFFFF) % partitions


def route(
    envelopes: Sequence[Envelope], partition: int, partitions: int | None
) -> tuple[list[Envelope], list[Envelope]]:
    """Split an inbound message's envelopes into those that can be scored where they
    are (``partition`` is the patient's home partition) and those that must travel
    through the events topic to their home partition.

    ``partitions`` is the shared partition count of the inbound topic, the events topic
    and the state table, or None when they differ (then the worker owning an inbound
    partition need not own the same-numbered table partition, and everything is
    forwarded). Raises nothing.
    """
    if not partitions:
        return [], list(envelopes)
    local: list[Envelope] = []
    forward: list[Envelope] = []
    for env in envelopes:
        (local if home_partition(env.patient, partitions) == partition else forward).append(env)
    return local, forward
