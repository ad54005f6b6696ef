"""A real Faust worker for tests/integration/test_faust_contract.py.

Run as ``python tests/integration/faust_contract_app.py worker`` with CONTRACT_TOPIC,
CONTRACT_APP_ID, CONTRACT_OUT, CONTRACT_DATA_DIR and CONTRACT_WEB_PORT set. One agent
reads the (one-partition) topic with the project's consumer (streams.faust_fixes.install),
admit_in_order and adaptive_take, as streams/worker/app.py does, and acknowledges each event
after its batch. A task observes what the overrides rely on in the real Faust / aiokafka
objects and writes it as JSON to CONTRACT_OUT; the test asserts. The process stops itself.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from faust.types import TP
from faust_contract_base import contract_app, wait_for

from streams import faust_fixes

TOPIC = os.environ["CONTRACT_TOPIC"]
N = 20
FETCH_MIN_BYTES, FETCH_MAX_WAIT_MS = 4096, 37

app = contract_app(1)
faust_fixes.install(app, fetch_min_bytes=FETCH_MIN_BYTES, fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
topic = app.topic(TOPIC, value_serializer="raw", partitions=1)
tp = TP(TOPIC, 0)

seen: list[dict[str, Any]] = []  # one per event the agent processed
processor_saw: list[dict[str, Any]] = []
clears = 0


@app.agent(topic)
async def agent(stream: Any) -> None:
    def observe(value: Any) -> Any:
        # admit_in_order relies on Faust setting current_event (tracked) before processors.
        event = stream.current_event
        processor_saw.append(
            {
                "offset": None if event is None else event.message.offset,
                "tracked": None if event is None else event.message.tracked,
                "value_is_event_value": event is not None and event.value is value,
            }
        )
        return value

    stream.add_processor(observe)
    faust_fixes.admit_in_order(stream)
    async for batch in faust_fixes.adaptive_take(stream, 50, 0.05, 0.2, 16):
        for event in batch:
            m = event.message
            seen.append({"offset": m.offset, "tracked": m.tracked, "acked_before": m.acked})
        for event in batch:
            await stream.ack(event)


async def committed_on_broker(consumer: Any) -> Any:
    """The group's committed offset of ``tp`` as the broker has it (aiokafka's call, run
    on the consumer thread that owns the aiokafka consumer)."""
    thread = consumer._thread
    return await thread.call_thread(thread._ensure_consumer().committed, tp)


@app.task
async def contract() -> None:
    out: dict[str, Any] = {}
    try:
        consumer: Any = app.consumer
        out["consumer_class_is_ours"] = isinstance(consumer, faust_fixes.Consumer)
        await wait_for(lambda: tp in consumer.assignment(), 60)
        await wait_for(lambda: tp in consumer._fetch_start, 60)
        # Faust stores a committed offset of 0 (nothing committed) as None (perform_seek),
        # and the override seeks such a partition to its earliest offset itself.
        out["committed_before"] = consumer._committed_offset[tp]  # as _new_offset reads it
        out["fetch_start"] = consumer._fetch_start.get(tp)
        # aiokafka reads the fetch settings set on the consumer before it starts.
        fetcher = consumer._thread._ensure_consumer()._fetcher
        out["fetch_min_bytes"] = fetcher._fetch_min_bytes
        out["fetch_max_wait_ms"] = fetcher._fetch_max_wait_ms
        # Faust's commit bookkeeping that _new_offset reads and edits.
        out["bookkeeping"] = {
            name: hasattr(consumer, name)
            for name in (
                "_acked",
                "_acked_index",
                "_gap",
                "_committed_offset",
                "_read_offset",
                "_unacked_messages",
                "_waiting_for_ack",
                "_paused_partitions",
            )
        }
        # FlowControlEvent.clear is an instance attribute the override wraps.
        queues_cleared = consumer._queues_cleared

        def counting() -> None:
            global clears
            clears += 1
            queues_cleared()

        consumer._queues_cleared = counting
        app.flow_control.resume()  # what Faust's recovery calls after a rebalance's seeks
        out["clears_after_resume"] = clears

        for i in range(N):
            await topic.send(value=f"m{i}".encode())
        out["all_processed"] = await wait_for(lambda: len(seen) >= N, 30.0)
        out["first_pass"] = [s["offset"] for s in seen]
        # Commit through Faust (its commit calls the override's _new_offset).
        await consumer.commit()
        committed = await committed_on_broker(consumer)
        out["broker_committed"] = committed
        out["committed_after"] = consumer._committed_offset[tp]
        out["refused_acks"] = consumer.refused_acks
        out["released"] = consumer.released

        # A seek back (run on the consumer thread) delivers the records again from there,
        # in order, and the stream processes them.
        before = len(seen)
        await consumer.seek(tp, 5)
        out["redelivered"] = await wait_for(lambda: len(seen) >= before + (N - 5), 30.0)
        out["second_pass"] = [s["offset"] for s in seen[before:]]
        # And the committed offset does not move back past what was processed.
        await consumer.commit()
        out["broker_committed_after_seek"] = await committed_on_broker(consumer)
        out["processor_saw"] = processor_saw[:3]
        out["processor_all_tracked"] = all(p["tracked"] for p in processor_saw)
        out["processor_offsets_ok"] = all(p["offset"] is not None for p in processor_saw)
        out["seen_tracked"] = all(s["tracked"] for s in seen)
        out["seen_unacked_when_handed"] = not any(s["acked_before"] for s in seen)
    except Exception as exc:  # reported to the test, which fails with it
        out["error"] = repr(exc)
    finally:
        text = json.dumps(out, default=str)
        await asyncio.to_thread(Path(os.environ["CONTRACT_OUT"]).write_text, text)
        # Stop the worker: the test waits for the process to end.
        asyncio.get_running_loop().call_later(0.5, lambda: os._exit(0))


if __name__ == "__main__":
    app.main()
