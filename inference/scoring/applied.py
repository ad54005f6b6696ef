"""Idempotence: whether a Kafka-sourced envelope is already part of a patient's record."""

from __future__ import annotations

import bisect
import re

from .envelope import Envelope
from .record import PatientRecord

# topic/partition/offset; Kafka topic names are 1-249 of [a-zA-Z0-9._-].
_KAFKA_SOURCE = re.compile(r"([A-Za-z0-9._-]{1,249}/[0-9]+)/([0-9]+)")


def source_position(source: str) -> tuple[str, int] | None:
    """``("topic/partition", offset)`` of a Kafka source (``topic/partition/offset``, as
    the stream names an inbound message), None for any other kind of source (a file, an
    offline row). Kafka topic names cannot contain "/". Raises nothing."""
    m = _KAFKA_SOURCE.fullmatch(source)
    return None if m is None else (m[1], int(m[2]))


# Offsets remembered per source partition and patient: a replay after a rebalance reads
# again from the committed offset, at most a few seconds (the commit interval) behind, so
# at most a few dozen of one patient's messages even in a backlog.
APPLIED_KEEP = 64


def already_applied(record: PatientRecord, env: Envelope) -> bool:
    """Whether ``env`` is already part of ``record``, and if not, mark it applied.

    Why: a worker's table is restored from the changelog, which may run ahead of the
    committed offsets (the record is written when a batch is durable, its offsets are
    committed later). After a rebalance or restart the new owner reads again messages
    whose effects the record already holds. Applying one twice is harmless to the
    observations but not to the alert state, which would step from a later state: an
    alert cleared at 02:00 made a replayed 00:00 NEWS2 of 7 raise an alert the patient
    never had. Scores and alerts of an applied envelope are durable before its record is
    written (the agent awaits their acks first), so skipping it loses nothing.

    An envelope counts as applied when its source offset is one of the last
    :data:`APPLIED_KEEP` applied from that source partition **and** its message timestamp
    is not newer than every one applied from it. Exact offsets, not a high watermark: a
    partition's records applied out of order (a later one first, around a rebalance)
    must not make the earlier ones look applied, or they would be lost rather than
    late. Offsets that restart (a topic deleted and created again) with newer messages
    are applied and start the list again. An older replay than the list remembers is
    applied again (the fault above, never a loss). Envelopes without a Kafka source are
    never skipped. Mutates ``record.applied``. Raises nothing.
    """
    pos = source_position(env.source)
    if pos is None:
        return False
    tp, offset = pos
    ts = env.inbound_ts_ms
    seen = record.applied.get(tp)
    if seen is None:
        record.applied[tp] = ([offset], ts)
        return False
    offsets, latest_ts = seen
    newer = ts is not None and latest_ts is not None and ts > latest_ts
    if not newer and offset in offsets:
        return True
    if newer and offset <= offsets[-1]:
        offsets = [offset]  # offsets started again with newer messages: a new topic
    else:
        bisect.insort(offsets, offset)
        del offsets[:-APPLIED_KEEP]
    if latest_ts is not None:
        ts = latest_ts if ts is None else max(ts, latest_ts)
    record.applied[tp] = (offsets, ts)
    return False
