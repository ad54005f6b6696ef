"""The Faust app both contract workers run (``faust_contract_app.py``,
``faust_rebalance_app.py``): real Kafka on loopback, in-memory tables, acknowledgements
on, commits only when a task or a rebalance asks, and the project's consumer installed.
Imported by those scripts from their own folder (they run as ``python <file> worker``)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import faust


def contract_app(partitions: int, **settings: Any) -> faust.App:
    """The app named by the CONTRACT_* environment, ``settings`` on top."""
    return faust.App(
        os.environ["CONTRACT_APP_ID"],
        broker="kafka://127.0.0.1:9092",
        store="memory://",
        processing_guarantee="at_least_once",
        topic_partitions=partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_port=int(os.environ["CONTRACT_WEB_PORT"]),
        web_bind="127.0.0.1",
        autodiscover=False,
        datadir=os.environ["CONTRACT_DATA_DIR"],
        broker_commit_every=1000,  # commits only when asked: deterministic
        broker_commit_interval=3600.0,
        **settings,
    )


async def wait_for(pred: Any, limit: float = 60.0) -> bool:
    """Whether ``pred()`` came true within ``limit`` seconds."""
    try:
        async with asyncio.timeout(limit):
            # Polls state Faust and aiokafka own: they signal no event the test could await.
            while not pred():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        return False
    return True
