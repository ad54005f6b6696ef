"""The client TLS/SASL options against the real local services, which are plain text on
loopback: a client told to use TLS must fail to talk to them (so the options do reach
the client), and the plain-text default must work.

Needs the local Kafka, PostgreSQL and Triton (`make up`); fails, never skips. The local
PostgreSQL has ssl off (``SHOW ssl``) and is shared, so it is not reconfigured for a
``sslmode=require`` success; nor are Kafka and Triton given certificates.
"""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from inference.client import TritonRiskClient
from storage.db import make_engine
from streams.client_security import database_connect_args, kafka_config, triton_tls
from streams.settings import Settings

PG_URL = "postgresql+psycopg://wardwatch:wardwatch@127.0.0.1:5433/wardwatch"


@pytest.mark.postgres
def test_postgres_sslmode_reaches_the_server() -> None:
    """sslmode=disable connects; sslmode=require is refused with libpq's reason."""
    plain = make_engine(
        PG_URL, connect_args=database_connect_args(Settings(database_sslmode="disable"))
    )
    try:
        with plain.connect() as conn:
            assert conn.execute(text("SHOW ssl")).scalar() == "off"
    finally:
        plain.dispose()
    tls = make_engine(
        PG_URL, connect_args=database_connect_args(Settings(database_sslmode="require"))
    )
    try:
        with pytest.raises(OperationalError, match="server does not support SSL"), tls.connect():
            pass
    finally:
        tls.dispose()


@pytest.mark.kafka
def test_kafka_security_protocol_reaches_the_client() -> None:
    plain = AdminClient(kafka_config(Settings()))
    assert plain.list_topics(timeout=10).brokers
    tls = AdminClient(kafka_config(Settings(kafka_security_protocol="SSL")))
    with pytest.raises(KafkaException):
        tls.list_topics(timeout=3)


@pytest.mark.triton
def test_triton_tls_reaches_the_client() -> None:
    async def ready(settings: Settings) -> bool:
        async with TritonRiskClient(
            settings.triton_grpc_url, settings.triton_model, timeout_s=3, **triton_tls(settings)
        ) as client:
            return await client.is_ready()

    assert asyncio.run(ready(Settings()))
    assert not asyncio.run(ready(Settings(triton_ssl=True)))
