"""The headers of a dead letter: their names, the one builder, the one reader.

Every dead letter on ``fhir.inbound.dlq`` says where it came from and why it was refused:
``wardwatch.reason``, ``wardwatch.stage``, ``wardwatch.source.topic`` / ``.partition`` /
``.offset`` (``-1`` for a message refused at the edge, before it had an offset),
``wardwatch.dead_lettered_at`` (ms) and, from the edge, ``wardwatch.format``. The gateway
and the worker build them here (:func:`build`), and the index writer, ``wardwatch dlq``
and the demo read them here (:func:`as_text`), so the names cannot drift apart. The
sealing headers (``wardwatch.sealed``, ...) are :mod:`streams.sealing`'s. Raises nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Final

REASON: Final = "wardwatch.reason"
STAGE: Final = "wardwatch.stage"
SOURCE_TOPIC: Final = "wardwatch.source.topic"
SOURCE_PARTITION: Final = "wardwatch.source.partition"
SOURCE_OFFSET: Final = "wardwatch.source.offset"
DEAD_LETTERED_AT: Final = "wardwatch.dead_lettered_at"
FORMAT: Final = "wardwatch.format"

Headers = list[tuple[str, bytes]]


def build(
    reason: str,
    stage: str,
    topic: str,
    partition: int = -1,
    offset: int = -1,
    *,
    fmt: str | None = None,
    now_ms: int | None = None,
) -> Headers:
    """The headers of one dead letter (``reason`` as given: the caller redacts it)."""
    at = int(time.time() * 1000) if now_ms is None else now_ms
    headers: Headers = [
        (REASON, reason.encode()),
        (STAGE, stage.encode()),
        (SOURCE_TOPIC, topic.encode()),
        (SOURCE_PARTITION, str(partition).encode()),
        (SOURCE_OFFSET, str(offset).encode()),
        (DEAD_LETTERED_AT, str(at).encode()),
    ]
    if fmt is not None:
        headers.append((FORMAT, fmt.encode()))
    return headers


def as_text(headers: Iterable[tuple[Any, Any]] | dict[Any, Any] | None) -> dict[str, str]:
    """Kafka headers (a list of pairs or a dict, names and values as bytes or text) as a
    dict of text; undecodable bytes are replaced, a missing value is empty."""
    items = headers.items() if isinstance(headers, dict) else (headers or ())
    out: dict[str, str] = {}
    for k, v in items:
        name = k.decode(errors="replace") if isinstance(k, bytes) else str(k)
        out[name] = v.decode(errors="replace") if isinstance(v, bytes) else str(v or "")
    return out
