"""What every alert delivery loop shares: the retry schedule and the database calls made
off the event loop, with storage outages retried for the retry budget (then they stop
the process loudly)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from storage.errors import StorageUnavailable

log = logging.getLogger("wardwatch.deliver")
T = TypeVar("T")


def backoff_s(failures: int, initial_s: float, max_s: float) -> float:
    """The wait before the next attempt after ``failures`` consecutive failures (1, 2...):
    ``initial_s`` doubling each time, at most ``max_s``; 0 after no failure. Raises nothing.
    No jitter: each subscriber has one sender, so there is no herd to spread."""
    if failures <= 0:
        return 0.0
    return min(max_s, initial_s * 2.0 ** min(failures - 1, 60))


async def db(call: Callable[[], T], budget_s: float) -> T:
    """Run a blocking storage call in a thread. StorageUnavailable is retried with
    backoff for ``budget_s`` seconds, then raised (the delivery stops: nothing was
    acknowledged that is not recorded, so a restart resumes). Other errors are raised at
    once (not retried)."""
    deadline = time.monotonic() + budget_s
    failures = 0
    while True:
        try:
            return await asyncio.to_thread(call)
        except StorageUnavailable as exc:
            failures += 1
            if time.monotonic() >= deadline:
                raise
            wait = backoff_s(failures, 0.5, 10.0)
            log.warning("database unavailable (%s); retrying in %.1f s", exc.reason, wait)
            await asyncio.sleep(wait)
