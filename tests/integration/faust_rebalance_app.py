"""Two real Faust workers in one group, for the rebalance contract tests in
tests/integration/test_faust_contract.py.

Run as ``python tests/integration/faust_rebalance_app.py worker`` with CONTRACT_ROLE
(``first`` or ``joiner``), CONTRACT_TOPIC (two partitions), CONTRACT_APP_ID,
CONTRACT_OUT, CONTRACT_DATA_DIR and CONTRACT_WEB_PORT set.

``first`` consumes both partitions with the project's consumer (streams.faust_fixes.install,
admit_in_order, adaptive_take, as streams/worker/app.py builds its agents), processes a
first run of records, then holds a second batch in flight (unacknowledged) and writes
CONTRACT_OUT + ".ready"; the test then starts a ``joiner`` in the same group. The
rebalance that follows is observed in the real Faust / aiokafka objects: when it started,
when the batch in flight was acknowledged, when Faust signalled the revocation, and what
the consumer still remembers of the partition it gave away. ``first`` writes that as JSON
to CONTRACT_OUT and stops itself. The joiner writes CONTRACT_OUT + ".joiner" (its
partitions, where it started reading them, what it processed) once it has fetched, and
stops.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from faust.types import TP
from faust_contract_base import contract_app, wait_for

from streams import faust_fixes

ROLE = os.environ["CONTRACT_ROLE"]
TOPIC = os.environ["CONTRACT_TOPIC"]
OUT = Path(os.environ["CONTRACT_OUT"])
N = 10  # records per partition in the first run
HOLD_S = 2.0  # how long the second batch stays in flight once the rebalance began

# rejoin quickly when the joiner arrives
app = contract_app(2, broker_heartbeat_interval=0.5)
faust_fixes.install(app)
topic = app.topic(TOPIC, value_serializer="raw", partitions=2)
TPS = {TP(TOPIC, 0), TP(TOPIC, 1)}

seen: list[tuple[int, int]] = []  # (partition, offset) of each processed event
hold = asyncio.Event()  # set: the next batch is held in flight
times: dict[str, float] = {}
# Every rebalance start and revocation signal (Faust may rebalance once more soon after
# it starts, before the joiner exists).
starts: list[float] = []
revocations: list[float] = []


@app.agent(topic)
async def agent(stream: Any) -> None:
    faust_fixes.admit_in_order(stream)
    async for batch in faust_fixes.adaptive_take(stream, 50, 0.05, 0.2, 16):
        if hold.is_set() and "held" not in times:
            times["held"] = time.monotonic()
            times["held_size"] = len(batch)
            # In flight (tracked, not acknowledged) until the rebalance has begun, and a
            # while after it, so Faust's revocation has to wait for it.
            await wait_for(lambda: any(t > times["held"] for t in starts), 90)
            await asyncio.sleep(HOLD_S)
            times["held_acked"] = time.monotonic()
        for event in batch:
            seen.append((event.message.partition, event.message.offset))
        for event in batch:
            await stream.ack(event)


@app.on_partitions_revoked.connect
async def revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
    # Faust sends this after its revocation handler waited for the streams (wait_empty).
    revocations.append(time.monotonic())


def ours(consumer: Any) -> set[TP]:
    """The consumer's partitions of the test topic (Faust also assigns its leader topic)."""
    return {tp for tp in consumer.assignment() if tp.topic == TOPIC}


async def first() -> dict[str, Any]:
    out: dict[str, Any] = {}
    consumer: Any = app.consumer
    started = app.on_rebalance_start

    def rebalance_started() -> None:
        starts.append(time.monotonic())
        started()

    if not await wait_for(lambda: ours(consumer) == TPS and set(consumer._fetch_start) >= TPS):
        raise RuntimeError(f"never assigned both partitions: {consumer.assignment()}")
    for p in (0, 1):
        for i in range(N):
            await topic.send(value=f"p{p}-{i}".encode(), partition=p)
    out["first_run_processed"] = await wait_for(lambda: len(seen) >= 2 * N)
    await consumer.commit()
    out["committed_before"] = {tp.partition: consumer._committed_offset.get(tp) for tp in TPS}
    out["remembered_before"] = {tp.partition: tp in consumer._fetch_start for tp in TPS}

    app.on_rebalance_start = rebalance_started  # instance attribute: Faust calls it so
    hold.set()
    for p in (0, 1):
        await topic.send(value=f"p{p}-held".encode(), partition=p)
    out["batch_held"] = await wait_for(lambda: "held" in times)
    await asyncio.to_thread(Path(f"{OUT}.ready").write_text, "ready")

    # ... and until the partition kept is seeked again: the fetch loop does that after the
    # assignment, later on a busy machine.
    out["rebalanced"] = await wait_for(
        lambda: (
            any(t > times["held"] for t in revocations)
            and len(ours(consumer)) == 1
            and ours(consumer) <= set(consumer._fetch_start)
        ),
        90,
    )
    kept = ours(consumer)
    gone = TPS - kept
    out["kept"] = sorted(tp.partition for tp in kept)
    out["gone"] = sorted(tp.partition for tp in gone)
    # What the override remembers of the partition it gave away (popped in _forget).
    out["gone_override_state"] = [
        [
            name
            for name in ("_fetch_start", "_next", "_resume", "_hole")
            if tp in getattr(consumer, name)
        ]
        for tp in gone
    ]
    out["times"] = times
    out["rebalance_starts"] = starts
    out["revocations"] = revocations
    # The partition kept is seeked again to what the broker has committed for it.
    out["kept_committed_offset"] = [consumer._committed_offset.get(tp) for tp in kept]
    out["kept_fetch_start"] = [consumer._fetch_start.get(tp) for tp in kept]
    out["processed"] = sorted(seen)
    out["refused_acks"] = consumer.refused_acks
    return out


@app.task
async def contract() -> None:
    if ROLE == "joiner":
        consumer: Any = app.consumer
        await wait_for(
            lambda: (
                OUT.exists()
                and bool(consumer.assignment())
                and set(consumer.assignment()) <= set(consumer._fetch_start)
            ),
            120,
        )
        await asyncio.sleep(1.0)  # a record handed over again would be processed by now
        got = {
            "assigned": sorted(tp.partition for tp in ours(consumer)),
            "fetch_start": {tp.partition: consumer._fetch_start.get(tp) for tp in TPS},
            "processed": sorted(seen),
        }
        await asyncio.to_thread(Path(f"{OUT}.joiner").write_text, json.dumps(got))
        asyncio.get_running_loop().call_later(0.2, lambda: os._exit(0))
        return
    out: dict[str, Any] = {}
    try:
        out = await first()
    except Exception as exc:  # reported to the test, which fails with it
        out["error"] = repr(exc)
    finally:
        await asyncio.to_thread(OUT.write_text, json.dumps(out, default=str))
        asyncio.get_running_loop().call_later(0.5, lambda: os._exit(0))


if __name__ == "__main__":
    app.main()
