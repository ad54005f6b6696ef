"""A flood of bad messages against the same count of good ones (``python -m streams.bench_flood``).

One warmed-up worker (dead-letter limit off, as a flood would otherwise trip it) drains
N undecodable messages, each dead-lettered with its original bytes and reason, then N
good PhysioNet row Bundles, each scored; the same process, topics and machine. Reports
messages per second of each and their ratio, and appends the table to BENCHMARKS.md.
Needs the local services (``make up``).
"""

from __future__ import annotations

import argparse
import secrets
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient

from .bench import _create_topics, _isolated, _messages, _produce, _stays
from .client_security import kafka_config
from .demo import end_offsets, start_worker, stop_worker, warm_up
from .replay import make_producer
from .settings import PROJECT_ROOT, VAR_DIR, Settings


def _drain(s: Settings, topic: str, start: dict[int, int], n: int, timeout: float) -> float:
    """Seconds until ``topic`` holds ``n`` records past ``start``. Raises TimeoutError."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        now = end_offsets(s, [topic])[topic]
        if sum(now[p] - start.get(p, 0) for p in now) >= n:
            return time.monotonic() - t0
        time.sleep(0.2)
    raise TimeoutError(f"{topic}: fewer than {n} records after {timeout:g} s")


def run(n: int, out: Path) -> tuple[float, float]:
    """(bad messages/s, good messages/s) drained by one worker."""
    run_id = secrets.token_hex(4)
    work = VAR_DIR / "bench" / f"flood-{run_id}"
    work.mkdir(parents=True, exist_ok=True)
    s = _isolated(Settings(), f"flood-{run_id}", work / "scores.db").model_copy(
        update={"dead_letter_max_ratio": 1.0}
    )
    admin = AdminClient(kafka_config(s))
    topics = _create_topics(admin, s)
    stays, _ = _stays(max(50, n // 30), work)
    good, _ = _messages(stays, f"bench-{run_id}".encode())
    good = good[:n]
    bad = [(f"bad-{i}".encode(), b'{"resourceType": "Observation", "status": ') for i in range(n)]
    producer = make_producer(s)
    worker = start_worker(s, work / "worker.log")
    try:
        warm_up(
            s, stays[0], end_offsets(s, [s.topic_scores]), worker, deadline=time.monotonic() + 300
        )
        start = end_offsets(s, [s.topic_dlq])[s.topic_dlq]
        _produce(producer, s.topic_inbound, bad)
        t_bad = _drain(s, s.topic_dlq, start, n, 600)
        start = end_offsets(s, [s.topic_scores])[s.topic_scores]
        _produce(producer, s.topic_inbound, good)
        t_good = _drain(s, s.topic_scores, start, len(good), 600)
    finally:
        stop_worker(worker)
        admin.delete_topics(topics)
    bad_rate, good_rate = n / t_bad, len(good) / t_good
    table = (
        "\n## A flood of bad messages (`python -m streams.bench_flood`)\n\n"
        f"One worker, {n:,} undecodable messages then {len(good):,} good PhysioNet row "
        "Bundles, each drained after the other (the bad ones published first, at full "
        "speed; time from the first publish to the last dead letter or score).\n\n"
        "| messages | drained at | ratio to good |\n|---|---|---|\n"
        f"| {n:,} bad (dead-lettered with their bytes and reason) | {bad_rate:,.0f} msg/s "
        f"| {bad_rate / good_rate:.2f} |\n"
        f"| {len(good):,} good (scored) | {good_rate:,.0f} msg/s | 1.00 |\n"
    )
    print(table)
    with out.open("a") as f:
        f.write(table)
    return bad_rate, good_rate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--out", type=Path, default=PROJECT_ROOT / "BENCHMARKS.md")
    a = p.parse_args(argv)
    run(a.messages, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
