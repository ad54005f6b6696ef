"""Wait for the local Kafka broker, then create WardWatch's topics if they are missing.

Run by ``compose/services.sh up kafka`` with the project's virtualenv. A Python
AdminClient is used rather than ``kafka-topics.sh``/``TopicCommand`` because a second
JVM start costs several CPU-seconds on a 2-core machine.

The topic names here must equal the defaults in ``streams/settings.py``; the unit test
``tests/unit/compose/test_compose_file.py`` checks that they do (this script does not
import the settings so that ``up`` keeps working while ``streams/`` is being edited).

Exit status: 0 ready, 1 broker unreachable in time or a topic could not be created.
"""

from __future__ import annotations

import argparse
import sys
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

PROJECT_TOPICS: tuple[str, ...] = (
    "fhir.inbound",
    "fhir.inbound.dlq",
    "clinical.events",
    "risk.scores",
    "risk.alerts",
)
DEFAULT_PARTITIONS = 8


def wait_for_broker(admin: AdminClient, deadline: float) -> set[str]:
    """Return the existing topic names once the broker answers a metadata request."""
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            metadata = admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
        except KafkaException as exc:
            last_error = exc
            time.sleep(0.5)
            continue
        # A KRaft broker answers metadata before it has registered with the controller;
        # it has no brokers listed until then and topic creation would fail.
        if metadata.brokers:
            return set(metadata.topics)
        time.sleep(0.5)
    raise TimeoutError(f"Kafka did not answer a metadata request in time ({last_error})")


def ensure_topics(admin: AdminClient, existing: set[str], partitions: int, timeout: float) -> None:
    """Create the missing project topics (replication factor 1: single-node cluster)."""
    missing = [t for t in PROJECT_TOPICS if t not in existing]
    if not missing:
        return
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            # Another `up` (or auto-creation by a client) may have won the race.
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        print(f"created topic {name} ({partitions} partitions)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait in all")
    parser.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    args = parser.parse_args(argv)

    deadline = time.monotonic() + args.timeout
    admin = AdminClient({"bootstrap.servers": args.bootstrap, "log_level": 3})
    try:
        existing = wait_for_broker(admin, deadline)
        ensure_topics(admin, existing, args.partitions, max(5.0, deadline - time.monotonic()))
    except (TimeoutError, KafkaException) as exc:
        print(f"kafka: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
