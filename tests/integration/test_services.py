"""The local services that `bash compose/services.sh up` (make up) starts, used for real.

Each test talks to its service with the client the application uses and fails (never
skips) when the service is down; every wait is bounded so that a dead service fails in
seconds rather than hanging the run.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.settings import Settings

LOCAL_PG_URL = "postgresql+psycopg://wardwatch:wardwatch@127.0.0.1:5433/wardwatch"
KAFKA_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings()


@pytest.fixture
def kafka_topic(settings: Settings) -> Iterator[str]:
    """A fresh single-partition topic, deleted afterwards."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    try:
        admin.list_topics(timeout=10)
    except KafkaException as exc:
        pytest.fail(f"Kafka at {settings.kafka_bootstrap} is not reachable ({exc}): run `make up`")
    topic = f"wardwatch.test.{uuid.uuid4().hex[:12]}"
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(
        timeout=KAFKA_TIMEOUT_S
    )
    yield topic
    admin.delete_topics([topic], operation_timeout=10)[topic].result(timeout=KAFKA_TIMEOUT_S)


def consume_values(settings: Settings, topic: str, want: int, **config: str) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"wardwatch-test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **config,
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + KAFKA_TIMEOUT_S
    try:
        while len(values) < want and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            value = msg.value()
            assert value is not None
            values.append(value)
    finally:
        consumer.close()
    return values


@pytest.mark.kafka
def test_kafka_produce_consume(settings: Settings, kafka_topic: str) -> None:
    producer = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap, "acks": "all", "enable.idempotence": True}
    )
    payloads = [f"msg-{i}".encode() for i in range(3)]
    for value in payloads:
        producer.produce(kafka_topic, key=b"patient-1", value=value)
    assert producer.flush(KAFKA_TIMEOUT_S) == 0, "messages not delivered in time"
    assert consume_values(settings, kafka_topic, len(payloads)) == payloads


@pytest.mark.kafka
def test_edge_producer_puts_each_patient_on_its_home_partition(settings: Settings) -> None:
    # The worker scores an inbound message in place only when the edge's producer
    # (librdkafka, murmur2_random) picked the partition streams.routing.home_partition
    # computes; otherwise every message would take the slower events-topic path.
    from fhir.pseudonym import pseudonymise
    from streams.replay import landed_at, make_producer
    from streams.routing import home_partition

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    topic = f"wardwatch.test.{uuid.uuid4().hex[:12]}"
    admin.create_topics([NewTopic(topic, num_partitions=8, replication_factor=1)])[topic].result(
        timeout=KAFKA_TIMEOUT_S
    )
    try:
        producer = make_producer(settings)
        landed: dict[str, int] = {}
        patients = [pseudonymise(f"stay-{i}", b"k", system="test") for i in range(200)]
        for p in patients:
            producer.produce(
                topic,
                key=p.encode(),
                value=b"{}",
                on_delivery=lambda err, msg, p=p: landed.__setitem__(p, landed_at(msg)[0]),
            )
        assert producer.flush(KAFKA_TIMEOUT_S) == 0
        assert landed == {p: home_partition(p, 8) for p in patients}
        assert len(set(landed.values())) == 8
    finally:
        admin.delete_topics([topic], operation_timeout=10)[topic].result(timeout=KAFKA_TIMEOUT_S)


@pytest.mark.kafka
def test_kafka_transactions_on_single_node(settings: Settings, kafka_topic: str) -> None:
    # Transactions need __transaction_state with replication factor and min ISR 1 on a
    # single broker; with the defaults (3 and 2) init_transactions times out.
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "transactional.id": f"wardwatch-test-{uuid.uuid4().hex[:8]}",
        }
    )
    producer.init_transactions(KAFKA_TIMEOUT_S)
    producer.begin_transaction()
    producer.produce(kafka_topic, value=b"committed")
    producer.commit_transaction(KAFKA_TIMEOUT_S)
    producer.begin_transaction()
    producer.produce(kafka_topic, value=b"aborted")
    producer.abort_transaction(KAFKA_TIMEOUT_S)
    # read_committed sees the committed record only (and the abort marker is skipped).
    values = consume_values(settings, kafka_topic, 1, **{"isolation.level": "read_committed"})
    assert values == [b"committed"]


@pytest.mark.kafka
def test_kafka_project_topics_exist(settings: Settings) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    try:
        metadata = admin.list_topics(timeout=10)
    except KafkaException as exc:
        pytest.fail(f"Kafka at {settings.kafka_bootstrap} is not reachable ({exc}): run `make up`")
    for topic in (
        settings.topic_inbound,
        settings.topic_dlq,
        settings.topic_events,
        settings.topic_scores,
        settings.topic_alerts,
    ):
        assert topic in metadata.topics, f"{topic} missing: `make up` creates it"
        assert len(metadata.topics[topic].partitions) == settings.topic_partitions


def postgres_url(settings: Settings) -> str:
    # The app's URL when it points at PostgreSQL, else the local service's.
    env_url = os.environ.get("WARDWATCH_DATABASE_URL", "")
    return env_url if env_url.startswith("postgresql") else LOCAL_PG_URL


@pytest.mark.postgres
def test_postgres_select_one(settings: Settings) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_url(settings), connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
            # The app's role can create tables in its own database (migrations do).
            conn.execute(text("CREATE TEMP TABLE wardwatch_probe (id int)"))
            version = conn.execute(text("SHOW server_version_num")).scalar_one()
            assert int(version) // 10000 == 15
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_requires_the_password() -> None:
    # Local auth is SCRAM over TCP, as in production: a wrong password is refused.
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    engine = create_engine(
        LOCAL_PG_URL.replace("wardwatch:wardwatch@", "wardwatch:not-the-password@"),
        connect_args={"connect_timeout": 5},
    )
    try:
        with (
            pytest.raises(OperationalError, match="password authentication failed"),
            engine.connect() as conn,
        ):
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()


@pytest.mark.triton
def test_triton_live_and_ready(settings: Settings) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url=settings.triton_grpc_url)
    try:
        assert client.is_server_live(client_timeout=5)
        assert client.is_server_ready(client_timeout=5)
        # Every model in the repository loaded (services.sh loads them all at start).
        index = client.get_model_repository_index(as_json=True, client_timeout=5)
        for model in index.get("models", []):
            assert model.get("state") == "READY", model
            assert client.is_model_ready(model["name"], client_timeout=5)
    except InferenceServerException as exc:
        pytest.fail(f"Triton at {settings.triton_grpc_url} is not reachable ({exc}): run `make up`")
    finally:
        client.close()
