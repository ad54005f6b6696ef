"""Where an envelope is scored: the patient's home partition, as Kafka's partitioner
puts the pseudonym-keyed message (streams.routing.home_partition / route)."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner

from fhir.pseudonym import pseudonymise
from inference.scoring.envelope import Envelope
from streams.routing import home_partition, route

# Kafka's own test vectors for its Java murmur2 (clients' UtilsTest.testMurmur2), as
# signed 32-bit ints: the partition a Java, librdkafka murmur2_random or aiokafka
# producer picks for a key is (hash & 0x7fffffff) % partitions.
JAVA_MURMUR2 = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


@pytest.mark.parametrize(("key", "signed"), JAVA_MURMUR2.items())
@pytest.mark.parametrize("partitions", [1, 3, 8, 12, 64])
def test_home_partition_is_the_java_partitioners(key: str, signed: int, partitions: int) -> None:
    assert home_partition(key, partitions) == (signed & 0x7FFFFFFF) % partitions


def test_home_partition_agrees_with_fausts_producer() -> None:
    # Faust sends table changelog and events-topic records through aiokafka's default
    # partitioner; the in-place path is only right if both pick the same partition.
    rng = random.Random(3)
    for i in range(500):
        patient = pseudonymise(f"stay-{i}", b"k", system="test")
        n = rng.choice([2, 8, 16, 31])
        want = DefaultPartitioner()(patient.encode(), list(range(n)), list(range(n)))
        assert home_partition(patient, n) == want


def _env(patient: str) -> Envelope:
    return Envelope(patient, "t/0/0", None, ())


def test_route_keeps_home_envelopes_and_forwards_the_rest() -> None:
    patients = [pseudonymise(f"p{i}", b"k", system="test") for i in range(40)]
    envs = [_env(p) for p in patients]
    local, forward = route(envs, 3, 8)
    assert [e.patient for e in local] == [p for p in patients if home_partition(p, 8) == 3]
    assert [e.patient for e in forward] == [p for p in patients if home_partition(p, 8) != 3]
    assert local and forward  # 40 patients over 8 partitions: both paths taken


@pytest.mark.parametrize("partitions", [None, 0])
def test_route_forwards_everything_when_topics_are_not_copartitioned(
    partitions: int | None,
) -> None:
    envs = [_env(pseudonymise(f"p{i}", b"k", system="test")) for i in range(5)]
    assert route(envs, 0, partitions) == ([], envs)
